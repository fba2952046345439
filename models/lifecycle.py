"""The lifecycle rules, each written once: the attempt cap, "may this batch run now", dispatch, and
which lane a task goes through (and to which lane it moves when its lane let it down).

Everything that moves a task consults these (the worker, the sweeper, the producer, the operator
actions, the Python API), so a rule changes in one place. Nothing here knows Celery: dispatching
publishes through a :class:`Publisher`, which the Celery side implements
(``nanobatch.tasks.celeryapp.publisher``) and tests can fake. See docs/architecture.md, "Lifecycle".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import ColumnElement, Select, Table, or_, select, update
from sqlalchemy.orm import Session

from nanobatch.models.base import utcnow
from nanobatch.models.db import Database
from nanobatch.models.schedule import outside_window
from nanobatch.models.status import CELERY_LANES, BatchStatus, Lane
from nanobatch.models.tables import Batch, GenerationTask

_TASKS = cast(Table, GenerationTask.__table__)
_BATCHES = cast(Table, Batch.__table__)

# --- the attempt cap -------------------------------------------------------------------------------

A = TypeVar("A")


def out_of_attempts(attempts_used: A, max_attempts: int) -> A:
    """Whether a task that has used ``attempts_used`` error attempts may not be tried again.

    Works on a number (the worker's retry policy) and on a SQL column expression (the sweeper's
    ``UPDATE`` of expired leases), so both read the same rule. Rate-limit waits never count.
    """
    return cast(A, attempts_used >= max_attempts)  # type: ignore[operator]


# --- may this batch run now ------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchGate:
    """The batch facts that decide whether its tasks may start."""

    status: str
    scheduled_for: datetime | None = None
    window_start: str | None = None
    window_end: str | None = None
    window_tz: str | None = None

    @classmethod
    def of(cls, batch: Any) -> BatchGate:
        """From anything with the batch's columns (an ORM ``Batch``, a row)."""
        return cls(
            status=batch.status,
            scheduled_for=batch.scheduled_for,
            window_start=batch.window_start,
            window_end=batch.window_end,
            window_tz=batch.window_tz,
        )


def why_batch_waits(gate: BatchGate, now: datetime | None = None) -> str | None:
    """Why the batch's tasks may not start at ``now``; ``None`` when they may."""
    now = now or utcnow()
    if gate.status != BatchStatus.OPEN.value:
        return f"the batch is {gate.status}"
    if gate.scheduled_for is not None and gate.scheduled_for > now:
        return "the batch is before its start time"
    if outside_window(now, gate.window_start, gate.window_end, gate.window_tz or "UTC"):
        return "the batch is outside its window"
    return None


def runnable_batch_ids(now: Any) -> Select[Any]:
    """:func:`why_batch_waits` as SQL, minus the window (a time-zone computation the database cannot
    share across dialects): the claim runs it in its ``UPDATE``, then the window is checked in
    Python; the sweeper excludes :func:`batches_outside_window`."""
    return select(_BATCHES.c.id).where(
        _BATCHES.c.status == BatchStatus.OPEN.value,
        or_(_BATCHES.c.scheduled_for.is_(None), _BATCHES.c.scheduled_for <= now),
    )


def batches_outside_window(session: Session, now: datetime) -> list[str]:
    """Open batches with a window that is closed at ``now``."""
    rows = session.execute(
        select(Batch.id, Batch.window_start, Batch.window_end, Batch.window_tz).where(
            Batch.window_start.is_not(None), Batch.status == BatchStatus.OPEN.value
        )
    )
    return [bid for bid, start, end, tz in rows if outside_window(now, start, end, tz or "UTC")]


# --- lanes ---------------------------------------------------------------------------------------


def dispatched_by_celery(lane_column: Any = None) -> ColumnElement[bool]:
    """:data:`CELERY_LANES` as SQL, on ``generation_tasks.lane`` (or the given column)."""
    column = _TASKS.c.lane if lane_column is None else lane_column
    return cast(ColumnElement[bool], column.in_(sorted(lane.value for lane in CELERY_LANES)))


def goes_through_celery(lane: str) -> bool:
    """:data:`CELERY_LANES` on one value (the producer's rows before they are written)."""
    return lane in CELERY_LANES


#: Failed tries on flex after which a task with a deadline near moves to standard.
FLEX_FAILURES_BEFORE_STANDARD = 2
#: "Near": the batch's deadline is less than this far away.
FLEX_DEADLINE_SLACK = timedelta(hours=1)


def lane_after_failure(
    lane: str,
    *,
    attempts_used: int,
    deadline: datetime | None,
    now: datetime | None = None,
    slack: timedelta = FLEX_DEADLINE_SLACK,
) -> str:
    """The lane a task tries next after its lane let it down (an error, a job that ended unfinished).

    A batch job that failed, expired or was cancelled hands its tasks to flex: the same price, an
    answer in minutes. A task that keeps failing on flex (capacity errors) moves to standard when its
    batch's deadline needs it; without a deadline it stays on the cheap lane.
    """
    if lane == Lane.BATCH:
        return Lane.FLEX.value
    keeps_failing = lane == Lane.FLEX and attempts_used >= FLEX_FAILURES_BEFORE_STANDARD
    if keeps_failing and deadline is not None and deadline - (now or utcnow()) < slack:
        return Lane.STANDARD.value
    return lane


# --- dispatch --------------------------------------------------------------------------------------


class Publisher(Protocol):
    """Whatever carries task ids to workers (Celery in production)."""

    def publish(self, task_ids: Sequence[str], *, countdown: float | None = None) -> int: ...


class Dispatch(Publisher, Protocol):
    """A publisher that also keeps the broker's window full from the database (``tasks.dispatch``)."""

    #: The previous design (bench only): submit publishes every row at once instead of a window.
    publish_all: bool

    def fill(self) -> int:
        """Top up every pool's window; returns how many messages were published."""
        ...


STAMP_CHUNK = 1000


def stamp_dispatched(session: Session, task_ids: Sequence[str], *, now: datetime | None = None) -> None:
    """Record that a message for each row is about to be published (the sweeper's "live" test)."""
    now = now or utcnow()
    for start in range(0, len(task_ids), STAMP_CHUNK):
        chunk = list(task_ids[start : start + STAMP_CHUNK])
        session.execute(update(_TASKS).where(_TASKS.c.id.in_(chunk)).values(dispatched_at=now))


def dispatch(
    db: Database | None,
    publisher: Publisher,
    task_ids: Sequence[str],
    *,
    countdown: float | None = None,
    now: datetime | None = None,
) -> int:
    """Stamp ``dispatched_at`` and publish one message per id; returns how many were published.

    The stamp is committed before the messages go out: if publishing then fails half-way, the rows
    are pending with no live message and the sweeper publishes them again (a duplicate message is
    harmless: the claim lets one copy run). Pass ``db=None`` when the statement that made the rows
    pending already stamped them (the producer's insert, a worker's requeue).
    """
    if not task_ids:
        return 0
    if db is not None:
        with db.session() as session:
            stamp_dispatched(session, task_ids, now=now)
    return publisher.publish(task_ids, countdown=countdown)
