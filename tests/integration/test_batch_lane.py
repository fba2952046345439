"""The Batch API lane end to end: real PostgreSQL, Redis, a Celery worker process and the simulator.

Given a ``--lane batch`` batch, when the worker's sweep builds, polls and ingests its upstream jobs,
then every image is stored once and costed at the batch price; a job that fails or expires hands its
tasks to the next lane (flex), which finishes them — nothing lost, nothing paid twice.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from nanobatch.models.base import utcnow
from nanobatch.models.tables import BatchJob, GenerationTask
from nanobatch.simulator.testing import wait_until
from nanobatch.tasks.intake import IntakeOptions, read_file
from nanobatch.tasks.operations import cancel_batch
from nanobatch.tasks.producer import BatchOptions, submit
from tests.integration.conftest import DEFAULT_MODEL, Stack, write_csv

pytestmark = pytest.mark.integration

ROWS = 20


def submit_lane(s: Stack, tmp_path: Path, batch: str, lane: str, **options: Any) -> None:
    path = write_csv(
        tmp_path / f"{batch}.csv", "key,prompt", *(f"sku-{i:02d},a red mug {i}" for i in range(ROWS))
    )
    rt = s.runtime
    intake_options = IntakeOptions(model=DEFAULT_MODEL)
    intake = read_file(path, rt.catalog, intake_options)
    batch_options = BatchOptions(name=batch, lane=lane, **options)
    report = submit(rt.db, rt.dispatcher, intake, batch_options, intake_options=intake_options)
    assert report.new == ROWS and report.dispatched == 0  # batch-lane rows are never published


def tasks_of(s: Stack) -> list[GenerationTask]:
    with s.runtime.db.session() as session:
        return list(session.scalars(select(GenerationTask).order_by(GenerationTask.key)))


def jobs_of(s: Stack) -> list[BatchJob]:
    with s.runtime.db.session() as session:
        return list(session.scalars(select(BatchJob).order_by(BatchJob.created_at)))


def test_a_batch_lane_batch_completes_at_the_batch_price(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a Batch API that answers within a second, and jobs of at most 18 requests
    sim = simulator(batch_turnaround=1.0)
    s = stack(sim, NANOBATCH_BATCH_POLL_INTERVAL="0.5", NANOBATCH_BATCH_JOB_MAX_REQUESTS="18")
    submit_lane(s, tmp_path, "night", "batch")
    # When a worker sweeps
    s.start_worker(concurrency=2)
    summary = s.wait_terminal("night", timeout=120)
    # Then every task completed in the batch lane, at half the standard price, with no standard call
    assert summary.counts.get("completed") == ROWS, summary.counts
    tasks = tasks_of(s)
    assert {t.lane for t in tasks} == {"batch"}
    for task in tasks:
        assert task.result_uri and Path(task.result_uri.removeprefix("file://")).exists()
        assert task.cost_usd is not None and task.standard_cost_usd is not None
        assert task.cost_usd == pytest.approx(task.standard_cost_usd / 2, rel=1e-3)
    stats = sim.stats()
    assert stats["images_served"] == 0 and stats["batch"]["requests_answered"] == ROWS
    # Two jobs: 18 requests through an uploaded file, 2 inline; both ingested and closed
    jobs = jobs_of(s)
    assert sorted(j.source or "" for j in jobs) == ["file", "inline"]
    assert all(j.state == "BATCH_STATE_SUCCEEDED" and j.finished_at for j in jobs)
    assert sorted(j.request_count for j in jobs) == [2, 18]
    assert stats["batch"]["files_uploaded"] == 1


@pytest.mark.parametrize("fault", ["batch_fail_rate", "batch_expire_rate"])
def test_a_failed_or_expired_job_is_finished_by_the_next_lane(
    simulator, stack, tmp_path: Path, fault: str
) -> None:  # type: ignore[no-untyped-def]
    # Given a Batch API whose every job fails (or expires)
    sim = simulator(batch_turnaround=0.5, **{fault: 1.0})
    s = stack(sim, NANOBATCH_BATCH_POLL_INTERVAL="0.3")
    submit_lane(s, tmp_path, "night", "batch")
    s.start_worker(concurrency=4)
    summary = s.wait_terminal("night", timeout=120)
    # Then flex finished every task, once: one paid image per task, all at the flex price
    assert summary.counts.get("completed") == ROWS, summary.counts
    tasks = tasks_of(s)
    assert {t.lane for t in tasks} == {"flex"}
    assert all(t.cost_usd == pytest.approx((t.standard_cost_usd or 0) / 2, rel=1e-3) for t in tasks)
    stats = sim.stats()
    assert stats["images_served"] == ROWS and stats["by_tier"].get("flex") == ROWS
    state = "BATCH_STATE_FAILED" if fault == "batch_fail_rate" else "BATCH_STATE_EXPIRED"
    assert {j.state for j in jobs_of(s)} == {state}
    assert len({t.result_sha256 for t in tasks}) == ROWS  # one distinct result per task


def test_cancel_cancels_the_remote_job_and_nothing_is_ingested(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a job that takes a long time upstream
    sim = simulator(batch_turnaround=600.0)
    s = stack(sim, NANOBATCH_BATCH_POLL_INTERVAL="0.3")
    submit_lane(s, tmp_path, "night", "batch")
    s.start_worker(concurrency=2)
    wait_until(lambda: [j for j in jobs_of(s) if j.name], timeout=60, message="a created job")
    # When the operator cancels the batch
    cancel_batch(s.runtime, "night")
    # Then the poller cancels the remote job, and every task stays cancelled, unpaid
    wait_until(lambda: all(j.finished_at for j in jobs_of(s)), timeout=60, message="the job closed")
    assert {j.state for j in jobs_of(s)} == {"BATCH_STATE_CANCELLED"}
    wait_until(
        lambda: sim.stats()["batch"].get("jobs_cancelled") == 1, timeout=10, message="cancelled upstream"
    )
    assert {t.status for t in tasks_of(s)} == {"cancelled"}
    assert sim.stats()["images_served"] == 0


def test_auto_moves_waiting_batch_tasks_to_flex_when_the_deadline_nears(
    simulator, stack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # Given an auto batch planned into the Batch API lane, whose deadline is now closer than the
    # Batch API's expected turnaround (24 h by default), and a pool that cannot take the Batch API
    sim = simulator()
    s = stack(sim, NANOBATCH_BATCH_POLL_INTERVAL="0.3", NANOBATCH_EXPECTED_LATENCY="1")
    deadline = utcnow() + timedelta(minutes=20)
    submit_lane(s, tmp_path, "rush", "auto", deadline=deadline, lanes=(("batch", ROWS),))
    assert {t.lane for t in tasks_of(s)} == {"batch"}
    # When a worker sweeps
    s.start_worker(concurrency=4)
    summary = s.wait_terminal("rush", timeout=120)
    # Then the re-planner moved them to a synchronous lane before any job was built, and they finished
    assert summary.counts.get("completed") == ROWS, summary.counts
    assert jobs_of(s) == []
    assert {t.lane for t in tasks_of(s)} <= {"flex", "standard", "priority"}
    assert sim.stats()["images_served"] == ROWS


def test_the_cli_submits_a_batch_lane_and_status_and_export_show_the_lane(
    simulator, stack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(batch_turnaround=0.5)
    s = stack(sim, NANOBATCH_BATCH_POLL_INTERVAL="0.3")
    path = write_csv(tmp_path / "cli.csv", "key,prompt", "a,a red mug", "b,a blue mug", "c,a green mug")
    s.cli("submit", str(path), "--batch", "cli", "--lane", "batch", check=True)
    s.start_worker(concurrency=2)
    s.wait_terminal("cli")
    status = json.loads(s.cli("status", "cli", "--json", check=True).stdout)
    assert status["lane"] == "batch" and status["by_lane"]["batch"]["completed"] == 3
    assert status["standard_cost_usd"] == pytest.approx(2 * status["cost_usd"], rel=1e-3)
    rows = list(csv.DictReader(io.StringIO(s.cli("export", "cli", "--format", "csv", check=True).stdout)))
    assert {row["lane"] for row in rows} == {"batch"} and all(row["standard_cost_usd"] for row in rows)
