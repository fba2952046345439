"""What-if worker for bench/overhead.py ``--what-if``: nanobatch with the budget bookkeeping skipped.

NOT shipped code and not a fix: a measurement of the proposal in BENCHMARKS.md ("do not touch the
``batches`` row per task when the batch has no budget"). It runs the real ``tasks`` app and the real
``serve`` with three functions replaced in this worker process only:

- ``tasks.serve._reserve_budget`` → admits without the ``UPDATE batches … reserved_usd`` round trip,
- ``tasks.serve._release_budget`` → no-op,
- ``models.transitions.complete`` → the same task-row UPDATE without the ``UPDATE batches … spent_usd``.

Valid only for batches without a budget (the benchmark's), where those updates change nothing that
any decision reads.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

import nanobatch.tasks.serve as serve
from nanobatch.models import transitions
from nanobatch.models.tables import GenerationTask
from nanobatch.tasks.celeryapp import app

__all__ = ["app"]


def _reserve(rt: Any, job: Any, amount: float) -> bool:
    return True


def _release(rt: Any, job: Any, amount: float) -> None:
    return None


def _complete(session: Any, task_id: str, token: str, outcome: Any) -> bool:
    stmt = (
        update(GenerationTask)
        .where(transitions._owned(task_id, token))
        .values(
            status=transitions.COMPLETED,
            finished_at=transitions.utcnow(),
            lease_expires_at=None,
            error_code=None,
            error_message=None,
            **outcome.__dict__,
        )
        .returning(GenerationTask.id)
    )
    return session.execute(stmt).first() is not None


serve._reserve_budget = _reserve
serve._release_budget = _release
transitions.complete = _complete
