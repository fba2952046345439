"""The dispatcher's window (docs/architecture.md, "Dispatch"): the database is the queue, the broker
holds at most W messages per pool; priorities and weighted round robin order what goes in.

Real PostgreSQL, Redis, Celery workers and the simulator. Orderings are asserted on the rows'
``started_at`` (events), never on durations.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from nanobatch.models import queue
from nanobatch.models.base import utcnow
from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.simulator.testing import wait_until
from nanobatch.tasks import dispatch, operations
from nanobatch.workers.limiter import PoolLimits
from tests.integration.conftest import DEFAULT_MODEL, Stack, write_csv

pytestmark = pytest.mark.integration

WINDOW = 6


def rows(n: int, tag: str) -> list[str]:
    return [f"{tag}{i:05d},a {tag} number {i}" for i in range(n)]


def submit(s: Stack, tmp_path: Path, name: str, n: int, *extra: str) -> None:
    path = write_csv(tmp_path / f"{name}.csv", "key,prompt", *rows(n, name))
    s.cli("submit", str(path), "--batch", name, *extra, check=True)


def created(s: Stack, batch: str) -> datetime:
    """When the batch row was written: before its rows and before the fill that follows them."""
    with s.runtime.db.session() as session:
        return session.scalars(select(Batch.created_at).where(Batch.name == batch)).one()


def in_flight(s: Stack) -> int:
    with s.runtime.db.session() as session:
        return queue.in_flight_count(session, DEFAULT_MODEL)


def broker_length(s: Stack) -> int:
    """Messages waiting in the broker's list(s) for the generate queue (kombu adds priority suffixes)."""
    redis, name = s.runtime.redis, s.env["NANOBATCH_QUEUE"].encode()
    lists = [key for key in redis.scan_iter(name + b"*") if key == name or key.startswith(name + b"\x06")]
    return sum(int(redis.llen(key)) for key in lists)


def completed(s: Stack, batch: str) -> int:
    return s.summary(batch).counts.get("completed", 0)


def started(s: Stack, batch: str, after: datetime | None = None, before: datetime | None = None) -> int:
    """Tasks of ``batch`` claimed in (after, before]."""
    with s.runtime.db.session() as session:
        stmt = (
            select(func.count())
            .select_from(GenerationTask)
            .join(Batch, Batch.id == GenerationTask.batch_id)
            .where(Batch.name == batch, GenerationTask.started_at.is_not(None))
        )
        if after is not None:
            stmt = stmt.where(GenerationTask.started_at > after)
        if before is not None:
            stmt = stmt.where(GenerationTask.started_at <= before)
        return int(session.scalar(stmt) or 0)


def last_start(s: Stack, batch: str) -> datetime:
    with s.runtime.db.session() as session:
        value = session.scalar(
            select(func.max(GenerationTask.started_at))
            .join(Batch, Batch.id == GenerationTask.batch_id)
            .where(Batch.name == batch)
        )
    assert value is not None
    return value


def test_the_window_bounds_the_broker_while_a_big_batch_runs(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a 400-task batch and a window of 6, two workers refilling it concurrently
    s = stack(simulator(latency=(0.01, 0.01)), NANOBATCH_DISPATCH_WINDOW=str(WINDOW))
    submit(s, tmp_path, "big", 400)
    assert in_flight(s) == WINDOW and broker_length(s) == WINDOW  # submit wrote rows, sent one window
    peaks = {"db": 0, "broker": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peaks["db"] = max(peaks["db"], in_flight(s))
            peaks["broker"] = max(peaks["broker"], broker_length(s))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    s.start_worker(concurrency=3)
    s.start_worker(concurrency=3)
    try:
        summary = s.wait_terminal("big", timeout=240)
    finally:
        stop.set()
        sampler.join()
    # Then every task completed, and the broker never held more than the window
    assert summary.counts["completed"] == 400
    assert peaks["db"] <= WINDOW, peaks
    assert peaks["broker"] <= WINDOW, peaks


def test_a_small_batch_of_equal_priority_shares_the_window_with_a_backlog(
    simulator, stack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # Given a 400-task backlog running through a window of 4
    s = stack(simulator(latency=(0.03, 0.03)), NANOBATCH_DISPATCH_WINDOW="4")
    submit(s, tmp_path, "backfill", 400)
    s.start_worker(concurrency=2)
    wait_until(lambda: completed(s, "backfill") >= 20, timeout=60, message="the backfill to run")
    # When a 10-task batch of the same priority is submitted behind it
    submit(s, tmp_path, "small", 10)
    s.wait_terminal("small", timeout=120)
    submitted = created(s, "small")
    # Then it takes turns with the backfill instead of waiting for it: while the small batch ran, the
    # backfill started about as many tasks (round robin), plus what was already in the window
    between = started(s, "backfill", after=submitted, before=last_start(s, "small"))
    assert between <= 10 + 4 + 2 + 4, between
    assert s.summary("backfill").remaining > 200


def test_priority_first_and_a_priority_change_takes_effect(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given two backlogs of equal priority running through a window of 4
    s = stack(simulator(latency=(0.02, 0.02)), NANOBATCH_DISPATCH_WINDOW="4")
    submit(s, tmp_path, "first", 300)
    submit(s, tmp_path, "second", 300)
    s.start_worker(concurrency=2)
    wait_until(lambda: completed(s, "first") >= 10, timeout=60, message="the backlogs to run")
    # When an urgent batch arrives with a higher priority
    submit(s, tmp_path, "urgent", 8, "--priority", "5")
    s.wait_terminal("urgent", timeout=120)
    urgent_at = created(s, "urgent")
    # Then no task of the backlogs started meanwhile beyond what was already dispatched or running
    others = started(s, "first", urgent_at, last_start(s, "urgent")) + started(
        s, "second", urgent_at, last_start(s, "urgent")
    )
    assert others <= 4 + 2, others
    # When the second backlog is raised above the first while both run
    changed_at = utcnow()
    operations.set_priority(s.runtime, "second", 3)
    wait_until(lambda: started(s, "second", after=changed_at) >= 40, timeout=120, message="second to run")
    # Then the first one only finishes what was already in the window
    assert started(s, "first", after=changed_at) <= 4 + 2
    # And the command says so
    out = s.cli("priority", "first", "4", "--weight", "2", check=True).stdout
    assert "now has priority 4 and weight 2" in out, out


def test_a_redis_flush_mid_run_loses_nothing(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a batch running through a window of 6
    sim = simulator(latency=(0.02, 0.02))
    s = stack(sim, NANOBATCH_DISPATCH_WINDOW=str(WINDOW))
    submit(s, tmp_path, "flushed", 150)
    s.start_worker(concurrency=2)
    wait_until(lambda: completed(s, "flushed") >= 20, timeout=60, message="the batch to run")
    # When Redis loses every key of the deployment (queue, live-message sets, locks, heartbeats)
    keys = list(s.runtime.redis.scan_iter(f"{s.env['NANOBATCH_LIMITER_PREFIX']}*", count=1000))
    s.runtime.redis.delete(*keys)
    # Then the lost window is sent again (after the dispatch grace) and every task completes, once
    summary = s.wait_terminal("flushed", timeout=180)
    assert summary.counts["completed"] == 150
    assert sim.stats()["requests"] == 150


def test_retries_wait_in_the_database_and_are_dispatched_when_due(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given an upstream that fails a third of the calls with a 500
    sim = simulator(fail_rates={500: 0.3})
    s = stack(sim, NANOBATCH_DISPATCH_WINDOW="4", NANOBATCH_MAX_ATTEMPTS="20")
    submit(s, tmp_path, "flaky", 40)
    s.start_worker(concurrency=2)
    # Then the failed calls come back through the database (not_before), and everything completes
    assert s.wait_terminal("flaky", timeout=180).counts["completed"] == 40
    with s.runtime.db.session() as session:
        retried = session.scalar(select(func.count()).where(GenerationTask.attempts > 0))
    assert retried, "no call failed: the test proves nothing"
    assert s.runtime.redis.zcard(s.runtime.dispatcher.held_key) == 0  # no countdown message was sent


def test_pause_and_cancel_stop_dispatch_at_once(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a batch running through a window of 4
    s = stack(simulator(latency=(0.05, 0.05)), NANOBATCH_DISPATCH_WINDOW="4")
    submit(s, tmp_path, "held", 200)
    s.start_worker(concurrency=2)
    wait_until(lambda: completed(s, "held") >= 10, timeout=60, message="the batch to run")
    # When it is paused
    paused_at = utcnow()
    operations.pause_batch(s.runtime, "held")
    # Then what was in the window drains (dropped messages go back to the queue) and nothing else starts
    wait_until(
        lambda: in_flight(s) == 0 and s.summary("held").counts.get("processing", 0) == 0,
        timeout=60,
        message="the window to drain",
    )
    assert started(s, "held", after=paused_at) <= 4 + 2
    assert broker_length(s) == 0
    pending = s.summary("held").counts["pending"]
    assert pending > 150
    # When it is resumed and then cancelled
    s.cli("resume", "held", check=True)
    wait_until(lambda: s.summary("held").counts.get("pending", 0) < pending, timeout=60, message="resume")
    s.cli("cancel", "held", check=True)
    # Then the rest is cancelled and no message for it stays behind
    wait_until(
        lambda: s.summary("held").remaining == 0 and broker_length(s) == 0,
        timeout=60,
        message="the cancel to settle",
    )
    assert s.summary("held").counts["cancelled"] > 100


def test_a_rate_limited_pool_gets_its_calls_in_flight_plus_a_few_seconds_not_every_thread(
    simulator,  # type: ignore[no-untyped-def]
    stack,
) -> None:
    # Given 16 threads (a window of 32 by concurrency) and a pool limited to 60 rpm whose calls
    # take 2 s on average (the shared latency telemetry)
    s = stack(simulator(), NANOBATCH_CONCURRENCY="16", NANOBATCH_DISPATCH_AHEAD="10")
    rt = s.runtime
    dispatch._rate_bounds.forget()
    assert dispatch.window_size(rt, DEFAULT_MODEL) == 32
    assert dispatch.pool_rate_bound(rt, DEFAULT_MODEL) is None  # no rate limit: the threads decide
    rt.limiter.set_limits(DEFAULT_MODEL, PoolLimits(rpm=60))
    dispatch._rate_bounds.forget()
    # Before any call was measured, latency is taken as 20 s: 1/s x (20 + 10) = 30
    assert dispatch.pool_rate_bound(rt, DEFAULT_MODEL) == 30
    for _ in range(3):
        rt.telemetry.observe_latency(DEFAULT_MODEL, 2.0)
    dispatch._rate_bounds.forget()
    # Then 1/s x (2 s in flight + 10 s ahead) = 12 rows out or claimed, not 32 out
    assert dispatch.pool_rate_bound(rt, DEFAULT_MODEL) == 12
    # and it follows the adaptive share: an idle pool refused once is halved, and so is its bound
    assert rt.limiter.adapt_after_refusal(DEFAULT_MODEL).after == 0.5
    dispatch._rate_bounds.forget()
    assert dispatch.pool_rate_bound(rt, DEFAULT_MODEL) == 6


def test_claimed_rows_count_against_a_rate_limited_pool_but_not_against_the_window(
    simulator,  # type: ignore[no-untyped-def]
    stack,
    tmp_path: Path,
) -> None:
    # Given a 60 rpm pool measured at 2 s a call (bound 12) with 5 rows claimed by workers (and
    # 10 held by a Batch API job, which hold no worker thread)
    s = stack(simulator(), NANOBATCH_CONCURRENCY="16")
    rt = s.runtime
    rt.limiter.set_limits(DEFAULT_MODEL, PoolLimits(rpm=60))
    for _ in range(3):
        rt.telemetry.observe_latency(DEFAULT_MODEL, 2.0)
    dispatch._rate_bounds.forget()
    submit(s, tmp_path, "slow", 40)
    submit(s, tmp_path, "night", 10, "--lane", "batch")
    with rt.db.session() as session:
        session.execute(
            update(GenerationTask).where(GenerationTask.lane == "batch").values(status="processing")
        )
    with rt.db.session() as session:
        ids = session.scalars(
            select(GenerationTask.id).where(GenerationTask.dispatched_at.is_not(None))
        ).all()
        assert len(ids) == 12  # submit's fill: the bound, not the window of 32
        session.execute(
            update(GenerationTask)
            .where(GenerationTask.id.in_(ids[:5]))
            .values(status="processing", dispatched_at=None)
        )
    # When the window is refilled
    dispatch._rate_bounds.forget()
    dispatch.fill(rt, [DEFAULT_MODEL])
    # Then out + claimed is still 12: the claimed rows hold their places
    with rt.db.session() as session:
        assert (
            queue.in_flight_count(session, DEFAULT_MODEL) + queue.claimed_count(session, DEFAULT_MODEL) == 12
        )


def test_rate_bound_is_calls_in_flight_plus_seconds_ahead() -> None:
    assert dispatch.rate_bound(2.0, 1.5, 10.0) == 23  # 2/s x 11.5 s
    assert dispatch.rate_bound(0.05, 20.0, 10.0) == 2  # 3 rpm, 20 s calls
    assert dispatch.rate_bound(0.0, 20.0, 10.0) == 1  # never zero: a share recovers


def queued_in_consumption_order(s: Stack) -> list[str]:
    """The task ids waiting in the broker, in the order workers will take them (kombu's Redis
    transport pushes on the left and pops on the right)."""
    import json

    raw = s.runtime.redis.lrange(s.env["NANOBATCH_QUEUE"], 0, -1)
    return [json.loads(m)["headers"]["argsrepr"].strip("(),'") for m in reversed(raw)]


def test_one_refill_of_several_pools_interleaves_them_in_the_queue(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given one batch alternating two models (two quota pools), a window of 4 per pool, no worker
    s = stack(simulator(), NANOBATCH_DISPATCH_WINDOW="4")
    other = "gemini-3-pro-image"
    lines = [f"K{i:03d},a mug number {i},{other if i % 2 else DEFAULT_MODEL}" for i in range(20)]
    # When it is submitted (one refill of every pool)
    s.cli(
        "submit",
        str(write_csv(tmp_path / "two.csv", "key,prompt,model", *lines)),
        "--batch",
        "two",
        check=True,
    )
    # Then the broker holds each pool's window, and workers take the pools in turn, not pool after pool
    # (before: all of one pool's messages first, so every thread waited at that pool's limiter)
    with s.runtime.db.session() as session:
        model_of = {
            row.id: row.model for row in session.execute(select(GenerationTask.id, GenerationTask.model))
        }
    order = [model_of[task_id] for task_id in queued_in_consumption_order(s)]
    assert sorted(order) == sorted([DEFAULT_MODEL, other] * 4)
    assert all(order[i] != order[i + 1] for i in range(len(order) - 1)), order


def test_interleave_takes_one_of_each_pool_in_turn() -> None:
    assert dispatch.interleave([["a1", "a2", "a3"], ["b1"], []]) == ["a1", "b1", "a2", "a3"]
    assert dispatch.interleave([]) == []
