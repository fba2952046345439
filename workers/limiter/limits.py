"""Value types of the limiter: what a pool may do (:class:`PoolLimits`), what one acquire decided
(:class:`Admission`) and what a pool looks like right now (:class:`PoolState`).

They are plain frozen dataclasses so the worker task, the CLI and the metrics exporter can share them
without touching Redis. :class:`PoolLimits` validates itself, so a bad value is refused wherever it
comes from (config file, CLI, Python API) instead of reaching the Lua script.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Literal

LimitField = Literal["rpm", "ipm", "tpm", "rpd", "concurrency"]

#: Every limit a pool can have, in display order.
LIMIT_FIELDS: tuple[str, ...] = ("rpm", "ipm", "tpm", "rpd", "concurrency")

#: Sane upper bounds: a value above these is a typo (an extra zero or two), not a real quota.
LIMIT_MAXIMA: dict[str, int] = {
    "rpm": 1_000_000,
    "ipm": 1_000_000,
    "tpm": 1_000_000_000,
    "rpd": 100_000_000,
    "concurrency": 100_000,
}


def check_limit(name: str, value: object) -> int:
    """Return ``value`` as a limit of ``name``, or raise ``ValueError`` saying what is allowed."""
    if name not in LIMIT_MAXIMA:
        raise ValueError(f"unknown limit {name!r}; known limits: {', '.join(LIMIT_FIELDS)}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 1 <= value <= LIMIT_MAXIMA[name]:
        raise ValueError(f"{name} must be between 1 and {LIMIT_MAXIMA[name]:,}, got {value:,}")
    return value


@dataclass(frozen=True)
class PoolLimits:
    """The limits of one quota pool; ``None`` means "not limited" for that dimension."""

    rpm: int | None = None  # requests per minute (smooth: one per 60/rpm s)
    ipm: int | None = None  # images per minute (sliding 60 s window)
    tpm: int | None = None  # tokens per minute (sliding 60 s window)
    rpd: int | None = None  # requests per day, resets at midnight America/Los_Angeles
    concurrency: int | None = None  # in-flight calls (leased semaphore)

    def __post_init__(self) -> None:
        for name, value in self.as_dict().items():
            if value is not None:
                check_limit(name, value)

    def as_dict(self) -> dict[str, int | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def configured(self) -> dict[str, int]:
        """Only the limits that are set (what is stored in Redis)."""
        return {name: value for name, value in self.as_dict().items() if value is not None}

    @classmethod
    def from_redis(cls, raw: dict[bytes, bytes] | dict[str, str]) -> PoolLimits:
        """Build from a limits hash; unknown fields (from a newer version) are ignored."""
        decoded = {_text(k): int(_text(v)) for k, v in raw.items()}
        return cls(**{k: v for k, v in decoded.items() if k in LIMIT_FIELDS})


@dataclass(frozen=True)
class Admission:
    """The answer of one :meth:`RateLimiter.acquire`.

    ``wait_seconds`` is ``0`` when admitted. When a request can never fit (its tokens exceed the pool's
    tpm, or its images exceed ipm) it is ``math.inf`` with ``retry_at=None`` and ``reason`` naming the
    limit: the caller must fail the task (or an operator must raise the limit), not sleep.
    """

    admitted: bool
    wait_seconds: float
    reason: str | None  # "rpm" | "ipm" | "tpm" | "rpd" | "concurrency" | "cooldown"
    retry_at: float | None = None  # epoch seconds (Redis clock)
    decided_at: float | None = None  # epoch seconds (Redis clock) when the script ran

    @property
    def impossible(self) -> bool:
        """True when waiting will not help with the current limits."""
        return not self.admitted and self.wait_seconds == float("inf")


@dataclass(frozen=True)
class PoolState:
    """A snapshot of one pool, for ``nanobatch limits show`` and Prometheus metrics."""

    pool: str
    limits: PoolLimits
    rpm_used: float  # requests in the last 60 s (exact when rpm is limited, else estimated)
    ipm_used: float  # images in the last 60 s (exact when ipm is limited)
    tpm_used: float  # tokens in the last 60 s (exact when tpm is limited)
    day_used: int  # requests admitted since the last Pacific midnight
    day_resets_at: datetime  # aware (America/Los_Angeles): the next Pacific midnight
    inflight: int
    cooldown_until: datetime | None
    cooldown_reason: str | None
    remaining: dict[str, float | None]  # per limit; None when that limit is not set
    share: float = 1.0  # the adaptive share of rpm/ipm/tpm applied now (1.0: the whole limit)
    share_drops: int = 0  # 429s that lowered it since it was last whole


def remaining_of(limits: PoolLimits, used: dict[str, float]) -> dict[str, float | None]:
    """Headroom per limit (never negative); ``None`` for limits that are not configured."""
    result: dict[str, float | None] = {}
    for name, limit in limits.as_dict().items():
        result[name] = None if limit is None else max(0.0, limit - used[name])
    return result


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Adaptation:
    """How a pool's share reacts to 429s the limiter did not predict (docs/architecture.md, *Limiter*).

    The limiter admits a call only when its own counters say the upstream has room; a per-minute 429
    on such a call means someone else spends the same quota (a neighbour, another tool, a colleague's
    script). The pool's rpm/ipm/tpm are then applied times a *share*: ``factor`` times the current
    share at each such 429 (never below ``floor``), held for ``hold_seconds`` (the upstream's window
    still remembers the overload), then recovering by ``recovery_per_minute`` of the limit per minute.
    AIMD, as TCP does: a neighbour that keeps spending keeps the share down; one that stops gives it
    back within minutes.
    """

    factor: float = 0.97
    floor: float = 0.1
    hold_seconds: float = 120.0
    recovery_per_minute: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.factor < 1.0:
            raise ValueError(f"factor must be between 0 and 1 (exclusive), got {self.factor!r}")
        if not 0.0 < self.floor <= 1.0:
            raise ValueError(f"floor must be above 0 and at most 1, got {self.floor!r}")
        if not 0.0 <= self.hold_seconds <= 86_400:
            raise ValueError(f"hold_seconds must be between 0 and 86400, got {self.hold_seconds!r}")
        if not 0.0 < self.recovery_per_minute <= 1.0:
            raise ValueError(
                f"recovery_per_minute must be above 0 and at most 1, got {self.recovery_per_minute!r}"
            )


@dataclass(frozen=True)
class ShareChange:
    """What one :meth:`RateLimiter.adapt_after_refusal` did to the pool's share (fractions of 1)."""

    applied: bool  # False: no rate limit to scale, or this overload was answered already
    before: float
    after: float
