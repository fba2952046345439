"""The worker engine against a misbehaving upstream: faults, blocks, 429 storms, dead workers, budgets.

Real PostgreSQL, Redis, Celery worker processes and the simulator on loopback.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from sqlalchemy import select

from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.simulator.testing import wait_until
from nanobatch.workers.limiter import PoolLimits
from tests.integration.conftest import DEFAULT_MODEL, Stack, write_csv

pytestmark = pytest.mark.integration

FLASH = DEFAULT_MODEL  # the pool of rows that name no model


def tasks_of(s: Stack, batch: str) -> list[GenerationTask]:
    with s.runtime.db.session() as session:
        return list(session.scalars(select(GenerationTask).join(Batch).where(Batch.name == batch)))


def products(tmp_path: Path, n: int, prompt: str = "mug {i}") -> Path:
    return write_csv(tmp_path / f"p{n}.csv", "key,prompt", *(f"K{i},{prompt.format(i=i)}" for i in range(n)))


def test_transient_faults_end_completed(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given an upstream where 40% of calls fail with 500/503/504 or time out
    sim = simulator(fail_rates={500: 0.1, 503: 0.2, 504: 0.1}, seed=3)
    s = stack(sim, NANOBATCH_MAX_ATTEMPTS="10")
    s.start_worker()
    # When 20 tasks run
    s.submit_file(products(tmp_path, 20), "flaky")
    # Then all complete, some after retries that were counted as attempts
    summary = s.wait_terminal("flaky")
    assert summary.counts["completed"] == 20, summary.counts
    tasks = tasks_of(s, "flaky")
    assert sum(t.attempts for t in tasks) == sim.stats()["requests"] - 20
    assert any(t.attempts > 0 for t in tasks)


def test_permanent_failures_fail_after_exactly_one_call(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given an upstream that blocks prompts with a word, and three such prompts among five
    sim = simulator(block_words=("forbidden",))
    s = stack(sim)
    s.start_worker()
    path = write_csv(
        tmp_path / "p.csv",
        "key,prompt",
        "A,mug",
        "B,forbidden mug",
        "C,forbidden cup",
        "D,forbidden plate",
        "E,cup",
    )
    s.submit_file(path, "blocked")
    summary = s.wait_terminal("blocked")
    # Then the blocked ones fail with the reason, each after one call, none retried
    assert (summary.counts["completed"], summary.counts["failed"]) == (2, 3)
    assert sim.stats()["requests"] == 5
    failed = [t for t in tasks_of(s, "blocked") if t.status == "failed"]
    assert {t.error_code for t in failed} == {"blocked"} and all(t.attempts == 1 for t in failed)
    assert all(t.cost_usd is None for t in failed)  # blocked requests are not charged


def test_a_wrong_key_fails_at_once_and_the_key_is_never_stored(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(api_key="the-right-key")
    s = stack(sim, NANOBATCH_API_KEY="AIzaWRONGwrongWRONGwrong-0123456789")
    s.start_worker()
    s.submit_file(products(tmp_path, 2), "badkey")
    assert s.wait_terminal("badkey").counts["failed"] == 2
    assert sim.stats()["requests"] == 2
    for task in tasks_of(s, "badkey"):
        assert task.error_code == "invalid_request"
        assert "WRONGwrong" not in (task.error_message or "")
    assert "WRONGwrong" not in s.worker_logs()


def test_a_429_storm_consumes_no_attempts(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given an upstream that allows one call at a time and answers 429 to the rest, and a worker
    # that does not know about that limit (4 threads, no local limits)
    sim = simulator(concurrency=1, latency=(0.2, 0.2))
    s = stack(sim, NANOBATCH_MAX_ATTEMPTS="2")
    s.start_worker(concurrency=4)
    s.submit_file(products(tmp_path, 8), "storm")
    summary = s.wait_terminal("storm", timeout=120)
    # Then everything completes although 429s were served, and no attempt was spent on them
    assert summary.counts["completed"] == 8, summary.counts
    assert sim.stats()["rate_limited"] > 0
    tasks = tasks_of(s, "storm")
    assert all(t.attempts == 0 for t in tasks)
    assert sum(t.rate_waits for t in tasks) > 0


def test_limits_matching_the_upstream_avoid_429s(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given the same strict upstream, but our global limiter told its concurrency limit
    sim = simulator(concurrency=2, latency=(0.1, 0.1))
    s = stack(sim)
    s.runtime.limiter.set_limits(FLASH, PoolLimits(concurrency=2))
    s.start_worker(concurrency=3)
    s.start_worker(concurrency=3)
    s.submit_file(products(tmp_path, 16), "paced")
    # Then two worker processes with six threads never exceed it
    assert s.wait_terminal("paced", timeout=120).counts["completed"] == 16
    assert sim.stats()["rate_limited"] == 0
    assert sim.stats()["peak_concurrency"] <= 2


def test_a_sigkilled_worker_leaves_nothing_stuck(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a slow upstream and short leases
    sim = simulator(latency=(3.0, 3.0))
    s = stack(sim, NANOBATCH_LEASE_SECONDS="6", NANOBATCH_REQUEST_TIMEOUT="4", NANOBATCH_MAX_INLINE_WAIT="1")
    doomed = s.start_worker(concurrency=2)
    s.submit_file(products(tmp_path, 2), "killed")
    wait_until(
        lambda: s.summary("killed").counts["processing"] == 2, timeout=60, message="both tasks processing"
    )
    # When the worker is killed mid-call
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    # Then another worker's own sweeper (no beat) reclaims the expired leases and the tasks complete
    s.start_worker(concurrency=2)
    summary = s.wait_terminal("killed", timeout=120)
    assert summary.counts["completed"] == 2, summary.counts
    assert all(t.attempts == 1 and t.worker != "" for t in tasks_of(s, "killed"))


def test_reuse_completes_identical_requests_without_a_paid_call(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = simulator()
    s = stack(sim)
    s.start_worker()
    path = products(tmp_path, 3)
    s.submit_file(path, "original")
    s.wait_terminal("original")
    calls = sim.stats()["requests"]
    s.cli("submit", str(path), "--batch", "copy", "--reuse", check=True)
    summary = s.wait_terminal("copy")
    assert summary.counts["completed"] == 3 and summary.cost_usd == 0
    assert sim.stats()["requests"] == calls
    copies = {t.key: t.result_sha256 for t in tasks_of(s, "copy")}
    assert copies == {t.key: t.result_sha256 for t in tasks_of(s, "original")}


def test_reuse_finds_the_earlier_image_in_an_output_dir_with_space(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Regression: the URI was stored percent-escaped (file:///…/my%20images/…) but read back with
    # removeprefix("file://"), so --reuse never found the file and silently paid for a new call.
    sim = simulator()
    s = stack(sim, nanobatch_output_dir=str(tmp_path / "my images"))
    s.start_worker()
    path = products(tmp_path, 2)
    s.submit_file(path, "first")
    s.wait_terminal("first")
    assert all("%20" in (t.result_uri or "") for t in tasks_of(s, "first"))
    calls = sim.stats()["requests"]
    s.cli("submit", str(path), "--batch", "again", "--reuse", check=True)
    summary = s.wait_terminal("again")
    assert summary.counts["completed"] == 2 and summary.cost_usd == 0
    assert sim.stats()["requests"] == calls


def test_a_budget_stops_paid_calls(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = simulator()
    s = stack(sim)
    s.start_worker(concurrency=1)
    # the default model costs ~$0.0336 an image: a $0.10 budget pays for two (a third would pass it)
    s.cli("submit", str(products(tmp_path, 5)), "--batch", "capped", "--budget-usd", "0.1", check=True)
    wait_until(
        lambda: (
            s.summary("capped").counts["completed"] == 2
            and all(t.error_code == "budget_reached" for t in tasks_of(s, "capped") if t.status == "pending")
            and s.summary("capped").counts["pending"] == 3
        ),
        timeout=60,
        message="two completed, three waiting on the budget",
    )
    assert sim.stats()["requests"] == 2
    assert s.summary("capped").cost_usd <= 0.1
    status = s.cli("status", "capped", check=True).stdout
    assert "budget reached" in status
