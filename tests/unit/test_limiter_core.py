"""The global limiter's semantics, on every backend: real Redis and the embedded fakeredis (Lua via lupa).

Time is injected (``now=``) so windows, leases and Pacific midnights are exact and nothing sleeps.
Times are handled as integer microseconds (``us``) because that is what the scripts compute in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
import redis

from nanobatch.workers.limiter import PACIFIC, Admission, PoolLimits, RateLimiter, pacific_midnights
from nanobatch.workers.limiter import limiter as limiter_module

POOL = "gemini-test-image"
#: Noon Pacific on a winter day: the Pacific day runs 2026-01-15 08:00 UTC .. 2026-01-16 08:00 UTC.
T0 = datetime(2026, 1, 15, 12, 0, tzinfo=PACIFIC).timestamp()
US = 1_000_000
ROOMY = {"rpm": 6000, "ipm": 100, "tpm": 100_000, "rpd": 100, "concurrency": 10}


@dataclass
class Backend:
    client: Any
    prefix: str
    limiter: RateLimiter

    def key_names(self) -> list[str]:
        return sorted(k.decode() for k in self.client.scan_iter(f"{self.prefix}*"))

    def snapshot(self) -> dict[str, Any]:
        """Every key's content (not its TTL): equal snapshots mean nothing was reserved."""
        dump: dict[str, Any] = {}
        for key in self.key_names():
            kind = self.client.type(key).decode()
            if kind == "hash":
                dump[key] = self.client.hgetall(key)
            elif kind == "zset":
                dump[key] = self.client.zrange(key, 0, -1, withscores=True)
            else:
                dump[key] = self.client.get(key)
        return dump


@pytest.fixture(params=["fakeredis", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "redis":
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        prefix = request.getfixturevalue("key_prefix")
    else:
        client = fakeredis.FakeRedis()
        prefix = "nbtest:fake"
    yield Backend(client, prefix, RateLimiter(client, prefix=prefix))
    client.close()


def acquire(backend: Backend, at: float, holder: str = "h", **kwargs: Any) -> Admission:
    return backend.limiter.acquire(POOL, holder=holder, now=at, **kwargs)


def utc(hour_text: str) -> float:
    return datetime.fromisoformat(hour_text).replace(tzinfo=UTC).timestamp()


# -- all or nothing ---------------------------------------------------------------------------------


def _fill(backend: Backend, blocker: str) -> None:
    """Given a pool where only ``blocker`` is tight, when one request is admitted, it is full."""
    tight = {"rpm": 1, "ipm": 1, "tpm": 1000, "rpd": 1, "concurrency": 1}
    if blocker == "cooldown":
        backend.limiter.cooldown(POOL, 30, now=T0)
        return
    backend.limiter.set_limits(POOL, PoolLimits(**{blocker: tight[blocker]}))
    assert acquire(backend, T0, holder="first", tokens=600).admitted


@pytest.mark.parametrize(
    ("blocker", "expected_wait"),
    [
        ("rpm", 59.5),
        ("ipm", 59.5),
        ("tpm", 59.5),
        ("rpd", 12 * 3600 - 0.5),  # until midnight Pacific
        ("concurrency", 0.5),  # a full semaphore is re-checked after concurrency_poll (0.5 s)
        ("cooldown", 29.5),
    ],
)
def test_one_full_limit_denies_and_reserves_nothing_on_the_others(
    backend: Backend, blocker: str, expected_wait: float
) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(**ROOMY))
    _fill(backend, blocker)
    before = backend.snapshot()

    denied = acquire(backend, T0 + 0.5, holder="second", tokens=600)

    assert (denied.admitted, denied.reason) == (False, blocker)
    assert denied.wait_seconds == pytest.approx(expected_wait, abs=1e-6)
    assert denied.retry_at == pytest.approx(T0 + 0.5 + expected_wait, abs=1e-6)
    assert backend.snapshot() == before
    if blocker != "cooldown":  # and once that limit is lifted, the others had room all along
        backend.limiter.clear_limits(POOL, blocker)
        assert acquire(backend, T0 + 0.5, holder="second", tokens=600).admitted


def test_the_longest_wait_names_the_reason(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(rpm=1, ipm=1))
    assert acquire(backend, T0).admitted
    backend.limiter.cooldown(POOL, 90, now=T0)

    denied = acquire(backend, T0 + 1)

    assert (denied.reason, denied.wait_seconds) == ("cooldown", pytest.approx(89))


# -- windows: rpm (GCRA), ipm and tpm (sliding logs) ------------------------------------------------


def test_rpm_admits_one_request_per_emission_interval(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(rpm=60))
    assert acquire(backend, T0).admitted

    early = acquire(backend, T0 + 0.25)

    assert (early.reason, early.wait_seconds) == ("rpm", pytest.approx(0.75, abs=1e-6))
    assert not acquire(backend, T0 + 1 - 1e-6).admitted
    assert acquire(backend, T0 + 1).admitted


def test_a_late_admission_keeps_the_rpm_schedule(backend: Backend) -> None:
    # Given rpm 60 (one slot a second) and an admission that came 0.5 s after its slot opened
    backend.limiter.set_limits(POOL, PoolLimits(rpm=60))
    assert acquire(backend, T0).admitted
    assert acquire(backend, T0 + 1.5).admitted
    # When the next caller comes at the next slot of the schedule (T0 + 2)
    on_time = acquire(backend, T0 + 2)
    # Then it is admitted: the lateness is not lost (before: denied until T0 + 2.5)
    assert on_time.admitted, on_time
    early = acquire(backend, T0 + 2.5)
    assert (early.reason, early.wait_seconds) == ("rpm", pytest.approx(0.5, abs=1e-6))


def test_after_idle_rpm_banks_one_slot_and_the_window_stays_bounded(backend: Backend) -> None:
    # Given rpm 2 (one slot per 30 s) and a pool idle since T0
    backend.limiter.set_limits(POOL, PoolLimits(rpm=2))
    assert acquire(backend, T0).admitted
    # When callers come after the idle: two at once (one banked slot), then one per slot
    assert acquire(backend, T0 + 100).admitted
    assert acquire(backend, T0 + 100).admitted
    third = acquire(backend, T0 + 100)
    assert (third.reason, third.wait_seconds) == ("rpm", pytest.approx(60, abs=1e-6))
    # Then the slot at T0 + 130 is the schedule's, but a third call within 60 s would exceed rpm:
    # the requests log holds it until the burst has left the window
    held = acquire(backend, T0 + 130)
    assert (held.reason, held.wait_seconds) == ("rpm", pytest.approx(30, abs=1e-6))
    assert acquire(backend, T0 + 160).admitted


def _window_sums(times_us: list[int], costs: list[int]) -> int:
    """The largest total cost admitted in any half-open 60 s window."""
    best = 0
    for i, start in enumerate(times_us):
        best = max(best, sum(c for t, c in zip(times_us[i:], costs[i:], strict=True) if t < start + 60 * US))
    return best


def test_random_traffic_never_exceeds_any_window_and_every_wait_is_exact(backend: Backend) -> None:
    # Given tight limits on every sliding dimension and random costs (fixed seed: reproducible)
    limits = PoolLimits(rpm=120, ipm=150, tpm=60_000)
    backend.limiter.set_limits(POOL, limits)
    rng = random.Random(20260115)
    now_us = int(T0 * US)
    admitted: list[tuple[int, int, int]] = []
    # When one greedy caller sends 300 requests, retrying exactly at retry_at after a denial
    for number in range(300):
        now_us += int(rng.expovariate(1 / 0.3) * US)
        tokens, images = rng.randint(100, 3000), rng.randint(1, 3)
        result = acquire(backend, now_us / US, holder=f"r{number}", tokens=tokens, images=images)
        if not result.admitted:
            assert result.retry_at is not None
            retry_us = round(result.retry_at * US)
            assert retry_us > now_us
            # Then a microsecond earlier is still too early, and the returned time is enough
            assert not acquire(backend, (retry_us - 1) / US, tokens=tokens, images=images).admitted
            now_us = retry_us
            result = acquire(backend, now_us / US, holder=f"r{number}", tokens=tokens, images=images)
            assert result.admitted, result
        admitted.append((now_us, tokens, images))
    # And no 60 s window holds more than any limit
    times = [t for t, _, _ in admitted]
    assert _window_sums(times, [1] * len(times)) <= 120
    assert _window_sums(times, [i for _, _, i in admitted]) <= 150
    assert _window_sums(times, [k for _, k, _ in admitted]) <= 60_000
    # rpm: smooth pacing. A late admission's successor may follow at once (the schedule is kept),
    # so two can be close, but never three within one interval
    assert min(c - a for a, c in zip(times, times[2:], strict=False)) >= US / 2
    # And the limits did bind, so this test can fail
    assert _window_sums(times, [k for _, k, _ in admitted]) > 50_000


def test_ipm_counts_images_not_requests(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(ipm=4))
    assert acquire(backend, T0, images=3).admitted

    denied = acquire(backend, T0 + 10, images=2)

    assert (denied.reason, denied.wait_seconds) == ("ipm", pytest.approx(50))
    assert acquire(backend, T0 + 10, images=1).admitted


# -- tpm --------------------------------------------------------------------------------------------


def test_tpm_is_a_sliding_window_of_tokens(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(tpm=10_000))
    assert acquire(backend, T0, tokens=6000).admitted
    assert acquire(backend, T0 + 20, tokens=4000).admitted

    denied = acquire(backend, T0 + 30, tokens=1)

    assert (denied.reason, denied.wait_seconds) == ("tpm", pytest.approx(30))
    assert acquire(backend, T0 + 60, tokens=6000).admitted  # the first 6000 left the window
    assert not acquire(backend, T0 + 70, tokens=1).admitted


def test_a_request_larger_than_tpm_is_reported_as_never_fitting(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(tpm=5000, ipm=2))
    before = backend.snapshot()

    too_many_tokens = acquire(backend, T0, tokens=5001)
    too_many_images = acquire(backend, T0, images=3)

    assert too_many_tokens.reason == "tpm" and too_many_tokens.impossible
    assert math.isinf(too_many_tokens.wait_seconds) and too_many_tokens.retry_at is None
    assert too_many_images.reason == "ipm" and too_many_images.impossible
    assert backend.snapshot() == before
    assert acquire(backend, T0, tokens=5000, images=2).admitted  # exactly the limit fits


def test_zero_token_requests_pass_a_full_tpm(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(tpm=100))
    assert acquire(backend, T0, tokens=100).admitted
    assert acquire(backend, T0 + 1, tokens=0).admitted


# -- live limit changes -----------------------------------------------------------------------------


def test_a_raised_rpm_applies_at_the_next_acquire(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(rpm=1, tpm=1000))
    assert acquire(backend, T0).admitted
    assert acquire(backend, T0 + 1).reason == "rpm"

    backend.limiter.set_limits(POOL, PoolLimits(rpm=60))

    assert acquire(backend, T0 + 1).admitted
    assert backend.limiter.get_limits(POOL) == PoolLimits(rpm=60, tpm=1000)


def test_lowered_limits_apply_at_the_next_acquire(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(rpm=60, ipm=10))
    for second in range(3):
        assert acquire(backend, T0 + second).admitted

    backend.limiter.set_limits(POOL, PoolLimits(rpm=2, ipm=2))

    denied = acquire(backend, T0 + 10)
    assert (denied.reason, denied.wait_seconds) == ("ipm", pytest.approx(51))  # T0+1 leaves at T0+61


def test_set_merges_replace_replaces_clear_removes(backend: Backend) -> None:
    limiter = backend.limiter
    assert limiter.set_limits(POOL, PoolLimits(rpm=10)) == PoolLimits(rpm=10)
    assert limiter.set_limits(POOL, PoolLimits(tpm=500)) == PoolLimits(rpm=10, tpm=500)
    assert limiter.set_limits(POOL, PoolLimits(ipm=5), replace=True) == PoolLimits(ipm=5)
    limiter.set_limits(POOL, PoolLimits(rpm=1, rpd=7))
    assert limiter.clear_limits(POOL, "rpm") == PoolLimits(ipm=5, rpd=7)
    assert limiter.clear_limits(POOL) == PoolLimits()
    with pytest.raises(ValueError, match="unknown limit"):
        limiter.clear_limits(POOL, "rps")


def test_seed_sets_only_missing_fields(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(rpm=10))

    backend.limiter.seed_limits(POOL, PoolLimits(rpm=99, tpm=5000))

    assert backend.limiter.get_limits(POOL) == PoolLimits(rpm=10, tpm=5000)


# -- concurrency ------------------------------------------------------------------------------------


def test_release_frees_the_slot_and_is_idempotent(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(concurrency=1))
    assert acquire(backend, T0, holder="a").admitted
    assert acquire(backend, T0, holder="b").reason == "concurrency"

    backend.limiter.release(POOL, "a")
    backend.limiter.release(POOL, "a")
    backend.limiter.release(POOL, "never-held")

    assert acquire(backend, T0, holder="b").admitted
    assert acquire(backend, T0, holder="c").reason == "concurrency"  # released twice, freed once


def test_a_dead_holders_slot_frees_when_its_lease_ends(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(concurrency=1))
    assert acquire(backend, T0, holder="killed", lease_seconds=30).admitted  # and never released

    assert not acquire(backend, T0 + 30 - 1e-6, holder="next").admitted
    assert acquire(backend, T0 + 30, holder="next").admitted


def test_reacquiring_with_the_same_holder_refreshes_instead_of_double_counting(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(concurrency=2))
    assert acquire(backend, T0, holder="a", lease_seconds=10).admitted
    assert acquire(backend, T0 + 5, holder="a", lease_seconds=10).admitted

    assert backend.limiter.state(POOL, now=T0 + 5).inflight == 1
    assert acquire(backend, T0 + 5, holder="b", lease_seconds=100).admitted
    assert acquire(backend, T0 + 12, holder="c").reason == "concurrency"  # a's lease now ends at T0+15
    assert acquire(backend, T0 + 15, holder="c").admitted


def test_the_holder_of_a_full_semaphore_may_reacquire(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(concurrency=1))
    assert acquire(backend, T0, holder="a", lease_seconds=10).admitted  # e.g. a redelivered task

    assert acquire(backend, T0 + 1, holder="a", lease_seconds=10).admitted
    assert acquire(backend, T0 + 10.5, holder="b").reason == "concurrency"  # lease now ends at T0+11


def test_a_full_semaphore_reports_the_sooner_of_lease_end_and_poll(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(concurrency=1))
    assert acquire(backend, T0, holder="a", lease_seconds=0.2).admitted

    assert acquire(backend, T0 + 0.05, holder="b").wait_seconds == pytest.approx(0.15)


# -- cooldown and the daily quota -------------------------------------------------------------------


def test_cooldown_only_extends(backend: Backend) -> None:
    limiter = backend.limiter
    assert limiter.cooldown(POOL, 30, now=T0) == pytest.approx(T0 + 30)
    assert limiter.cooldown(POOL, 10, reason="shorter", now=T0 + 1) == pytest.approx(T0 + 30)
    assert limiter.cooldown(POOL, 60, reason="429 PerMinute", now=T0 + 1) == pytest.approx(T0 + 61)

    denied = acquire(backend, T0 + 2)
    state = limiter.state(POOL, now=T0 + 2)

    assert (denied.reason, denied.retry_at) == ("cooldown", pytest.approx(T0 + 61))
    assert state.cooldown_until == datetime.fromtimestamp(T0 + 61, UTC)
    assert state.cooldown_reason == "429 PerMinute"
    assert acquire(backend, T0 + 61).admitted
    with pytest.raises(ValueError, match="cooldown seconds"):
        limiter.cooldown(POOL, -1)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (T0, utc("2026-01-16T08:00")),  # winter, PST (UTC-8)
        (datetime(2026, 7, 4, 9, 30, tzinfo=PACIFIC).timestamp(), utc("2026-07-05T07:00")),  # PDT
        (utc("2026-03-08T17:00"), utc("2026-03-09T07:00")),  # spring forward: a 23 h day
        (utc("2026-11-02T07:30"), utc("2026-11-02T08:00")),  # fall back: 23:30 PST of a 25 h day
        (utc("2026-01-16T08:00"), utc("2026-01-17T08:00")),  # exactly midnight: the next one
    ],
)
def test_park_until_reset_waits_for_the_next_pacific_midnight(
    backend: Backend, now: float, expected: float
) -> None:
    until = backend.limiter.park_until_reset(POOL, now=now)

    assert until == expected
    assert acquire(backend, now + 60).retry_at == pytest.approx(expected)
    assert backend.limiter.cooldown(POOL, 30, now=now) == expected  # a short cooldown cannot cut it


@pytest.mark.parametrize(
    ("first", "denied_at", "midnight"),
    [
        (T0, utc("2026-01-16T07:59:30"), utc("2026-01-16T08:00")),  # 23:59:30 PST
        (utc("2026-03-08T08:30"), utc("2026-03-09T06:00"), utc("2026-03-09T07:00")),  # 23 h day
        (utc("2026-11-01T07:30"), utc("2026-11-02T07:30"), utc("2026-11-02T08:00")),  # 25 h day
    ],
)
def test_the_day_counter_resets_at_pacific_midnight(
    backend: Backend, first: float, denied_at: float, midnight: float
) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(rpd=2))
    assert acquire(backend, first).admitted
    assert acquire(backend, first + 1).admitted

    denied = acquire(backend, denied_at)

    assert (denied.reason, denied.retry_at) == ("rpd", pytest.approx(midnight))
    assert acquire(backend, midnight).admitted
    state = backend.limiter.state(POOL, now=midnight)
    assert state.day_used == 1
    assert state.day_resets_at.tzinfo is PACIFIC
    assert state.day_resets_at.timestamp() > midnight + 22 * 3600


@pytest.mark.parametrize("skew_hours", [-20, -2, 2, 20])
def test_a_skewed_worker_clock_does_not_move_the_pacific_day(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, skew_hours: float
) -> None:
    # Given a worker whose clock is hours off from Redis (the midnights it passes are off too)
    monkeypatch.setattr(
        limiter_module, "pacific_midnights", lambda now: pacific_midnights(now + skew_hours * 3600)
    )
    backend.limiter.set_limits(POOL, PoolLimits(rpd=1))
    midnight = utc("2026-01-16T08:00")

    # When the day's one request is used a minute before midnight (by the Redis clock)
    assert acquire(backend, midnight - 60).admitted
    denied = acquire(backend, midnight - 30)

    # Then the script still finds the right day: blocked until midnight, admitted at midnight
    assert (denied.reason, denied.retry_at) == ("rpd", pytest.approx(midnight))
    assert acquire(backend, midnight).admitted


# -- state, keys, clock -----------------------------------------------------------------------------


def test_state_reports_use_and_remaining(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(rpm=600, tpm=10_000, rpd=50, concurrency=4))
    for number in range(3):
        acquire(backend, T0 + number, holder=f"h{number}", tokens=1000, images=2)
    backend.limiter.release(POOL, "h0")

    state = backend.limiter.state(POOL, now=T0 + 3)

    assert state.rpm_used == pytest.approx(3)
    assert (state.ipm_used, state.tpm_used, state.day_used, state.inflight) == (6, 3000, 3, 2)
    assert state.remaining == {"rpm": 597, "ipm": None, "tpm": 7000, "rpd": 47, "concurrency": 2}
    assert state.day_resets_at == datetime(2026, 1, 16, tzinfo=PACIFIC)
    assert state.cooldown_until is None and state.cooldown_reason is None
    assert backend.limiter.state(POOL, now=T0 + 63).tpm_used == 0  # all left the window


def test_only_the_limits_hash_lives_forever(backend: Backend) -> None:
    backend.limiter.set_limits(POOL, PoolLimits(rpm=600, ipm=100, tpm=10_000, rpd=50, concurrency=4))
    acquire(backend, T0, tokens=100)
    backend.limiter.cooldown(POOL, 5, now=T0)

    ttls = {key.rsplit(":", 1)[1]: backend.client.pttl(key) for key in backend.key_names()}

    assert ttls.pop("limits") == -1
    assert set(ttls) == {"cooldown", "rpm", "ipm", "tpm", "sums", "day", "inflight", "usage", "requests"}
    assert all(ttl > 0 for ttl in ttls.values()), ttls


def test_pools_lists_this_prefixs_pools_only(backend: Backend) -> None:
    backend.limiter.set_limits("project-a:model", PoolLimits(rpm=5))
    backend.limiter.acquire("custom pool", holder="h", now=T0)
    other = RateLimiter(backend.client, prefix=backend.prefix + "x")
    other.set_limits("elsewhere", PoolLimits(rpm=5))

    assert backend.limiter.pools() == ["custom pool", "project-a:model"]
    assert other.pools() == ["elsewhere"]


def test_without_an_injected_clock_the_script_uses_redis_time(backend: Backend) -> None:
    seconds, micros = backend.client.time()
    before = seconds + micros / US

    admission = backend.limiter.acquire(POOL, holder="h")

    seconds, micros = backend.client.time()
    assert before <= (admission.decided_at or 0) <= seconds + micros / US


@pytest.mark.parametrize("bad", [0, -1, 1_000_001, True, 2.5])
def test_limits_must_be_sane_positive_integers(bad: Any) -> None:
    with pytest.raises(ValueError, match="rpm"):
        PoolLimits(rpm=bad)


@pytest.mark.parametrize(
    ("pool", "kwargs"),
    [("", {}), ("a{b}", {}), (POOL, {"tokens": -1}), (POOL, {"images": -1}), (POOL, {"holder": ""})],
)
def test_bad_requests_are_refused_before_redis(backend: Backend, pool: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        backend.limiter.acquire(pool, **{"holder": "h", **kwargs})
