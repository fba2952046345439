"""The deadline planner: the cheapest mix of lanes that finishes a batch by its deadline (pure logic).

``--lane auto --deadline T`` asks for it at submit (and ``submit --dry-run`` prints it); the sweep
asks again as work progresses (:func:`replan`), so tasks still waiting for the Batch API move to a
synchronous lane when the batch's turnaround no longer fits before the deadline.

The model, deliberately simple and conservative:

- the **Batch API** lane costs half, has its own quota (no RPM/RPD of the pool) and answers after
  ``batch_turnaround`` seconds: all remaining tasks go there when that fits before the deadline
  (minus ``margin``);
- otherwise the synchronous lanes share the pool: each runs at ``min(rpm, 60 * concurrency /
  latency)`` calls a minute (flex's latency is longer, priority's shorter); the pool's time is split
  between them, cheapest first — as many tasks on flex as fit, the rest on standard, then priority;
- calls before Pacific midnight are bounded by the requests left today (``rpd_left``); past the
  deadline nothing counts, and a plan that cannot finish says so (``feasible``) with its best finish.

Nothing here reads a clock, Redis or the database: the caller passes what it observed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nanobatch.models.status import Lane

#: Cheapest first; the synchronous lanes in the order the planner fills them.
SYNC_LANES = (Lane.FLEX, Lane.STANDARD, Lane.PRIORITY)


@dataclass(frozen=True)
class PlanInputs:
    """What the planner knows about one batch's remaining work and the pool it runs in."""

    tasks: int
    now: datetime
    deadline: datetime | None
    #: USD per task in each lane (``models.catalog.ModelSpec.cost_usd(..., lane=...)``).
    prices: dict[str, float]
    #: Observed seconds per call in each synchronous lane.
    latency: dict[str, float]
    concurrency: int
    rpm: float | None = None
    #: Requests the pool may still make before Pacific midnight (``None``: no daily limit known).
    rpd_left: int | None = None
    batch_turnaround: float = 86_400.0
    #: Seconds kept free before the deadline.
    margin: float = 0.0
    #: Lanes the planner may use (a batch whose model has no Batch API leaves ``batch`` out).
    lanes: tuple[str, ...] = (Lane.BATCH, Lane.FLEX, Lane.STANDARD, Lane.PRIORITY)


@dataclass(frozen=True)
class LaneShare:
    lane: str
    tasks: int
    cost_usd: float
    finish: datetime


@dataclass(frozen=True)
class Plan:
    shares: tuple[LaneShare, ...]
    #: Every task done before ``deadline - margin`` (always true without a deadline).
    feasible: bool
    standard_only: LaneShare
    notes: tuple[str, ...] = field(default=())

    @property
    def cost_usd(self) -> float:
        return round(sum(share.cost_usd for share in self.shares), 6)

    @property
    def finish(self) -> datetime | None:
        return max((share.finish for share in self.shares), default=None)

    def tasks_in(self, lane: str) -> int:
        return sum(share.tasks for share in self.shares if share.lane == lane)


def calls_per_second(inputs: PlanInputs, lane: str) -> float:
    """How fast the pool serves one synchronous lane: concurrency over latency, capped by RPM."""
    latency = max(inputs.latency.get(lane, inputs.latency.get(Lane.STANDARD, 15.0)), 1e-3)
    rate = inputs.concurrency / latency
    if inputs.rpm:
        rate = min(rate, inputs.rpm / 60.0)
    return rate


def sync_seconds(inputs: PlanInputs, lane: str, tasks: int) -> float:
    return tasks / calls_per_second(inputs, lane) if tasks else 0.0


def _share(inputs: PlanInputs, lane: str, tasks: int, seconds: float) -> LaneShare:
    cost = round(tasks * inputs.prices.get(lane, inputs.prices[Lane.STANDARD]), 6)
    return LaneShare(lane, tasks, cost, inputs.now + timedelta(seconds=seconds))


def standard_only(inputs: PlanInputs) -> LaneShare:
    return _share(inputs, Lane.STANDARD, inputs.tasks, sync_seconds(inputs, Lane.STANDARD, inputs.tasks))


def plan(inputs: PlanInputs) -> Plan:
    """The cheapest mix of ``inputs.lanes`` that finishes ``inputs.tasks`` by the deadline."""
    baseline = standard_only(inputs)
    if inputs.tasks <= 0:
        return Plan((), True, baseline)
    available = _seconds_available(inputs)
    if Lane.BATCH in inputs.lanes and inputs.batch_turnaround <= available:
        share = _share(inputs, Lane.BATCH, inputs.tasks, inputs.batch_turnaround)
        return Plan((share,), True, baseline)
    lanes: list[str] = [lane.value for lane in SYNC_LANES if lane in inputs.lanes] or [Lane.STANDARD.value]
    shares, left, notes = _fill_sync(inputs, lanes, available)
    feasible = left == 0
    if left:  # the rest cannot make it: on the fastest lane, after the others, and the plan says so
        used = sum(sync_seconds(inputs, share.lane, share.tasks) for share in shares)
        shares.append(_share(inputs, lanes[-1], left, used + sync_seconds(inputs, lanes[-1], left)))
        notes.append(f"{left} task(s) cannot finish by the deadline")
    return Plan(tuple(_merge(shares)), feasible, baseline, tuple(notes))


def _seconds_available(inputs: PlanInputs) -> float:
    if inputs.deadline is None:
        return math.inf
    return (inputs.deadline - inputs.now).total_seconds() - inputs.margin


def _fill_sync(
    inputs: PlanInputs, lanes: list[str], available: float
) -> tuple[list[LaneShare], int, list[str]]:
    """The cheapest lane takes as many tasks as still leave the rest time on a faster lane; the
    faster lane is the cheapest one with which everything fits (the pool's time is shared, so in
    the model the lanes run one after another). Returns the shares, the tasks left over, notes."""
    notes: list[str] = []
    budget = inputs.tasks
    if inputs.rpd_left is not None and inputs.rpd_left < budget:
        notes.append(f"only {inputs.rpd_left} request(s) left today in the pool")
        budget = max(0, inputs.rpd_left)
    cheapest = lanes[0]
    for fast in lanes:
        n_cheap = budget if fast == cheapest else _cheap_share(inputs, cheapest, fast, budget, available)
        n_fast = budget - n_cheap
        seconds = sync_seconds(inputs, cheapest, n_cheap) + sync_seconds(inputs, fast, n_fast)
        if seconds <= available or fast == lanes[-1]:
            break
    if seconds > available:  # even the fastest mix overruns: keep what fits, report the rest
        n_fast = min(n_fast, _fit_in(inputs, fast, available - sync_seconds(inputs, cheapest, n_cheap)))
    shares = []
    used = sync_seconds(inputs, cheapest, n_cheap)
    if n_cheap:
        shares.append(_share(inputs, cheapest, n_cheap, used))
    if n_fast:
        shares.append(_share(inputs, fast, n_fast, used + sync_seconds(inputs, fast, n_fast)))
    return shares, inputs.tasks - n_cheap - n_fast, notes


def _cheap_share(inputs: PlanInputs, cheap: str, fast: str, budget: int, available: float) -> int:
    """The most tasks the cheap lane can take so that they plus the rest on ``fast`` fit."""
    if not math.isfinite(available):
        return budget
    t_cheap = 1 / calls_per_second(inputs, cheap)
    t_fast = 1 / calls_per_second(inputs, fast)
    extra = t_cheap - t_fast
    if extra <= 0:
        return budget
    room = available - budget * t_fast
    return min(budget, max(0, int(room // extra)))


def _fit_in(inputs: PlanInputs, lane: str, seconds: float) -> int:
    return max(0, int(seconds * calls_per_second(inputs, lane) + 1e-9))


def _merge(shares: list[LaneShare]) -> list[LaneShare]:
    merged: dict[str, LaneShare] = {}
    for share in shares:
        if share.lane in merged:
            old = merged[share.lane]
            share = LaneShare(
                share.lane,
                old.tasks + share.tasks,
                round(old.cost_usd + share.cost_usd, 6),
                max(old.finish, share.finish),
            )
        merged[share.lane] = share
    return list(merged.values())


def lane_sequence(shares: tuple[LaneShare, ...] | list[LaneShare]) -> list[tuple[str, int]]:
    """``(lane, count)`` in plan order: the producer gives the first ``count`` rows the first lane…"""
    return [(share.lane, share.tasks) for share in shares if share.tasks]


def batch_lane_too_late(inputs: PlanInputs) -> bool:
    """Re-planning: tasks still waiting for a Batch API job would finish after the deadline."""
    return inputs.deadline is not None and inputs.batch_turnaround > _seconds_available(inputs)


def replan(inputs: PlanInputs) -> Plan:
    """The plan for a batch's remaining batch-lane tasks once the Batch API no longer fits: the same
    rule without the batch lane (they move to flex, standard, priority)."""
    lanes = tuple(lane for lane in inputs.lanes if lane != Lane.BATCH)
    return plan(PlanInputs(**{**inputs.__dict__, "lanes": lanes}))


def single_lane(inputs: PlanInputs, lane: str) -> Plan:
    """Every task in one chosen ``lane`` (``--lane batch`` and the others): its cost and expected
    finish beside standard-only, for ``submit --dry-run``."""
    seconds = inputs.batch_turnaround if lane == Lane.BATCH else sync_seconds(inputs, lane, inputs.tasks)
    share = _share(inputs, lane, inputs.tasks, seconds)
    available = _seconds_available(inputs)
    return Plan((share,), seconds <= available, standard_only(inputs))
