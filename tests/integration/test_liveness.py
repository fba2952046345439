"""Liveness and recovery without beat: heartbeats, silent workers, paused workers, the last sweep.

Real worker processes, PostgreSQL, Redis and the simulator on loopback. Leases are long (600 s) in
these tests, so a reclaim within a minute can only come from the missing heartbeat.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.simulator.testing import wait_until
from nanobatch.tasks.liveness import (
    LivenessKeys,
    SweepRecord,
    alive_workers,
    record_sweep,
    redis_time,
    silent_workers,
)
from nanobatch.workers.storage import STAGING_DIR, local_path, safe_name
from tests.integration.conftest import Stack, write_csv
from tests.integration.test_metrics import Exporter, of

pytestmark = pytest.mark.integration

LONG_LEASE = "600"


def tasks_of(s: Stack, batch: str) -> list[GenerationTask]:
    with s.runtime.db.session() as session:
        return list(
            session.scalars(
                select(GenerationTask).join(Batch).where(Batch.name == batch).order_by(GenerationTask.key)
            )
        )


def held_by(s: Stack, batch: str, proc: subprocess.Popen[bytes]) -> list[GenerationTask]:
    """The batch's processing rows claimed by the worker process ``proc``."""
    return [t for t in tasks_of(s, batch) if t.status == "processing" and is_worker(t.worker, proc)]


def is_worker(name: str | None, proc: subprocess.Popen[bytes]) -> bool:
    return bool(name) and str(name).startswith(f"{socket.gethostname()}:{proc.pid}:")


def products(tmp_path: Path, n: int) -> Path:
    return write_csv(tmp_path / f"p{n}.csv", "key,prompt", *(f"K{i},mug {i}" for i in range(n)))


def test_a_sigkilled_workers_tasks_are_reclaimed_through_its_heartbeat_within_a_minute(  # type: ignore[no-untyped-def]
    simulator, stack, tmp_path: Path
) -> None:
    # Given a slow upstream, a 600 s lease and one worker holding two tasks mid-call
    sim = simulator(latency=(4.0, 4.0))
    s = stack(sim, NANOBATCH_LEASE_SECONDS=LONG_LEASE)
    doomed = s.start_worker(concurrency=2)
    s.submit_file(products(tmp_path, 2), "killed")
    wait_until(lambda: len(held_by(s, "killed", doomed)) == 2, timeout=60, message="two tasks held")
    # When the worker is SIGKILLed and another one (no beat) is running
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    killed_at = time.monotonic()
    s.start_worker(concurrency=2)
    # Then its tasks are taken from it well before the lease, through the missing heartbeat
    wait_until(lambda: not held_by(s, "killed", doomed), timeout=90, interval=0.2, message="reclaim")
    reclaimed_after = time.monotonic() - killed_at
    assert reclaimed_after < 60, f"reclaimed {reclaimed_after:.1f}s after the kill"
    summary = s.wait_terminal("killed", timeout=60)
    assert summary.counts["completed"] == 2, summary.counts
    tasks = tasks_of(s, "killed")
    assert all(t.attempts == 1 and not is_worker(t.worker, doomed) for t in tasks)


def test_lost_messages_are_recovered_without_any_beat(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a batch whose messages Redis lost, and no beat anywhere
    s = stack(simulator())
    s.submit_file(products(tmp_path, 3), "nobeat")
    queue = s.env["NANOBATCH_QUEUE"]
    assert s.runtime.redis.delete(*s.runtime.redis.scan_iter(f"{queue}*"), s.runtime.dispatcher.queued_key)
    with s.runtime.db.session() as session:  # as if published long ago (past the dispatch grace)
        session.execute(update(GenerationTask).values(dispatched_at=None))
    # When two plain workers run
    first, second = s.start_worker(concurrency=2), s.start_worker(concurrency=2)
    # Then their own sweepers publish the rows again and everything completes
    assert s.wait_terminal("nobeat", timeout=90).counts["completed"] == 3
    record = s.runtime.redis.hgetall(LivenessKeys(s.settings.limiter_prefix).last_sweep)
    assert any(is_worker(record[b"worker"].decode(), proc) for proc in (first, second)), record
    alive = alive_workers(s.runtime.redis, s.settings.limiter_prefix)
    assert sorted(any(is_worker(name, p) for name in alive) for p in (first, second)) == [True, True]


def test_a_paused_worker_never_overwrites_the_new_owners_result(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a worker that is paused (SIGSTOP) while its two calls are in flight
    sim = simulator(latency=(3.0, 3.0))
    s = stack(sim, NANOBATCH_LEASE_SECONDS=LONG_LEASE)
    sleeper = s.start_worker(concurrency=2)
    s.submit_file(products(tmp_path, 2), "paused")
    wait_until(
        lambda: len(held_by(s, "paused", sleeper)) == 2 and sim.stats()["current_concurrency"] == 2,
        timeout=60,
        message="two calls in flight",
    )
    sleeper.send_signal(signal.SIGSTOP)
    try:
        # When another worker takes its tasks over (missing heartbeat) and completes them
        other = s.start_worker(concurrency=2)
        summary = s.wait_terminal("paused", timeout=90)
        assert summary.counts["completed"] == 2, summary.counts
        before = {t.key: (t.status, t.result_sha256, t.finished_at, t.worker) for t in tasks_of(s, "paused")}
        assert all(is_worker(worker, other) for *_, worker in before.values())
    finally:
        # and the paused worker wakes up with its two answers waiting in its sockets
        sleeper.send_signal(signal.SIGCONT)
    log = s.output_dir.parent / "worker0.log"
    wait_until(
        lambda: log.read_text(errors="replace").count("lost its claim") == 2,
        timeout=60,
        interval=0.2,
        message="the woken worker to drop both results",
    )
    # Then nothing it does changes the rows or the files: same status, result and finish time
    after = {t.key: (t.status, t.result_sha256, t.finished_at, t.worker) for t in tasks_of(s, "paused")}
    assert after == before
    for task in tasks_of(s, "paused"):
        path = Path(local_path(task.result_uri or "") or "")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == task.result_sha256
        assert task.finished_at is not None and path.stat().st_mtime <= task.finished_at.timestamp()
    files = [p for p in s.output_dir.rglob("*") if p.is_file() and STAGING_DIR not in p.parts]
    assert sorted(p.stem for p in files) == sorted(safe_name(k) for k in ("K0", "K1")), files
    assert sim.stats()["by_status"].get("200") == 4  # the paused worker's two calls were paid for


def test_silent_workers_count_only_once_redis_held_heartbeats_for_a_ttl(
    redis_url: str, key_prefix: str
) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = LivenessKeys(key_prefix)
    # Given Redis without any liveness history (new, restarted or flushed)
    assert silent_workers(client, key_prefix, ["a", "b"], ttl=20) is None
    # Then the first look starts the history, and absence proves nothing until it is a TTL old
    assert client.get(keys.since) is not None
    assert silent_workers(client, key_prefix, ["a", "b"], ttl=20) is None
    client.set(keys.since, repr(redis_time(client) - 21))
    client.set(keys.worker("a"), "{}", px=20_000)
    assert silent_workers(client, key_prefix, ["a", "b"], ttl=20) == ["b"]
    client.close()


def test_status_watch_and_metrics_say_when_recovery_last_ran(  # type: ignore[no-untyped-def]
    simulator, stack, tmp_path: Path
) -> None:
    s = stack(simulator(), NANOBATCH_SWEEP_INTERVAL="30")  # each CLI call takes seconds to start
    exporters: list[Exporter] = []

    def scrape() -> dict:  # type: ignore[type-arg]
        exporters.append(Exporter(s.env, tmp_path / f"exporter{len(exporters)}.log"))
        try:
            return exporters[-1].scrape()
        finally:
            exporters[-1].stop()

    s.submit_file(products(tmp_path, 1), "quiet")
    prefix = s.settings.limiter_prefix
    # Given no worker has ever swept: status and watch warn
    status = s.cli("status", check=True).stdout
    assert "warning: no recovery sweep has run yet" in status
    assert "no recovery sweep has run yet" in s.cli("watch", "quiet", "--once", check=True).stdout
    assert of(scrape(), "nanobatch_sweep_overdue") == {frozenset(): 1.0}
    # When a sweep runs (here by hand: `nanobatch sweep`)
    s.cli("sweep", check=True)
    # Then status, watch and the metrics say so
    status = s.cli("status", check=True).stdout
    assert "recovery: last sweep" in status and "warning" not in status
    assert "recovery: last sweep" in s.cli("watch", "quiet", "--once", check=True).stdout
    samples = scrape()
    assert of(samples, "nanobatch_sweep_overdue") == {frozenset(): 0.0}
    assert of(samples, "nanobatch_sweep_age_seconds")[frozenset()] < 60
    assert of(samples, "nanobatch_workers_alive") == {frozenset(): 0.0}
    # And when the last sweep is more than two intervals old, they warn again
    client = s.runtime.redis
    old = SweepRecord(redis_time(client) - 95, "gone:1:abc", 10.0, 0.1, 0, 0, 0)
    record_sweep(client, prefix, old)
    status = s.cli("status", check=True).stdout
    assert "warning: no recovery sweep for 1m 3" in status and "(more than two 10s intervals;" in status
    as_json = s.cli("status", "--json", check=True)
    assert json.loads(as_json.stdout)[0]["batch"] == "quiet"
    assert "no recovery sweep for" in as_json.stderr
    assert of(scrape(), "nanobatch_sweep_overdue") == {frozenset(): 1.0}
