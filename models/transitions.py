"""Every status change of a task, each one conditional ``UPDATE … WHERE status = … RETURNING``.

Concurrency safety comes from the database, not from locks in Python: two workers that claim the
same row race on one UPDATE and exactly one gets a row back. A claim hands out a ``claim_token``;
finishing requires the same token, so a worker whose lease expired (and whose row was reclaimed and
claimed again by someone else) cannot overwrite the newer owner's result.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, or_, select, update
from sqlalchemy.orm import Session

from models.base import utcnow
from models.status import BatchStatus, TaskStatus
from models.tables import Batch, GenerationTask

PENDING = TaskStatus.PENDING.value
PROCESSING = TaskStatus.PROCESSING.value
COMPLETED = TaskStatus.COMPLETED.value
FAILED = TaskStatus.FAILED.value
CANCELLED = TaskStatus.CANCELLED.value


def _rowcount(result: Any) -> int:
    """Rows an UPDATE touched (``Session.execute`` is typed as a plain Result)."""
    return int(cast(CursorResult[Any], result).rowcount or 0)


def _is_due(now: datetime) -> Any:
    return or_(GenerationTask.not_before.is_(None), GenerationTask.not_before <= now)


def _runnable_batches(now: datetime) -> Any:
    """Batches whose tasks may start now: open (not paused/cancelled) and past their start time."""
    return select(Batch.id).where(
        Batch.status == BatchStatus.OPEN.value,
        or_(Batch.scheduled_for.is_(None), Batch.scheduled_for <= now),
    )


def claim(
    session: Session,
    task_id: str,
    *,
    worker: str,
    lease_seconds: float,
    celery_task_id: str | None = None,
    now: datetime | None = None,
) -> GenerationTask | None:
    """pending → processing, if due; returns the claimed row or ``None`` when someone else has it."""
    now = now or utcnow()
    stmt = (
        update(GenerationTask)
        .where(
            GenerationTask.id == task_id,
            GenerationTask.status == PENDING,
            _is_due(now),
            GenerationTask.batch_id.in_(_runnable_batches(now)),
        )
        .values(
            status=PROCESSING,
            claim_token=str(uuid.uuid4()),
            worker=worker,
            celery_task_id=celery_task_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now,
        )
        .returning(GenerationTask)
    )
    return session.scalars(stmt).one_or_none()


def extend_lease(session: Session, task_id: str, token: str, *, lease_seconds: float) -> bool:
    """Keep a claim alive through a long wait (e.g. for limiter capacity)."""
    stmt = (
        update(GenerationTask)
        .where(
            GenerationTask.id == task_id,
            GenerationTask.status == PROCESSING,
            GenerationTask.claim_token == token,
        )
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .returning(GenerationTask.id)
    )
    return session.execute(stmt).first() is not None


@dataclass(frozen=True)
class Outcome:
    """What a successful generation produced (all optional beyond the stored file)."""

    result_uri: str
    result_sha256: str
    mime_type: str
    width: int
    height: int
    bytes: int
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float = 0.0
    latency_ms: int | None = None
    model_used: str | None = None


def _owned(task_id: str, token: str) -> Any:
    return and_(
        GenerationTask.id == task_id,
        GenerationTask.status == PROCESSING,
        GenerationTask.claim_token == token,
    )


def complete(session: Session, task_id: str, token: str, outcome: Outcome) -> bool:
    """processing → completed with the result's facts; ``False`` if the claim was lost."""
    stmt = (
        update(GenerationTask)
        .where(_owned(task_id, token))
        .values(
            status=COMPLETED,
            finished_at=utcnow(),
            lease_expires_at=None,
            error_code=None,
            error_message=None,
            **outcome.__dict__,
        )
        .returning(GenerationTask.batch_id)
    )
    row = session.execute(stmt).first()
    if row is not None and outcome.cost_usd:
        session.execute(
            # Only budgeted batches keep a running total (their admission reads it); for the others the
            # sum of task costs is the truth, and skipping this UPDATE keeps every worker thread off
            # one hot batch row.
            update(Batch)
            .where(Batch.id == row.batch_id, Batch.budget_usd.is_not(None))
            .values(spent_usd=Batch.spent_usd + outcome.cost_usd)
        )
    return row is not None


def fail(
    session: Session, task_id: str, token: str, *, code: str, message: str, count_attempt: bool = True
) -> bool:
    """processing → failed (terminal) with a reason; ``False`` if the claim was lost."""
    stmt = (
        update(GenerationTask)
        .where(_owned(task_id, token))
        .values(
            status=FAILED,
            finished_at=utcnow(),
            lease_expires_at=None,
            error_code=code,
            error_message=message[:2000],
            attempts=GenerationTask.attempts + (1 if count_attempt else 0),
        )
        .returning(GenerationTask.id)
    )
    return session.execute(stmt).first() is not None


def requeue(
    session: Session,
    task_id: str,
    token: str,
    *,
    not_before: datetime | None,
    count_attempt: bool,
    code: str | None = None,
    message: str | None = None,
    redispatched: bool = False,
) -> bool:
    """processing → pending, to be tried again no earlier than ``not_before``.

    ``count_attempt`` is ``False`` for rate-limit waits: they increment ``rate_waits`` instead, so
    a 429 storm never exhausts a task's error budget. ``redispatched`` says the caller publishes a
    (delayed) message itself; otherwise the sweeper dispatches the row once it is due.
    """
    values: dict[str, Any] = {
        "status": PENDING,
        "not_before": not_before,
        "lease_expires_at": None,
        "claim_token": None,
        "dispatched_at": utcnow() if redispatched else None,
        "error_code": code,
        "error_message": message[:2000] if message else None,
    }
    if count_attempt:
        values["attempts"] = GenerationTask.attempts + 1
    else:
        values["rate_waits"] = GenerationTask.rate_waits + 1
    stmt = update(GenerationTask).where(_owned(task_id, token)).values(**values).returning(GenerationTask.id)
    return session.execute(stmt).first() is not None


def reclaim_expired(session: Session, *, max_attempts: int, now: datetime | None = None) -> int:
    """Return processing rows whose lease ran out (their worker died) to pending, or fail them.

    A lost lease counts as an error attempt: a prompt that kills its worker every time must end
    ``failed``, not loop forever.
    """
    now = now or utcnow()
    expired = and_(GenerationTask.status == PROCESSING, GenerationTask.lease_expires_at < now)
    failed = _rowcount(
        session.execute(
            update(GenerationTask)
            .where(expired, GenerationTask.attempts + 1 >= max_attempts)
            .values(
                status=FAILED,
                finished_at=now,
                attempts=GenerationTask.attempts + 1,
                lease_expires_at=None,
                claim_token=None,
                error_code="lease_expired",
                error_message="worker stopped responding while holding the task (lease expired) too often",
            )
        )
    )
    requeued = _rowcount(
        session.execute(
            update(GenerationTask)
            .where(expired)
            .values(
                status=PENDING,
                attempts=GenerationTask.attempts + 1,
                lease_expires_at=None,
                claim_token=None,
                dispatched_at=None,
                not_before=None,
                error_code="lease_expired",
                error_message="worker stopped responding while holding the task; retrying",
            )
        )
    )
    return failed + requeued


def due_for_dispatch(
    session: Session,
    *,
    older_than: datetime,
    now: datetime | None = None,
    limit: int = 2000,
    exclude_batches: Sequence[str] = (),
) -> list[str]:
    """Due pending rows of runnable batches whose last dispatch is missing or older than ``older_than``.

    Oldest dispatch first, so rows that never had a message (or lost it longest ago) go first.
    """
    now = now or utcnow()
    conditions = [
        GenerationTask.status == PENDING,
        _is_due(now),
        GenerationTask.batch_id.in_(_runnable_batches(now)),
        or_(GenerationTask.dispatched_at.is_(None), GenerationTask.dispatched_at < older_than),
    ]
    if exclude_batches:
        conditions.append(GenerationTask.batch_id.not_in(list(exclude_batches)))
    stmt = (
        select(GenerationTask.id)
        .where(*conditions)
        .order_by(GenerationTask.dispatched_at.is_not(None), GenerationTask.dispatched_at, GenerationTask.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def mark_dispatched(session: Session, task_ids: Sequence[str], *, now: datetime | None = None) -> None:
    now = now or utcnow()
    for start in range(0, len(task_ids), 1000):
        chunk = list(task_ids[start : start + 1000])
        session.execute(update(GenerationTask).where(GenerationTask.id.in_(chunk)).values(dispatched_at=now))


def cancel_batch(session: Session, batch_id: str) -> int:
    """pending|processing → cancelled for a whole batch; a worker mid-call loses its claim."""
    session.execute(update(Batch).where(Batch.id == batch_id).values(status=BatchStatus.CANCELLED.value))
    return _rowcount(
        session.execute(
            update(GenerationTask)
            .where(GenerationTask.batch_id == batch_id, GenerationTask.status.in_([PENDING, PROCESSING]))
            .values(status=CANCELLED, finished_at=utcnow(), lease_expires_at=None, claim_token=None)
        )
    )


def retry_failed(session: Session, batch_id: str, *, error_code: str | None = None) -> list[str]:
    """failed → pending with a fresh attempt budget (operator action); returns the ids moved."""
    conditions = [GenerationTask.batch_id == batch_id, GenerationTask.status == FAILED]
    if error_code:
        conditions.append(GenerationTask.error_code == error_code)
    stmt = (
        update(GenerationTask)
        .where(*conditions)
        .values(
            status=PENDING,
            attempts=0,
            rate_waits=0,
            not_before=None,
            dispatched_at=None,
            finished_at=None,
            error_code=None,
            error_message=None,
        )
        .returning(GenerationTask.id)
    )
    return list(session.scalars(stmt))


def set_batch_status(session: Session, batch_id: str, status: BatchStatus, *, expect: BatchStatus) -> bool:
    stmt = (
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == expect.value)
        .values(status=status.value)
        .returning(Batch.id)
    )
    return session.execute(stmt).first() is not None


def reserve_budget(session: Session, batch_id: str, amount: float) -> bool:
    """Reserve spend for one call if the batch's budget allows it (always true without a budget)."""
    stmt = (
        update(Batch)
        .where(
            Batch.id == batch_id,
            or_(
                Batch.budget_usd.is_(None), Batch.spent_usd + Batch.reserved_usd + amount <= Batch.budget_usd
            ),
        )
        .values(reserved_usd=Batch.reserved_usd + amount)
        .returning(Batch.id)
    )
    return session.execute(stmt).first() is not None


def release_budget(session: Session, batch_id: str, amount: float) -> None:
    session.execute(
        update(Batch).where(Batch.id == batch_id).values(reserved_usd=Batch.reserved_usd - amount)
    )
