"""Every status change of a task, each one conditional ``UPDATE … WHERE status = … RETURNING``.

Concurrency safety comes from the database, not from locks in Python: two workers that claim the
same row race on one UPDATE and exactly one gets a row back. A claim hands out a ``claim_token``;
finishing requires the same token, so a worker whose lease expired (and whose row was reclaimed and
claimed again by someone else) cannot overwrite the newer owner's result.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, TypeAlias, cast

from sqlalchemy import (
    BindParameter,
    Connection,
    CursorResult,
    Float,
    Integer,
    Label,
    Row,
    String,
    Table,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from nanobatch.models.base import UTCDateTime, utcnow
from nanobatch.models.lifecycle import dispatched_by_celery, out_of_attempts, runnable_batch_ids
from nanobatch.models.status import BatchStatus, ErrorCode, Lane, TaskStatus
from nanobatch.models.tables import STAGED_RESULT, Batch, GenerationTask

PENDING = TaskStatus.PENDING.value
PROCESSING = TaskStatus.PROCESSING.value
COMPLETED = TaskStatus.COMPLETED.value
FAILED = TaskStatus.FAILED.value
CANCELLED = TaskStatus.CANCELLED.value

#: What the per-task transitions run on: an ORM session, or a plain connection (the worker's hot path,
#: see ``Database.transaction`` / ``Database.autocommit``).
Executor: TypeAlias = Session | Connection

# The per-task statements (claim, extend_lease, complete, fail, requeue, budget) run once or more for
# every delivery, so they are Core statements on the tables, built once here with bound parameters:
# no ORM statement building, no session synchronisation, and a cache key computed once per process
# (SQLAlchemy memoizes it on the statement object). Parameter names carry a ``p_`` prefix so they never
# collide with the parameters SQLAlchemy names after the columns of an UPDATE's SET clause.
_TASKS = cast(Table, GenerationTask.__table__)
_BATCHES = cast(Table, Batch.__table__)


def _rowcount(result: Any) -> int:
    """Rows an UPDATE touched (``Session.execute`` is typed as a plain Result)."""
    return int(cast(CursorResult[Any], result).rowcount or 0)


def _is_due(now: datetime | BindParameter[datetime]) -> Any:
    return or_(_TASKS.c.not_before.is_(None), _TASKS.c.not_before <= now)


def _claimed_fields() -> tuple[Any, ...]:
    """What serving a claimed row needs: its own :data:`CLAIMED_COLUMNS` and its batch's facts (a
    Celery claim returns them; the Batch API lane reads them for the rows its job holds)."""
    return (
        *(_TASKS.c[name] for name in CLAIMED_COLUMNS),
        _batch_fact(_BATCHES.c.name, "batch_name"),
        _batch_fact(_BATCHES.c.reuse, "batch_reuse"),
        _batch_fact(_BATCHES.c.budget_usd, "batch_budget_usd"),
        _batch_fact(_BATCHES.c.window_start, "batch_window_start"),
        _batch_fact(_BATCHES.c.window_end, "batch_window_end"),
        _batch_fact(_BATCHES.c.window_tz, "batch_window_tz"),
        _batch_fact(_BATCHES.c.deadline, "batch_deadline"),
    )


def _batch_fact(column: Any, label: str) -> Label[Any]:
    """One column of the claimed row's batch, as a scalar subquery in the claim's RETURNING."""
    return (
        select(column)
        .where(_BATCHES.c.id == _TASKS.c.batch_id)
        .correlate(_TASKS)
        .scalar_subquery()
        .label(label)
    )


_NOW = bindparam("p_now", type_=UTCDateTime())
_AMOUNT = bindparam("p_amount", type_=Float())

#: What a claim returns: the task columns a worker needs, then its batch's facts (same round trip).
CLAIMED_COLUMNS = (
    "id",
    "claim_token",
    "batch_id",
    "key",
    "prompt",
    "model",
    "image_size",
    "aspect_ratio",
    "output_format",
    "input_images",
    "attempts",
    "error_code",
    "content_hash",
    "upstream_waits",
    "upstream_wait_seconds",
    "day_parks",
    "input_root",
    "input_sha256",
    "lane",
)
_CLAIM = (
    update(_TASKS)
    .where(
        _TASKS.c.id == bindparam("p_task_id"),
        _TASKS.c.status == PENDING,
        _is_due(_NOW),
        _TASKS.c.batch_id.in_(runnable_batch_ids(_NOW)),
        dispatched_by_celery(),  # a batch-lane row is the Batch API lane's, whatever message arrives
    )
    .values(
        status=PROCESSING,
        claim_token=bindparam("p_claim_token"),
        worker=bindparam("p_worker"),
        celery_task_id=bindparam("p_celery_task_id"),
        lease_expires_at=bindparam("p_lease_expires_at"),
        started_at=_NOW,
    )
    .returning(*_claimed_fields())
)


def claim(
    session: Executor,
    task_id: str,
    *,
    worker: str,
    lease_seconds: float,
    celery_task_id: str | None = None,
    now: datetime | None = None,
) -> Row[Any] | None:
    """pending → processing, if due and its batch is runnable; ``None`` when someone else has it.

    Returns the row's :data:`CLAIMED_COLUMNS` and its batch's ``batch_name``, ``batch_reuse``,
    ``batch_budget_usd``, ``batch_window_start``, ``batch_window_end``, ``batch_window_tz`` and
    ``batch_deadline``, read in
    the same statement (one round trip).
    """
    now = now or utcnow()
    params = {
        "p_task_id": task_id,
        "p_now": now,
        "p_claim_token": str(uuid.uuid4()),
        "p_worker": worker,
        "p_celery_task_id": celery_task_id,
        "p_lease_expires_at": now + timedelta(seconds=lease_seconds),
    }
    return session.execute(_CLAIM, params).one_or_none()


def _owned(task_id: str | BindParameter[str], token: str | BindParameter[str]) -> Any:
    """The row is still this claim's: processing, with the claim's token."""
    return and_(
        _TASKS.c.id == task_id,
        _TASKS.c.status == PROCESSING,
        _TASKS.c.claim_token == token,
    )


_OWNED = _owned(bindparam("p_task_id"), bindparam("p_token"))

_EXTEND_LEASE = (
    update(_TASKS)
    .where(_OWNED)
    .values(lease_expires_at=bindparam("p_lease_expires_at"))
    .returning(_TASKS.c.id)
)


def extend_lease(session: Executor, task_id: str, token: str, *, lease_seconds: float) -> bool:
    """Keep a claim alive through a long wait (e.g. for limiter capacity)."""
    params = {
        "p_task_id": task_id,
        "p_token": token,
        "p_lease_expires_at": utcnow() + timedelta(seconds=lease_seconds),
    }
    return session.execute(_EXTEND_LEASE, params).first() is not None


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
    standard_cost_usd: float | None = None  # the same call at the standard price (lanes)


_OUTCOME_FIELDS = tuple(f.name for f in fields(Outcome))
_COMPLETE = (
    update(_TASKS)
    .where(_OWNED)
    .values(
        status=COMPLETED,
        finished_at=bindparam("p_finished_at"),
        lease_expires_at=None,
        error_code=None,
        error_message=None,
        **{name: bindparam(f"p_{name}") for name in _OUTCOME_FIELDS},
    )
    .returning(_TASKS.c.batch_id)
)
# Only budgeted batches keep a running total (their admission reads it); for the others the sum of
# task costs is the truth, and the ``budget_usd IS NOT NULL`` condition keeps every worker thread off
# one hot batch row.
_ADD_SPEND = (
    update(_BATCHES)
    .where(_BATCHES.c.id == bindparam("p_batch_id"), _BATCHES.c.budget_usd.is_not(None))
    .values(spent_usd=_BATCHES.c.spent_usd + _AMOUNT)
)


def complete(session: Executor, task_id: str, token: str, outcome: Outcome) -> bool:
    """processing → completed with the result's facts; ``False`` if the claim was lost."""
    params: dict[str, Any] = {"p_task_id": task_id, "p_token": token, "p_finished_at": utcnow()}
    for name in _OUTCOME_FIELDS:
        params[f"p_{name}"] = getattr(outcome, name)
    row = session.execute(_COMPLETE, params).first()
    if row is not None and outcome.cost_usd:
        session.execute(_ADD_SPEND, {"p_batch_id": row.batch_id, "p_amount": outcome.cost_usd})
    return row is not None


_MOVE_RESULT = (
    update(_TASKS)
    .where(
        _TASKS.c.id == bindparam("p_task_id"),
        _TASKS.c.status == COMPLETED,
        _TASKS.c.result_uri == bindparam("p_old_uri"),
    )
    .values(result_uri=bindparam("p_new_uri"))
    .returning(_TASKS.c.id)
)


def move_result(session: Executor, task_id: str, old_uri: str, new_uri: str) -> bool:
    """Point a completed row from its staged file to the published copy of the same bytes.

    Conditional on the old URI, so it is idempotent and never touches a row another claim completed.
    """
    params = {"p_task_id": task_id, "p_old_uri": old_uri, "p_new_uri": new_uri}
    return session.execute(_MOVE_RESULT, params).first() is not None


@dataclass(frozen=True)
class StagedResult:
    """A completed row still naming its claim's staged file (what the sweeper needs to publish it)."""

    id: str
    batch_name: str
    key: str
    result_uri: str
    mime_type: str


def staged_results(session: Executor, *, finished_before: datetime, limit: int) -> list[StagedResult]:
    """Completed rows recorded on a staged file before ``finished_before``, oldest first.

    The WHERE repeats :data:`~nanobatch.models.tables.STAGED_RESULT` verbatim, so the query reads only
    its partial index (normally empty: a row sits there for the milliseconds between record and publish).
    """
    batch_name = select(_BATCHES.c.name).where(_BATCHES.c.id == _TASKS.c.batch_id).scalar_subquery()
    rows = session.execute(
        select(_TASKS.c.id, batch_name, _TASKS.c.key, _TASKS.c.result_uri, _TASKS.c.mime_type)
        .where(text(STAGED_RESULT), _TASKS.c.finished_at < finished_before)
        .order_by(_TASKS.c.finished_at)
        .limit(limit)
    )
    return [StagedResult(r[0], r[1], r[2], r[3], r[4]) for r in rows]


_RESULT_STATE = select(_TASKS.c.status, _TASKS.c.result_uri, _TASKS.c.claim_token).where(
    _TASKS.c.id == bindparam("p_task_id")
)


def result_state(session: Executor, task_id: str) -> Row[Any] | None:
    """The row's ``status``, ``result_uri`` and ``claim_token`` (what a claim that lost needs to know)."""
    return cast("Row[Any] | None", session.execute(_RESULT_STATE, {"p_task_id": task_id}).one_or_none())


_FAIL = (
    update(_TASKS)
    .where(_OWNED)
    .values(
        status=FAILED,
        finished_at=bindparam("p_finished_at"),
        lease_expires_at=None,
        error_code=bindparam("p_error_code"),
        error_message=bindparam("p_error_message"),
        attempts=_TASKS.c.attempts + bindparam("p_attempts_added", type_=Integer()),
    )
    .returning(_TASKS.c.id)
)


def fail(
    session: Executor, task_id: str, token: str, *, code: str, message: str, count_attempt: bool = True
) -> bool:
    """processing → failed (terminal) with a reason; ``False`` if the claim was lost."""
    params = {
        "p_task_id": task_id,
        "p_token": token,
        "p_finished_at": utcnow(),
        "p_error_code": code,
        "p_error_message": message[:2000],
        "p_attempts_added": 1 if count_attempt else 0,
    }
    return session.execute(_FAIL, params).first() is not None


_REQUEUE = (
    update(_TASKS)
    .where(_OWNED)
    .values(
        status=PENDING,
        not_before=bindparam("p_not_before"),
        lease_expires_at=None,
        claim_token=None,
        dispatched_at=bindparam("p_dispatched_at"),
        error_code=bindparam("p_error_code"),
        error_message=bindparam("p_error_message"),
        attempts=_TASKS.c.attempts + bindparam("p_attempts_added", type_=Integer()),
        rate_waits=_TASKS.c.rate_waits + bindparam("p_rate_waits_added", type_=Integer()),
        upstream_waits=_TASKS.c.upstream_waits + bindparam("p_upstream_waits_added", type_=Integer()),
        upstream_wait_seconds=_TASKS.c.upstream_wait_seconds
        + bindparam("p_upstream_seconds_added", type_=Float()),
        day_parks=_TASKS.c.day_parks + bindparam("p_day_parks_added", type_=Integer()),
        lane=func.coalesce(bindparam("p_lane", type_=String()), _TASKS.c.lane),
    )
    .returning(_TASKS.c.id)
)


def requeue(
    session: Executor,
    task_id: str,
    token: str,
    *,
    not_before: datetime | None,
    count_attempt: bool,
    code: str | None = None,
    message: str | None = None,
    redispatched: bool = False,
    upstream_wait: float | None = None,
    day_park: bool = False,
    lane: str | None = None,
) -> bool:
    """processing → pending, to be tried again no earlier than ``not_before`` (in ``lane`` if given).

    ``count_attempt`` is ``False`` for rate-limit waits: they increment ``rate_waits`` instead, so
    a 429 storm never exhausts a task's error budget. ``redispatched`` says the caller publishes a
    message itself; otherwise the dispatcher publishes the row once it is due (``tasks.dispatch``).
    ``upstream_wait`` (seconds) records a wait the upstream's own 429 asked of this task, ``day_park``
    a park until the daily quota reset: the counters the wait bounds read (``workers.retry``).
    """
    params = {
        "p_task_id": task_id,
        "p_token": token,
        "p_not_before": not_before,
        "p_dispatched_at": utcnow() if redispatched else None,
        "p_error_code": code,
        "p_error_message": message[:2000] if message else None,
        "p_attempts_added": 1 if count_attempt else 0,
        "p_rate_waits_added": 0 if count_attempt else 1,
        "p_upstream_waits_added": 1 if upstream_wait is not None else 0,
        "p_upstream_seconds_added": float(upstream_wait or 0.0),
        "p_day_parks_added": 1 if day_park else 0,
        "p_lane": lane,
    }
    return session.execute(_REQUEUE, params).first() is not None


def reclaim_expired(session: Session, *, max_attempts: int, now: datetime | None = None) -> int:
    """Return processing rows whose lease ran out (their worker died) to pending, or fail them.

    A lost lease counts as an error attempt: a prompt that kills its worker every time must end
    ``failed``, not loop forever.
    """
    now = now or utcnow()
    return _reclaim(
        session,
        and_(GenerationTask.status == PROCESSING, GenerationTask.lease_expires_at < now),
        max_attempts=max_attempts,
        now=now,
        why="worker stopped responding while holding the task (lease expired)",
    )


def processing_holders(session: Session, *, claimed_before: datetime) -> list[str]:
    """The workers holding ``processing`` rows they claimed before ``claimed_before``."""
    stmt = (
        select(GenerationTask.worker)
        .where(
            GenerationTask.status == PROCESSING,
            GenerationTask.worker.is_not(None),
            GenerationTask.started_at < claimed_before,
        )
        .distinct()
    )
    return [worker for worker in session.scalars(stmt) if worker]


def reclaim_from_workers(
    session: Session,
    workers: Sequence[str],
    *,
    claimed_before: datetime,
    max_attempts: int,
    now: datetime | None = None,
) -> int:
    """Return the processing rows of ``workers`` (whose heartbeat stopped) to pending, or fail them.

    Only rows claimed before ``claimed_before`` (when the heartbeats were looked at): a worker that
    claims afterwards is evidently running. Counts an attempt, like an expired lease. If the worker
    was only paused, every write it makes when it wakes up fails on the cleared claim token.
    """
    if not workers:
        return 0
    return _reclaim(
        session,
        and_(
            GenerationTask.status == PROCESSING,
            GenerationTask.worker.in_(list(workers)),
            GenerationTask.started_at < claimed_before,
        ),
        max_attempts=max_attempts,
        now=now or utcnow(),
        why="worker stopped heartbeating while holding the task (died or paused)",
    )


def _reclaim(session: Session, which: Any, *, max_attempts: int, now: datetime, why: str) -> int:
    """processing → failed (out of attempts) or pending for the rows ``which`` selects."""
    failed = _rowcount(
        session.execute(
            update(GenerationTask)
            .where(which, out_of_attempts(GenerationTask.attempts + 1, max_attempts))
            .values(
                status=FAILED,
                finished_at=now,
                attempts=GenerationTask.attempts + 1,
                lease_expires_at=None,
                claim_token=None,
                error_code=ErrorCode.LEASE_EXPIRED.value,
                error_message=f"{why}, too often",
            )
        )
    )
    requeued = _rowcount(
        session.execute(
            update(GenerationTask)
            .where(which)
            .values(
                status=PENDING,
                attempts=GenerationTask.attempts + 1,
                lease_expires_at=None,
                claim_token=None,
                dispatched_at=None,
                not_before=None,
                error_code=ErrorCode.LEASE_EXPIRED.value,
                error_message=f"{why}; retrying",
            )
        )
    )
    return failed + requeued


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


def retry_failed(session: Session, batch_id: str, *, error_code: ErrorCode | None = None) -> list[str]:
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
            upstream_waits=0,
            upstream_wait_seconds=0.0,
            day_parks=0,
            not_before=None,
            dispatched_at=None,
            finished_at=None,
            error_code=None,
            error_message=None,
        )
        .returning(GenerationTask.id)
    )
    return list(session.scalars(stmt))


def back_to_pending(dispatched_at: datetime | None = None) -> dict[str, Any]:
    """The SET clause that gives a row a fresh start (``submit --update``, ``regenerate``).

    The previous result columns (``result_uri``, ``result_sha256``, sizes, ``cost_usd``, ``model_used``)
    are left alone: the old image stays readable and exported until :func:`complete` records the new
    one, and stays if the new call fails. A ``processing`` row loses its claim (its worker's write is
    refused by the token check), so the new content wins.
    """
    return {
        "status": PENDING,
        "attempts": 0,
        "rate_waits": 0,
        "not_before": None,
        "lease_expires_at": None,
        "claim_token": None,
        "dispatched_at": dispatched_at,
        "finished_at": None,
        "error_code": None,
        "error_message": None,
    }


def regenerate(
    session: Session,
    batch_id: str,
    *,
    statuses: Sequence[str] = (COMPLETED, FAILED),
    keys: Sequence[str] | None = None,
) -> list[str]:
    """completed|failed → pending with fresh attempts (operator action); returns the ids moved.

    Same content, a new image: the previous result stays until the new one is recorded.
    """
    conditions = [GenerationTask.batch_id == batch_id, GenerationTask.status.in_(list(statuses))]
    if keys is not None:
        conditions.append(GenerationTask.key.in_(list(keys)))
    stmt = (
        update(GenerationTask)
        .where(*conditions)
        .values(**back_to_pending())
        .returning(GenerationTask.id)
        .execution_options(synchronize_session=False)
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


_RESERVE_BUDGET = (
    update(_BATCHES)
    .where(
        _BATCHES.c.id == bindparam("p_batch_id"),
        or_(
            _BATCHES.c.budget_usd.is_(None),
            _BATCHES.c.spent_usd + _BATCHES.c.reserved_usd + _AMOUNT <= _BATCHES.c.budget_usd,
        ),
    )
    .values(reserved_usd=_BATCHES.c.reserved_usd + _AMOUNT)
    .returning(_BATCHES.c.id)
)
_RELEASE_BUDGET = (
    update(_BATCHES)
    .where(_BATCHES.c.id == bindparam("p_batch_id"))
    .values(reserved_usd=_BATCHES.c.reserved_usd - _AMOUNT)
)


def reserve_budget(session: Executor, batch_id: str, amount: float) -> bool:
    """Reserve spend for one call if the batch's budget allows it (always true without a budget)."""
    return session.execute(_RESERVE_BUDGET, {"p_batch_id": batch_id, "p_amount": amount}).first() is not None


def release_budget(session: Executor, batch_id: str, amount: float) -> None:
    session.execute(_RELEASE_BUDGET, {"p_batch_id": batch_id, "p_amount": amount})


# --- the Batch API lane (tasks/batch_lane.py) ------------------------------------------------------

#: A task in an upstream job is held this long before the sweeper may reclaim it: the Batch API's
#: 48 h expiry plus a margin (the poller normally hands it back long before).
BATCH_JOB_LEASE = timedelta(hours=50)


def claim_for_batch_job(
    session: Session,
    *,
    batch_id: str,
    model: str,
    job_id: str,
    limit: int,
    now: datetime | None = None,
) -> list[str]:
    """pending → processing for up to ``limit`` due batch-lane rows of one batch and model, owned by
    the upstream job ``job_id`` (its id is their claim token). Ids in order (the order sent)."""
    now = now or utcnow()
    # Chosen first (locked, skipping rows another builder holds), then moved: an ``IN (SELECT … LIMIT
    # … FOR UPDATE SKIP LOCKED)`` inside the UPDATE may be evaluated more than once and move more.
    chosen = list(
        session.scalars(
            select(_TASKS.c.id)
            .where(
                _TASKS.c.batch_id == batch_id,
                _TASKS.c.model == model,
                _TASKS.c.status == PENDING,
                _TASKS.c.lane == Lane.BATCH.value,
                _is_due(now),
            )
            .order_by(_TASKS.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not chosen:
        return []
    stmt = (
        update(_TASKS)
        .where(_TASKS.c.id.in_(chosen), _TASKS.c.status == PENDING)
        .values(
            status=PROCESSING,
            batch_job_id=job_id,
            claim_token=job_id,
            worker=None,  # no worker holds it: the heartbeat reclaim must leave it alone
            lease_expires_at=now + BATCH_JOB_LEASE,
            started_at=now,
        )
        .returning(_TASKS.c.id)
    )
    return sorted(session.scalars(stmt))


def due_batch_lane_groups(
    session: Session, *, now: datetime, exclude_batches: Sequence[str] = ()
) -> list[Row[Any]]:
    """``(batch_id, model, n)`` of due pending batch-lane rows of runnable batches."""
    conditions = [
        _TASKS.c.status == PENDING,
        _TASKS.c.lane == Lane.BATCH.value,
        _is_due(now),
        _TASKS.c.batch_id.in_(runnable_batch_ids(now)),
    ]
    if exclude_batches:
        conditions.append(_TASKS.c.batch_id.not_in(list(exclude_batches)))
    stmt = (
        select(_TASKS.c.batch_id, _TASKS.c.model, func.count().label("n"))
        .where(*conditions)
        .group_by(_TASKS.c.batch_id, _TASKS.c.model)
    )
    return list(session.execute(stmt))


def job_task_rows(session: Executor, job_id: str, task_ids: Sequence[str]) -> list[Row[Any]]:
    """The rows of ``task_ids`` still held by upstream job ``job_id``, with the columns and batch facts
    a claim returns (so the worker's finishing path can serve them)."""
    stmt = select(*_claimed_fields()).where(
        _TASKS.c.id.in_(list(task_ids)),
        _TASKS.c.batch_job_id == job_id,
        _TASKS.c.status == PROCESSING,
        _TASKS.c.claim_token == job_id,
    )
    return list(session.execute(stmt))


def job_task_ids(session: Executor, job_id: str, *, only_held: bool = False) -> list[str]:
    """The ids of upstream job ``job_id``'s tasks, in the order sent (``only_held``: still waiting)."""
    conditions = [_TASKS.c.batch_job_id == job_id]
    if only_held:
        conditions += [_TASKS.c.status == PROCESSING, _TASKS.c.claim_token == job_id]
    return list(session.scalars(select(_TASKS.c.id).where(*conditions).order_by(_TASKS.c.id)))


def release_job_tasks(
    session: Session,
    job_id: str,
    *,
    lane: str,
    max_attempts: int,
    count_attempt: bool,
    code: str,
    message: str,
    now: datetime | None = None,
    task_ids: Sequence[str] | None = None,
) -> int:
    """processing → pending in ``lane`` for the tasks upstream job ``job_id`` still holds (it ended
    without answering them); with ``count_attempt``, a task out of attempts ends ``failed`` instead."""
    now = now or utcnow()
    which = and_(
        _TASKS.c.batch_job_id == job_id, _TASKS.c.status == PROCESSING, _TASKS.c.claim_token == job_id
    )
    if task_ids is not None:
        which = and_(which, _TASKS.c.id.in_(list(task_ids)))
    added = 1 if count_attempt else 0
    failed = 0
    if count_attempt:
        failed = _rowcount(
            session.execute(
                update(_TASKS)
                .where(which, out_of_attempts(_TASKS.c.attempts + 1, max_attempts))
                .values(
                    status=FAILED,
                    finished_at=now,
                    attempts=_TASKS.c.attempts + 1,
                    lease_expires_at=None,
                    claim_token=None,
                    error_code=code,
                    error_message=f"{message}, too often"[:2000],
                )
            )
        )
    moved = _rowcount(
        session.execute(
            update(_TASKS)
            .where(which)
            .values(
                status=PENDING,
                lane=lane,
                attempts=_TASKS.c.attempts + added,
                lease_expires_at=None,
                claim_token=None,
                dispatched_at=None,
                not_before=None,
                error_code=code,
                error_message=message[:2000],
            )
        )
    )
    return failed + moved


def move_lane(
    session: Session, batch_id: str, *, from_lane: str, to_lane: str, limit: int | None = None
) -> int:
    """Pending tasks of a batch from one lane to another (the deadline planner re-planning)."""
    chosen = select(_TASKS.c.id).where(
        _TASKS.c.batch_id == batch_id, _TASKS.c.status == PENDING, _TASKS.c.lane == from_lane
    )
    if limit is not None:
        chosen = chosen.order_by(_TASKS.c.id).limit(limit)
    ids = list(session.scalars(chosen))
    if not ids:
        return 0
    stmt = (
        update(_TASKS)
        .where(_TASKS.c.id.in_(ids), _TASKS.c.status == PENDING)
        .values(lane=to_lane, dispatched_at=None, error_code=ErrorCode.LANE_CHANGED.value)
    )
    return _rowcount(session.execute(stmt))
