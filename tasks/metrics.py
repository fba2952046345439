"""Prometheus metrics computed at scrape time from the database and Redis (README, "Monitoring").

The exporter keeps no state of its own: every scrape asks the sources of truth — task counts, spend
and throughput from the database; queue lengths, limiter state and the workers' telemetry
(:mod:`tasks.telemetry`) from Redis. So an exporter can restart, or run twice, without losing or
double counting anything, and it agrees with ``nanobatch status`` by construction.

A source that fails (database down, Redis down) does not fail the whole scrape: its series are left
out and ``nanobatch_exporter_source_up{source}`` drops to 0, which is what an alert should watch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from wsgiref.simple_server import WSGIServer

from kombu.transport.redis import PRIORITY_STEPS, Channel
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nanobatch.models import counts as batch_counts
from nanobatch.models.base import utcnow
from nanobatch.models.db import Database
from nanobatch.models.queries import THROUGHPUT_WINDOW
from nanobatch.models.status import TaskStatus
from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.tasks.celeryapp.app import control_queue
from nanobatch.tasks.liveness import RecoveryHealth, recovery_health
from nanobatch.tasks.settings import Settings
from nanobatch.tasks.telemetry import Telemetry, TelemetrySnapshot
from nanobatch.workers.limiter import PoolState, RateLimiter

log = logging.getLogger("nanobatch.metrics")


@dataclass
class MetricsSources:
    """Where the numbers come from; ``redis`` is ``None`` in embedded mode (nothing shared to read)."""

    db: Database
    redis: Redis | None
    queues: tuple[str, ...]
    prefix: str
    pool_refused_alert_seconds: float = 1800.0  # NANOBATCH_POOL_REFUSED_ALERT_SECONDS
    sweep_interval: float = 10.0  # what the recovery sweep's age is judged against

    @classmethod
    def from_settings(cls, settings: Settings) -> MetricsSources:
        return cls(
            db=Database(settings.database_url, pool_size=2),
            redis=None if settings.embedded else scrape_redis(settings.broker_url),
            queues=(settings.queue, control_queue(settings)),
            prefix=settings.limiter_prefix,
            pool_refused_alert_seconds=settings.pool_refused_alert_seconds,
            sweep_interval=settings.sweep_interval,
        )

    def close(self) -> None:
        self.db.dispose()
        if self.redis is not None:
            self.redis.close()


def scrape_redis(url: str) -> Redis:
    """A client that fails fast: a scrape must answer within Prometheus' timeout (10 s by default)
    even when Redis is down, reporting the Redis sources as down instead of hanging on retries."""
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 1))


class NanobatchCollector(Collector):
    """A custom collector: ``collect()`` runs on every scrape and reads everything fresh."""

    def __init__(self, sources: MetricsSources) -> None:
        self.sources = sources
        redis = sources.redis
        self.limiter = RateLimiter(redis, prefix=sources.prefix) if redis is not None else None
        self.telemetry = Telemetry(redis, prefix=sources.prefix) if redis is not None else None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "nanobatch_exporter_source_up", "1 when the last scrape could read this source", labels=["source"]
        )
        for source, read in self._sections():
            try:
                families = list(read())
            except Exception as exc:  # any failure of one source must not hide the others
                log.warning("metrics: cannot read %s: %s: %s", source, type(exc).__name__, exc)
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from families
        yield up

    def _sections(self) -> list[tuple[str, Callable[[], Iterable[Metric]]]]:
        sections: list[tuple[str, Callable[[], Iterable[Metric]]]] = [("database", self._batches)]
        if self.sources.redis is not None:
            sections += [
                ("queues", self._queues),
                ("limiter", self._limiter),
                ("telemetry", self._telemetry),
                ("recovery", self._recovery),
            ]
        return sections

    def _batches(self) -> list[Metric]:
        with self.sources.db.session() as session:
            return batch_metrics(session, utcnow())

    def _queues(self) -> list[Metric]:
        assert self.sources.redis is not None
        depth = GaugeMetricFamily(
            "nanobatch_queue_depth", "Messages waiting in the Celery queue (all priorities)", labels=["queue"]
        )
        for queue, length in queue_lengths(self.sources.redis, self.sources.queues).items():
            depth.add_metric([queue], length)
        return [depth]

    def _limiter(self) -> list[Metric]:
        assert self.limiter is not None and self.sources.redis is not None
        states = [self.limiter.state(pool) for pool in self.limiter.pools()]
        return limiter_metrics(states, redis_now(self.sources.redis))

    def _telemetry(self) -> list[Metric]:
        assert self.telemetry is not None
        return telemetry_metrics(
            self.telemetry.snapshot(), stalled_after=self.sources.pool_refused_alert_seconds
        )

    def _recovery(self) -> list[Metric]:
        sources = self.sources
        assert sources.redis is not None
        health = recovery_health(sources.redis, sources.prefix, interval=sources.sweep_interval)
        return recovery_metrics(health)


# -- database -------------------------------------------------------------------------------------


def batch_metrics(session: Session, now: datetime) -> list[Metric]:
    """Per batch: tasks by status (every status, zeros included), spend, budget, completions/minute.

    Three aggregate queries whatever the number of batches, so a scrape stays cheap as batches pile up.
    """
    tasks = GaugeMetricFamily("nanobatch_tasks", "Tasks of a batch by status", labels=["batch", "status"])
    spend = GaugeMetricFamily("nanobatch_batch_spend_usd", "USD spent by a batch", labels=["batch"])
    budget = GaugeMetricFamily("nanobatch_batch_budget_usd", "Budget of a batch (when set)", labels=["batch"])
    rate = GaugeMetricFamily(
        "nanobatch_completions_per_minute", "Completions per minute over the last 5 minutes", labels=["batch"]
    )
    counts, costs = _status_counts(session)
    recent = _recent_completions(session, now)
    batches = session.execute(select(Batch.id, Batch.name, Batch.budget_usd, Batch.created_at))
    for batch_id, name, budget_usd, created_at in batches:
        for status in TaskStatus:
            tasks.add_metric([name, status.value], counts.get((batch_id, status.value), 0))
        spend.add_metric([name], costs.get(batch_id, 0.0))
        if budget_usd is not None:
            budget.add_metric([name], float(budget_usd))
        rate.add_metric([name], per_minute(recent.get(batch_id, 0), created_at, now))
    return [tasks, spend, budget, rate, *lane_metrics(session)]


def lane_metrics(session: Session) -> list[Metric]:
    """Per batch and lane: USD spent, and what the same work costs at the standard price (from the
    trigger-kept counts: a scrape never scans the tasks)."""
    labels = ["batch", "lane"]
    spend = GaugeMetricFamily("nanobatch_lane_spend_usd", "USD spent by a batch in one lane", labels=labels)
    standard = GaugeMetricFamily(
        "nanobatch_lane_standard_cost_usd", "The same work at the standard price", labels=labels
    )
    names = {batch_id: name for batch_id, name in session.execute(select(Batch.id, Batch.name))}
    for batch_id, tally in batch_counts.tallies(session).items():
        for lane, share in sorted(tally.lanes.items()):
            if batch_id in names:
                spend.add_metric([names[batch_id], lane], share.cost_usd)
                standard.add_metric([names[batch_id], lane], share.standard_cost_usd)
    return [spend, standard]


def per_minute(recent: int, created_at: datetime, now: datetime) -> float:
    """Completions per minute over the throughput window, or over the batch's life when it is younger
    (the same definition as ``nanobatch status``, so the two never disagree)."""
    window = min(THROUGHPUT_WINDOW, max(now - created_at, timedelta(seconds=1)))
    return recent / (window / timedelta(minutes=1))


def _status_counts(session: Session) -> tuple[dict[tuple[str, str], int], dict[str, float]]:
    """Tasks per (batch, status) and USD spent per batch (the sum of task costs, as ``status`` shows),
    from the trigger-kept counts (:mod:`models.counts`): a scrape never scans the tasks."""
    counts: dict[tuple[str, str], int] = {}
    costs: dict[str, float] = {}
    for batch_id, tally in batch_counts.tallies(session).items():
        for status, n in tally.counts.items():
            counts[(batch_id, status)] = n
        costs[batch_id] = tally.cost_usd
    return counts, costs


def _recent_completions(session: Session, now: datetime) -> dict[str, int]:
    """Completions of each batch in the throughput window: one correlated count per batch, each a
    range of the (batch, status, finished_at) index, so old completions are never read."""
    recent = (
        select(func.count())
        .where(
            GenerationTask.batch_id == Batch.id,
            GenerationTask.status == TaskStatus.COMPLETED.value,
            GenerationTask.finished_at >= now - THROUGHPUT_WINDOW,
        )
        .correlate(Batch)
        .scalar_subquery()
    )
    return {batch_id: int(count) for batch_id, count in session.execute(select(Batch.id, recent)) if count}


# -- Redis: queues, limiter -----------------------------------------------------------------------


def priority_queue_names(queue: str) -> list[str]:
    """The Redis lists kombu keeps for ``queue``: the plain name, plus ``<queue>\\x06\\x16<n>`` for
    each non-zero priority step (kombu.transport.redis ``Channel._q_for_pri``)."""
    return [queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS]


def queue_lengths(redis: Redis, queues: Sequence[str]) -> dict[str, int]:
    """LLEN of every priority list of every queue, summed per queue, in one round trip."""
    with redis.pipeline(transaction=False) as pipe:
        for queue in queues:
            for name in priority_queue_names(queue):
                pipe.llen(name)
        lengths = iter(pipe.execute())
    return {queue: sum(int(next(lengths)) for _ in PRIORITY_STEPS) for queue in queues}


def redis_now(redis: Redis) -> float:
    """The Redis clock (the limiter's clock), so cooldowns are not skewed by this host's clock."""
    seconds, micros = redis.time()
    return int(seconds) + int(micros) / 1_000_000


def limiter_metrics(states: Sequence[PoolState], now: float) -> list[Metric]:
    remaining = GaugeMetricFamily(
        "nanobatch_limiter_remaining", "Headroom left under each configured limit", labels=["pool", "limit"]
    )
    limit = GaugeMetricFamily("nanobatch_limiter_limit", "Configured limit", labels=["pool", "limit"])
    cooldown = GaugeMetricFamily(
        "nanobatch_limiter_cooldown_seconds",
        "Seconds until the pool's cooldown ends (0: none)",
        labels=["pool"],
    )
    inflight = GaugeMetricFamily("nanobatch_limiter_inflight", "Calls in flight now", labels=["pool"])
    reset = GaugeMetricFamily(
        "nanobatch_quota_reset_timestamp",
        "Next daily quota reset (Pacific midnight), epoch s",
        labels=["pool"],
    )
    share = GaugeMetricFamily(
        "nanobatch_limiter_share",
        "Share of rpm/ipm/tpm applied now (1: whole; lower after 429s the limiter did not predict)",
        labels=["pool"],
    )
    for state in states:
        share.add_metric([state.pool], state.share)
        for name, left in state.remaining.items():
            if left is not None:
                remaining.add_metric([state.pool, name], left)
        for name, value in state.limits.configured().items():
            limit.add_metric([state.pool, name], value)
        until = state.cooldown_until.timestamp() if state.cooldown_until else now
        cooldown.add_metric([state.pool], max(0.0, until - now))
        inflight.add_metric([state.pool], state.inflight)
        reset.add_metric([state.pool], state.day_resets_at.timestamp())
    return [remaining, limit, cooldown, inflight, reset, share]


# -- Redis: worker telemetry ----------------------------------------------------------------------


def telemetry_metrics(
    snapshot: TelemetrySnapshot, *, now: float | None = None, stalled_after: float = 1800.0
) -> list[Metric]:
    latency = HistogramMetricFamily(
        "nanobatch_upstream_latency_seconds", "Duration of upstream generate calls", labels=["pool"]
    )
    for pool, histogram in sorted(snapshot.latency.items()):
        latency.add_metric([pool], histogram.cumulative(), sum_value=histogram.sum)
    limited = CounterMetricFamily(
        "nanobatch_rate_limited", "429 answers from the upstream", labels=["pool", "quota_id"]
    )
    for (pool, quota), count in sorted(snapshot.rate_limited.items()):
        limited.add_metric([pool, quota], count)
    retries = CounterMetricFamily(
        "nanobatch_retries", "Tasks sent back to pending, by reason", labels=["reason"]
    )
    for reason, count in sorted(snapshot.retries.items()):
        retries.add_metric([reason], count)
    outcomes = CounterMetricFamily(
        "nanobatch_task_outcomes", "Task deliveries by how they ended", labels=["status"]
    )
    for status, count in sorted(snapshot.outcomes.items()):
        outcomes.add_metric([status], count)
    store_latency = HistogramMetricFamily(
        "nanobatch_storage_write_seconds", "Duration of image store writes", labels=["operation"]
    )
    for operation, histogram in sorted(snapshot.storage_latency.items()):
        store_latency.add_metric([operation], histogram.cumulative(), sum_value=histogram.sum)
    store_errors = CounterMetricFamily(
        "nanobatch_storage_errors", "Image store writes that failed (retried)", labels=["operation"]
    )
    for operation, count in sorted(snapshot.storage_errors.items()):
        store_errors.add_metric([operation], count)
    return [
        latency,
        limited,
        retries,
        outcomes,
        store_latency,
        store_errors,
        *pool_health_metrics(snapshot, now, stalled_after),
    ]


def pool_health_metrics(snapshot: TelemetrySnapshot, now: float | None, stalled_after: float) -> list[Metric]:
    """Per pool: seconds every call has been refused, whether that is past the alert bound, last success.

    Alert on ``nanobatch_pool_stalled == 1`` (every call of the pool refused for longer than
    NANOBATCH_POOL_REFUSED_ALERT_SECONDS); unrecognised 429s count in ``nanobatch_rate_limited`` under
    ``quota_id="unclassified_429"``.
    """
    now = time.time() if now is None else now
    refused = GaugeMetricFamily(
        "nanobatch_pool_refused_seconds",
        "Seconds every call of the pool has been refused (429) since its last success; 0 when not",
        labels=["pool"],
    )
    stalled = GaugeMetricFamily(
        "nanobatch_pool_stalled",
        "1 when every call of the pool has been refused for longer than NANOBATCH_POOL_REFUSED_ALERT_SECONDS",
        labels=["pool"],
    )
    success = GaugeMetricFamily(
        "nanobatch_pool_last_success_timestamp",
        "When the pool last returned an image, epoch s",
        labels=["pool"],
    )
    for pool, health in sorted(snapshot.pools.items()):
        refused.add_metric([pool], health.refused_for(now))
        stalled.add_metric([pool], 1.0 if health.stalled(now, stalled_after) else 0.0)
        if health.last_success is not None:
            success.add_metric([pool], health.last_success)
    return [refused, stalled, success]


# -- Redis: recovery (tasks.liveness) ------------------------------------------------------------


def recovery_metrics(health: RecoveryHealth) -> list[Metric]:
    """When the recovery sweep last ran and how many workers heartbeat (alert on ``overdue``)."""
    alive = GaugeMetricFamily("nanobatch_workers_alive", "Worker processes with a live heartbeat")
    alive.add_metric([], health.workers_alive)
    overdue = GaugeMetricFamily(
        "nanobatch_sweep_overdue", "1 when no recovery sweep ran for two sweep intervals (or ever)"
    )
    overdue.add_metric([], 1 if health.overdue else 0)
    families: list[Metric] = [alive, overdue]
    if health.last is not None:
        last = GaugeMetricFamily(
            "nanobatch_sweep_last_timestamp_seconds", "When the last recovery sweep ran (Redis clock)"
        )
        last.add_metric([], health.last.at)
        age = GaugeMetricFamily("nanobatch_sweep_age_seconds", "Seconds since the last recovery sweep")
        age.add_metric([], health.age or 0.0)
        families += [last, age]
    return families


# -- serving --------------------------------------------------------------------------------------


def serve_metrics(sources: MetricsSources, *, address: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` from a registry holding only our collector (no exporter-process noise)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NanobatchCollector(sources))
    return start_http_server(port, addr=address, registry=registry)
