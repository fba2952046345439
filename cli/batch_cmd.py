"""Operator actions on a batch: ``retry``, ``cancel``, ``pause``, ``resume`` (and the lookup they share).

Each action is one conditional UPDATE in :mod:`models.transitions`, so it is safe while workers run.
What a worker may do is decided at claim time (a claim needs a pending row of an *open* batch), so
pausing drops messages as they arrive instead of chasing them in Redis; resuming publishes the
batch's pending rows whose message was dropped. In embedded mode (no Redis) the CLI publishes
nothing: its in-memory broker dies with the CLI process, and the embedded worker's sweeper
dispatches pending rows from the database anyway.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from nanobatch.cli.context import console, fail, load_settings, runtime_for
from nanobatch.models import transitions
from nanobatch.models.base import utcnow
from nanobatch.models.db import Database
from nanobatch.models.queries import find_batch
from nanobatch.models.status import BatchStatus, TaskStatus
from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.tasks.runtime import Runtime
from nanobatch.tasks.schedule import outside_window
from nanobatch.tasks.settings import Settings

REDISPATCH_CHUNK = 1000


@contextmanager
def database(settings: Settings) -> Iterator[Database]:
    """The settings' database, migrated (like ``status``: a fresh SQLite file answers "no batch")."""
    db = Database(settings.database_url)
    try:
        db.upgrade()
        yield db
    finally:
        db.dispose()


@contextmanager
def runtime(settings: Settings) -> Iterator[Runtime]:
    """A full runtime (database + Redis + Celery producer) for the actions that publish messages."""
    rt = runtime_for(settings)
    try:
        rt.db.upgrade()
        yield rt
    finally:
        rt.close()


def require_batch(session: Session, name: str) -> Batch:
    """The batch called ``name``, or exit 1 with a clear message."""
    batch = find_batch(session, name)
    if batch is None:
        raise fail(f"no batch named {name!r} (see `nanobatch status` for the list)", 1)
    return batch


def plural(n: int, word: str = "task") -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def retry_command(
    batch: str = typer.Argument(..., help="Batch name"),
    reason: str | None = typer.Option(
        None, "--reason", help="Only failures with this error code (e.g. blocked, unavailable)"
    ),
) -> None:
    """Give failed tasks a fresh attempt budget: failed → pending, and dispatch them again."""
    settings = load_settings()
    with runtime(settings) as rt:
        with rt.db.session() as session:
            found = require_batch(session, batch)
            if found.status == BatchStatus.CANCELLED.value:
                raise fail(f"batch {batch!r} was cancelled; its failed tasks cannot be retried", 1)
            ids = transitions.retry_failed(session, found.id, error_code=reason)
            why_not = _why_not_dispatched(found, found.status, settings)
            if ids and why_not is None:
                # In the same transaction: if publishing fails, the sweeper sees them as lost and re-sends.
                transitions.mark_dispatched(session, ids)
        if ids and why_not is None:
            rt.dispatcher.publish(ids)
    what = f"failed task{'' if len(ids) == 1 else 's'}" + (f" with reason {reason!r}" if reason else "")
    console.print(f"{len(ids):,} {what} moved back to pending in batch [bold]{batch}[/bold].")
    if ids and why_not:
        console.print(why_not)


def _why_not_dispatched(batch: Batch, status: str, settings: Settings) -> str | None:
    """Why the CLI must not publish the batch's rows now (``None``: it should)."""
    now = utcnow()
    if status == BatchStatus.PAUSED.value:
        return "The batch is paused: its tasks run after `nanobatch resume`."
    if settings.embedded:
        return "Embedded mode: the worker's sweeper dispatches pending tasks."
    if (batch.scheduled_for is not None and batch.scheduled_for > now) or outside_window(
        now, batch.window_start, batch.window_end, batch.window_tz or "UTC"
    ):
        return "The batch is before its start time or outside its window: the sweeper dispatches it then."
    return None


def cancel_command(batch: str = typer.Argument(..., help="Batch name")) -> None:
    """Cancel every pending or processing task of a batch (completed and failed ones stay)."""
    settings = load_settings()
    with database(settings) as db, db.session() as session:
        found = require_batch(session, batch)
        cancelled = transitions.cancel_batch(session, found.id)
    console.print(f"{plural(cancelled)} cancelled in batch [bold]{batch}[/bold].")


def pause_command(batch: str = typer.Argument(..., help="Batch name")) -> None:
    """Stop starting new tasks of a batch (calls already running finish); `resume` continues."""
    settings = load_settings()
    with database(settings) as db, db.session() as session:
        if switch(session, batch, BatchStatus.PAUSED, expect=BatchStatus.OPEN) is None:
            return
    console.print(f"Batch [bold]{batch}[/bold] paused: its queued messages are dropped until resumed.")


def resume_command(batch: str = typer.Argument(..., help="Batch name")) -> None:
    """Let a paused batch run again and dispatch its pending tasks right away."""
    settings = load_settings()
    with runtime(settings) as rt:
        with rt.db.session() as session:
            found = switch(session, batch, BatchStatus.OPEN, expect=BatchStatus.PAUSED)
        if found is None:
            return
        why_not = _why_not_dispatched(found, BatchStatus.OPEN.value, settings)
        sent = redispatch_pending(rt, found.id) if why_not is None else 0
    console.print(f"Batch [bold]{batch}[/bold] resumed; {plural(sent)} dispatched.")
    if why_not:
        console.print(why_not)


def switch(session: Session, name: str, to: BatchStatus, *, expect: BatchStatus) -> Batch | None:
    """Move the batch ``expect`` → ``to``; ``None`` (after saying so) when it already is ``to``.

    Pausing a paused batch (or resuming an open one) is a no-op, not an error: scripts may repeat
    it. Pausing or resuming a cancelled batch is an error (exit 1).
    """
    found = require_batch(session, name)
    if transitions.set_batch_status(session, found.id, to, expect=expect):
        return found
    if found.status == to.value:
        console.print(f"Batch [bold]{name}[/bold] is already {to.value}.")
        return None
    raise fail(f"batch {name!r} is {found.status}; only an open batch can be paused and a paused one resumed")


def redispatch_pending(rt: Runtime, batch_id: str) -> int:
    """Publish the batch's due pending rows that have no live message; returns how many.

    Messages consumed while the batch was paused were dropped at claim and removed from the
    dispatcher's live set, so those rows have no entry; rows whose message is still queued keep
    theirs and are skipped (that message now claims normally). ``stale_after`` is the sweeper's
    ``redispatch_after``, not 0: 0 would treat every queued message as lost and publish the whole
    backlog a second time. Unlike calling ``sweep()``, this covers only this batch, has no 30 s grace
    and no 5,000-row cap, and never loses to a concurrent sweeper holding the lock.
    """
    sent = 0
    for chunk in _pending_chunks(rt, batch_id):
        ids = rt.dispatcher.without_live_message(chunk, stale_after=rt.settings.redispatch_after)
        if ids:
            with rt.db.session() as session:
                transitions.mark_dispatched(session, ids)
            sent += rt.dispatcher.publish(ids)
    return sent


def _pending_chunks(rt: Runtime, batch_id: str) -> Iterator[list[str]]:
    now = utcnow()
    stmt = (
        select(GenerationTask.id)
        .where(
            GenerationTask.batch_id == batch_id,
            GenerationTask.status == TaskStatus.PENDING.value,
            or_(GenerationTask.not_before.is_(None), GenerationTask.not_before <= now),
        )
        .order_by(GenerationTask.id)
    )
    with rt.db.session() as session:
        ids = list(session.scalars(stmt))  # ids only: ~40 bytes each, fine even for 100k rows
    for start in range(0, len(ids), REDISPATCH_CHUNK):
        yield ids[start : start + REDISPATCH_CHUNK]
