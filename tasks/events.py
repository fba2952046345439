"""Webhook events at the points where the sweep notices them (docs/lanes.md, "Webhooks").

The sweep pass (any worker, under its lock) calls :func:`emit_batch_events`: one aggregate query over
the batches that moved recently gives ``batch.finished`` (nothing left to do), ``batch.failure_rate_high``
(failed / finished above ``NANOBATCH_WEBHOOK_FAILURE_RATE`` once ``…_MIN_FINISHED`` finished),
``batch.budget_reached`` (tasks wait for the budget) and ``batch.deadline_at_risk`` (the ETA at the
current pace, plus ``NANOBATCH_WEBHOOK_DEADLINE_MARGIN``, passes ``--deadline``); a worker whose pool
has refused every call for ``NANOBATCH_WEBHOOK_POOL_REFUSED_SECONDS`` sends ``pool.refused`` (once per
refusal streak). Each event carries a ``once`` key, so the Redis outbox delivers one per occurrence
however many sweeps notice it.
Delivery never blocks the sweep: :class:`~nanobatch.tasks.webhooks.WebhookNotifier` queues in memory
and a daemon thread delivers, signed and retried. No URL configured: nothing here runs.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from nanobatch.models.queries import unpublished
from nanobatch.models.status import BatchStatus, ErrorCode, TaskStatus
from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.tasks import webhooks
from nanobatch.tasks.runtime import Runtime
from nanobatch.tasks.webhooks import RedisOutbox, WebhookEvent, WebhookNotifier

log = logging.getLogger("nanobatch.events")

#: Batches whose tasks changed within this window are looked at (a finished batch is noticed once).
RECENT = timedelta(minutes=15)
#: Seconds between two looks for batch events, cluster-wide.
EVENTS_EVERY = 30.0

_NOTIFIER: tuple[int, WebhookNotifier] | None = None
_LOCK = threading.Lock()


def notifier_for(rt: Runtime) -> WebhookNotifier | None:
    """This process's notifier (started on first use), or ``None`` without ``NANOBATCH_WEBHOOK_URL``."""
    global _NOTIFIER
    config = rt.settings.webhook_config()
    if config is None:
        return None
    with _LOCK:
        if _NOTIFIER is None or _NOTIFIER[0] != os.getpid():
            outbox = RedisOutbox(rt.redis, rt.settings.limiter_prefix, limit=config.queue_size * 10)
            _NOTIFIER = (os.getpid(), WebhookNotifier(config, outbox, rt.http).start())
        return _NOTIFIER[1]


@dataclass(frozen=True)
class Thresholds:
    failure_rate: float
    failure_min_finished: int
    deadline_margin: float


def emit_batch_events(rt: Runtime, now: datetime) -> int:
    """Queue the events the batches' state calls for; returns how many were queued."""
    notifier = notifier_for(rt)
    if notifier is None:
        return 0
    settings = rt.settings
    # The query reads every task of the batches; once a minute cluster-wide is often enough.
    turn = f"{settings.limiter_prefix}:events-turn"
    if not rt.redis.set(turn, rt.worker_name, nx=True, px=int(EVENTS_EVERY * 1000)):
        return 0
    limits = Thresholds(
        settings.webhook_failure_rate, settings.webhook_failure_min_finished, settings.webhook_deadline_margin
    )
    with rt.db.session() as session:
        events = batch_events(session, now, limits)
    for event in events:
        notifier.emit(event)
    return len(events)


def batch_events(session: Session, now: datetime, limits: Thresholds) -> list[WebhookEvent]:
    """The events of the batches whose tasks changed in the last :data:`RECENT` (one query)."""
    status = GenerationTask.status

    rows = session.execute(
        select(
            Batch.id,
            Batch.name,
            Batch.budget_usd,
            Batch.deadline,
            Batch.created_at,
            func.sum(case((status == TaskStatus.COMPLETED.value, 1), else_=0)),
            func.sum(case((status == TaskStatus.FAILED.value, 1), else_=0)),
            func.sum(case((status == TaskStatus.CANCELLED.value, 1), else_=0)),
            func.sum(case((status.in_([TaskStatus.PENDING.value, TaskStatus.PROCESSING.value]), 1), else_=0)),
            func.sum(case((GenerationTask.error_code == ErrorCode.BUDGET_REACHED.value, 1), else_=0)),
            func.coalesce(func.sum(GenerationTask.cost_usd), 0.0),
        )
        .join(GenerationTask, GenerationTask.batch_id == Batch.id)
        .where(Batch.status != BatchStatus.CANCELLED.value)
        .group_by(Batch.id, Batch.name, Batch.budget_usd, Batch.deadline, Batch.created_at)
        .having(func.max(GenerationTask.finished_at) >= now - RECENT)
    ).all()
    events: list[WebhookEvent] = []
    for (
        batch_id,
        name,
        budget,
        deadline,
        created,
        done,
        failed,
        cancelled,
        left,
        waiting,
        spent,
    ) in rows:
        counts = {"completed": int(done or 0), "failed": int(failed or 0), "cancelled": int(cancelled or 0)}
        finished = counts["completed"] + counts["failed"]
        if not left and not unpublished(session, batch_id, now):  # settled: BatchSummary.settled
            events.append(webhooks.batch_finished(name, counts, round(float(spent), 6)))
        if finished >= limits.failure_min_finished and counts["failed"] / finished > limits.failure_rate:
            events.append(webhooks.failure_rate_high(name, counts["failed"], finished, limits.failure_rate))
        if waiting and budget is not None:
            events.append(webhooks.budget_reached(name, float(budget), round(float(spent), 6)))
        if deadline is not None and left:
            eta = _eta(now, created, int(done or 0) + int(failed or 0), int(left))
            if eta is None or eta + timedelta(seconds=limits.deadline_margin) > deadline:
                when = eta.isoformat() if eta else "unknown"
                events.append(webhooks.deadline_at_risk(name, deadline.isoformat(), when, int(left)))
    return events


def _eta(now: datetime, created: datetime, finished: int, left: int) -> datetime | None:
    """When the rest is done at the batch's average pace so far (``None``: no pace yet)."""
    elapsed = (now - created).total_seconds()
    if finished <= 0 or elapsed <= 0:
        return None
    return now + timedelta(seconds=left * elapsed / finished)


def pool_refused(rt: Runtime, pool: str, refused_seconds: float, since: float, reason: str) -> None:
    """``pool.refused`` once per refusal streak (``since``: when the pool's calls started failing),
    past ``NANOBATCH_WEBHOOK_POOL_REFUSED_SECONDS``; called by the worker that sees the refusal."""
    if refused_seconds <= rt.settings.webhook_pool_refused_seconds:
        return
    notifier = notifier_for(rt)
    if notifier is not None:
        event = webhooks.pool_refused(pool, refused_seconds, reason)
        notifier.emit(replace(event, once=f"pool_refused:{pool}:{int(since)}"))
