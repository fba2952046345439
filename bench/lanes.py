"""Lanes (issue 16): the same tasks with a deadline, standard-only vs ``--lane auto``.

    python -m bench.lanes                          # 2,000 tasks, deadline 300 s after submit
    python -m bench.lanes --tasks 500 --deadline 120
    python -m bench.lanes --scenarios auto --batch-turnaround 20000 --name lanes-slow-batch
                                                   # the Batch API too slow for the deadline: flex

One simulator per scenario (latency uniform 8-20 s x time scale 0.02, i.e. 0.16-0.40 s; an RPM
limit the workers' limiter knows; the Batch API answering a job after ``--batch-turnaround``
simulated seconds x the time scale; thumbnails), a fresh database and Redis prefix, and two real
worker processes (``--concurrency`` threads each) that sweep every second. Both scenarios get the
same deadline, measured from their own submit:

  standard  every task in the standard lane (today's behaviour)
  auto      ``--lane auto --deadline``: the deadline planner (tasks/planner.py) picks the cheapest mix
            from the pool's limits, the expected latency and the Batch API's expected turnaround

Reported per scenario: tasks per lane, cost (the sum of task costs at their lane's price), what the
same work costs at the standard price, the ratio to standard-only, the last completion against the
deadline, and the upstream's own counts (generateContent images, Batch API requests answered).
Target (issue 16): auto costs <= 55 % of standard-only, with every task done before the deadline.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta
from typing import Any

from bench.harness import (
    BENCH_DIR,
    REPO,
    Bench,
    console,
    markdown_table,
    nanobatch_env,
    nanobatch_runtime,
    phase,
    print_table,
    set_pool_limits,
    wait_until,
    write_products_csv,
    write_results,
)

POOL = "gemini-2.5-flash-image"


def run_scenario(bench: Bench, args: argparse.Namespace, lane: str) -> dict[str, Any]:
    from sqlalchemy import text

    from nanobatch.models.base import utcnow
    from nanobatch.tasks.intake import IntakeOptions, read_file
    from nanobatch.tasks.producer import BatchOptions, submit
    from nanobatch.tasks.submission import plan_for, plan_inputs, with_plan

    sim = bench.simulator(
        latency=(8.0, 20.0),
        time_scale=args.time_scale,
        rpm=args.rpm,
        thumbnails=True,
        seed=3,
        batch_turnaround=args.batch_turnaround,
    )
    ns = bench.namespace(lane)
    mean_latency = 14.0 * args.time_scale
    env = nanobatch_env(
        bench.database(),
        ns,
        sim.url,
        bench.tmp / f"images-{lane}",
        concurrency=args.concurrency,
        sweep_interval=1,
        batch_poll_interval=1,
        expected_latency=round(mean_latency, 3),
        # what the planner expects from the Batch API: the simulator's turnaround, x2 for safety
        batch_expected_turnaround=args.batch_turnaround * args.time_scale * 2,
        deadline_margin=args.margin,
    )
    env["PYTHONPATH"] = f"{BENCH_DIR}{os.pathsep}{REPO}"  # workers run this checkout's nanobatch
    rt = nanobatch_runtime(bench, env)
    set_pool_limits(rt.redis, ns.prefix, POOL, rpm=args.rpm)
    path = write_products_csv(bench.tmp / f"lanes-{lane}.csv", args.tasks)
    options = IntakeOptions(model=POOL, allow_retired_model=True)
    intake = read_file(path, rt.catalog, options)
    workers = [
        bench.start_worker(
            app="nanobatch.tasks",
            queues=[ns.queue, ns.control_queue],
            concurrency=args.concurrency,
            env=env,
            label=lane,
        )
        for _ in range(args.workers)
    ]
    bench.wait_ready(workers)
    t0 = utcnow()
    deadline = t0 + timedelta(seconds=args.deadline)
    batch = BatchOptions(name=f"lanes-{lane}", lane=lane, deadline=deadline)
    lane_plan = None
    if lane == "auto":
        inputs = plan_inputs(
            intake.valid,
            POOL,
            None,
            rt.catalog,
            rt.settings,
            deadline=deadline,
            limits=rt.limiter.get_limits(POOL),
        )
        lane_plan = plan_for(batch, inputs)
        assert lane_plan is not None
        batch = with_plan(batch, lane_plan)
    submit(rt.db, rt.dispatcher, intake, batch, intake_options=options)
    started = time.monotonic()

    def remaining() -> bool:
        with rt.db.engine.connect() as conn:
            left = conn.execute(
                text("SELECT count(*) FROM generation_tasks WHERE status IN ('pending', 'processing')")
            ).scalar_one()
        return left == 0

    wait_until(remaining, timeout=args.deadline * 3 + 120, interval=1.0, what=f"{lane}: every task done")
    wall = time.monotonic() - started
    stats = sim.stats()
    bench.stop_workers(workers)
    with rt.db.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT lane, count(*), sum(cost_usd), sum(coalesce(standard_cost_usd, cost_usd)), "
                "max(finished_at), sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) "
                "FROM generation_tasks GROUP BY lane ORDER BY lane"
            )
        ).all()
    per_lane = {r[0]: int(r[1]) for r in rows}
    last = max(r[4] for r in rows)
    return {
        "lane": lane,
        "tasks": sum(per_lane.values()),
        "completed": sum(int(r[5]) for r in rows),
        "per_lane": per_lane,
        "cost": sum(float(r[2] or 0) for r in rows),
        "standard_cost": sum(float(r[3] or 0) for r in rows),
        "wall_s": wall,
        "finish_vs_deadline_s": (last - deadline).total_seconds(),
        "plan": None
        if lane_plan is None
        else {s.lane: {"tasks": s.tasks, "cost": s.cost_usd} for s in lane_plan.shares},
        "sim_images": stats["images_served"],
        "sim_batch": stats["batch"],
        "sim_429": stats["rate_limited"],
        "sim_by_tier": stats["by_tier"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds after submit")
    parser.add_argument("--margin", type=float, default=30.0, help="NANOBATCH_DEADLINE_MARGIN (s)")
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--batch-turnaround", type=float, default=1500.0, help="simulated s (x time scale)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--scenarios", default="standard,auto")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--name", default="lanes", help="results file: bench/results/NAME.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with Bench("lanes", keep=args.keep) as bench:
        for lane in args.scenarios.split(","):
            with phase(f"scenario {lane}: {args.tasks:,} tasks, deadline {args.deadline:g}s after submit"):
                results[lane] = run_scenario(bench, args, lane)
    base = results.get("standard", {}).get("cost") or None
    columns = [
        "scenario",
        "tasks per lane",
        "cost USD",
        "at standard USD",
        "vs standard-only",
        "wall s",
        "last done vs deadline",
        "upstream images / batch answers",
    ]
    rows = []
    for lane, r in results.items():
        rows.append(
            [
                lane,
                ", ".join(f"{k} {v}" for k, v in r["per_lane"].items()),
                f"{r['cost']:.2f}",
                f"{r['standard_cost']:.2f}",
                f"{r['cost'] / base:.0%}" if base else "-",
                f"{r['wall_s']:.0f}",
                f"{r['finish_vs_deadline_s']:+.0f} s",
                f"{r['sim_images']} / {r['sim_batch'].get('requests_answered', 0)}",
            ]
        )
    print_table("lanes: standard-only vs --lane auto", columns, rows)
    console.print(markdown_table(columns, rows))
    write_results(args.name, {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
