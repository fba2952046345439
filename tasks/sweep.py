"""The sweeper: the reason the database, not Redis, is the source of truth (docs/architecture.md, "Recovery").

Every worker process runs it every ``sweep_interval`` in a thread of its own
(``tasks/celeryapp/sweeper_thread.py``), one at a time cluster-wide; ``nanobatch sweep`` runs one pass
by hand. Beat is not needed for recovery. Each pass
1. returns ``processing`` rows whose lease expired, or whose worker stopped heartbeating
   (:mod:`tasks.liveness`), to ``pending``;
2. publishes again the rows in flight whose message is gone (Redis lost it), or returns them to the
   queue when their batch may not run now;
3. fills every pool's dispatch window (:mod:`tasks.dispatch`): parked rows now due, rows of a batch
   whose start time or window just opened;
4. runs the Batch API lane (``tasks/batch_lane.py``: re-plan for deadlines, poll jobs, build jobs);
   batch-lane rows are never published (``models.status.CELERY_LANES``);
5. queues the webhook events the batches call for (``tasks/events.py``);
6. publishes results a worker recorded but did not publish (it died between the two steps, or the
   store failed): ``tasks/publishing.py``;
7. folds the counts' log into the per-batch counts (:func:`models.counts.compact`);
8. records itself in Redis (``status``, ``watch`` and the metrics show when recovery last ran).

A Redis lock makes concurrent sweeps take turns, and a periodic sweep first takes the cluster-wide
turn (``turn`` seconds), so N workers do not sweep N times an interval.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis.exceptions import RedisError

from nanobatch.models import counts, queue, transitions
from nanobatch.models.base import utcnow
from nanobatch.models.lifecycle import batches_outside_window
from nanobatch.tasks import batch_lane, events, liveness, publishing
from nanobatch.tasks.dispatch import fill, runnable_candidates
from nanobatch.tasks.runtime import Runtime

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
    #: Of ``reclaimed``: rows of workers whose heartbeat stopped (the rest: expired leases).
    reclaimed_silent: int = 0
    #: ``False`` when another process was sweeping, or swept within the last ``turn`` seconds.
    ran: bool = True
    #: Recorded results left on their staged file that this pass published (``tasks/publishing.py``).
    published: int = 0


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
    run_batch_lane(rt, now)
    dispatched, skipped, held = dispatch_due(rt, now=now)
    emit_events(rt, now)
    published = publish_stragglers(rt, now)
    with rt.db.session() as session:
        counts.compact(session)
    if expired or silent or dispatched:
        log.info(
            "sweep: reclaimed %d expired leases and %d tasks of silent workers, dispatched %d rows",
            expired,
            silent,
            dispatched,
        )
    return SweepReport(
        expired + silent, dispatched, skipped, held, reclaimed_silent=silent, published=published
    )


def run_batch_lane(rt: Runtime, now: datetime) -> None:
    """The Batch API lane's pass (re-plan, poll, build: ``tasks/batch_lane.py``); its failure is
    logged and never stops the rest of the sweep (the next pass tries again)."""
    try:
        batch_lane.run(rt, now=now)
    except Exception:
        log.exception("sweep: the Batch API lane's pass failed; retrying next sweep")


def emit_events(rt: Runtime, now: datetime) -> None:
    """Queue the webhook events the batches call for (``tasks/events.py``); never fails the sweep."""
    try:
        events.emit_batch_events(rt, now)
    except Exception:
        log.exception("sweep: could not look for webhook events; retrying next sweep")


def publish_stragglers(rt: Runtime, now: datetime) -> int:
    """Publish recorded results left on their staged file (``tasks/publishing.py``); a failure is
    logged and never stops the rest of the sweep (the rows wait for the next pass)."""
    try:
        return publishing.publish_stragglers(rt, now)
    except Exception:
        log.exception("sweep: could not publish recorded results; retrying next sweep")
        return 0


def reclaim_silent(rt: Runtime, now: datetime) -> int:
    """Return the tasks of workers whose heartbeat expired to pending (see :mod:`tasks.liveness`).

    ``now`` is taken before the heartbeats are read: a row claimed after that is not touched, since
    its worker was running when it claimed it.
    """
    with rt.db.session() as session:
        holders = transitions.processing_holders(session, claimed_before=now)
    receivers = rt.dispatcher.receivers()
    ttl = rt.settings.heartbeat_ttl
    # Asked even without holders: it starts the heartbeat history after Redis lost it.
    names = sorted(set(holders) | set(receivers))
    silent = liveness.silent_workers(rt.redis, rt.settings.limiter_prefix, names, ttl=ttl)
    if not silent:
        return 0
    # Messages a dead worker had taken but not started are gone: republished by dispatch_due below.
    if forgotten := rt.dispatcher.forget_received([name for name in silent if name in receivers]):
        log.warning("sweep: %d message(s) taken by silent workers are republished", forgotten)
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
    grace: float = DISPATCH_GRACE_SECONDS,
    limit: int = SWEEP_LIMIT,
) -> tuple[int, int, int]:
    """Re-publish rows in flight whose message is gone, then fill every pool's window.

    A row counts as in flight (``dispatched_at`` set) until it is claimed; older than ``grace`` and
    without a live message in Redis (``Dispatcher.without_live_message``), its message was lost: it
    is published again if its batch may run, else returned to the queue. Returns (published, skipped
    because a live message exists, open batches held by their window).
    """
    now = now or utcnow()
    with rt.db.session() as session:
        in_flight = queue.in_flight_older_than(session, now - timedelta(seconds=grace), limit)
        runnable = {c.id for c in runnable_candidates(session, {b for _, b in in_flight}, now)}
        held = len(batches_outside_window(session, now))
    lost = set(
        rt.dispatcher.without_live_message(
            [t for t, _ in in_flight], stale_after=rt.settings.redispatch_after
        )
    )
    again = [t for t, b in in_flight if t in lost and b in runnable]
    parked = [t for t, b in in_flight if t in lost and b not in runnable]
    if parked:
        with rt.db.session() as session:
            queue.back_in_queue(session, parked)
    if again:
        with rt.db.session() as session:
            again = queue.stamp_dispatched(session, again, now)
        rt.dispatcher.publish(again)
    return len(again) + fill(rt, now=now), len(in_flight) - len(lost), held
