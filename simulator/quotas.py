"""The quotas the simulator enforces itself, with the window arithmetic Gemini uses.

Clients are judged by how they behave *against* limits (do they back off for ``retryDelay``, park
until Pacific midnight on a daily quota, stay under a concurrency cap?), so the simulator must
enforce them exactly and say precisely when capacity frees: requests and tokens per minute are
sliding 60 s windows, requests per day count since the last midnight in America/Los_Angeles, and
concurrency counts admitted requests still in flight. A rejected request consumes nothing.

Limits are per model (Gemini limits are per project and model; one simulator is one project) and
always real time: ``time_scale`` shortens latency, never the windows. The clock is injected so the
arithmetic is testable without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

PACIFIC = ZoneInfo("America/Los_Angeles")
WINDOW_SECONDS = 60.0

Clock = Callable[[], float]


@dataclass(frozen=True)
class QuotaKind:
    """How one kind of limit is named in Google's QuotaFailure detail."""

    name: str
    quota_id: str
    quota_metric: str
    unit: str


RPM = QuotaKind(
    "rpm",
    "GenerateRequestsPerMinutePerProjectPerModel",
    "generativelanguage.googleapis.com/generate_requests_per_model",
    "requests",
)
TPM = QuotaKind(
    "tpm",
    "GenerateContentInputTokensPerModelPerMinute",
    "generativelanguage.googleapis.com/generate_content_input_token_count",
    "tokens",
)
RPD = QuotaKind(
    "rpd",
    "GenerateRequestsPerDayPerProjectPerModel",
    "generativelanguage.googleapis.com/generate_requests_per_model_per_day",
    "requests",
)
CONCURRENCY = QuotaKind(
    "concurrency",
    "ConcurrentRequestsPerProjectPerModel",
    "generativelanguage.googleapis.com/concurrent_requests_per_model",
    "requests",
)


@dataclass(frozen=True)
class QuotaViolation:
    """Why a request was refused and how long until it would fit."""

    kind: QuotaKind
    model: str
    limit: int
    used: int
    retry_after: float


@dataclass(frozen=True)
class Ticket:
    """An admitted request; hand it back to :meth:`QuotaBook.release` when the response is sent."""

    model: str


def pacific_day_start(epoch: float) -> float:
    """Epoch seconds of the last midnight America/Los_Angeles at or before ``epoch``."""
    local = datetime.fromtimestamp(epoch, PACIFIC)
    return datetime(local.year, local.month, local.day, tzinfo=PACIFIC).timestamp()


def next_pacific_midnight(epoch: float) -> float:
    """Epoch seconds of the first midnight America/Los_Angeles strictly after ``epoch``."""
    local = datetime.fromtimestamp(epoch, PACIFIC).date() + timedelta(days=1)
    return datetime(local.year, local.month, local.day, tzinfo=PACIFIC).timestamp()


class SlidingWindow:
    """Costs recorded in the last 60 s; answers how long until a new cost fits under ``limit``."""

    def __init__(self, limit: int, span: float = WINDOW_SECONDS) -> None:
        self.limit, self.span = limit, span
        self._events: deque[tuple[float, int]] = deque()
        self._used = 0

    def used(self, now: float) -> int:
        self._expire(now)
        return self._used

    def wait_for(self, now: float, cost: int) -> float:
        """Seconds until ``cost`` fits (0 when it fits now; a full span when it never can)."""
        self._expire(now)
        excess = self._used + cost - self.limit
        if excess <= 0:
            return 0.0
        if cost > self.limit:
            return self.span
        for stamp, spent in self._events:
            excess -= spent
            if excess <= 0:
                return max(stamp + self.span - now, 0.001)
        return self.span

    def add(self, now: float, cost: int) -> None:
        self._events.append((now, cost))
        self._used += cost

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.span:
            self._used -= self._events.popleft()[1]


class DailyCounter:
    """Requests since the last Pacific midnight."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._day = float("-inf")
        self._count = 0

    def used(self, now: float) -> int:
        self._roll(now)
        return self._count

    def wait_for(self, now: float) -> float:
        self._roll(now)
        return 0.0 if self._count < self.limit else next_pacific_midnight(now) - now

    def add(self, now: float) -> None:
        self._roll(now)
        self._count += 1

    def _roll(self, now: float) -> None:
        day = pacific_day_start(now)
        if day != self._day:
            self._day, self._count = day, 0


@dataclass(frozen=True)
class QuotaLimits:
    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    concurrency: int | None = None


class _ModelQuota:
    """All windows of one model."""

    def __init__(self, limits: QuotaLimits) -> None:
        self.rpm = SlidingWindow(limits.rpm) if limits.rpm else None
        self.tpm = SlidingWindow(limits.tpm) if limits.tpm else None
        self.rpd = DailyCounter(limits.rpd) if limits.rpd else None
        self.concurrency_limit = limits.concurrency
        self.in_flight = 0


class QuotaBook:
    """Admission against every configured limit at once; all-or-nothing, thread-safe."""

    def __init__(
        self,
        limits: QuotaLimits,
        *,
        clock: Clock = time.time,
        concurrency_retry: float = 1.0,
        per_model: Mapping[str, QuotaLimits] | None = None,
    ) -> None:
        self.limits = limits
        #: Limits of named models that differ from ``limits`` (real quotas differ per model).
        self.per_model = dict(per_model or {})
        self._clock = clock
        self._concurrency_retry = concurrency_retry
        self._lock = threading.Lock()
        self._models: dict[str, _ModelQuota] = {}

    def admit(self, model: str, tokens: int) -> Ticket | QuotaViolation:
        """Reserve one request of ``tokens`` for ``model``, or say which limit refuses it."""
        with self._lock:
            now = self._clock()
            quota = self._models.setdefault(model, _ModelQuota(self.limits_of(model)))
            violation = self._first_violation(quota, model, now, tokens)
            if violation is not None:
                return violation
            self._consume(quota, now, tokens)
            return Ticket(model)

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            quota = self._models.get(ticket.model)
            if quota is not None and quota.in_flight > 0:
                quota.in_flight -= 1

    def reset(self) -> None:
        """Forget every window; requests still in flight keep their concurrency slots."""
        with self._lock:
            for model, quota in list(self._models.items()):
                fresh = _ModelQuota(self.limits_of(model))
                fresh.in_flight = quota.in_flight
                self._models[model] = fresh

    def limits_of(self, model: str) -> QuotaLimits:
        return self.per_model.get(model, self.limits)

    def remaining_requests(self, model: str) -> int | None:
        """Requests left in the current minute window (``None`` without an rpm limit)."""
        with self._lock:
            quota = self._models.get(model)
            rpm = self.limits_of(model).rpm
            if rpm is None:
                return None
            used = quota.rpm.used(self._clock()) if quota and quota.rpm else 0
            return max(rpm - used, 0)

    def _first_violation(
        self, quota: _ModelQuota, model: str, now: float, tokens: int
    ) -> QuotaViolation | None:
        for kind, limit, wait, used in self._probes(quota, now, tokens):
            if wait > 0:
                return QuotaViolation(kind=kind, model=model, limit=limit, used=used, retry_after=wait)
        return None

    def _probes(
        self, quota: _ModelQuota, now: float, tokens: int
    ) -> Iterator[tuple[QuotaKind, int, float, int]]:
        """(kind, limit, seconds to wait, used) per configured limit, daily first; evaluated lazily."""
        if quota.rpd:
            yield RPD, quota.rpd.limit, quota.rpd.wait_for(now), quota.rpd.used(now)
        if quota.rpm:
            yield RPM, quota.rpm.limit, quota.rpm.wait_for(now, 1), quota.rpm.used(now)
        if quota.tpm:
            yield TPM, quota.tpm.limit, quota.tpm.wait_for(now, tokens), quota.tpm.used(now)
        limit = quota.concurrency_limit
        if limit is not None:
            wait = self._concurrency_retry if quota.in_flight >= limit else 0.0
            yield CONCURRENCY, limit, wait, quota.in_flight

    @staticmethod
    def _consume(quota: _ModelQuota, now: float, tokens: int) -> None:
        if quota.rpm:
            quota.rpm.add(now, 1)
        if quota.tpm:
            quota.tpm.add(now, tokens)
        if quota.rpd:
            quota.rpd.add(now)
        quota.in_flight += 1
