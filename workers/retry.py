"""What to do after a failed call, decided from the error's type alone (docs/architecture.md, "Outcomes").

The decision is a value, so the task body stays a straight line and the policy is unit-testable
without Celery, Redis or HTTP. Rate-limit waits are decisions too, never errors: they do not
consume an attempt and are logged at info level.
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

#: Wait used when a 429 carries no retry hint at all.
DEFAULT_RATE_LIMIT_WAIT = 5.0


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
class Decision:
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
    error: ProviderError, *, attempts_so_far: int, policy: RetryPolicy, rng: random.Random | None = None
) -> Decision:
    """The next step for a task whose call raised ``error`` after ``attempts_so_far`` error attempts."""
    message = str(error)
    if isinstance(error, DailyQuotaExhausted):
        return Decision(Action.PARK_DAY, 0.0, False, error.code, message)
    if isinstance(error, RateLimited):
        delay = error.retry_after if error.retry_after is not None else DEFAULT_RATE_LIMIT_WAIT
        return Decision(Action.WAIT, max(0.0, delay), False, error.code, message)
    if isinstance(error, TransientError):
        return retry_or_give_up(error.code, message, attempts_so_far=attempts_so_far, policy=policy, rng=rng)
    return Decision(Action.FAIL, 0.0, True, error.code, message)  # PermanentError, or of no known kind
