"""The global rate limiter: one atomic Redis Lua call admits a request only if every limit of its quota
pool (rpm, ipm, tpm, requests per Pacific day, concurrency, cooldown) has room.

Layout: ``limits`` (value types), ``clock`` (Pacific midnights, µs units), ``keys`` (Redis key layout),
``scripts`` (loads and registers the ``.lua`` files), ``limiter`` (the :class:`RateLimiter`).
"""

from .clock import PACIFIC, next_pacific_midnight, pacific_midnights
from .limiter import RateLimiter
from .limits import LIMIT_FIELDS, LIMIT_MAXIMA, Admission, PoolLimits, PoolState, check_limit

__all__ = [
    "LIMIT_FIELDS",
    "LIMIT_MAXIMA",
    "PACIFIC",
    "Admission",
    "PoolLimits",
    "PoolState",
    "RateLimiter",
    "check_limit",
    "next_pacific_midnight",
    "pacific_midnights",
]
