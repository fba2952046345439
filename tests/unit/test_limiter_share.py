"""The limiter's adaptive share: a 429 the limiter did not predict lowers a pool's rpm/ipm/tpm for a
while (multiplicative decrease), then they come back (additive recovery). On every backend, with an
injected clock: the share is pure arithmetic over Redis state, so nothing here sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis

from nanobatch.tasks import serve
from nanobatch.tasks.settings import Settings
from nanobatch.workers.errors import DailyQuotaExhausted, RateLimited
from nanobatch.workers.limiter import Adaptation, PoolLimits, RateLimiter
from nanobatch.workers.retry import RetryPolicy

POOL = "gemini-test-image"
T0 = 1_800_000_000.0
#: Fast numbers for reading the arithmetic: x0.5, held 60 s, then +0.1 per minute.
HALVING = Adaptation(factor=0.5, floor=0.2, hold_seconds=60.0, recovery_per_minute=0.1)


@pytest.fixture(params=["fakeredis", "redis"])
def client(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    if request.param == "redis":
        real = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        yield real, request.getfixturevalue("key_prefix")
        real.close()
    else:
        fake = fakeredis.FakeRedis()
        yield fake, "nbtest:fake"
        fake.close()


def limiter(client: tuple[Any, str], adaptation: Adaptation | None = HALVING, **limits: int) -> RateLimiter:
    made = RateLimiter(client[0], prefix=client[1], adaptation=adaptation)
    made.set_limits(POOL, PoolLimits(**(limits or {"rpm": 60})))
    return made


def spacing(lim: RateLimiter, at: float) -> float:
    """Seconds the rpm GCRA asks between two admissions on schedule, from ``at`` (after idle the pool
    has one slot banked, so the first two come at once)."""
    first = [lim.acquire(POOL, holder=f"a{n}", now=at) for n in range(3)]
    assert first[0].admitted and not first[2].admitted and first[2].reason == "rpm"
    on_time = at + first[2].wait_seconds
    assert lim.acquire(POOL, holder="b", now=on_time).admitted
    refused = lim.acquire(POOL, holder="c", now=on_time + 0.001)
    assert refused.reason == "rpm"
    return refused.wait_seconds + 0.001


def test_an_unpredicted_429_lowers_the_share_and_the_rpm_spacing_follows(client: tuple[Any, str]) -> None:
    lim = limiter(client)
    assert spacing(lim, T0) == pytest.approx(1.0, abs=1e-5)  # 60 rpm: one a second

    change = lim.adapt_after_refusal(POOL, admitted_at=T0, now=T0 + 2)

    assert (change.applied, change.before, change.after) == (True, 1.0, 0.5)
    assert spacing(lim, T0 + 10) == pytest.approx(2.0, abs=1e-5)  # 30 rpm now
    state = lim.state(POOL, now=T0 + 10)
    assert (state.share, state.share_drops) == (0.5, 1)


def test_one_overload_lowers_the_share_once_however_many_calls_were_in_flight(
    client: tuple[Any, str],
) -> None:
    lim = limiter(client)
    assert lim.adapt_after_refusal(POOL, admitted_at=T0, now=T0 + 2).applied
    # Calls admitted before that drop come back 429 too: the drop already answered them.
    for late in (T0 + 0.5, T0 + 1.5, T0 + 1.999):
        assert not lim.adapt_after_refusal(POOL, admitted_at=late, now=T0 + 3).applied
    # So do calls admitted after it while the upstream's window still counts the overload (60 s),
    # and refusals whose admission is unknown.
    assert not lim.adapt_after_refusal(POOL, admitted_at=T0 + 2.5, now=T0 + 4).applied
    assert not lim.adapt_after_refusal(POOL, now=T0 + 61.9).applied
    assert lim.state(POOL, now=T0 + 61.9).share == 0.5
    # Refused a window after the drop: the lowered share is still too much.
    second = lim.adapt_after_refusal(POOL, admitted_at=T0 + 50, now=T0 + 62)
    assert (second.applied, second.after) == (True, 0.25)
    # Unknown admission time counts once the window has passed (and the floor holds).
    assert lim.adapt_after_refusal(POOL, now=T0 + 123).after == 0.2


def test_a_drop_lands_under_what_the_pool_used_in_the_last_window(client: tuple[Any, str]) -> None:
    # 100 rpm configured; a neighbour leaves room for 70: the pool is admitted 70 in a minute, then
    # the upstream refuses. One drop brings the share to 0.7 x the factor, not a blind 0.9 step.
    lim = limiter(client, Adaptation(factor=0.95, hold_seconds=60.0, recovery_per_minute=0.05), rpm=100)
    start = T0 - T0 % 60  # a minute boundary: the usage buckets are whole minutes
    for n in range(70):
        assert lim.acquire(POOL, holder=f"h{n}", now=start + n * 60 / 70).admitted
    change = lim.adapt_after_refusal(POOL, admitted_at=start + 59.5, now=start + 59.9)
    assert change.applied
    assert change.after == pytest.approx(0.70 * 0.95, abs=0.01)
    # The GCRA spacing follows: 100 x 0.665 = 66.5 rpm.
    assert spacing(lim, start + 70) == pytest.approx(60 / 66.5, abs=0.02)


def test_the_drop_counts_the_last_60_s_exactly_when_the_pool_was_ramping_up(client: tuple[Any, str]) -> None:
    # Idle for 20 s, then 80 calls in 40 s (new workers joined): the upstream's window holds all 80
    # when it refuses 15 s later. Two minute buckets would see 0 + 80 x 3/4 = 60 and cut the share
    # below the room the neighbour leaves; the log counts 80.
    lim = limiter(client, Adaptation(factor=0.95, hold_seconds=60.0, recovery_per_minute=0.05), rpm=120)
    start = T0 - T0 % 60
    for n in range(80):
        assert lim.acquire(POOL, holder=f"h{n}", now=start + 20 + n * 0.5).admitted
    change = lim.adapt_after_refusal(POOL, now=start + 75)
    assert change.after == pytest.approx(80 / 120 * 0.95, abs=0.001)
    assert lim.state(POOL, now=start + 75).rpm_used == 80


def test_a_drop_never_raises_the_share_and_at_most_halves_it(client: tuple[Any, str]) -> None:
    gentle = Adaptation(factor=0.95, hold_seconds=60.0, recovery_per_minute=0.05)
    lim = limiter(client, gentle, rpm=100)
    start = T0 - T0 % 60
    # An idle pool refused at its first call (used 1 of 100): halved, not cut to the floor.
    assert lim.acquire(POOL, holder="first", now=start + 1).admitted
    assert lim.adapt_after_refusal(POOL, admitted_at=start + 1, now=start + 2).after == 0.5
    # A window later, still refused while using 45 of its 50 rpm: 0.95 x 0.45.
    for n in range(45):
        assert lim.acquire(POOL, holder=f"h{n}", now=start + 61 + n * 1.2).admitted
    assert lim.adapt_after_refusal(POOL, now=start + 119).after == pytest.approx(0.45 * 0.95, abs=0.01)
    # 30 more calls at that share, then the limit lowered to 10 rpm: the usage says 400 %, yet a drop
    # never raises the share.
    for n in range(30):
        assert lim.acquire(POOL, holder=f"i{n}", now=start + 180 + n * 1.5).admitted
    lim.set_limits(POOL, PoolLimits(rpm=10))
    before = lim.state(POOL, now=start + 235).share  # recovering since start + 179
    assert lim.adapt_after_refusal(POOL, now=start + 235).after == pytest.approx(before * 0.95, abs=0.001)
    # The limit raised to 1000 rpm: the usage says 0.5 %, yet one drop only halves the share.
    lim.set_limits(POOL, PoolLimits(rpm=1000))
    assert lim.adapt_after_refusal(POOL, now=start + 295).after == pytest.approx(before * 0.95 / 2, abs=0.001)


def test_the_share_holds_then_recovers_additively_to_the_whole_limit(client: tuple[Any, str]) -> None:
    lim = limiter(client)
    lim.adapt_after_refusal(POOL, admitted_at=T0, now=T0)

    def share(after: float) -> float:
        return lim.state(POOL, now=T0 + after).share

    assert share(59) == 0.5  # held for one window: the upstream still counts the overload
    assert share(60 + 60) == pytest.approx(0.6, abs=1e-4)  # +0.1 per minute after the hold
    assert share(60 + 150) == pytest.approx(0.75, abs=1e-4)
    assert share(60 + 300) == 1.0
    assert share(60 + 3000) == 1.0
    # The key expires once the share is whole again (plus a minute): an idle pool leaves nothing.
    ttl_ms = client[0].pttl(f"{client[1]}:limiter:{{{POOL}}}:adapt")
    assert 0 < ttl_ms <= (60 + 300 + 60) * 1000 + 1000


def test_ipm_and_tpm_scale_too_but_never_fits_is_judged_on_the_configured_limit(
    client: tuple[Any, str],
) -> None:
    lim = limiter(client, ipm=10, tpm=1000)
    lim.adapt_after_refusal(POOL, now=T0)  # share 0.5: ipm 5, tpm 500 for now
    for second in range(5):
        assert lim.acquire(POOL, holder=f"h{second}", tokens=100, now=T0 + 1 + second).admitted
    refused = lim.acquire(POOL, holder="h5", tokens=100, now=T0 + 6)
    assert (refused.admitted, refused.reason) == (False, "ipm")
    # 700 tokens exceed the scaled tpm but fit the configured one: a wait, not limit_too_small.
    big = lim.acquire(POOL, holder="big", tokens=700, images=0, now=T0 + 200)
    assert not big.impossible
    assert lim.acquire(POOL, holder="huge", tokens=1001, images=0, now=T0 + 200).impossible


def test_a_pool_without_rate_limits_or_a_limiter_without_adaptation_never_changes(
    client: tuple[Any, str],
) -> None:
    only_day = limiter(client, rpd=100)
    assert not only_day.adapt_after_refusal(POOL, now=T0).applied
    assert only_day.state(POOL, now=T0).share == 1.0

    fixed = limiter(client, None, rpm=60)
    change = fixed.adapt_after_refusal(POOL, now=T0)
    assert (change.applied, change.after) == (False, 1.0)
    assert spacing(fixed, T0 + 1) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "bad",
    [
        {"factor": 1.0},
        {"factor": 0.0},
        {"floor": 0.0},
        {"floor": 1.5},
        {"hold_seconds": -1.0},
        {"recovery_per_minute": 0.0},
    ],
)
def test_adaptation_refuses_values_that_would_never_recover_or_never_drop(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        Adaptation(**bad)


# -- the worker's side: which 429s lower the share -------------------------------------------------


class RecordingLimiter:
    def __init__(self) -> None:
        self.adapted: list[tuple[str, float | None]] = []

    def adapt_after_refusal(self, pool: str, *, admitted_at: float | None = None) -> None:
        self.adapted.append((pool, admitted_at))

    def cooldown(self, pool: str, seconds: float, *, reason: str) -> float:
        return T0 + seconds

    def park_until_reset(self, pool: str, *, reason: str) -> float:
        return T0 + 3600


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(serve, "note_refusal", lambda rt, pool, error: None)
    monkeypatch.setattr(serve, "defer", lambda rt, job, delay, **kw: serve.Result.DEFERRED)
    return SimpleNamespace(limiter=RecordingLimiter(), settings=Settings(), policy=RetryPolicy())


def test_a_per_minute_429_tells_the_limiter_when_the_call_was_admitted(worker: Any) -> None:
    job = serve.Job(
        id="t1", token="tok", batch_id="b", batch_name="b", key="k", prompt="p", model="m",
        image_size=None, aspect_ratio="1:1", output_format="png", input_images=(), attempts=0,
        error_code=None, content_hash=None, reuse=False,
    )  # fmt: skip
    error = RateLimited("quota", retry_after=2.0, quota_ids=("PerMinute",))
    assert serve.handle_error(worker, job, POOL, error, admitted_at=T0) is serve.Result.DEFERRED
    assert worker.limiter.adapted == [(POOL, T0)]

    daily = DailyQuotaExhausted("day", retry_after=None, quota_ids=("PerDay",))
    serve.handle_error(worker, job, POOL, daily, admitted_at=T0)
    assert worker.limiter.adapted == [(POOL, T0)]  # a daily 429 parks the pool instead
