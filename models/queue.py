"""The queue of record: the dispatcher's queries on ``generation_tasks`` (docs/architecture.md, "Dispatch").

A ``pending`` row is in one of three places, each with a partial index of its own
(``models/tables.py``), so every query here is an index range whatever the table holds:

- *fresh* (``dispatched_at`` and ``not_before`` empty): waiting for the window, in id order per pool
  (= the canonical ``model``) and batch;
- *later* (``not_before`` set, no message): a retry or a park, published once due;
- *in flight* (``dispatched_at`` set): a message is out. Their number per pool is the window's
  occupancy, counted in the database, so a Redis flush cannot make the window look empty and
  over-fill it; the sweeper re-publishes those whose message is gone.

Listing the pools and batches that have fresh rows is a "loose index scan" (a recursive query that
jumps from one distinct value to the next), so it costs one index probe per pool or batch, not one
per row; PostgreSQL and SQLite both run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, func, select, text, update
from sqlalchemy.orm import Session

from nanobatch.models.lifecycle import runnable_batch_ids
from nanobatch.models.status import BatchStatus, TaskStatus
from nanobatch.models.tables import (
    CELERY_LANE_SQL,
    IN_FLIGHT,
    QUEUED_FRESH,
    QUEUED_LATER,
    Batch,
    GenerationTask,
)

_TASKS = cast(Table, GenerationTask.__table__)
_BATCHES = cast(Table, Batch.__table__)
PENDING = TaskStatus.PENDING.value
#: The largest ``batches.weight`` (a round of the weighted round robin has sum(weights) slots).
MAX_WEIGHT = 100


def _fresh() -> Any:
    return text(QUEUED_FRESH)


def _distinct_via_index(session: Session, column: str, where: str, params: dict[str, Any]) -> list[str]:
    """Distinct values of ``column`` among rows matching ``where``, one index probe per value."""
    sql = text(
        f"""
        WITH RECURSIVE found(v) AS (
            SELECT (SELECT MIN({column}) FROM generation_tasks WHERE {where})
            UNION ALL
            SELECT (SELECT MIN({column}) FROM generation_tasks WHERE {where} AND {column} > found.v)
            FROM found WHERE found.v IS NOT NULL
        )
        SELECT v FROM found WHERE v IS NOT NULL
        """
    )
    return [row[0] for row in session.execute(sql, params)]


def pools_with_fresh_rows(session: Session) -> list[str]:
    """The pools (canonical model names) that have rows waiting for the window."""
    return _distinct_via_index(session, "model", QUEUED_FRESH, {})


def batches_with_fresh_rows(session: Session, pool: str) -> list[str]:
    """The batches with rows of ``pool`` waiting for the window."""
    return _distinct_via_index(session, "batch_id", f"model = :pool AND {QUEUED_FRESH}", {"pool": pool})


def fresh_rows(session: Session, pool: str, batch_id: str, limit: int) -> list[str]:
    """The first ``limit`` undispatched rows of ``pool`` in ``batch_id``, in id order."""
    stmt = (
        select(_TASKS.c.id)
        .where(_TASKS.c.model == pool, _TASKS.c.batch_id == batch_id, _fresh())
        .order_by(_TASKS.c.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def due_later_rows(session: Session, now: datetime, limit: int) -> list[tuple[str, str, str]]:
    """Parked rows (retries, waits) whose ``not_before`` passed, of batches that may run (open, past
    their start; the daily window is the caller's): (id, model, batch_id), oldest first. The batch
    condition keeps a paused batch's due rows from taking every one of the ``limit`` places."""
    stmt = (
        select(_TASKS.c.id, _TASKS.c.model, _TASKS.c.batch_id)
        .where(
            text(QUEUED_LATER),
            _TASKS.c.not_before <= now,
            _TASKS.c.batch_id.in_(runnable_batch_ids(now)),
        )
        .order_by(_TASKS.c.not_before)
        .limit(limit)
    )
    return [(row.id, row.model, row.batch_id) for row in session.execute(stmt)]


def in_flight_count(session: Session, pool: str) -> int:
    """Rows of ``pool`` with a message out: the window's occupancy."""
    stmt = select(func.count()).select_from(_TASKS).where(_TASKS.c.model == pool, text(IN_FLIGHT))
    return int(session.scalar(stmt) or 0)


def claimed_count(session: Session, pool: str) -> int:
    """Rows of ``pool`` a Celery worker holds (``processing``): waiting at the pool's gate or calling.
    Rows a Batch API job holds are ``processing`` too, for hours, and take no worker thread."""
    stmt = (
        select(func.count())
        .select_from(_TASKS)
        .where(_TASKS.c.status == "processing", _TASKS.c.model == pool, text(CELERY_LANE_SQL))
    )
    return int(session.scalar(stmt) or 0)


def in_flight_older_than(session: Session, older_than: datetime, limit: int) -> list[tuple[str, str]]:
    """Rows with a message out since before ``older_than``: (id, batch_id), oldest first (whose
    message the sweeper checks in Redis)."""
    stmt = (
        select(_TASKS.c.id, _TASKS.c.batch_id)
        .where(text(IN_FLIGHT), _TASKS.c.dispatched_at < older_than)
        .order_by(_TASKS.c.dispatched_at)
        .limit(limit)
    )
    return [(row.id, row.batch_id) for row in session.execute(stmt)]


def stamp_dispatched(session: Session, task_ids: Sequence[str], now: datetime) -> list[str]:
    """Mark rows as having a message out; returns those still ``pending`` (the ones to publish)."""
    if not task_ids:
        return []
    stmt = (
        update(_TASKS)
        .where(_TASKS.c.id.in_(list(task_ids)), _TASKS.c.status == PENDING)
        .values(dispatched_at=now)
        .returning(_TASKS.c.id)
    )
    return list(session.scalars(stmt))


def back_in_queue(session: Session | Connection, task_ids: Sequence[str]) -> int:
    """Forget the message of rows that are still ``pending`` (it was dropped, or lost while their
    batch could not run), so the dispatcher sends them again when their batch may run."""
    if not task_ids:
        return 0
    stmt = (
        update(_TASKS)
        .where(_TASKS.c.id.in_(list(task_ids)), _TASKS.c.status == PENDING)
        .values(dispatched_at=None)
        .returning(_TASKS.c.id)
    )
    return len(list(session.scalars(stmt)))


def set_priority(session: Session, batch_id: str, priority: int, weight: int | None = None) -> bool:
    """Change a batch's dispatch priority (and weight); only an open or paused batch."""
    values: dict[str, int] = {"priority": priority}
    if weight is not None:
        values["weight"] = weight
    stmt = (
        update(_BATCHES)
        .where(
            _BATCHES.c.id == batch_id,
            _BATCHES.c.status.in_([BatchStatus.OPEN.value, BatchStatus.PAUSED.value]),
        )
        .values(**values)
        .returning(_BATCHES.c.id)
    )
    return session.execute(stmt).first() is not None
