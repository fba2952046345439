"""Per-batch task counts in constant time (docs/architecture.md, "Counts").

Database triggers on ``generation_tasks`` (migration 0006) keep ``batch_counts`` — tasks and their
summed ``cost_usd`` and standard-price cost per (batch, model, lane, status) — so reading a batch's
progress touches a handful of rows whatever the batch's size. On PostgreSQL the triggers append to
an insert-only log (``batch_count_deltas``) instead of updating a counter row, so concurrent
transitions never wait on each other; every read here adds the log to the folded counts in one
statement (one snapshot), so it is exact whether or not :func:`compact` ran. On SQLite the log stays
empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, delete, func, select, text, union_all
from sqlalchemy.orm import Session

from nanobatch.models.status import TaskStatus
from nanobatch.models.tables import Batch, BatchCount, BatchCountDelta

_COUNTS = cast(Table, BatchCount.__table__)
_DELTAS = cast(Table, BatchCountDelta.__table__)

#: Log rows folded per compaction statement (bounds the statement's memory; the rest wait a pass).
COMPACT_CHUNK = 50_000


@dataclass
class LaneTally:
    """One lane's share of a batch: tasks, completed, USD spent, and that work at the standard price."""

    tasks: int = 0
    completed: int = 0
    cost_usd: float = 0.0
    standard_cost_usd: float = 0.0


@dataclass
class Tally:
    """One batch's tasks by status, its models, the summed ``cost_usd`` of its tasks, and per lane."""

    counts: dict[str, int] = field(default_factory=lambda: {status.value: 0 for status in TaskStatus})
    cost_usd: float = 0.0
    models: set[str] = field(default_factory=set)
    lanes: dict[str, LaneTally] = field(default_factory=dict)

    @property
    def remaining(self) -> int:
        """Tasks not yet terminal (what "is this batch finished?" asks)."""
        return self.counts[TaskStatus.PENDING] + self.counts[TaskStatus.PROCESSING]

    def _add(self, model: str, lane: str, status: str, n: int, cost: float, standard: float) -> None:
        self.counts[status] = self.counts.get(status, 0) + n
        self.cost_usd += cost
        if n:
            self.models.add(model)
            share = self.lanes.setdefault(lane, LaneTally())
            share.tasks += n
            share.completed += n if status == TaskStatus.COMPLETED else 0
            share.cost_usd += cost
            share.standard_cost_usd += standard


def _rows(batch_ids: Sequence[str] | None) -> Any:
    """(batch_id, model, lane, status, n, cost_usd, standard_cost_usd) summed over the folded counts
    and the unfolded log."""
    parts = []
    for table in (_COUNTS, _DELTAS):
        part = select(
            table.c.batch_id,
            table.c.model,
            table.c.lane,
            table.c.status,
            table.c.n,
            table.c.cost_usd,
            table.c.standard_cost_usd,
        )
        if batch_ids is not None:
            part = part.where(table.c.batch_id.in_(list(batch_ids)))
        parts.append(part)
    both = union_all(*parts).subquery()
    return (
        select(
            both.c.batch_id,
            both.c.model,
            both.c.lane,
            both.c.status,
            func.sum(both.c.n).label("n"),
            func.sum(both.c.cost_usd).label("cost_usd"),
            func.sum(both.c.standard_cost_usd).label("standard_cost_usd"),
        )
        .group_by(both.c.batch_id, both.c.model, both.c.lane, both.c.status)
        .having(func.sum(both.c.n) != 0)
    )


def tallies(session: Session, batch_ids: Sequence[str] | None = None) -> dict[str, Tally]:
    """The :class:`Tally` of each of ``batch_ids`` (every batch when ``None``); one statement.

    A batch without tasks has an empty tally (all zeros); ask with ids to get one for it.
    """
    found: dict[str, Tally] = {batch_id: Tally() for batch_id in batch_ids or ()}
    for batch_id, model, lane, status, n, cost, standard in session.execute(_rows(batch_ids)):
        tally = found.setdefault(batch_id, Tally())
        tally._add(model, lane, status, int(n), float(cost or 0.0), float(standard or 0.0))
    return found


def tally(session: Session, batch_id: str) -> Tally:
    return tallies(session, [batch_id])[batch_id]


def compact(session: Session, *, chunk: int = COMPACT_CHUNK) -> int:
    """Fold the oldest ``chunk`` log rows into ``batch_counts``; drop counts of deleted batches.

    One statement moves the rows (DELETE … RETURNING feeding an upsert), so a reader sees them either
    in the log or in the counts, never in both or neither; a concurrent compaction skips the rows
    this one deleted. Returns the log rows folded. The sweeper calls it every pass.
    """
    folded = 0
    if session.get_bind().dialect.name == "postgresql":
        folded = int(session.execute(_FOLD_PG, {"chunk": chunk}).scalar_one())
    gone = ~_COUNTS.c.batch_id.in_(select(Batch.id))
    session.execute(delete(_COUNTS).where((_COUNTS.c.n == 0) | gone))
    return folded


# Rows whose batch is gone (a cascaded delete's negative deltas) are dropped, not folded.
_FOLD_PG = text(
    """
    WITH moved AS (
        DELETE FROM batch_count_deltas
        WHERE id IN (SELECT id FROM batch_count_deltas ORDER BY id LIMIT :chunk)
        RETURNING batch_id, model, lane, status, n, cost_usd, standard_cost_usd
    ), folded AS (
        INSERT INTO batch_counts AS c (batch_id, model, lane, status, n, cost_usd, standard_cost_usd)
        SELECT batch_id, model, lane, status, sum(n), sum(cost_usd), sum(standard_cost_usd) FROM moved
        WHERE batch_id IN (SELECT id FROM batches)
        GROUP BY batch_id, model, lane, status
        ON CONFLICT (batch_id, model, lane, status)
        DO UPDATE SET n = c.n + excluded.n, cost_usd = c.cost_usd + excluded.cost_usd,
                      standard_cost_usd = c.standard_cost_usd + excluded.standard_cost_usd
    )
    SELECT count(*) FROM moved
    """
)
