"""The sweeper: the reason the database, not Redis, is the source of truth (docs/architecture.md, "Recovery").

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

from nanobatch.models import transitions
from nanobatch.models.base import utcnow
from nanobatch.models.lifecycle import batches_outside_window, dispatch
from nanobatch.tasks.runtime import Runtime

log = logging.getLogger("nanobatch.sweeper")

#: A just-published message is given this long to be consumed before it may be published again.
DISPATCH_GRACE_SECONDS = 30.0
SWEEP_LIMIT = 5000
#: Rows read at a time when dispatching a whole batch without a cap (``resume``).
DISPATCH_CHUNK = 1000


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
    dispatched, skipped, held = dispatch_due(rt, now=now)
    if reclaimed or dispatched:
        log.info("sweep: reclaimed %d expired leases, dispatched %d rows", reclaimed, dispatched)
    return SweepReport(reclaimed, dispatched, skipped, held)


def dispatch_due(
    rt: Runtime,
    *,
    now: datetime | None = None,
    batch_id: str | None = None,
    grace: float = DISPATCH_GRACE_SECONDS,
    limit: int | None = SWEEP_LIMIT,
) -> tuple[int, int, int]:
    """Publish due pending rows of runnable batches that have no live message.

    The sweeper calls it for every batch (``limit`` rows a pass, a ``grace`` for just-published
    messages); ``resume`` for one batch, at once and without a cap. Returns (dispatched, skipped
    because a live message exists, batches held by their window).
    """
    now = now or utcnow()
    dispatched = skipped = 0
    with rt.db.session() as session:
        held = batches_outside_window(session, now)
    after_id = None if limit is not None else ""  # uncapped: page through the rows by id
    while True:
        with rt.db.session() as session:
            candidates = transitions.due_for_dispatch(
                session,
                older_than=now - timedelta(seconds=grace),
                now=now,
                limit=limit or DISPATCH_CHUNK,
                exclude_batches=held,
                batch_id=batch_id,
                after_id=after_id,
            )
        to_publish = rt.dispatcher.without_live_message(candidates, stale_after=rt.settings.redispatch_after)
        dispatched += dispatch(rt.db, rt.dispatcher, to_publish, now=now)
        skipped += len(candidates) - len(to_publish)
        if after_id is None or len(candidates) < DISPATCH_CHUNK:
            return dispatched, skipped, len(held)
        after_id = candidates[-1]
