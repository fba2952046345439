"""The sweeper: the reason the database, not Redis, is the source of truth (DESIGN §2).

Every ``sweep_interval`` (beat) it
1. returns ``processing`` rows whose lease expired (their worker died) to ``pending``;
2. publishes due ``pending`` rows of runnable batches that have no live message — rows parked until
   a ``not_before``, rows whose message Redis lost, rows of a batch that was just resumed or whose
   start time or window just opened.

A Redis lock makes concurrent sweepers (two beats by mistake, or embedded + beat) take turns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from nanobatch.models import transitions
from nanobatch.models.base import utcnow
from nanobatch.models.tables import Batch
from nanobatch.tasks.runtime import Runtime
from nanobatch.tasks.schedule import outside_window

log = logging.getLogger("nanobatch.sweeper")

#: A just-published message is given this long to be consumed before it may be published again.
DISPATCH_GRACE_SECONDS = 30.0
SWEEP_LIMIT = 5000


@dataclass(frozen=True)
class SweepReport:
    reclaimed: int
    dispatched: int
    skipped_live: int
    held_by_window: int


def sweep(rt: Runtime, *, now: datetime | None = None) -> SweepReport:
    now = now or utcnow()
    lock = rt.redis.lock(
        f"{rt.settings.limiter_prefix}:sweep-lock", timeout=max(rt.settings.sweep_interval, 5)
    )
    if not lock.acquire(blocking=False):
        return SweepReport(0, 0, 0, 0)
    try:
        return _sweep_locked(rt, now)
    finally:
        try:
            lock.release()
        except Exception:  # expired meanwhile: harmless
            log.debug("sweep lock expired before release")


def _sweep_locked(rt: Runtime, now: datetime) -> SweepReport:
    with rt.db.session() as session:
        reclaimed = transitions.reclaim_expired(session, max_attempts=rt.settings.max_attempts, now=now)
        held = _batches_outside_window(session, now)
        candidates = transitions.due_for_dispatch(
            session,
            older_than=now - timedelta(seconds=DISPATCH_GRACE_SECONDS),
            now=now,
            limit=SWEEP_LIMIT,
            exclude_batches=held,
        )
    to_publish = rt.dispatcher.without_live_message(candidates, stale_after=rt.settings.redispatch_after)
    if to_publish:
        with rt.db.session() as session:
            transitions.mark_dispatched(session, to_publish, now=now)
        rt.dispatcher.publish(to_publish)
    if reclaimed or to_publish:
        log.info("sweep: reclaimed %d expired leases, dispatched %d rows", reclaimed, len(to_publish))
    return SweepReport(reclaimed, len(to_publish), len(candidates) - len(to_publish), len(held))


def _batches_outside_window(session: Session, now: datetime) -> list[str]:
    rows = session.execute(
        select(Batch.id, Batch.window_start, Batch.window_end, Batch.window_tz).where(
            Batch.window_start.is_not(None), Batch.status == "open"
        )
    )
    return [bid for bid, start, end, tz in rows if outside_window(now, start, end, tz or "UTC")]
