"""The retry decision table of DESIGN §7, driven by the error tree only."""

from __future__ import annotations

import random

import pytest

from nanobatch.workers.errors import (
    ContentBlocked,
    DailyQuotaExhausted,
    InvalidRequest,
    NoImageReturned,
    QuotaMisconfigured,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from nanobatch.workers.retry import DEFAULT_RATE_LIMIT_WAIT, Action, RetryPolicy, decide

POLICY = RetryPolicy(base=2.0, cap=300.0, max_attempts=5)


def test_rate_limit_waits_the_servers_delay_without_using_an_attempt() -> None:
    d = decide(RateLimited("slow down", retry_after=26.5), attempts_so_far=4, policy=POLICY)
    assert (d.action, d.count_attempt) == (Action.WAIT, False)
    assert 26.5 <= d.delay <= 27.5  # never less than asked; a small positive jitter


def test_rate_limit_without_hint_uses_the_default_wait() -> None:
    d = decide(RateLimited("slow down"), attempts_so_far=0, policy=POLICY)
    assert DEFAULT_RATE_LIMIT_WAIT <= d.delay <= DEFAULT_RATE_LIMIT_WAIT + 1 and not d.count_attempt


def test_daily_quota_parks_without_using_an_attempt() -> None:
    d = decide(DailyQuotaExhausted("rpd", retry_after=30), attempts_so_far=0, policy=POLICY)
    assert (d.action, d.count_attempt) == (Action.PARK_DAY, False)


@pytest.mark.parametrize("error", [UpstreamUnavailable("503"), UpstreamTimeout("t"), NoImageReturned("none")])
def test_transient_errors_retry_until_the_attempt_budget_is_spent(error: Exception) -> None:
    assert decide(error, attempts_so_far=0, policy=POLICY).action is Action.RETRY  # type: ignore[arg-type]
    last = decide(error, attempts_so_far=4, policy=POLICY)  # type: ignore[arg-type]
    assert last.action is Action.FAIL and "gave up after 5 attempts" in last.message


@pytest.mark.parametrize(
    "error",
    [
        ContentBlocked("no", reason="IMAGE_SAFETY"),
        InvalidRequest("bad key", status_code=400),
        QuotaMisconfigured("0"),
    ],
)
def test_permanent_errors_fail_at_once(error: Exception) -> None:
    d = decide(error, attempts_so_far=0, policy=POLICY)  # type: ignore[arg-type]
    assert d.action is Action.FAIL and d.code == error.code  # type: ignore[attr-defined]


def test_backoff_is_full_jitter_under_an_exponential_ceiling_with_a_cap() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 300.0), (30, 300.0)]:
        samples = [POLICY.backoff(attempt, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # the whole range is used (full jitter)
