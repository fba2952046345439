"""The producer: validated rows → a batch and its task rows (bulk, idempotent) → one window fill.

Re-submitting the same batch name with the same keys creates nothing twice: rows are inserted with
``ON CONFLICT (batch_id, key) DO NOTHING RETURNING id``. The rows are the queue (docs/architecture.md,
"Dispatch"): once they are committed, one fill of the dispatcher's window publishes the first of them
and the workers' refills the rest, so Redis never holds the backlog. ``dispatch_publish_all`` (bench
only) keeps the previous design: every new row published at once.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from nanobatch.models import transitions
from nanobatch.models.base import utcnow
from nanobatch.models.db import Database
from nanobatch.models.lifecycle import BatchGate, Dispatch, dispatch, goes_through_celery, why_batch_waits
from nanobatch.models.status import BatchStatus, Lane
from nanobatch.models.tables import Batch, GenerationTask, new_id
from nanobatch.tasks.intake import IntakeOptions, IntakeResult, RowError, TaskSpec

INSERT_CHUNK = 5000
#: After inserting this many rows into PostgreSQL, refresh the table's statistics (see ``_analyze``).
ANALYZE_AFTER_ROWS = 10_000
PUBLISH_CHUNK = 10_000
STAGING = "nanobatch_incoming_tasks"
#: What ``--update`` compares: a row whose content hash (prompt, model, size, ratio, format, input
#: image bytes) differs from the stored one is replaced.
REPLACED_COLUMNS = (
    "prompt",
    "input_images",
    "model",
    "image_size",
    "aspect_ratio",
    "output_format",
    "content_hash",
    "extra",
)


class SubmitError(ValueError):
    """The submission was refused as a whole (message says why); nothing was written."""


@dataclass(frozen=True)
class BatchOptions:
    name: str
    budget_usd: float | None = None
    reuse: bool = False
    scheduled_for: datetime | None = None
    window: tuple[str, str] | None = None
    window_tz: str = "UTC"
    #: ``models.status.Lane``; ``auto`` needs ``lanes`` (the deadline planner's shares).
    lane: str = Lane.STANDARD.value
    deadline: datetime | None = None
    #: ``(lane, count)`` in order: the first ``count`` new rows go to the first lane, and so on; rows
    #: past the plan go to the last lane. Empty: every row in ``lane`` (``auto``: standard).
    lanes: tuple[tuple[str, int], ...] = ()

    def lane_of(self, index: int) -> str:
        """The lane of the ``index``-th row of this submission."""
        for lane, count in self.lanes:
            if index < count:
                return lane
            index -= count
        if self.lanes:
            return self.lanes[-1][0]
        return Lane.STANDARD.value if self.lane == Lane.AUTO else self.lane

    #: Dispatch order (``None``: 0 and 1 for a new batch, unchanged for an existing one).
    priority: int | None = None
    weight: int | None = None


@dataclass
class SubmitReport:
    batch: str
    rows: int
    valid: int
    new: int = 0
    existing: int = 0
    dispatched: int = 0
    errors: list[RowError] = field(default_factory=list)
    written: bool = False
    updated: int = 0  # rows replaced by ``update=True`` (their content changed)
    error_count: int = 0


def submit(
    db: Database,
    dispatcher: Dispatch | None,
    intake: IntakeResult,
    batch: BatchOptions,
    *,
    intake_options: IntakeOptions,
    source: str | None = None,
    skip_invalid: bool = False,
    progress: Callable[[int], None] | None = None,
    update: bool = False,
) -> SubmitReport:
    """Write the valid rows of ``intake`` into ``batch``, then fill the dispatcher's window once.

    Rows stream from :meth:`IntakeResult.iter_tasks` in chunks of :data:`INSERT_CHUNK` inside one
    transaction, so memory stays flat and nothing is committed unless every chunk went in. With
    ``update``, a row whose key exists but whose content changed replaces the stored one: back to
    ``pending`` with fresh attempts, its previous result columns (``result_uri``…) kept until the new
    image is recorded (:data:`REPLACED_COLUMNS`).
    """
    report = SubmitReport(
        batch.name, intake.rows_read, intake.valid, errors=intake.errors, error_count=intake.error_count
    )
    if intake.error_count and not skip_invalid:
        return report
    if batch.budget_usd is not None and not batch.budget_usd > 0:  # also refuses NaN
        raise SubmitError("--budget-usd must be greater than 0")
    with db.session() as session:
        batch_row = _get_or_create_batch(session, batch, intake_options, source)
        runnable = dispatcher is not None and why_batch_waits(BatchGate.of(batch_row)) is None
        publish_all = runnable and dispatcher is not None and dispatcher.publish_all
        # Rows about to be published carry their dispatch time from the start (no second UPDATE of
        # 100k rows). If publishing then fails, they have no live message and the sweeper sends them.
        ids = _insert_tasks(
            session,
            batch_row.id,
            intake.iter_tasks(),
            progress,
            dispatched=publish_all,
            update=update,
            lane_of=batch.lane_of,
        )
    report.new, report.updated, report.written = ids.new, ids.updated, True
    report.existing = intake.valid - ids.new - ids.updated
    if ids.new + ids.updated >= ANALYZE_AFTER_ROWS:
        _analyze(db)
    if publish_all and dispatcher is not None:
        for chunk in ids.chunks(PUBLISH_CHUNK):  # stamped by the insert
            report.dispatched += dispatch(None, dispatcher, chunk)
    elif runnable and dispatcher is not None and (ids.new or ids.updated):
        report.dispatched = dispatcher.fill()
    return report


def _analyze(db: Database) -> None:
    """Fresh planner statistics after a large insert (PostgreSQL only).

    Without them, a table that just grew from nothing to a large backlog is planned as if empty
    until autovacuum analyzes it (up to a minute later), and the dispatcher's queries walk the whole
    backlog through a wrong index instead of their partial ones (docs/architecture.md, "Dispatch").
    ANALYZE samples a fixed number of rows: a fraction of a second at any size.
    """
    if db.engine.dialect.name != "postgresql":
        return
    with db.engine.connect() as connection:
        connection.execute(text("ANALYZE generation_tasks"))
        connection.commit()


class _Ids:
    """Task ids as 16 bytes each (a million ids in 16 MB, not ~90 MB of str); only counted unless
    ``keep`` (only publish-all needs the ids)."""

    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep
        self._raw = bytearray()
        self.new = 0
        self.updated = 0

    def add(self, ids: Iterable[str], *, updated: bool = False, unpublished: set[str] | None = None) -> None:
        """Count ``ids``; keep those to publish (not in ``unpublished``: rows of a non-Celery lane)."""
        for task_id in ids:
            if self.keep and (not unpublished or task_id not in unpublished):
                self._raw += uuid.UUID(task_id).bytes
            if updated:
                self.updated += 1
            else:
                self.new += 1

    def chunks(self, size: int) -> Iterator[list[str]]:
        step = 16 * size
        for start in range(0, len(self._raw), step):
            block = self._raw[start : start + step]
            yield [str(uuid.UUID(bytes=bytes(block[i : i + 16]))) for i in range(0, len(block), 16)]


def _get_or_create_batch(
    session: Session, options: BatchOptions, intake: IntakeOptions, source: str | None
) -> Batch:
    """The batch of this name, created if it does not exist yet, idempotently.

    ``INSERT … ON CONFLICT (name) DO NOTHING`` then a read: several processes submitting the same new
    batch at once all end up with the one row (a concurrent insert waits for the first to commit, then
    inserts nothing), instead of all but one failing with a unique violation.
    """
    existing = session.scalars(select(Batch).where(Batch.name == options.name)).one_or_none()
    if existing is None:
        _insert_batch_if_absent(session, options, intake, source)
        existing = session.scalars(select(Batch).where(Batch.name == options.name)).one()
    if existing.status == BatchStatus.CANCELLED.value:
        raise SubmitError(f"batch {options.name!r} was cancelled; submit under another --batch name")
    if options.budget_usd is not None:
        existing.budget_usd = options.budget_usd
    if options.priority is not None:
        existing.priority = options.priority
    if options.weight is not None:
        existing.weight = options.weight
    return existing


def _insert_batch_if_absent(
    session: Session, options: BatchOptions, intake: IntakeOptions, source: str | None
) -> None:
    values = dict(
        id=new_id(),
        name=options.name,
        status=BatchStatus.OPEN.value,
        source=source,
        template=intake.template,
        model=intake.model,
        image_size=intake.image_size,
        aspect_ratio=intake.aspect_ratio,
        output_format=intake.output_format,
        reuse=options.reuse,
        budget_usd=options.budget_usd,
        spent_usd=0.0,
        reserved_usd=0.0,
        scheduled_for=options.scheduled_for,
        window_start=options.window[0] if options.window else None,
        window_end=options.window[1] if options.window else None,
        window_tz=options.window_tz if options.window else None,
        priority=options.priority or 0,
        weight=options.weight or 1,
        created_at=utcnow(),
        lane=options.lane,
        deadline=options.deadline,
    )
    table = cast(Table, Batch.__table__)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(table).values(**values).on_conflict_do_nothing(index_elements=["name"]))


def _insert_tasks(
    session: Session,
    batch_id: str,
    tasks: Iterable[TaskSpec],
    progress: Callable[[int], None] | None,
    *,
    dispatched: bool,
    update: bool = False,
    lane_of: Callable[[int], str] = lambda _: Lane.STANDARD.value,
) -> _Ids:
    """Insert rows that are not there yet (and with ``update``, replace changed ones), a chunk at a
    time; returns the ids of the rows to publish (only rows of lanes that go through Celery)."""
    is_postgres = session.get_bind().dialect.name == "postgresql"
    insert_chunk = _copy_chunk if is_postgres else _executemany_chunk
    if is_postgres:
        _create_staging_table(session)
    now = utcnow()
    ids = _Ids(keep=dispatched)
    stream = iter(tasks)
    index = 0
    while chunk := list(itertools.islice(stream, INSERT_CHUNK)):
        rows = []
        for spec in chunk:
            lane = lane_of(index)
            index += 1
            stamp = now if dispatched and goes_through_celery(lane) else None
            rows.append(_row(batch_id, spec, now, dispatched_at=stamp, lane=lane))
        elsewhere = {str(row["id"]) for row in rows if not goes_through_celery(str(row["lane"]))}
        if update:
            ids.add(_replace_changed(session, batch_id, rows, now if dispatched else None), updated=True)
        ids.add(insert_chunk(session, rows), unpublished=elsewhere)
        if progress:
            progress(len(chunk))
    return ids


def _replace_changed(
    session: Session, batch_id: str, rows: list[dict[str, Any]], dispatched_at: datetime | None
) -> list[str]:
    """Rows of this chunk whose key exists with other content: new content, back to pending."""
    table = cast(Table, GenerationTask.__table__)
    found = session.execute(
        select(table.c.key, table.c.content_hash).where(
            table.c.batch_id == batch_id, table.c.key.in_([row["key"] for row in rows])
        )
    )
    stored = {key: content_hash for key, content_hash in found}
    changed = [row for row in rows if row["key"] in stored and stored[row["key"]] != row["content_hash"]]
    if not changed:
        return []
    stmt = (
        update(table)
        .where(table.c.batch_id == batch_id, table.c.key == bindparam("b_key"))
        .values(
            **{name: bindparam(f"b_{name}") for name in REPLACED_COLUMNS},
            **transitions.back_to_pending(dispatched_at),
        )
        .execution_options(synchronize_session=False)
    )
    params = [
        {"b_key": row["key"], **{f"b_{name}": row[name] for name in REPLACED_COLUMNS}} for row in changed
    ]
    session.connection().execute(stmt, params)
    return list(
        session.scalars(
            select(table.c.id).where(
                table.c.batch_id == batch_id, table.c.key.in_([row["key"] for row in changed])
            )
        )
    )


def _executemany_chunk(session: Session, rows: list[dict[str, Any]]) -> list[str]:
    """Portable path (SQLite): Core executemany, sent as batched "insertmanyvalues" statements."""
    table = cast(Table, GenerationTask.__table__)
    stmt = (
        sqlite.insert(table).on_conflict_do_nothing(index_elements=["batch_id", "key"]).returning(table.c.id)
    )
    return list(session.scalars(stmt, rows))


def _create_staging_table(session: Session) -> None:
    session.execute(
        text(f"CREATE TEMP TABLE {STAGING} (LIKE generation_tasks INCLUDING DEFAULTS) ON COMMIT DROP")
    )


def _copy_chunk(session: Session, rows: list[dict[str, Any]]) -> list[str]:
    """PostgreSQL path: COPY into a temporary table, then one ``INSERT … SELECT … ON CONFLICT``.

    COPY streams rows without building SQL text, several times faster than multi-row INSERTs
    (whose huge statements psycopg must parse each time); the set-based INSERT keeps the dedupe.
    """
    raw = session.connection().connection.driver_connection
    assert raw is not None
    columns = list(rows[0])
    with raw.cursor() as cursor:
        cursor.execute(f"TRUNCATE {STAGING}")
        with cursor.copy(f"COPY {STAGING} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([_copy_value(row[c]) for c in columns])
        cursor.execute(
            f"INSERT INTO generation_tasks SELECT * FROM {STAGING} "
            "ON CONFLICT (batch_id, key) DO NOTHING RETURNING id"
        )
        return [r[0] for r in cursor.fetchall()]


def _copy_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def _row(
    batch_id: str, spec: TaskSpec, now: datetime, *, dispatched_at: datetime | None, lane: str
) -> dict[str, object]:
    return {
        "id": new_id(),
        "batch_id": batch_id,
        "key": spec.key,
        "prompt": spec.prompt,
        "input_images": list(spec.input_images),
        "model": spec.model,
        "image_size": spec.image_size,
        "aspect_ratio": spec.aspect_ratio,
        "output_format": spec.output_format,
        "status": "pending",
        "attempts": 0,
        "rate_waits": 0,
        "content_hash": spec.content_hash,
        "extra": spec.extra or None,
        "input_root": spec.input_root,
        "input_sha256": list(spec.input_sha256) if spec.input_images else None,
        "created_at": now,
        "dispatched_at": dispatched_at,
        "lane": lane,
    }
