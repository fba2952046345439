"""The deadline planner, the lane rules of ``models.lifecycle`` and lane prices (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nanobatch.models.catalog import load_catalog, parse_catalog
from nanobatch.models.lifecycle import (
    CELERY_LANES,
    FLEX_FAILURES_BEFORE_STANDARD,
    goes_through_celery,
    lane_after_failure,
)
from nanobatch.models.status import Lane, parse_lane
from nanobatch.tasks.planner import PlanInputs, batch_lane_too_late, plan, replan, single_lane

NOW = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)
PRICES = {"standard": 0.134, "flex": 0.067, "batch": 0.067, "priority": 0.268}
LATENCY = {"standard": 10.0, "flex": 30.0, "priority": 5.0}


def inputs(tasks: int, hours: float | None, **kw: object) -> PlanInputs:
    deadline = NOW + timedelta(hours=hours) if hours is not None else None
    base: dict[str, object] = dict(
        tasks=tasks,
        now=NOW,
        deadline=deadline,
        prices=PRICES,
        latency=LATENCY,
        concurrency=10,
        batch_turnaround=6 * 3600,
    )
    return PlanInputs(**{**base, **kw})  # type: ignore[arg-type]


def test_batch_lane_when_its_turnaround_fits_before_the_deadline() -> None:
    result = plan(inputs(2000, hours=10))
    assert [(s.lane, s.tasks) for s in result.shares] == [("batch", 2000)]
    assert result.feasible and result.cost_usd == round(2000 * 0.067, 6)
    assert result.standard_only.cost_usd == round(2000 * 0.134, 6)


def test_no_deadline_means_the_cheapest_lane() -> None:
    assert plan(inputs(500, hours=None)).tasks_in("batch") == 500


def test_too_little_time_for_batch_fills_flex_then_standard() -> None:
    # 1 hour, concurrency 10: flex serves 1/3 call/s, standard 1 call/s -> 3600 standard calls max.
    result = plan(inputs(2000, hours=1))
    assert result.tasks_in("batch") == 0
    assert result.tasks_in("flex") > 0 and result.tasks_in("standard") > 0
    assert result.tasks_in("flex") + result.tasks_in("standard") == 2000
    assert result.feasible and result.finish is not None and result.finish <= NOW + timedelta(hours=1)
    assert result.cost_usd < result.standard_only.cost_usd


def test_rpm_bound_pool_puts_everything_on_flex() -> None:
    # 60 rpm caps every lane at 1 call/s: flex is as fast as standard here, so it takes all.
    result = plan(inputs(1000, hours=1, rpm=60))
    assert result.tasks_in("flex") == 1000 and result.feasible


def test_priority_only_when_standard_cannot_finish() -> None:
    result = plan(inputs(5000, hours=1))  # standard alone: 5000 s > 3600 s
    assert result.tasks_in("priority") > 0 and result.feasible


def test_impossible_deadline_is_reported_not_hidden() -> None:
    result = plan(inputs(100_000, hours=1))
    assert not result.feasible and result.notes
    assert sum(s.tasks for s in result.shares) == 100_000


def test_daily_requests_left_bound_the_synchronous_lanes() -> None:
    result = plan(inputs(1000, hours=2, rpd_left=300))
    assert not result.feasible
    assert any("left today" in note for note in result.notes)


def test_replan_moves_waiting_batch_tasks_to_synchronous_lanes() -> None:
    late = inputs(300, hours=2)
    assert batch_lane_too_late(late)
    assert not batch_lane_too_late(inputs(300, hours=10))
    result = replan(late)
    assert result.tasks_in("batch") == 0 and result.feasible


def test_celery_lanes_rule() -> None:
    assert Lane.BATCH not in CELERY_LANES and Lane.AUTO not in CELERY_LANES
    assert all(goes_through_celery(lane) for lane in ("standard", "flex", "priority"))
    assert not goes_through_celery("batch")


def test_lane_after_failure() -> None:
    soon = NOW + timedelta(minutes=30)
    later = NOW + timedelta(hours=5)
    enough = FLEX_FAILURES_BEFORE_STANDARD
    assert lane_after_failure("batch", attempts_used=1, deadline=None, now=NOW) == "flex"
    assert lane_after_failure("flex", attempts_used=enough, deadline=soon, now=NOW) == "standard"
    assert lane_after_failure("flex", attempts_used=enough - 1, deadline=soon, now=NOW) == "flex"
    assert lane_after_failure("flex", attempts_used=enough, deadline=later, now=NOW) == "flex"
    assert lane_after_failure("flex", attempts_used=9, deadline=None, now=NOW) == "flex"
    assert lane_after_failure("standard", attempts_used=9, deadline=soon, now=NOW) == "standard"


def test_parse_lane() -> None:
    assert parse_lane(" Batch ") is Lane.BATCH
    try:
        parse_lane("cheap")
    except ValueError as exc:
        assert "valid lanes" in str(exc)
    else:
        raise AssertionError("an unknown lane must be refused")


def test_lane_prices_from_the_catalog() -> None:
    pro = load_catalog().resolve("gemini-3-pro-image")
    assert pro.cost_usd("2K", lane="batch") == 0.067 == pro.cost_usd("2K", lane="flex")
    assert pro.cost_usd("2K", lane="priority") == 0.268
    assert pro.cost_usd("2K", lane="standard") == pro.cost_usd("2K") == 0.134
    # Prompt tokens get the lane's factor too.
    assert pro.cost_usd("2K", 1_000_000, lane="flex") == round(0.067 + 1.0, 6)


def test_a_size_may_name_its_own_lane_price() -> None:
    text = """
[[model]]
name = "m"
sizes = []
[model.size.default]
output_tokens = 1
price_usd = 1.0
flex_price_usd = 0.3
pixels = { "1:1" = [8, 8] }
"""
    spec = parse_catalog(text).resolve("m")
    assert spec.cost_usd(None, lane="flex") == 0.3
    assert spec.cost_usd(None, lane="batch") == 0.5  # the default factor


def test_a_chosen_lane_is_previewed_with_its_cost_and_finish() -> None:
    result = single_lane(inputs(100, hours=2), "batch")
    assert not result.feasible  # the Batch API's 6 h turnaround misses a 2 h deadline
    assert result.cost_usd == round(100 * 0.067, 6) and result.finish == NOW + timedelta(hours=6)
    flex = single_lane(inputs(100, hours=2), "flex")
    assert flex.feasible and flex.finish == NOW + timedelta(seconds=100 * 30 / 10)
