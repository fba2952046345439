"""The sweeper makes the database the source of truth: lost messages, windows, start times."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from nanobatch.models.tables import GenerationTask
from nanobatch.tasks.sweep import sweep
from tests.integration.conftest import write_csv

pytestmark = pytest.mark.integration


def test_messages_lost_with_redis_are_dispatched_again(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a submitted batch whose messages and queue bookkeeping Redis then loses
    s = stack(simulator())
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "A,mug", "B,cup", "C,plate"), "lost")
    queue = s.env["NANOBATCH_QUEUE"]
    lost = [*s.runtime.redis.scan_iter(f"{queue}*"), s.runtime.dispatcher.queued_key]
    assert s.runtime.redis.delete(*lost) >= 2
    # When a worker starts (it sweeps by itself, no beat), after the dispatch grace period has passed
    with s.runtime.db.session() as session:
        session.execute(update(GenerationTask).values(dispatched_at=datetime.now(UTC) - timedelta(minutes=5)))
    s.start_worker()
    # Then every task completes anyway
    assert s.wait_terminal("lost", timeout=120).counts["completed"] == 3


def test_a_live_message_is_not_duplicated_by_the_sweeper(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "A,mug"), "live")
    later = datetime.now(UTC) + timedelta(minutes=5)  # past the grace period, messages still queued
    report = sweep(s.runtime, now=later)
    assert (report.dispatched, report.skipped_live) == (0, 1)


def test_windows_hold_dispatch_until_they_open(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator(), NANOBATCH_TIMEZONE="UTC")
    path = write_csv(tmp_path / "p.csv", "key,prompt", "A,mug", "B,cup")
    result = s.cli("submit", str(path), "--batch", "night", "--window", "01:00-06:00", check=True)
    now = datetime.now(UTC)
    in_window = datetime(now.year, now.month, now.day, 2, 0, tzinfo=UTC) + timedelta(days=1)
    outside = in_window.replace(hour=12)
    inside_now = 1 <= now.hour < 6
    assert ("scheduled" in result.stdout) is not inside_now
    s.runtime.redis.delete(s.runtime.dispatcher.queued_key)  # forget any message published at submit
    assert sweep(s.runtime, now=outside).dispatched == 0
    assert sweep(s.runtime, now=outside).held_by_window == 1
    assert sweep(s.runtime, now=in_window).dispatched == 2


def test_a_batch_scheduled_with_at_waits_for_its_time(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    path = write_csv(tmp_path / "p.csv", "key,prompt", "A,mug")
    at = (datetime.now(UTC) + timedelta(hours=2)).strftime("%H:%M")
    s.cli("submit", str(path), "--batch", "tonight", "--at", at, check=True)
    assert s.runtime.dispatcher.queued_count() == 0
    assert sweep(s.runtime).dispatched == 0
    assert sweep(s.runtime, now=datetime.now(UTC) + timedelta(hours=3)).dispatched == 1


def test_a_message_arriving_outside_the_window_is_handed_back(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a batch whose window is closed now, and a (delayed retry) message for it anyway
    sim = simulator()
    s = stack(sim)
    now = datetime.now(UTC)
    window = f"{(now + timedelta(hours=2)):%H:%M}-{(now + timedelta(hours=3)):%H:%M}"
    s.cli(
        "submit",
        str(write_csv(tmp_path / "p.csv", "key,prompt", "A,mug")),
        "--batch",
        "closed",
        "--window",
        window,
        check=True,
    )
    with s.runtime.db.session() as session:
        (task_id,) = session.scalars(select(GenerationTask.id))
    s.runtime.dispatcher.publish([task_id])
    # When a worker receives it
    s.start_worker(concurrency=1)
    deadline = time.monotonic() + 60
    while s.runtime.redis.zscore(s.runtime.dispatcher.queued_key, task_id) is not None:
        assert time.monotonic() < deadline, "the worker never took the message"
        time.sleep(0.1)
    # Then it makes no upstream call and leaves the task pending for the sweeper
    deadline = time.monotonic() + 30
    while (task := _task(s, task_id)).error_code != "outside_window":
        assert time.monotonic() < deadline, f"task not handed back: {task.status} {task.error_code}"
        time.sleep(0.1)
    assert task.status == "pending" and task.attempts == 0
    assert sim.stats()["requests"] == 0


def _task(s, task_id: str) -> GenerationTask:  # type: ignore[no-untyped-def]
    with s.runtime.db.session() as session:
        return session.get_one(GenerationTask, task_id)
