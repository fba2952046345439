"""Read-only questions operators ask: how far along is a batch, what did it cost, how fast is it going."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from nanobatch.models import counts
from nanobatch.models.base import utcnow
from nanobatch.models.status import ErrorCode, TaskStatus
from nanobatch.models.tables import STAGED_RESULT, Batch, GenerationTask

THROUGHPUT_WINDOW = timedelta(minutes=5)
#: How long a recorded-but-unpublished image holds its batch's "settled" (a sweep publishes one whose
#: worker died after ~30 s; one still staged after this is a stuck straggler, e.g. the store setting
#: changed, which the sweeper warns about: it must not keep ``watch`` or ``Client.wait`` waiting forever).
PUBLISH_WAIT = timedelta(minutes=5)
#: ``error_code`` of a pending task that waits for its batch's budget to be raised.
BUDGET_REACHED = ErrorCode.BUDGET_REACHED


@dataclass(frozen=True)
class LaneSpend:
    """One lane's share of a batch: tasks, completed, USD spent, and that work at the standard price."""

    tasks: int
    completed: int
    cost_usd: float
    standard_cost_usd: float

    def as_json(self) -> dict[str, object]:
        return {
            "tasks": self.tasks,
            "completed": self.completed,
            "cost_usd": round(self.cost_usd, 6),
            "standard_cost_usd": round(self.standard_cost_usd, 6),
        }


@dataclass(frozen=True)
class BatchSummary:
    name: str
    status: str
    counts: dict[str, int]
    cost_usd: float
    budget_usd: float | None
    per_minute: float  # completions per minute over the last five minutes
    created_at: datetime
    budget_waiting: int = 0  # pending tasks held back because the next call would exceed the budget
    lane: str = "standard"  # what the submitter chose (auto included)
    by_lane: dict[str, LaneSpend] | None = None  # the lanes its tasks are in / ran in
    #: completed tasks whose image is recorded on its claim's staged file and not yet at its key's
    #: name (the milliseconds between record and publish; longer only if a worker died in between,
    #: until a sweep publishes it: docs/integrity.md, item 1); at most :data:`PUBLISH_WAIT` old
    publishing: int = 0

    @property
    def lane_mix(self) -> str:
        """``auto: batch 180, flex 20`` — the chosen lane and, when it differs, where the tasks are."""
        spread = ", ".join(f"{lane} {spend.tasks}" for lane, spend in (self.by_lane or {}).items())
        if not spread or spread == f"{self.lane} {self.total}":
            return self.lane
        return f"{self.lane}: {spread}"

    @property
    def standard_cost_usd(self) -> float:
        """What the work done so far would have cost at the standard price."""
        return sum(spend.standard_cost_usd for spend in (self.by_lane or {}).values())

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def remaining(self) -> int:
        return self.counts[TaskStatus.PENDING] + self.counts[TaskStatus.PROCESSING]

    @property
    def settled(self) -> bool:
        """Nothing left to run and every completed image at its key's name: the batch is done.

        The one rule for "finished" (``watch``, ``demo``, ``Client.wait``, the ``batch_finished``
        webhook): counting only statuses would say done while the last image is still being moved
        from its staged name, and an export taken then would list a path that is about to vanish.
        """
        return self.remaining == 0 and self.publishing == 0

    @property
    def eta_seconds(self) -> float | None:
        if not self.remaining:
            return 0.0
        return self.remaining / self.per_minute * 60 if self.per_minute > 0 else None

    @property
    def budget_reached(self) -> bool:
        return self.budget_waiting > 0

    def as_json(self) -> dict[str, object]:
        """The stable ``status --json`` shape (a public interface: extend with care)."""
        return {
            "batch": self.name,
            "counts": dict(self.counts),
            "cost_usd": round(self.cost_usd, 6),
            "lane": self.lane,
            "standard_cost_usd": round(self.standard_cost_usd, 6),
            "by_lane": {lane: spend.as_json() for lane, spend in (self.by_lane or {}).items()},
            "publishing": self.publishing,
        }


def batch_summaries(
    session: Session, name: str | None = None, *, now: datetime | None = None
) -> list[BatchSummary]:
    """Every batch's (or the named one's) summary: a constant number of index reads per batch.

    Counts and cost come from the trigger-kept counts (:mod:`models.counts`), the recent completions
    and the budget-held tasks from indexes that reach only those rows (docs/architecture.md, "Counts").
    """
    now = now or utcnow()
    stmt = select(Batch).order_by(Batch.created_at)
    if name is not None:
        stmt = stmt.where(Batch.name == name)
    batches = list(session.scalars(stmt))
    found = counts.tallies(session, [batch.id for batch in batches] if name is not None else None)
    return [_summary(session, batch, found.get(batch.id) or counts.Tally(), now) for batch in batches]


def _summary(session: Session, batch: Batch, tally: counts.Tally, now: datetime) -> BatchSummary:
    recent = session.scalar(
        select(func.count()).where(
            GenerationTask.batch_id == batch.id,
            GenerationTask.status == TaskStatus.COMPLETED.value,
            GenerationTask.finished_at >= now - THROUGHPUT_WINDOW,
        )
    )
    budget_waiting: int | None = 0
    if tally.counts[TaskStatus.PENDING]:
        budget_waiting = session.scalar(
            select(func.count()).where(
                GenerationTask.batch_id == batch.id,
                GenerationTask.status == TaskStatus.PENDING.value,
                GenerationTask.error_code == BUDGET_REACHED,
            )
        )
    publishing = unpublished(session, batch.id, now) if tally.counts[TaskStatus.COMPLETED] else 0
    window_minutes = min(THROUGHPUT_WINDOW, max(now - batch.created_at, timedelta(seconds=1))) / timedelta(
        minutes=1
    )
    return BatchSummary(
        lane=batch.lane,
        by_lane=lane_spend(tally),
        name=batch.name,
        status=batch.status,
        counts=dict(tally.counts),
        cost_usd=tally.cost_usd,
        budget_usd=batch.budget_usd,
        per_minute=float(recent or 0) / window_minutes,
        created_at=batch.created_at,
        budget_waiting=int(budget_waiting or 0),
        publishing=publishing,
    )


def unpublished(session: Session, batch_id: str, now: datetime) -> int:
    """The batch's tasks recorded on a staged file in the last :data:`PUBLISH_WAIT` (``publishing``).

    The WHERE repeats :data:`~nanobatch.models.tables.STAGED_RESULT` verbatim so PostgreSQL reads the
    partial index that holds only such rows (normally none), whatever the batch's size.
    """
    found = session.scalar(
        select(func.count())
        .select_from(GenerationTask)
        .where(
            text(STAGED_RESULT),
            GenerationTask.finished_at >= now - PUBLISH_WAIT,
            GenerationTask.batch_id == batch_id,
        )
    )
    return int(found or 0)


def find_batch(session: Session, name: str) -> Batch | None:
    return session.scalars(select(Batch).where(Batch.name == name)).one_or_none()


def models_by_batch(session: Session, names: Sequence[str]) -> dict[str, list[str]]:
    """The models each named batch's tasks ask for (from the counts: no scan of the tasks)."""
    rows = session.execute(select(Batch.id, Batch.name).where(Batch.name.in_(list(names))))
    ids: dict[str, str] = {batch_id: name for batch_id, name in rows}
    found = counts.tallies(session, list(ids))
    return {
        ids[batch_id]: sorted(t.models)
        for batch_id, t in sorted(found.items(), key=lambda i: ids[i[0]])
        if t.models
    }


def pending_with_code(
    session: Session, names: Sequence[str], code: ErrorCode
) -> dict[str, tuple[int, str | None]]:
    """Per named batch: how many pending tasks wait with ``code``, and the message of one of them."""
    rows = session.execute(
        select(Batch.name, func.count(), func.max(GenerationTask.error_message))
        .join(GenerationTask, GenerationTask.batch_id == Batch.id)
        .where(
            Batch.name.in_(list(names)),
            GenerationTask.status == TaskStatus.PENDING.value,
            GenerationTask.error_code == code.value,
        )
        .group_by(Batch.name)
    )
    return {name: (int(count), message) for name, count, message in rows}


def lane_spend(tally: counts.Tally) -> dict[str, LaneSpend]:
    """Per lane of one batch, in lane order: tasks, completed, spent, and the same work at the
    standard price (a task finished before lanes existed counts its own cost as standard); from the
    trigger-kept counts, so no scan of the batch's tasks."""
    return {
        lane: LaneSpend(share.tasks, share.completed, share.cost_usd, share.standard_cost_usd)
        for lane, share in sorted(tally.lanes.items())
    }
