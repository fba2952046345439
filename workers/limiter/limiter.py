"""The global rate limiter: one :class:`RateLimiter` per process, shared by all worker threads.

Every decision is one atomic Lua call on Redis, using Redis ``TIME``: workers on many hosts share one
clock and one set of counters, and a denied request reserves nothing. Limits live in a Redis hash per
pool and are read by the script on every call, so ``nanobatch limits set`` takes effect at the next
acquire of every running worker. The algorithms live in the ``.lua`` files next to this module; this
class only validates arguments, passes Pacific midnights, and decodes replies.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from .clock import (
    PACIFIC,
    from_micros,
    micros_arg,
    pacific_midnights,
    to_micros,
    wait_from_micros,
)
from .keys import PoolKeys, pool_of, scan_pattern
from .limits import LIMIT_FIELDS, Adaptation, Admission, PoolLimits, PoolState, ShareChange, remaining_of
from .scripts import LimiterScripts

#: The adaptive share is kept in parts per million (integers in Redis, exact in Lua).
SHARE_UNIT = 1_000_000


class RateLimiter:
    """Admit requests into quota pools (provider project x model) across all workers.

    ``client`` is a ``redis.Redis`` (or ``fakeredis.FakeRedis`` for the embedded mode); every key is
    written under ``{prefix}:limiter:``. ``concurrency_poll`` caps the wait reported for a full
    semaphore: slots are normally released long before their lease expires, so callers re-check soon.
    ``adaptation`` says how a pool's share reacts to 429s the limiter did not predict; ``None`` turns
    the reaction off (:meth:`adapt_after_refusal` then does nothing).
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "nanobatch",
        concurrency_poll: float = 0.5,
        adaptation: Adaptation | None = Adaptation(),
    ) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        self._client = client
        self._prefix = prefix
        self._concurrency_poll = concurrency_poll
        self._adaptation = adaptation
        self._scripts = LimiterScripts.register(client)

    # -- admission -------------------------------------------------------------------------------

    def acquire(
        self,
        pool: str,
        *,
        holder: str,
        tokens: int = 0,
        images: int = 1,
        lease_seconds: float = 300.0,
        now: float | None = None,
    ) -> Admission:
        """Admit one request if every limit of ``pool`` has room (reserving all), else say how long to wait.

        A request whose ``tokens`` exceed the pool's tpm (or ``images`` its ipm) can never be admitted:
        it gets ``wait_seconds=math.inf``, ``retry_at=None`` and ``reason`` "tpm" (or "ipm").
        ``now`` injects the clock for tests; normally the script reads Redis ``TIME``.
        """
        _check_request(holder, tokens, images, lease_seconds)
        args: list[str | int] = [
            micros_arg(now),
            holder,
            tokens,
            images,
            to_micros(lease_seconds),
            to_micros(self._concurrency_poll),
            *self._midnight_args(now),
        ]
        reply = self._scripts.acquire(keys=self._keys(pool).all(), args=args)
        return _admission(reply)

    def release(self, pool: str, holder: str) -> None:
        """Free ``holder``'s concurrency slot; releasing twice (or after the lease expired) is harmless."""
        self._client.zrem(self._keys(pool).inflight, holder)

    def cooldown(self, pool: str, seconds: float, *, reason: str = "429", now: float | None = None) -> float:
        """Make every acquire of ``pool`` wait ``seconds``; returns the effective deadline (epoch s).

        Only ever extends: if a later deadline is already set (e.g. a daily park), it is kept.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"cooldown seconds must be finite and >= 0, got {seconds!r}")
        args: list[str | int] = [micros_arg(now), reason, "for", to_micros(seconds)]
        return from_micros(self._scripts.cooldown(keys=[self._keys(pool).cooldown], args=args))

    def adapt_after_refusal(
        self, pool: str, *, admitted_at: float | None = None, now: float | None = None
    ) -> ShareChange:
        """Lower ``pool``'s share after a per-minute 429 on a call this limiter admitted.

        The share lands at what the pool was admitted in the last 60 s times the factor (the room a
        neighbour leaves), at most halving it. ``admitted_at`` is the refused call's
        :attr:`Admission.decided_at` (Redis clock): a refusal within 60 s of the last drop, or of a
        call admitted before it, is part of the overload that drop answered, so it is ignored and one
        overload lowers the share once, however many calls were in flight (adapt.lua).
        """
        if self._adaptation is None:
            return ShareChange(False, 1.0, 1.0)
        a = self._adaptation
        keys = self._keys(pool)
        args: list[str | int] = [
            micros_arg(now),
            "" if admitted_at is None else to_micros(admitted_at),
            round(a.factor * SHARE_UNIT),
            round(a.floor * SHARE_UNIT),
            to_micros(a.hold_seconds),
            max(1, round(a.recovery_per_minute * SHARE_UNIT / 60)),
        ]
        applied, before, after = (
            _text(v)
            for v in self._scripts.adapt(
                keys=[keys.limits, keys.adapt, keys.requests, keys.ipm, keys.tpm], args=args
            )
        )
        return ShareChange(applied == "1", int(before) / SHARE_UNIT, int(after) / SHARE_UNIT)

    def park_until_reset(self, pool: str, *, reason: str = "daily quota", now: float | None = None) -> float:
        """Cool ``pool`` down until the next midnight America/Los_Angeles (after a PerDay 429)."""
        args: list[str | int] = [micros_arg(now), reason, "next", *self._midnight_args(now)]
        return from_micros(self._scripts.cooldown(keys=[self._keys(pool).cooldown], args=args))

    # -- limits ----------------------------------------------------------------------------------

    def set_limits(self, pool: str, limits: PoolLimits, *, replace: bool = False) -> PoolLimits:
        """Store limits; ``replace=False`` overwrites only the fields given. Returns the result."""
        key = self._keys(pool).limits
        with self._client.pipeline(transaction=True) as pipe:
            if replace:
                pipe.delete(key)
            if limits.configured():
                pipe.hset(key, mapping=limits.configured())
            pipe.hgetall(key)
            return PoolLimits.from_redis(pipe.execute()[-1])

    def clear_limits(self, pool: str, *fields: str) -> PoolLimits:
        """Remove the named limits (all of them when none are named). Returns what is left."""
        unknown = [name for name in fields if name not in LIMIT_FIELDS]
        if unknown:
            raise ValueError(f"unknown limit(s) {unknown}; known limits: {', '.join(LIMIT_FIELDS)}")
        key = self._keys(pool).limits
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hdel(key, *(fields or LIMIT_FIELDS))
            pipe.hgetall(key)
            return PoolLimits.from_redis(pipe.execute()[-1])

    def seed_limits(self, pool: str, limits: PoolLimits) -> None:
        """Set only the fields not already set: config defaults never overwrite an operator's change."""
        key = self._keys(pool).limits
        with self._client.pipeline(transaction=True) as pipe:
            for name, value in limits.configured().items():
                pipe.hsetnx(key, name, value)
            pipe.execute()

    def get_limits(self, pool: str) -> PoolLimits:
        return PoolLimits.from_redis(self._client.hgetall(self._keys(pool).limits))

    # -- observation -----------------------------------------------------------------------------

    def state(self, pool: str, *, now: float | None = None) -> PoolState:
        """A snapshot of ``pool`` at one instant of the Redis clock (read-only)."""
        keys = self._keys(pool)
        reply = [_text(v) for v in self._scripts.state(keys=keys.all(), args=self._state_args(now))]
        limits = self.get_limits(pool)
        used = {"rpm": float(reply[1]), "ipm": float(reply[2]), "tpm": float(reply[3])}
        used |= {"rpd": float(reply[4]), "concurrency": float(reply[6])}
        return PoolState(
            pool=pool,
            limits=limits,
            rpm_used=used["rpm"],
            ipm_used=used["ipm"],
            tpm_used=used["tpm"],
            day_used=int(reply[4]),
            day_resets_at=datetime.fromtimestamp(from_micros(reply[5]), PACIFIC),
            inflight=int(reply[6]),
            cooldown_until=_utc(from_micros(reply[7])) if reply[7] else None,
            cooldown_reason=reply[8] or None,
            remaining=remaining_of(limits, used),
            share=int(reply[9]) / SHARE_UNIT,
            share_drops=int(reply[10]),
        )

    def pools(self) -> list[str]:
        """Pools that have limits or live state under this prefix, sorted."""
        found = set()
        for key in self._client.scan_iter(match=scan_pattern(self._prefix), count=1000):
            pool = pool_of(_text(key), self._prefix)
            if pool is not None:
                found.add(pool)
        return sorted(found)

    # -- helpers ---------------------------------------------------------------------------------

    def _keys(self, pool: str) -> PoolKeys:
        if not pool or "{" in pool or "}" in pool:
            raise ValueError(f"invalid pool name {pool!r}: must be non-empty, without braces")
        return PoolKeys(self._prefix, pool)

    @staticmethod
    def _midnight_args(now: float | None) -> list[int]:
        """Pacific midnights around the caller's clock; the script picks the one that fits Redis TIME."""
        return [to_micros(m) for m in pacific_midnights(time.time() if now is None else now)]

    def _state_args(self, now: float | None) -> list[str | int]:
        return [micros_arg(now), *self._midnight_args(now)]


def _check_request(holder: str, tokens: int, images: int, lease_seconds: float) -> None:
    if not holder:
        raise ValueError("holder must be a non-empty string (e.g. the task id)")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be an integer >= 0, got {tokens!r}")
    if isinstance(images, bool) or not isinstance(images, int) or images < 0:
        raise ValueError(f"images must be an integer >= 0, got {images!r}")
    if not math.isfinite(lease_seconds) or lease_seconds <= 0:
        raise ValueError(f"lease_seconds must be finite and > 0, got {lease_seconds!r}")


def _admission(reply: list[Any]) -> Admission:
    admitted, wait_raw, reason, now_raw = reply
    decided_at = from_micros(_text(now_raw))
    if int(admitted):
        return Admission(True, 0.0, None, None, decided_at)
    wait = wait_from_micros(_text(wait_raw))
    retry_at = None if math.isinf(wait) else decided_at + wait
    return Admission(False, wait, _text(reason), retry_at, decided_at)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
