"""Issue #12 on the real stack: every wait ends, answers that cannot get better fail at once, retired
models are refused at submit, and a pool that refuses every call is reported.

Real PostgreSQL, Redis and Celery worker processes; the upstream is the simulator (configured to
429 every call, or with a one-request daily quota) or a loopback server replaying a real body from
``tests/fixtures/upstream``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from nanobatch import Client, SubmitRejected
from nanobatch.models.base import utcnow
from nanobatch.models.catalog import today
from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.simulator.testing import wait_until
from nanobatch.tasks.metrics import MetricsSources, NanobatchCollector
from tests.integration.conftest import DEFAULT_MODEL, Stack, write_csv

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstream" / "gemini"
FAST = {"NANOBATCH_RATE_LIMIT_WAIT": "0.2", "NANOBATCH_MAX_COUNTDOWN": "60"}


def tasks_of(s: Stack, batch: str) -> list[GenerationTask]:
    with s.runtime.db.session() as session:
        return list(session.scalars(select(GenerationTask).join(Batch).where(Batch.name == batch)))


def products(tmp_path: Path, n: int) -> Path:
    return write_csv(tmp_path / f"p{n}.csv", "key,prompt", *(f"K{i},mug {i}" for i in range(n)))


class FixedUpstream:
    """A loopback HTTP server answering every request with one recorded upstream answer."""

    def __init__(self, fixture: dict[str, Any]) -> None:
        self.requests = 0
        body = json.dumps(fixture["body"]).encode()
        status, headers = fixture["status"], fixture.get("headers") or {}
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                upstream.requests += 1
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fixed_upstream() -> Iterator[Any]:
    started: list[FixedUpstream] = []

    def start(name: str) -> FixedUpstream:
        server = FixedUpstream(json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8")))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- every wait ends -----------------------------------------------------------------------------


def test_a_429_storm_ends_at_the_wait_count_bound_and_is_reported(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given an upstream that answers every call with a bare 429 (no QuotaFailure, no RetryInfo)
    sim = simulator(fail_rates={429: 1.0})
    s = stack(sim, **FAST, NANOBATCH_MAX_RATE_WAITS="2", NANOBATCH_POOL_REFUSED_ALERT_SECONDS="0")
    s.start_worker(concurrency=1)
    # When one task is submitted
    s.submit_file(products(tmp_path, 1), "storm")
    # Then it waits twice (no attempt used) and fails at the third 429 with the bound's code
    assert s.wait_terminal("storm", timeout=60).counts["failed"] == 1
    (task,) = tasks_of(s, "storm")
    assert task.error_code == "rate_wait_limit" and task.attempts == 0
    assert task.upstream_waits == 2 and task.upstream_wait_seconds >= 0.2 + 0.4
    assert "NANOBATCH_MAX_RATE_WAITS=2" in (task.error_message or "")
    assert "Resource has been exhausted" in (task.error_message or "")  # the last upstream message
    assert sim.stats()["requests"] == 3
    # And the unrecognised 429s are counted as such, and the refusing pool is an alert everywhere
    telemetry = s.runtime.telemetry.snapshot()
    assert telemetry.rate_limited[(DEFAULT_MODEL, "unclassified_429")] == 3
    assert "Resource has been exhausted" in (telemetry.pools[DEFAULT_MODEL].last_unclassified or "")
    status = s.cli("status", "storm", check=True).stdout
    assert f"pool {DEFAULT_MODEL}" in status and "every call refused" in status
    watch = s.cli("watch", "storm", "--once", check=True).stdout
    assert "every call refused" in watch
    assert f"pool {DEFAULT_MODEL}: every call refused" in s.worker_logs()  # and the worker warned
    sources = MetricsSources.from_settings(s.settings)
    try:
        samples = {
            (sample.name, sample.labels.get("pool")): sample.value
            for family in NanobatchCollector(sources).collect()
            for sample in family.samples
        }
    finally:
        sources.close()
    assert samples[("nanobatch_pool_stalled", DEFAULT_MODEL)] == 1.0
    assert samples[("nanobatch_pool_refused_seconds", DEFAULT_MODEL)] > 0
    # And an operator retry of that reason starts the task's wait budget afresh
    s.cli("retry", "storm", "--reason", "rate_wait_limit", check=True)
    assert s.wait_terminal("storm", timeout=60).counts["failed"] == 1
    (again,) = tasks_of(s, "storm")
    assert (again.error_code, again.upstream_waits) == ("rate_wait_limit", 2)
    assert sim.stats()["requests"] == 6


def test_a_429_storm_ends_at_the_wait_time_bound(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(fail_rates={429: 1.0})
    s = stack(sim, **FAST, NANOBATCH_MAX_RATE_WAITS="100", NANOBATCH_MAX_RATE_WAIT_SECONDS="1")
    s.start_worker(concurrency=1)
    s.submit_file(products(tmp_path, 1), "slow")
    assert s.wait_terminal("slow", timeout=60).counts["failed"] == 1
    (task,) = tasks_of(s, "slow")
    # Waits of 0.2 s and 0.4 s (doubling, plus jitter) fit in 1 s; the next 0.8 s would not
    assert task.error_code == "rate_wait_time_limit" and task.upstream_waits == 2
    assert task.upstream_wait_seconds <= 1.0
    assert "NANOBATCH_MAX_RATE_WAIT_SECONDS=1" in (task.error_message or "")
    assert sim.stats()["requests"] == 3


def test_day_parks_are_counted_and_end_at_their_bound(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given an upstream whose daily quota is one request, and a bound of one park per task
    sim = simulator(rpd=1)
    s = stack(sim, NANOBATCH_MAX_DAY_PARKS="1", NANOBATCH_MAX_COUNTDOWN="0")  # every wait parks the row
    s.start_worker(concurrency=1)
    s.submit_file(products(tmp_path, 2), "daily")
    # Then one image is made and the other task is parked until the Pacific midnight, counted
    parked = wait_until(
        lambda: [t for t in tasks_of(s, "daily") if t.status == "pending" and t.day_parks == 1],
        timeout=60,
        message="a task parked for the daily quota",
    )
    (task,) = parked
    assert task.error_code == "daily_quota" and task.attempts == 0 and task.upstream_waits == 0
    assert task.not_before is not None and task.not_before > utcnow()  # the next Pacific midnight
    assert sum(t.status == "completed" for t in tasks_of(s, "daily")) == 1


def test_a_task_over_its_day_park_bound_fails_instead_of_parking(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(rpd=1)
    s = stack(sim, NANOBATCH_MAX_DAY_PARKS="0")
    s.start_worker(concurrency=1)
    s.submit_file(products(tmp_path, 2), "nopark")
    summary = s.wait_terminal("nopark", timeout=60)
    assert (summary.counts["completed"], summary.counts["failed"]) == (1, 1)
    (failed,) = [t for t in tasks_of(s, "nopark") if t.status == "failed"]
    assert failed.error_code == "day_park_limit" and "NANOBATCH_MAX_DAY_PARKS=0" in (
        failed.error_message or ""
    )
    assert "per_day" in (failed.error_message or "") or "PerDay" in (failed.error_message or "")
    # The pool itself is parked until the reset, whatever the task did
    state = s.runtime.limiter.state(DEFAULT_MODEL)
    assert state.cooldown_until is not None and "daily" in (state.cooldown_reason or "")


# --- answers that cannot get better fail at once ---------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "code", "says"),
    [
        ("429_prepayment_credits_depleted", "billing", "prepayment credits are depleted"),
        ("429_free_tier_ids_without_limits_billing_not_enabled", "quota_zero", "billing is not enabled"),
        ("429_free_tier_limit_zero", "quota_zero", "limit: 0"),
    ],
)
def test_real_bodies_that_no_wait_fixes_fail_after_one_call(  # type: ignore[no-untyped-def]
    fixed_upstream, stack, tmp_path: Path, fixture: str, code: str, says: str
) -> None:
    upstream = fixed_upstream(fixture)
    s = stack(upstream)
    s.start_worker(concurrency=1)
    s.submit_file(products(tmp_path, 1), "nowait")
    assert s.wait_terminal("nowait", timeout=60).counts["failed"] == 1
    (task,) = tasks_of(s, "nowait")
    assert (task.error_code, task.day_parks, task.upstream_waits) == (code, 0, 0)
    assert says in (task.error_message or "")
    assert upstream.requests == 1


# --- retired models are refused at submit --------------------------------------------------------


def test_a_retired_model_is_refused_at_submit_unless_allowed(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    path = products(tmp_path, 2)
    refused = s.cli("submit", str(path), "--batch", "old", "--model", "gemini-2.5-flash-image")
    assert refused.returncode == 2
    assert "shut down upstream on 2026-10-02" in refused.stderr and "gemini-nano-banana-2.1" in refused.stderr
    allowed = s.cli(
        "submit", str(path), "--batch", "old", "--model", "gemini-2.5-flash-image", "--allow-retired-model"
    )
    assert allowed.returncode == 0, allowed.stderr
    with Client(s.settings) as client:
        with pytest.raises(SubmitRejected, match="shut down"):
            client.submit(path, batch="old-api", model="nano-banana")
        rows = [{"key": "a", "prompt": "mug", "model": "gemini-3.1-flash-image"}]
        with pytest.raises(SubmitRejected) as info:
            client.submit(rows, batch="row-model")
        assert info.value.problems[0].field == "model"
        result = client.submit(rows, batch="row-model", allow_retired_model=True)
        assert result.new == 1


def test_status_warns_for_a_model_within_14_days_of_shutdown(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a catalog entry (the user's file) for a model that shuts down in five days
    soon = today() + timedelta(days=5)
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        '[[model]]\nname = "soon-image"\nreplacement = "gemini-nano-banana-2.1"\nsizes = []\n'
        f'shutdown = "{soon.isoformat()}"\n'
        '[model.size.default]\noutput_tokens = 1000\nprice_usd = 0.01\npixels = { "1:1" = [1024, 1024] }\n'
    )
    s = stack(simulator(), NANOBATCH_CATALOG_FILE=str(catalog))
    s.cli("submit", str(products(tmp_path, 1)), "--batch", "soon", "--model", "soon-image", check=True)
    s.cli("submit", str(products(tmp_path, 2)), "--batch", "fine", check=True)
    status = s.cli("status", check=True).stdout
    assert f"soon-image shuts down on {soon.isoformat()} (in 5 days)" in status
    assert "use gemini-nano-banana-2.1" in status
    assert "batch soon" in status and "batch fine" not in status


def test_a_hintless_429_cools_the_pool_for_the_base_wait_only(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Regression: one task's growing backoff (base x 2^waits) became the pool's cooldown, so a single
    # unlucky task stalled every task of the pool for minutes (seen in the chaos run: 289 s).
    sim = simulator(fail_rates={429: 1.0})
    s = stack(sim, NANOBATCH_RATE_LIMIT_WAIT="1", NANOBATCH_MAX_RATE_WAITS="5", NANOBATCH_MAX_COUNTDOWN="60")
    s.start_worker(concurrency=1)
    s.submit_file(products(tmp_path, 1), "hintless")
    wait_until(lambda: tasks_of(s, "hintless")[0].upstream_waits >= 4, timeout=90, message="four 429 waits")
    (task,) = tasks_of(s, "hintless")
    assert task.upstream_wait_seconds >= 1 + 2 + 4  # the task's own waits grow
    state = s.runtime.limiter.state(DEFAULT_MODEL)
    left = (state.cooldown_until.timestamp() - time.time()) if state.cooldown_until else 0.0
    assert left <= 1.5, left  # but the pool cools down for the base wait only
