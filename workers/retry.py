"""What to do after a failed call, decided from the error's type alone (docs/architecture.md, "Outcomes").

The decision is a value, so the task body stays a straight line and the policy is unit-testable
without Celery, Redis or HTTP. Rate-limit waits are decisions too, never errors: they do not
consume an attempt and are logged at info level.

No wait without an end: a task's own 429 waits are bounded in number (``max_rate_waits``), in total
time (``max_rate_wait_seconds``) and in parks until the daily quota reset (``max_day_parks``)
(:class:`WaitBounds`, from ``NANOBATCH_*`` settings). At a bound the task fails with the code that
names it and the last upstream message. A wait is never shorter than the upstream asked: the delay
is the provider's lower bound plus a small positive jitter (so tasks refused together do not all
return at the same instant); a 429 that names no wait backs off exponentially from ``rate_limit_wait``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from nanobatch.models.lifecycle import out_of_attempts
from nanobatch.models.status import ErrorCode
from nanobatch.workers.errors import (
    DailyQuotaExhausted,
    ProviderError,
    RateLimited,
    TransientError,
)

#: Wait used when a 429 carries no retry hint at all (doubled at each further such wait, capped).
DEFAULT_RATE_LIMIT_WAIT = 5.0
#: Longest wait a hint-less 429 backs off to (``NANOBATCH_RATE_LIMIT_WAIT_MAX``).
MAX_HINTLESS_WAIT = 300.0
#: Longest positive jitter added to a rate-limit wait.
MAX_WAIT_JITTER = 1.0


class Action(StrEnum):
    RETRY = "retry"  # transient error: back off, counts an attempt
    WAIT = "wait"  # rate limited: wait for the pool, no attempt consumed
    PARK_DAY = "park_day"  # daily quota gone: wait until Pacific midnight, no attempt consumed
    FAIL = "fail"  # permanent, or out of attempts


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 2.0
    cap: float = 300.0
    max_attempts: int = 5

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
        ceiling = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(0, ceiling)


@dataclass(frozen=True)
class WaitBounds:
    """How long one task may wait out upstream 429s (``NANOBATCH_MAX_RATE_WAITS`` and friends)."""

    max_rate_waits: int = 30
    max_rate_wait_seconds: float = 3600.0
    max_day_parks: int = 3
    rate_limit_wait: float = DEFAULT_RATE_LIMIT_WAIT
    rate_limit_wait_max: float = MAX_HINTLESS_WAIT


@dataclass(frozen=True)
class WaitsSoFar:
    """What one task has waited out already: its own 429 waits, their total seconds, its day parks."""

    upstream_waits: int = 0
    upstream_wait_seconds: float = 0.0
    day_parks: int = 0


NO_WAITS = WaitsSoFar()
DEFAULT_BOUNDS = WaitBounds()


@dataclass(frozen=True)
class Decision:
    """The next step. For a FAIL at a wait bound, ``delay`` is still the wait the 429 asked for (the
    pool cools down for it, whatever happens to this task)."""

    action: Action
    delay: float
    count_attempt: bool
    code: ErrorCode
    message: str


def retry_or_give_up(
    code: ErrorCode,
    message: str,
    *,
    attempts_so_far: int,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> Decision:
    """An error worth another try: back off, unless this attempt was the last one (then fail)."""
    attempt = attempts_so_far + 1
    if out_of_attempts(attempt, policy.max_attempts):
        return Decision(Action.FAIL, 0.0, True, code, f"gave up after {attempt} attempts: {message}")
    return Decision(Action.RETRY, policy.backoff(attempt, rng), True, code, message)


def decide(
    error: ProviderError,
    *,
    attempts_so_far: int,
    policy: RetryPolicy,
    rng: random.Random | None = None,
    waits: WaitsSoFar = NO_WAITS,
    bounds: WaitBounds = DEFAULT_BOUNDS,
) -> Decision:
    """The next step for a task whose call raised ``error`` after ``attempts_so_far`` error attempts
    and the rate-limit ``waits`` it already sat through."""
    message = str(error)
    if isinstance(error, DailyQuotaExhausted):
        if waits.day_parks >= bounds.max_day_parks:
            return _bound_reached(
                ErrorCode.DAY_PARK_LIMIT,
                f"the daily quota was still exhausted after {waits.day_parks} park(s) until its reset "
                f"(NANOBATCH_MAX_DAY_PARKS={bounds.max_day_parks})",
                message,
            )
        return Decision(Action.PARK_DAY, 0.0, False, error.code, message)
    if isinstance(error, RateLimited):
        delay = rate_limit_delay(error, waits, bounds, rng)
        if waits.upstream_waits >= bounds.max_rate_waits:
            return _bound_reached(
                ErrorCode.RATE_WAIT_LIMIT,
                f"still rate limited after {waits.upstream_waits} wait(s) "
                f"(NANOBATCH_MAX_RATE_WAITS={bounds.max_rate_waits})",
                message,
                delay,
            )
        if waits.upstream_wait_seconds + delay > bounds.max_rate_wait_seconds:
            return _bound_reached(
                ErrorCode.RATE_WAIT_TIME_LIMIT,
                f"waiting {delay:.1f}s more would exceed "
                f"NANOBATCH_MAX_RATE_WAIT_SECONDS={bounds.max_rate_wait_seconds:g} "
                f"({waits.upstream_wait_seconds:.1f}s waited in {waits.upstream_waits} wait(s))",
                message,
                delay,
            )
        return Decision(Action.WAIT, delay, False, error.code, message)
    if isinstance(error, TransientError):
        return retry_or_give_up(error.code, message, attempts_so_far=attempts_so_far, policy=policy, rng=rng)
    return Decision(Action.FAIL, 0.0, True, error.code, message)  # PermanentError, or of no known kind


def rate_limit_delay(
    error: RateLimited,
    waits: WaitsSoFar = NO_WAITS,
    bounds: WaitBounds = DEFAULT_BOUNDS,
    rng: random.Random | None = None,
) -> float:
    """The wait for a 429: the upstream's lower bound (or, with none, ``rate_limit_wait`` doubled per
    earlier wait, capped) plus a small positive jitter. Never less than the upstream asked."""
    if error.retry_after is not None:
        base = max(0.0, error.retry_after)
    else:
        doubled = bounds.rate_limit_wait * 2 ** min(waits.upstream_waits, 16)
        base = min(bounds.rate_limit_wait_max, doubled)
    jitter = (rng or random).uniform(0.0, min(MAX_WAIT_JITTER, max(0.05, 0.1 * base)))
    return base + jitter


def _bound_reached(code: ErrorCode, why: str, last: str, delay: float = 0.0) -> Decision:
    return Decision(Action.FAIL, delay, False, code, f"{why}; last upstream answer: {last}")
