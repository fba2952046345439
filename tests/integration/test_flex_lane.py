"""The flex lane with a real worker and the simulator: ``serviceTier`` on every call, flex capacity
errors retried like any transient error, and a task that keeps failing on flex moved to standard when
its batch's deadline is near (``models.lifecycle.lane_after_failure``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from nanobatch.models.base import utcnow
from nanobatch.models.lifecycle import FLEX_FAILURES_BEFORE_STANDARD
from nanobatch.models.tables import GenerationTask
from nanobatch.tasks.intake import IntakeOptions, read_file
from nanobatch.tasks.producer import BatchOptions, submit
from tests.integration.conftest import DEFAULT_MODEL, Stack, write_csv

pytestmark = pytest.mark.integration

ROWS = 6


def submit_flex(s: Stack, tmp_path: Path, **options: Any) -> None:
    path = write_csv(tmp_path / "f.csv", "key,prompt", *(f"k{i},a teal mug {i}" for i in range(ROWS)))
    rt = s.runtime
    intake_options = IntakeOptions(model=DEFAULT_MODEL)
    intake = read_file(path, rt.catalog, intake_options)
    batch = BatchOptions(name="flex", lane="flex", **options)
    assert submit(rt.db, rt.dispatcher, intake, batch, intake_options=intake_options).dispatched == ROWS


def tasks_of(s: Stack) -> list[GenerationTask]:
    with s.runtime.db.session() as session:
        return list(session.scalars(select(GenerationTask)))


def test_flex_calls_carry_the_tier_and_cost_half(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = simulator()
    s = stack(sim)
    submit_flex(s, tmp_path)
    s.start_worker(concurrency=2)
    assert s.wait_terminal("flex").counts["completed"] == ROWS
    assert sim.stats()["by_tier"] == {"flex": ROWS}
    for task in tasks_of(s):
        assert task.lane == "flex"
        assert task.cost_usd == pytest.approx((task.standard_cost_usd or 0) / 2, rel=1e-3)


def test_a_task_failing_on_flex_moves_to_standard_when_the_deadline_is_near(
    simulator, stack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # Given flex refused every time (503) and a deadline 20 minutes away
    sim = simulator(flex_fail_rates={503: 1.0})
    s = stack(sim)
    submit_flex(s, tmp_path, deadline=utcnow() + timedelta(minutes=20))
    s.start_worker(concurrency=2)
    summary = s.wait_terminal("flex", timeout=120)
    # Then each task tried flex twice, then finished on standard, at the standard price
    assert summary.counts["completed"] == ROWS, summary.counts
    for task in tasks_of(s):
        assert task.lane == "standard" and task.attempts == FLEX_FAILURES_BEFORE_STANDARD
        assert task.cost_usd == pytest.approx(task.standard_cost_usd or 0)
    tiers = sim.stats()["by_tier"]
    assert tiers == {"flex": ROWS * FLEX_FAILURES_BEFORE_STANDARD, "standard": ROWS}  # 1 paid call each
