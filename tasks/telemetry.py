"""Worker-side counters that outlive the process that recorded them, read by the metrics exporter.

A ``prometheus_client`` registry inside a worker dies with the worker and would need one scrape
target per worker process on every host. Instead each worker adds its observations to a few Redis
hashes (one round trip per call) and ``nanobatch metrics`` reads them on every scrape, so N workers
on M hosts show up as one set of cumulative counters. A Redis data loss resets them, which Prometheus
handles like an exporter restart (``rate()`` copes with counter resets).

Recording never raises: a telemetry write that fails must not turn a paid, completed generation into
a crash that re-queues the task. Keys, all under ``{prefix}:telemetry:`` and without expiry:

- ``latency``      HASH ``<pool>|<le>`` → calls whose smallest bucket is ``le`` (not cumulative),
                        ``<pool>|sum`` → seconds, ``<pool>|count`` → calls
- ``rate_limited`` HASH ``<pool>|<quota_id>`` → 429 answers
- ``retries``      HASH ``<reason>`` → deferrals (rate waits, transient errors, …)
- ``outcomes``     HASH ``<status>`` → deliveries that ended so (completed, failed, deferred, …)
- ``pool_health``  HASH ``<pool>|last_success`` → epoch s of the last image, ``<pool>|refused_since``
                        → epoch s of the first 429 since then (absent while calls succeed),
                        ``<pool>|last_refusal`` / ``<pool>|last_unclassified`` → the last 429 message
                        (and the last one no rule recognised). Two O(1) writes per call: "every call
                        of this pool refused for N minutes" is then one subtraction for status,
                        watch and the metrics exporter.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger("nanobatch.telemetry")

#: Upper bounds (seconds) of the latency histogram: image calls take ~5-30 s, timeouts up to minutes.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
    90.0,
    120.0,
    180.0,
    300.0,
    math.inf,
)
SEPARATOR = "|"
KINDS = ("latency", "rate_limited", "retries", "outcomes", "pool_health", "storage_latency", "storage_errors")
#: How much of an upstream message the pool health keeps.
MESSAGE_CHARS = 300


def bucket_label(bound: float) -> str:
    """The ``le`` label of a bucket bound, as Prometheus writes it (``+Inf``, ``0.25``, ``10.0``)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def bucket_for(seconds: float) -> str:
    """The ``le`` label of the smallest bucket that holds ``seconds``."""
    return bucket_label(LATENCY_BUCKETS[bisect_left(LATENCY_BUCKETS, seconds)])


def field(*parts: str) -> str:
    """A hash field from label values; the separator inside a value is replaced, so parsing is exact."""
    return SEPARATOR.join(part.replace(SEPARATOR, "_") for part in parts)


@dataclass(frozen=True)
class LatencyHistogram:
    """One pool's latency histogram: per-bucket counts aligned with :data:`LATENCY_BUCKETS`."""

    counts: tuple[int, ...]
    sum: float
    count: int

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, observations <= le)`` pairs, the shape Prometheus histograms expose."""
        running, result = 0, []
        for bound, count in zip(LATENCY_BUCKETS, self.counts, strict=True):
            running += count
            result.append((bucket_label(bound), running))
        return result


@dataclass(frozen=True)
class PoolHealth:
    """Whether a pool's calls get through: the last success, and since when every call is refused."""

    pool: str
    last_success: float | None = None
    refused_since: float | None = None
    last_refusal: str | None = None
    last_unclassified: str | None = None

    def refused_for(self, now: float) -> float:
        """Seconds every call has been refused (0 while the last call succeeded)."""
        return max(0.0, now - self.refused_since) if self.refused_since is not None else 0.0

    def stalled(self, now: float, after: float) -> bool:
        """True when every call has been refused for longer than ``after`` seconds."""
        return self.refused_since is not None and self.refused_for(now) > after


@dataclass(frozen=True)
class TelemetrySnapshot:
    """Everything the workers recorded so far, decoded."""

    latency: dict[str, LatencyHistogram]
    rate_limited: dict[tuple[str, str], int]  # (pool, quota_id) → 429s
    retries: dict[str, int]
    outcomes: dict[str, int]
    pools: dict[str, PoolHealth] = dataclasses.field(default_factory=dict)
    #: Image store writes (staging a paid image), by operation; and failed writes, by operation.
    storage_latency: dict[str, LatencyHistogram] = dataclasses.field(default_factory=dict)
    storage_errors: dict[str, int] = dataclasses.field(default_factory=dict)


class Telemetry:
    """Record worker events into Redis hashes under ``{prefix}:telemetry:`` (shared by all threads)."""

    def __init__(self, client: Any, *, prefix: str = "nanobatch") -> None:
        self.client = client
        self.prefix = prefix
        self._base = f"{prefix}:telemetry:"

    def key(self, kind: str) -> str:
        return self._base + kind

    # -- recording (never raises) -----------------------------------------------------------------

    def observe_latency(self, pool: str, seconds: float) -> None:
        """One upstream call of ``pool`` took ``seconds`` (bucket, sum and count move together)."""
        if math.isnan(seconds):
            return
        seconds = max(0.0, seconds)
        key = self.key("latency")
        with _best_effort("latency"), self.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, field(pool, bucket_for(seconds)), 1)
            pipe.hincrbyfloat(key, field(pool, "sum"), seconds)
            pipe.hincrby(key, field(pool, "count"), 1)
            pipe.execute()

    def storage_write(self, seconds: float, ok: bool, operation: str = "stage") -> None:
        """One image store write took ``seconds`` (and failed unless ``ok``)."""
        if math.isnan(seconds):
            return
        seconds = max(0.0, seconds)
        key = self.key("storage_latency")
        with _best_effort("storage_latency"), self.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, field(operation, bucket_for(seconds)), 1)
            pipe.hincrbyfloat(key, field(operation, "sum"), seconds)
            pipe.hincrby(key, field(operation, "count"), 1)
            if not ok:
                pipe.hincrby(self.key("storage_errors"), field(operation), 1)
            pipe.execute()

    def count_429(self, pool: str, quota_id: str = "") -> None:
        """The upstream answered 429 for ``pool`` (``quota_id`` e.g. ``…PerMinutePerProjectPerModel``)."""
        self._increment("rate_limited", field(pool, quota_id))

    def count_retry(self, reason: str) -> None:
        """A task went back to pending for ``reason`` (the row's error code, e.g. ``rate_wait``)."""
        self._increment("retries", field(reason))

    def count_outcome(self, status: str) -> None:
        """One delivery of a task ended as ``status`` (completed, reused, failed, deferred, skipped)."""
        self._increment("outcomes", field(status))

    def record_success(self, pool: str, *, now: float | None = None) -> None:
        """A call of ``pool`` returned an image: the pool is not refusing (one round trip)."""
        key = self.key("pool_health")
        with _best_effort("pool_health"), self.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, field(pool, "last_success"), repr(time.time() if now is None else now))
            pipe.hdel(key, field(pool, "refused_since"))
            pipe.execute()

    def record_refusal(
        self, pool: str, message: str, *, unclassified: bool = False, now: float | None = None
    ) -> float | None:
        """A call of ``pool`` was refused (429); returns since when every call has been (epoch s).

        ``None`` when Redis could not be reached (telemetry never raises).
        """
        key, now = self.key("pool_health"), time.time() if now is None else now
        text = message[:MESSAGE_CHARS]
        with _best_effort("pool_health"), self.client.pipeline(transaction=False) as pipe:
            pipe.hsetnx(key, field(pool, "refused_since"), repr(now))
            pipe.hset(key, field(pool, "last_refusal"), text)
            if unclassified:
                pipe.hset(key, field(pool, "last_unclassified"), text)
            pipe.hget(key, field(pool, "refused_since"))
            since = pipe.execute()[-1]
            return float(_text(since)) if since is not None else now
        return None

    def mean_latency(self, pool: str) -> float | None:
        """Mean seconds of ``pool``'s upstream calls so far (shared by every worker), or ``None``."""
        total, count = self.client.hmget(self.key("latency"), [field(pool, "sum"), field(pool, "count")])
        if not count or int(count) <= 0:
            return None
        return float(total or 0.0) / int(count)

    def pool_health(self) -> dict[str, PoolHealth]:
        """Every pool's health as recorded (raises on Redis errors, like :meth:`snapshot`)."""
        return parse_pool_health(_decode(self.client.hgetall(self.key("pool_health"))))

    def _increment(self, kind: str, name: str) -> None:
        with _best_effort(kind):
            self.client.hincrby(self.key(kind), name, 1)

    # -- reading ----------------------------------------------------------------------------------

    def snapshot(self) -> TelemetrySnapshot:
        """Read every hash in one pipelined round trip (raises on Redis errors: the exporter reports them)."""
        with self.client.pipeline(transaction=False) as pipe:
            for kind in KINDS:
                pipe.hgetall(self.key(kind))
            raw = dict(zip(KINDS, (_decode(r) for r in pipe.execute()), strict=True))
        return TelemetrySnapshot(
            latency=parse_latency(raw["latency"]),
            rate_limited={_pair(name): int(v) for name, v in raw["rate_limited"].items()},
            retries={name: int(v) for name, v in raw["retries"].items()},
            outcomes={name: int(v) for name, v in raw["outcomes"].items()},
            pools=parse_pool_health(raw["pool_health"]),
            storage_latency=parse_latency(raw["storage_latency"]),
            storage_errors={name: int(v) for name, v in raw["storage_errors"].items()},
        )

    def reset(self) -> None:
        """Delete every recorded value (tests, or an operator starting over)."""
        self.client.delete(*(self.key(kind) for kind in KINDS))


@contextmanager
def _best_effort(kind: str) -> Iterator[None]:
    """Log and drop Redis errors: telemetry is best effort by design."""
    try:
        yield
    except RedisError as exc:
        log.warning("telemetry (%s) not recorded: %s", kind, exc)


def parse_latency(raw: Mapping[str, str]) -> dict[str, LatencyHistogram]:
    """Decode the ``latency`` hash; fields with an unknown bucket (older bucket layout) are ignored."""
    index = {bucket_label(bound): i for i, bound in enumerate(LATENCY_BUCKETS)}
    counts: dict[str, list[int]] = {}
    sums: dict[str, float] = {}
    totals: dict[str, int] = {}
    for name, value in raw.items():
        pool, _, what = name.rpartition(SEPARATOR)
        buckets = counts.setdefault(pool, [0] * len(LATENCY_BUCKETS))
        if what == "sum":
            sums[pool] = float(value)
        elif what == "count":
            totals[pool] = int(value)
        elif what in index:
            buckets[index[what]] = int(value)
    return {
        pool: LatencyHistogram(tuple(buckets), sums.get(pool, 0.0), totals.get(pool, sum(buckets)))
        for pool, buckets in counts.items()
    }


def parse_pool_health(raw: Mapping[str, str]) -> dict[str, PoolHealth]:
    """Decode the ``pool_health`` hash (unknown fields ignored)."""
    found: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        pool, _, what = name.rpartition(SEPARATOR)
        facts = found.setdefault(pool, {})
        if what in {"last_success", "refused_since"}:
            facts[what] = float(value)
        elif what in {"last_refusal", "last_unclassified"}:
            facts[what] = value
    return {pool: PoolHealth(pool, **facts) for pool, facts in sorted(found.items())}


def _pair(name: str) -> tuple[str, str]:
    pool, _, quota = name.partition(SEPARATOR)
    return pool, quota


def _decode(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
