"""Operator actions on a batch (retry, cancel, pause, resume, priority) for the CLI and the Python API.

Each action is a conditional UPDATE in :mod:`nanobatch.models.transitions`, so it is safe while
workers run. What a worker may do is decided at claim time (a claim needs a pending row of an *open*
batch), so pausing stops the dispatcher at once and drops the few messages already in the window as
they arrive; resuming, retrying and a priority change fill the dispatcher's window (``tasks.dispatch``)
when the batch may run now (:func:`~nanobatch.models.lifecycle.why_batch_waits`); otherwise the
workers' refills do it later. In
embedded mode (no Redis) nothing is published here: the in-memory broker dies with this process,
and the embedded worker's sweeper dispatches pending rows from the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from nanobatch.models import queue, transitions
from nanobatch.models.lifecycle import BatchGate, why_batch_waits
from nanobatch.models.queries import find_batch
from nanobatch.models.status import BatchStatus, ErrorCode, TaskStatus
from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.tasks.runtime import Runtime


class OperationError(ValueError):
    """The action cannot be done (no such batch, wrong state); the message says why."""


@dataclass(frozen=True)
class ActionResult:
    """What an action changed: ``moved`` tasks, ``dispatched`` messages, and why none were, if so."""

    moved: int
    dispatched: int = 0
    not_dispatched_because: str | None = None
    already: bool = False  # pause of a paused batch, resume of an open one: nothing to do


def require_batch(session: Session, name: str) -> Batch:
    """The batch called ``name``, or :class:`OperationError`."""
    batch = find_batch(session, name)
    if batch is None:
        raise OperationError(f"no batch named {name!r} (see `nanobatch status` for the list)")
    return batch


def why_not_dispatch_now(rt: Runtime, gate: BatchGate) -> str | None:
    """Why this process must not publish the batch's rows now (``None``: it should)."""
    if rt.settings.embedded:
        return "Embedded mode: the worker's sweeper dispatches pending tasks."
    why = why_batch_waits(gate)
    return f"{why[0].upper()}{why[1:]}: its tasks are dispatched when it may run." if why else None


def retry_batch(rt: Runtime, name: str, *, reason: ErrorCode | None = None) -> ActionResult:
    """failed → pending with a fresh attempt budget (only failures with ``reason``, if given)."""
    with rt.db.session() as session:
        found = require_batch(session, name)
        if found.status == BatchStatus.CANCELLED.value:
            raise OperationError(f"batch {name!r} was cancelled; its failed tasks cannot be retried")
        ids = transitions.retry_failed(session, found.id, error_code=reason)
        gate = BatchGate.of(found)
    why_not = why_not_dispatch_now(rt, gate) if ids else None
    sent = rt.dispatcher.fill() if ids and why_not is None else 0
    return ActionResult(len(ids), sent, why_not)


@dataclass(frozen=True)
class RegenerateResult(ActionResult):
    """:class:`ActionResult` plus the asked-for keys that were not moved (unknown, or not in a
    regenerable status: pending/processing/cancelled)."""

    not_moved: tuple[str, ...] = ()


def regenerate_batch(
    rt: Runtime, name: str, *, keys: Sequence[str] | None = None, status: TaskStatus | None = None
) -> RegenerateResult:
    """completed|failed (or only ``status``) → pending with fresh attempts: a new image of the same
    content. The previous image stays (``result_uri``…) until the new one is recorded."""
    if status is not None and status not in (TaskStatus.COMPLETED, TaskStatus.FAILED):
        raise OperationError(f"--status {status.value!r}: only completed or failed tasks can be regenerated")
    statuses = [status.value] if status else [TaskStatus.COMPLETED.value, TaskStatus.FAILED.value]
    with rt.db.session() as session:
        found = require_batch(session, name)
        if found.status == BatchStatus.CANCELLED.value:
            raise OperationError(f"batch {name!r} was cancelled; its tasks cannot be regenerated")
        ids = transitions.regenerate(session, found.id, statuses=statuses, keys=keys)
        not_moved: tuple[str, ...] = ()
        if keys is not None:
            moved = set(
                session.scalars(select(GenerationTask.key).where(GenerationTask.id.in_(ids))) if ids else ()
            )
            not_moved = tuple(k for k in dict.fromkeys(keys) if k not in moved)
        gate = BatchGate.of(found)
    why_not = why_not_dispatch_now(rt, gate) if ids else None
    sent = rt.dispatcher.fill() if ids and why_not is None else 0
    return RegenerateResult(len(ids), sent, why_not, not_moved=not_moved)


def cancel_batch(rt: Runtime, name: str) -> ActionResult:
    """pending|processing → cancelled for the whole batch; completed and failed tasks stay."""
    with rt.db.session() as session:
        found = require_batch(session, name)
        return ActionResult(transitions.cancel_batch(session, found.id))


def pause_batch(rt: Runtime, name: str) -> ActionResult:
    """Stop starting new tasks (calls already running finish); :func:`resume_batch` continues."""
    with rt.db.session() as session:
        found = require_batch(session, name)
        return ActionResult(0, already=not _switch(session, found, BatchStatus.PAUSED, BatchStatus.OPEN))


def resume_batch(rt: Runtime, name: str) -> ActionResult:
    """Let a paused batch run again and dispatch its due pending tasks right away."""
    with rt.db.session() as session:
        found = require_batch(session, name)
        if not _switch(session, found, BatchStatus.OPEN, BatchStatus.PAUSED):
            return ActionResult(0, already=True)
        gate = BatchGate.of(found)
    why_not = why_not_dispatch_now(rt, BatchGate(**{**gate.__dict__, "status": BatchStatus.OPEN.value}))
    if why_not is not None:
        return ActionResult(0, 0, why_not)
    # Messages consumed while paused went back to the queue at claim (``serve._drop_message``); rows
    # whose message is still queued keep it. The window takes the batch's rows in its turn.
    return ActionResult(0, rt.dispatcher.fill())


def set_priority(rt: Runtime, name: str, priority: int, *, weight: int | None = None) -> ActionResult:
    """Change the dispatch priority (and weight) of an open or paused batch; takes effect for every
    row not yet in the window, at the next refill (which this starts)."""
    if weight is not None and not 1 <= weight <= queue.MAX_WEIGHT:
        raise OperationError(f"--weight must be between 1 and {queue.MAX_WEIGHT}")
    with rt.db.session() as session:
        found = require_batch(session, name)
        if not queue.set_priority(session, found.id, priority, weight):
            raise OperationError(
                f"batch {name!r} is {found.status}; only an open or paused batch has a priority"
            )
        gate = BatchGate.of(found)
    why_not = why_not_dispatch_now(rt, gate)
    return ActionResult(0, rt.dispatcher.fill() if why_not is None else 0, why_not)


def _switch(session: Session, batch: Batch, to: BatchStatus, expect: BatchStatus) -> bool:
    """Move the batch ``expect`` → ``to``. ``False`` when it already is ``to`` (scripts may repeat a
    pause); :class:`OperationError` for any other state (e.g. pausing a cancelled batch)."""
    if transitions.set_batch_status(session, batch.id, to, expect=expect):
        return True
    if batch.status == to.value:
        return False
    raise OperationError(
        f"batch {batch.name!r} is {batch.status}; only an open batch can be paused and a paused one resumed"
    )
