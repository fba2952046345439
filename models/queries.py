"""Read-only questions operators ask: how far along is a batch, what did it cost, how fast is it going."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nanobatch.models.base import utcnow
from nanobatch.models.status import ErrorCode, TaskStatus
from nanobatch.models.tables import Batch, GenerationTask

THROUGHPUT_WINDOW = timedelta(minutes=5)
#: ``error_code`` of a pending task that waits for its batch's budget to be raised.
BUDGET_REACHED = ErrorCode.BUDGET_REACHED


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

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def remaining(self) -> int:
        return self.counts[TaskStatus.PENDING] + self.counts[TaskStatus.PROCESSING]

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
        return {"batch": self.name, "counts": dict(self.counts), "cost_usd": round(self.cost_usd, 6)}


def batch_summaries(
    session: Session, name: str | None = None, *, now: datetime | None = None
) -> list[BatchSummary]:
    now = now or utcnow()
    stmt = select(Batch).order_by(Batch.created_at)
    if name is not None:
        stmt = stmt.where(Batch.name == name)
    return [_summary(session, batch, now) for batch in session.scalars(stmt)]


def _summary(session: Session, batch: Batch, now: datetime) -> BatchSummary:
    counts = {status.value: 0 for status in TaskStatus}
    rows = session.execute(
        select(GenerationTask.status, func.count(), func.coalesce(func.sum(GenerationTask.cost_usd), 0.0))
        .where(GenerationTask.batch_id == batch.id)
        .group_by(GenerationTask.status)
    )
    cost = 0.0
    for status, count, spent in rows:
        counts[status] = int(count)
        cost += float(spent or 0.0)
    recent = session.scalar(
        select(func.count()).where(
            GenerationTask.batch_id == batch.id,
            GenerationTask.status == TaskStatus.COMPLETED.value,
            GenerationTask.finished_at >= now - THROUGHPUT_WINDOW,
        )
    )
    budget_waiting = session.scalar(
        select(func.count()).where(
            GenerationTask.batch_id == batch.id,
            GenerationTask.status == TaskStatus.PENDING.value,
            GenerationTask.error_code == BUDGET_REACHED,
        )
    )
    window_minutes = min(THROUGHPUT_WINDOW, max(now - batch.created_at, timedelta(seconds=1))) / timedelta(
        minutes=1
    )
    return BatchSummary(
        name=batch.name,
        status=batch.status,
        counts=counts,
        cost_usd=cost,
        budget_usd=batch.budget_usd,
        per_minute=float(recent or 0) / window_minutes,
        created_at=batch.created_at,
        budget_waiting=int(budget_waiting or 0),
    )


def find_batch(session: Session, name: str) -> Batch | None:
    return session.scalars(select(Batch).where(Batch.name == name)).one_or_none()


def models_by_batch(session: Session, names: Sequence[str]) -> dict[str, list[str]]:
    """The models each named batch's tasks ask for (one aggregate query)."""
    rows = session.execute(
        select(Batch.name, GenerationTask.model)
        .join(GenerationTask, GenerationTask.batch_id == Batch.id)
        .where(Batch.name.in_(list(names)))
        .distinct()
        .order_by(Batch.name, GenerationTask.model)
    )
    found: dict[str, list[str]] = {}
    for name, model in rows:
        found.setdefault(name, []).append(model)
    return found


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
