"""The sweeper: the reason the database, not Redis, is the source of truth (docs/architecture.md, "Recovery").

Every worker process runs it every ``sweep_interval`` in a thread of its own
(``tasks/celeryapp/sweeper_thread.py``), one at a time cluster-wide; ``nanobatch sweep`` runs one pass
by hand. Beat is not needed for recovery. Each pass
1. returns ``processing`` rows whose lease expired, or whose worker stopped heartbeating
   (:mod:`tasks.liveness`), to ``pending``;
2. publishes due ``pending`` rows of runnable batches that have no live message — rows parked until
   a ``not_before``, rows whose message Redis lost, rows of a batch that was just resumed or whose
   start time or window just opened;
3. records itself in Redis (``status``, ``watch`` and the metrics show when recovery last ran).

A Redis lock makes concurrent sweeps take turns, and a periodic sweep first takes the cluster-wide
turn (``turn`` seconds), so N workers do not sweep N times an interval.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis.exceptions import RedisError

from nanobatch.models import transitions
from nanobatch.models.base import utcnow
from nanobatch.models.lifecycle import batches_outside_window, dispatch
from nanobatch.tasks import liveness
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
    #: Of ``reclaimed``: rows of workers whose heartbeat stopped (the rest: expired leases).
    reclaimed_silent: int = 0
    #: ``False`` when another process was sweeping, or swept within the last ``turn`` seconds.
    ran: bool = True


NOT_RUN = SweepReport(0, 0, 0, 0, ran=False)


def sweep(rt: Runtime, *, now: datetime | None = None, turn: float | None = None) -> SweepReport:
    """One pass; ``turn`` (the periodic sweepers) skips it when any process swept in the last
    ``turn`` seconds, so the cluster sweeps about once a turn however many workers run."""
    now = now or utcnow()
    prefix = rt.settings.limiter_prefix
    if turn is not None and not rt.redis.set(
        f"{prefix}:sweep-turn", rt.worker_name, nx=True, px=max(1, int(turn * 1000))
    ):
        return NOT_RUN
    lock = rt.redis.lock(f"{prefix}:sweep-lock", timeout=max(rt.settings.sweep_interval, 5))
    if not lock.acquire(blocking=False):
        return NOT_RUN
    try:
        started = time.monotonic()
        report = _sweep_locked(rt, now)
        _record(rt, report, time.monotonic() - started)
        return report
    finally:
        try:
            lock.release()
        except Exception:  # expired meanwhile: harmless
            log.debug("sweep lock expired before release")


def _sweep_locked(rt: Runtime, now: datetime) -> SweepReport:
    with rt.db.session() as session:
        expired = transitions.reclaim_expired(session, max_attempts=rt.settings.max_attempts, now=now)
    silent = reclaim_silent(rt, now)
    dispatched, skipped, held = dispatch_due(rt, now=now)
    if expired or silent or dispatched:
        log.info(
            "sweep: reclaimed %d expired leases and %d tasks of silent workers, dispatched %d rows",
            expired,
            silent,
            dispatched,
        )
    return SweepReport(expired + silent, dispatched, skipped, held, reclaimed_silent=silent)


def reclaim_silent(rt: Runtime, now: datetime) -> int:
    """Return the tasks of workers whose heartbeat expired to pending (see :mod:`tasks.liveness`).

    ``now`` is taken before the heartbeats are read: a row claimed after that is not touched, since
    its worker was running when it claimed it.
    """
    with rt.db.session() as session:
        holders = transitions.processing_holders(session, claimed_before=now)
    ttl = rt.settings.heartbeat_ttl
    # Asked even without holders: it starts the heartbeat history after Redis lost it.
    silent = liveness.silent_workers(rt.redis, rt.settings.limiter_prefix, holders, ttl=ttl)
    if not silent:
        return 0
    with rt.db.session() as session:
        reclaimed = transitions.reclaim_from_workers(
            session, silent, claimed_before=now, max_attempts=rt.settings.max_attempts, now=now
        )
    if reclaimed:
        log.warning(
            "sweep: %d task(s) of %s reclaimed: no heartbeat for %gs (worker died or is paused)",
            reclaimed,
            ", ".join(silent),
            ttl,
        )
    return reclaimed


def _record(rt: Runtime, report: SweepReport, took: float) -> None:
    """Say in Redis that recovery ran (never fails the sweep itself)."""
    try:
        prefix = rt.settings.limiter_prefix
        record = liveness.SweepRecord(
            at=liveness.redis_time(rt.redis),
            worker=rt.worker_name,
            interval=rt.settings.sweep_interval,
            took=round(took, 3),
            reclaimed=report.reclaimed,
            reclaimed_silent=report.reclaimed_silent,
            dispatched=report.dispatched,
        )
        liveness.record_sweep(rt.redis, prefix, record)
    except (RedisError, OSError) as exc:
        log.warning("could not record the sweep in Redis: %s", exc)


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
