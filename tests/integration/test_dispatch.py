"""Which messages are live: queued ones for a while, delayed ones held by a worker until their ETA."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from nanobatch.models.base import utcnow
from nanobatch.models.tables import GenerationTask
from nanobatch.simulator.testing import wait_until
from nanobatch.tasks.liveness import silent_workers
from nanobatch.tasks.sweep import reclaim_silent
from tests.integration.conftest import write_csv

pytestmark = pytest.mark.integration


def test_queued_and_held_messages_count_as_live_until_they_are_overdue(simulator, stack) -> None:  # type: ignore[no-untyped-def]
    d = stack(simulator()).runtime.dispatcher
    now = time.time()
    d.redis.zadd(d.queued_key, {"fresh": now, "old": now - 700})
    d.received_delayed("waiting", eta=now + 30)
    d.received_delayed("overdue", eta=now - 61)
    ids = ["fresh", "old", "waiting", "overdue", "unknown"]
    assert d.without_live_message(ids, stale_after=600) == ["old", "overdue", "unknown"]
    d.consumed("waiting")
    assert "waiting" in d.without_live_message(ids, stale_after=600)


def test_messages_a_dead_worker_took_but_never_started_are_reported_lost_at_once(simulator, stack) -> None:  # type: ignore[no-untyped-def]
    # Given two queued messages, both taken from the broker by worker w1, one of them started
    s = stack(simulator())
    d = s.runtime.dispatcher
    d.redis.zadd(d.queued_key, {"started": time.time(), "waiting": time.time()})
    d.received("started", "w1")
    d.received("waiting", "w1")
    d.consumed("started", "w1")
    assert d.receivers() == ["w1"]
    assert d.without_live_message(["waiting"], stale_after=600) == []  # live: queued a moment ago
    # When the sweeper finds w1 silent and forgets what it took
    assert d.forget_received(["w1"]) == 1
    # Then the unstarted message is lost now, not after redispatch_after, and w1's marks are gone
    assert d.without_live_message(["waiting"], stale_after=600) == ["waiting"]
    assert d.receivers() == []


def test_the_sweeper_republishes_what_a_silent_worker_took(simulator, stack) -> None:  # type: ignore[no-untyped-def]
    # Given a worker name with no heartbeat that took a message, and heartbeat history older than a TTL
    s = stack(simulator(), NANOBATCH_HEARTBEAT_TTL="1", NANOBATCH_HEARTBEAT_INTERVAL="0.5")
    rt = s.runtime
    d = rt.dispatcher
    d.redis.zadd(d.queued_key, {"some-task": time.time()})
    d.received("some-task", "ghost:1:abc")
    assert d.without_live_message(["some-task"], stale_after=600) == []
    prefix = rt.settings.limiter_prefix
    assert silent_workers(rt.redis, prefix, ["ghost:1:abc"], ttl=1) is None  # starts the history
    wait_until(
        lambda: silent_workers(rt.redis, prefix, ["ghost:1:abc"], ttl=1) == ["ghost:1:abc"],
        timeout=10,
        message="heartbeat history older than the TTL",
    )
    # When a sweep looks for silent workers
    reclaim_silent(rt, utcnow())
    # Then the ghost's message counts as lost (the sweep's dispatch step republishes its row)
    assert d.receivers() == []
    assert d.without_live_message(["some-task"], stale_after=600) == ["some-task"]


def test_a_worker_that_receives_a_delayed_message_marks_it_held(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a pending task (of a batch that starts later, so nothing runs) and a delayed message for it
    s = stack(simulator())
    s.cli(
        "submit",
        str(write_csv(tmp_path / "p.csv", "key,prompt", "A,mug")),
        "--batch",
        "held",
        "--at",
        time.strftime("%H:%M", time.gmtime(time.time() + 7200)),
        check=True,
    )
    with s.runtime.db.session() as session:
        (task_id,) = session.scalars(select(GenerationTask.id))
    s.runtime.dispatcher.publish([task_id], countdown=40)
    # When a worker receives it (and holds it in memory until the ETA)
    worker = s.start_worker(concurrency=1)
    deadline = time.monotonic() + 60
    while (held := s.runtime.redis.zscore(s.runtime.dispatcher.held_key, task_id)) is None:
        assert time.monotonic() < deadline, "the worker never reported the delayed message as held"
        time.sleep(0.1)
    # Then it is live until shortly after its ETA, and no longer listed as queued
    assert time.time() + 40 < held <= time.time() + 40 + 61
    assert s.runtime.redis.zscore(s.runtime.dispatcher.queued_key, task_id) is None
    worker.send_signal(signal.SIGKILL)
    worker.wait()
