"""``nanobatch worker`` survives a broker restart by itself: no supervisor restarts it here.

A private ``redis-server`` (the chaos suite's, on a free loopback port) is the broker and limiter;
the test stops and starts it while a real ``nanobatch worker`` process serves a batch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nanobatch.simulator.testing import wait_until
from nanobatch.tasks.liveness import alive_workers
from tests.chaos.services import PrivateRedis, ServiceUnavailable
from tests.conftest import IN_CI
from tests.integration.conftest import REPO, Stack, write_csv

pytestmark = pytest.mark.integration

RESTARTED = "restarting the Celery worker"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    try:
        server = PrivateRedis(tmp_path / "redis")
    except ServiceUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true and {exc}")
        pytest.skip(str(exc))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nanobatch_worker(tmp_path: Path) -> Iterator[Callable[[Stack], subprocess.Popen[bytes]]]:
    """``nanobatch worker`` (the CLI, with its restart loop) as a process; stopped with SIGTERM."""
    started: list[subprocess.Popen[bytes]] = []

    def start(s: Stack) -> subprocess.Popen[bytes]:
        log = (tmp_path / "nanobatch-worker.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "nanobatch.cli", "worker", "--concurrency", "4", "--loglevel", "info"],
            cwd=REPO,
            env={**os.environ, **s.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_log(tmp_path: Path) -> str:
    return (tmp_path / "nanobatch-worker.log").read_text(errors="replace")


def completed(s: Stack, batch: str) -> int:
    return s.summary(batch).counts["completed"]


def test_the_worker_keeps_serving_through_redis_restarts(  # type: ignore[no-untyped-def]
    simulator, stack, private_redis: PrivateRedis, nanobatch_worker, tmp_path: Path
) -> None:
    # Given `nanobatch worker` serving a batch; 10 % bare 429s keep delayed (unacked) messages in it
    sim = simulator(latency=(0.2, 0.5), fail_rates={429: 0.1}, seed=4)
    s = stack(sim, NANOBATCH_REDIS_URL=private_redis.url)
    worker = nanobatch_worker(s)
    prefix = s.settings.limiter_prefix
    wait_until(lambda: alive_workers(s.runtime.redis, prefix), timeout=60, message="the worker's heartbeat")
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", *(f"K{i},mug {i}" for i in range(40))), "b")
    # When Redis is restarted (killed, started empty on the same port) three times mid-batch
    for restart in range(3):
        done = wait_until(lambda: completed(s, "b") or None, timeout=120, interval=0.2, message="progress")
        private_redis.wipe()
        # Then after each restart the same process is still there and completes tasks again
        wait_until(
            lambda done=done: completed(s, "b") > done or s.summary("b").remaining == 0,
            timeout=120,
            interval=0.2,
            message=f"tasks completed after restart {restart + 1}",
        )
        assert worker.poll() is None, worker_log(tmp_path)[-4000:]
    summary = s.wait_terminal("b", timeout=240)
    assert summary.counts["completed"] == 40, summary.counts
    assert worker.poll() is None, worker_log(tmp_path)[-4000:]


def test_the_worker_restarts_celery_after_it_gave_up_on_the_broker(  # type: ignore[no-untyped-def]
    simulator, stack, private_redis: PrivateRedis, nanobatch_worker, tmp_path: Path
) -> None:
    # Given `nanobatch worker` whose Celery worker gives up after one failed reconnect
    sim = simulator()
    s = stack(sim, NANOBATCH_REDIS_URL=private_redis.url, NANOBATCH_BROKER_CONNECTION_MAX_RETRIES="1")
    worker = nanobatch_worker(s)
    wait_until(
        lambda: alive_workers(s.runtime.redis, s.settings.limiter_prefix), timeout=60, message="heartbeat"
    )
    # When Redis stops until the Celery worker has exited on an unrecoverable error, then starts again
    private_redis.kill()
    wait_until(
        lambda: "stopped on an unrecoverable error" in worker_log(tmp_path),
        timeout=120,
        interval=0.2,
        message="the Celery worker to give up",
    )
    assert worker.poll() is None, worker_log(tmp_path)[-4000:]
    private_redis.start()
    # Then the same `nanobatch worker` process starts it again and serves new work
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "A,mug", "B,cup"), "after")
    assert s.wait_terminal("after", timeout=120).counts["completed"] == 2
    assert worker.poll() is None
    assert RESTARTED in worker_log(tmp_path)
