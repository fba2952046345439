"""The dispatcher: the database is the queue, the broker holds a bounded window per quota pool.

See docs/architecture.md, "Dispatch". Submit writes rows only; :func:`fill` keeps at most ``W``
messages per pool out (rows ``pending`` with ``dispatched_at`` set, counted in the database), where
``W`` is ``dispatch_window`` or ``dispatch_window_factor`` x the pool's concurrency. It runs in the
worker right after each task, on a short timer in every worker, in every sweep, and after submit,
resume, retry, regenerate and a priority change. So Redis memory does not grow with the backlog, and
pause, cancel and priority act at once on everything not yet in the window.

Order: higher ``batches.priority`` first; batches of equal priority share the room by weighted round
robin (``batches.weight``), from a rotating offset kept in Redis, so a small batch behind a large one
gets a slot in the very next refill. A retry waits in the database with ``not_before`` (no countdown
message in a worker's memory) and takes its batch's turn once due.

Many workers refill at once: a short Redis lock per pool serialises them (a refill that finds it
taken leaves an "again" mark, which the holder honours before it lets go), and the occupancy is
counted after the previous refill committed, so the window is exceeded only if a refill outlives its
lock (by at most one refill's room).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from redis.exceptions import LockError
from sqlalchemy import select
from sqlalchemy.orm import Session

from nanobatch.models import queue
from nanobatch.models.base import utcnow
from nanobatch.models.lifecycle import BatchGate, why_batch_waits
from nanobatch.models.tables import Batch
from nanobatch.tasks import liveness
from nanobatch.tasks.runtime import Runtime

log = logging.getLogger("nanobatch.dispatch")

LOCK_SECONDS = 30.0
#: Due parked rows looked at per refill of a pool.
LATER_SCAN = 1000
#: Passes one lock holder makes when other refills asked for one meanwhile.
MAX_PASSES = 3
#: How long a process trusts its count of live workers (a Redis SCAN).
WORKERS_TTL = 5.0


@dataclass(frozen=True)
class Candidate:
    """A runnable batch with rows of the pool waiting."""

    id: str
    priority: int
    weight: int
    created_at: datetime


def fill(rt: Runtime, pools: Iterable[str] | None = None, *, now: datetime | None = None) -> int:
    """Top up the window of ``pools`` (every pool with waiting rows when ``None``); returns how many
    messages were published.

    The pools' rows go out interleaved (:func:`interleave`): the broker's queue is one FIFO for
    every pool, so publishing pool after pool would hand every worker thread the first pool's tasks,
    which then wait at that pool's limiter while the next pool, with room upstream, waits in the
    queue behind them (the night benchmark: pool B completed nothing in its first 15 s).
    """
    if pools is None:
        with rt.db.session() as session:
            pools = set(queue.pools_with_fresh_rows(session))
            pools.update(model for _, model, _ in queue.due_later_rows(session, now or utcnow(), LATER_SCAN))
    chosen: list[list[str]] = []
    try:
        for pool in sorted(pools):
            chosen.append(_fill_pool(rt, pool, now))
    finally:  # stamped and committed: published even if a later pool's refill failed
        to_publish = interleave(chosen)
        if to_publish:  # if publishing fails, the sweeper sends them again
            rt.dispatcher.publish(to_publish)
    return len(to_publish)


def interleave(per_pool: Sequence[Sequence[str]]) -> list[str]:
    """One id of each pool in turn (``[[a1, a2, a3], [b1]]`` → ``[a1, b1, a2, a3]``)."""
    merged: list[str] = []
    for position in range(max((len(ids) for ids in per_pool), default=0)):
        merged.extend(ids[position] for ids in per_pool if position < len(ids))
    return merged


def fill_after_task(rt: Runtime, pool: str | None) -> None:
    """The worker's refill right after a task ended (never fails the task). Skipped in the
    publish-all design (bench only), whose window never has room: counting its whole backlog in
    flight after every task would charge the old design a cost it never had."""
    if rt.settings.dispatch_publish_all:
        return
    try:
        fill(rt, [pool] if pool else None)
    except Exception as exc:  # the timer and the sweeper refill later
        log.warning("refill after a task failed (%s: %s)", type(exc).__name__, exc)


def _fill_pool(rt: Runtime, pool: str, now: datetime | None) -> list[str]:
    """The rows to publish for ``pool``, stamped as dispatched and committed under the pool's lock
    (the caller publishes them: :func:`fill`)."""
    prefix = rt.settings.limiter_prefix
    again = f"{prefix}:dispatch:again:{pool}"
    lock = rt.redis.lock(f"{prefix}:dispatch:lock:{pool}", timeout=LOCK_SECONDS)
    if not lock.acquire(blocking=False):
        rt.redis.set(again, 1, ex=int(LOCK_SECONDS))
        return []
    try:
        chosen: list[str] = []
        for _ in range(MAX_PASSES):
            rt.redis.delete(again)
            chosen += _fill_locked(rt, pool, now or utcnow())
            now = None
            if not rt.redis.exists(again):
                break
        return chosen
    finally:
        try:
            lock.release()
        except LockError:  # expired meanwhile: the next refill counts again
            log.debug("dispatch lock of %s expired before release", pool)


def _fill_locked(rt: Runtime, pool: str, now: datetime) -> list[str]:
    window, bound = window_size(rt, pool), pool_rate_bound(rt, pool)
    with rt.db.session() as session:
        out = queue.in_flight_count(session, pool)
        room = window - out
        if bound is not None and room > 0:  # the rate bound counts the pool's claimed rows too
            room = min(room, bound - out - queue.claimed_count(session, pool))
        if room <= 0:
            return []
        later: dict[str, list[str]] = {}
        for task_id, model, batch_id in queue.due_later_rows(session, now, LATER_SCAN):
            if model == pool:
                later.setdefault(batch_id, []).append(task_id)
        batch_ids = set(queue.batches_with_fresh_rows(session, pool)) | set(later)
        candidates = runnable_candidates(session, batch_ids, now)
        return _choose(rt, session, pool, candidates, later, room, now)


def runnable_candidates(session: Session, batch_ids: Iterable[str], now: datetime) -> list[Candidate]:
    """Those of ``batch_ids`` that may run at ``now`` (``lifecycle.why_batch_waits``)."""
    ids = list(batch_ids)
    if not ids:
        return []
    rows = session.execute(select(Batch).where(Batch.id.in_(ids))).scalars()
    return [
        Candidate(b.id, b.priority or 0, min(max(b.weight or 1, 1), queue.MAX_WEIGHT), b.created_at)
        for b in rows
        if why_batch_waits(BatchGate.of(b), now) is None
    ]


def _choose(
    rt: Runtime,
    session: Session,
    pool: str,
    candidates: list[Candidate],
    later: dict[str, list[str]],
    room: int,
    now: datetime,
) -> list[str]:
    """Up to ``room`` row ids: priority groups in order, weighted round robin inside a group."""
    chosen: list[str] = []
    for priority in sorted({c.priority for c in candidates}, reverse=True):
        group = sorted((c for c in candidates if c.priority == priority), key=lambda c: (c.created_at, c.id))
        rr_key = f"{rt.settings.limiter_prefix}:dispatch:rr:{pool}:{priority}"
        offset = int(rt.redis.get(rr_key) or 0)
        taken = _round_robin(session, pool, group, later, room - len(chosen), offset, chosen, now)
        if taken:
            rt.redis.incrby(rr_key, taken)
        if len(chosen) >= room:
            break
    return chosen


def _round_robin(
    session: Session,
    pool: str,
    group: list[Candidate],
    later: dict[str, list[str]],
    room: int,
    offset: int,
    chosen: list[str],
    now: datetime,
) -> int:
    """Hand ``room`` slots to ``group`` by weighted round robin from ``offset``; rows go to
    ``chosen`` (a batch's due retries first, then its rows in id order). Returns slots handed out."""
    given = 0
    live = list(group)
    while room > given and live:
        order = weighted_order(live)
        rounds, rest = divmod(room - given, len(order))
        share = {c.id: rounds * c.weight for c in live}
        for i in range(rest):
            batch = order[(offset + given + i) % len(order)]
            share[batch] += 1
        exhausted = set()
        for batch_id, wanted in share.items():
            if not wanted:
                continue
            rows = _take(session, pool, batch_id, later, wanted, now)
            chosen.extend(rows)
            given += len(rows)
            if len(rows) < wanted:
                exhausted.add(batch_id)
        if not exhausted:
            break
        live = [c for c in live if c.id not in exhausted]
    return given


def weighted_order(group: Sequence[Candidate]) -> list[str]:
    """One round of weighted round robin, interleaved: every batch once, then those of weight ≥ 2
    again, and so on (a batch of weight 3 among weight-1 batches gets 3 of every n + 2 slots)."""
    order: list[str] = []
    for level in range(max(c.weight for c in group)):
        order.extend(c.id for c in group if c.weight > level)
    return order


def _take(
    session: Session, pool: str, batch_id: str, later: dict[str, list[str]], wanted: int, now: datetime
) -> list[str]:
    """A batch's next ``wanted`` rows (due retries first, then its rows in id order), stamped as
    dispatched in this transaction so the next look at the batch starts after them."""
    due = later.get(batch_id, [])
    rows, later[batch_id] = due[:wanted], due[wanted:]
    if len(rows) < wanted:
        rows += queue.fresh_rows(session, pool, batch_id, wanted - len(rows))
    return queue.stamp_dispatched(session, rows, now)


# -- the window's size -------------------------------------------------------------------------------

_workers_seen: dict[str, tuple[float, int]] = {}
_workers_lock = threading.Lock()


def window_size(rt: Runtime, pool: str) -> int:
    """``dispatch_window``, else ``dispatch_window_factor`` x the pool's concurrency: its limit, or
    the threads of the live workers if that is fewer (or no limit is set)."""
    settings = rt.settings
    if settings.dispatch_window:
        return settings.dispatch_window
    capacity = settings.concurrency * max(1, live_worker_count(rt))
    limit = rt.limiter.get_limits(pool).concurrency
    if limit:
        capacity = min(capacity, limit)
    return max(1, math.ceil(settings.dispatch_window_factor * capacity))


def pool_rate_bound(rt: Runtime, pool: str) -> int | None:
    """For a pool with rpm/ipm (and no explicit ``dispatch_window``): :func:`rate_bound` on the
    pool's messages out *and* rows claimed; ``None`` when only the window applies."""
    if rt.settings.dispatch_window:
        return None
    return _rate_bounds.get(rt, pool)


#: What a pool's calls are assumed to take before any was measured (image calls: ~8-25 s).
UNMEASURED_LATENCY = 20.0


def rate_bound(rate_per_second: float, latency: float, ahead: float) -> int:
    """How many tasks of a rate-limited pool are worth having out or claimed at once.

    Its calls in flight (``rate x latency``) plus ``ahead`` seconds of admissions waiting at its
    gate, so no slot of the limiter goes unused. More only waits inside worker threads: a pool paced
    at 70 rpm beside one at 110 rpm would otherwise end up holding nearly every thread (each waiter
    sees a wait shorter than ``max_inline_wait``), and the faster pool would starve for threads.
    """
    return max(1, math.ceil(rate_per_second * (latency + ahead)))


class _RateBounds:
    """:func:`rate_bound` per pool from the limiter (rpm/ipm times the adaptive share) and the
    shared latency telemetry, cached for a couple of seconds: the rate moves slowly, and a refill
    runs after every task."""

    TTL = 2.0

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[float, int | None]] = {}
        self._lock = threading.Lock()

    def get(self, rt: Runtime, pool: str) -> int | None:
        key, now = (rt.settings.limiter_prefix, pool), time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.TTL:
                return seen[1]
        state = rt.limiter.state(pool)
        per_minute = [limit for limit in (state.limits.rpm, state.limits.ipm) if limit]
        bound = None
        if per_minute:
            latency = rt.telemetry.mean_latency(pool)
            rate = min(per_minute) * state.share / 60.0
            bound = rate_bound(
                rate, UNMEASURED_LATENCY if latency is None else latency, rt.settings.dispatch_ahead
            )
        with self._lock:
            self._seen[key] = (now, bound)
        return bound

    def forget(self) -> None:
        """Read every pool afresh at the next refill (tests; a refill a moment later does anyway)."""
        with self._lock:
            self._seen.clear()


_rate_bounds = _RateBounds()


def live_worker_count(rt: Runtime) -> int:
    prefix = rt.settings.limiter_prefix
    now = time.monotonic()
    with _workers_lock:
        seen = _workers_seen.get(prefix)
        if seen is not None and now - seen[0] < WORKERS_TTL:
            return seen[1]
    count = len(liveness.alive_workers(rt.redis, prefix))
    with _workers_lock:
        _workers_seen[prefix] = (now, count)
    return count
