"""The global rate limiter: one atomic Redis Lua call admits a request only if every limit of its quota
pool (rpm, ipm, tpm, requests per Pacific day, concurrency, cooldown) has room.

Layout: ``limits`` (value types), ``clock`` (Pacific midnights, µs units), ``keys`` (Redis key layout),
``scripts`` (loads and registers the ``.lua`` files), ``limiter`` (the :class:`RateLimiter`).
"""

from .clock import PACIFIC, next_pacific_midnight, pacific_midnights
from .limiter import RateLimiter
from .limits import (
    LIMIT_FIELDS,
    LIMIT_MAXIMA,
    Adaptation,
    Admission,
    PoolLimits,
    PoolState,
    ShareChange,
    check_limit,
)

__all__ = [
    "LIMIT_FIELDS",
    "LIMIT_MAXIMA",
    "PACIFIC",
    "Adaptation",
    "Admission",
    "PoolLimits",
    "PoolState",
    "RateLimiter",
    "ShareChange",
    "check_limit",
    "next_pacific_midnight",
    "pacific_midnights",
]
