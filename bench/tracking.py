"""Tracking the provider limit (issue 4): completions/min against an RPM-limited upstream.

    python -m bench.tracking                                   # R=600 rpm, 2 workers x 8 threads, 90 s each
    python -m bench.tracking --duration 70 --warmup 10 --scenarios a,c

The simulator enforces R requests per sliding 60 s (real time) and answers 429 with Google's
QuotaFailure + RetryInfo body; latency is uniform 8-20 s x time scale (0.02 by default: 0.16-0.40 s,
mean L = 0.28 s); thumbnails on, so rendering does not dominate. Each scenario gets a fresh simulator,
database, Redis prefix and two worker processes with ``--concurrency`` threads each (C in total),
enough queued tasks never to starve, and runs ``--duration`` seconds from the moment every worker
is ready. Completions are counted in the steady window ``[warmup, duration)`` — 60 s by default: a
whole number of minutes, because the upstream's quota is a sliding 60 s window, so a window of
another length could catch a burst twice or miss it.

Scenarios (one table):
  a  nanobatch, limiter rpm = R                 target: ratio >= 0.98 and no 429
  b  nanobatch, limiter rpm = 2R (set too high) target: ratio >= 0.90; 429s reported
  c  plain Celery, rate_limit = R/2 per worker  (bench/baseline_app.py; the total split by hand)
  d  plain Celery, rate_limit = R per worker    (the naive reading of "rate_limit = the RPM")
  e  plain Celery, no rate_limit                (control, not in the default set: shows what the
                                                 baseline app does when Celery does not pace it)

physical limit = min(R, C x 60 / L_mean); ratio = completions/min in the window / physical limit.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from bench.harness import (
    REDIS_URL,
    Bench,
    console,
    finished_times,
    markdown_table,
    nanobatch_env,
    nanobatch_runtime,
    phase,
    print_table,
    rate_in_window,
    set_pool_limits,
    status_counts,
    submit_csv,
    write_products_csv,
    write_results,
)

POOL = "gemini-2.5-flash-image"
SCENARIOS = {
    "a": "nanobatch, limiter rpm = R",
    "b": "nanobatch, limiter rpm = 2R (too high)",
    "c": "plain Celery, rate_limit R/2 per worker",
    "d": "plain Celery, rate_limit R per worker (naive)",
    "e": "plain Celery, no rate_limit (control)",
}


def sim_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "latency": args.latency,
        "time_scale": args.time_scale,
        "rpm": args.rpm,
        "thumbnails": args.thumbnails,
        "seed": args.seed,
    }


def run_nanobatch(bench: Bench, args: argparse.Namespace, limiter_rpm: int, tasks: int) -> dict[str, Any]:
    sim = bench.simulator(**sim_config(args))
    db_url = bench.database()
    ns = bench.namespace("nb")
    env = nanobatch_env(
        db_url,
        ns,
        sim.url,
        bench.tmp / f"images-{ns.prefix[-6:]}",
        concurrency=args.concurrency,
        request_timeout=30,
    )
    runtime = nanobatch_runtime(bench, env)
    set_pool_limits(runtime.redis, ns.prefix, POOL, rpm=limiter_rpm)
    csv_path = write_products_csv(bench.tmp / f"tracking-{ns.prefix[-6:]}.csv", tasks)
    submit_csv(runtime, csv_path, "tracking")
    workers = [
        bench.start_worker(
            app="nanobatch.tasks",
            queues=[ns.queue, ns.control_queue],
            concurrency=args.concurrency,
            env=env,
            label="nb",
        )
        for _ in range(args.workers)
    ]
    bench.wait_ready(workers)
    t0 = time.time()
    sleep_with_progress(args.duration, lambda: status_counts(runtime.db.engine).get("completed", 0))
    t_end = time.time()
    stats = sim.stats()
    bench.stop_workers(workers)
    done = finished_times(runtime.db.engine, "completed")
    counts = status_counts(runtime.db.engine)
    return {
        "t0": t0,
        "t_end": t_end,
        "done": done,
        "failed": counts.get("failed", 0),
        "counts": counts,
        "sim": stats,
    }


def run_celery(bench: Bench, args: argparse.Namespace, rate_limit: str, tasks: int) -> dict[str, Any]:
    sim = bench.simulator(**sim_config(args))
    ns = bench.namespace("celery")
    env = {
        "BENCH_BROKER_URL": REDIS_URL,
        "BENCH_QUEUE": ns.queue,
        "BENCH_PREFIX": ns.prefix,
        "BENCH_SIM_URL": sim.url,
        "BENCH_RATE_LIMIT": rate_limit,
        "BENCH_OUTPUT_DIR": str(bench.tmp / f"images-{ns.prefix[-6:]}"),
    }
    publish_baseline(env, tasks)
    workers = [
        bench.start_worker(
            app="baseline_app", queues=[ns.queue], concurrency=args.concurrency, env=env, label="celery"
        )
        for _ in range(args.workers)
    ]
    redis = bench.redis()
    bench.wait_ready(workers)
    t0 = time.time()
    sleep_with_progress(args.duration, lambda: redis.llen(f"{ns.prefix}:done"))
    t_end = time.time()
    stats = sim.stats()
    bench.stop_workers(workers)
    done = sorted(float(x) for x in redis.lrange(f"{ns.prefix}:done", 0, -1))
    failed = int(redis.llen(f"{ns.prefix}:failed"))
    return {"t0": t0, "t_end": t_end, "done": done, "failed": failed, "counts": None, "sim": stats}


def publish_baseline(env: dict[str, str], tasks: int, *, start: int = 0) -> None:
    """Publish ``tasks`` baseline messages (key, prompt) to the baseline queue, pipelined."""
    from celery import Celery

    app = Celery("baseline-producer", broker=env["BENCH_BROKER_URL"])
    app.conf.update(task_default_queue=env["BENCH_QUEUE"], task_serializer="json")
    with app.producer_or_acquire() as producer, producer.batch(1000):
        for i in range(start, start + tasks):
            app.send_task(
                "baseline.generate",
                args=(f"SKU-{i:07d}", f"Studio product photo, item {i}"),
                queue=env["BENCH_QUEUE"],
                producer=producer,
            )


def sleep_with_progress(seconds: float, probe: Any, every: float = 10.0) -> None:
    started = time.monotonic()
    while True:
        left = seconds - (time.monotonic() - started)
        if left <= 0:
            return
        time.sleep(min(every, left))
        elapsed = time.monotonic() - started
        console.print(f"  [dim]{elapsed:5.0f}s  completed {probe():,}[/dim]")


def run(args: argparse.Namespace) -> dict[str, Any]:
    R = args.rpm
    C = args.workers * args.concurrency
    l_mean = (args.latency[0] + args.latency[1]) / 2 * args.time_scale
    physical = min(R, C * 60.0 / l_mean) if l_mean > 0 else float(R)
    tasks = args.tasks or math.ceil(R / 60 * args.duration * 1.5) + 4 * C
    window = args.duration - args.warmup
    if window <= 0:
        raise SystemExit("--duration must be longer than --warmup")
    if abs(window / 60 - round(window / 60)) > 1e-9:
        console.print(
            f"[yellow]note: the steady window is {window:g}s, not a whole number of minutes; "
            "against a sliding 60 s quota the rate can read high or low[/yellow]"
        )
    share = R / args.workers
    rates = {"c": f"{share:g}/m", "d": f"{R:g}/m", "e": ""}
    results: dict[str, Any] = {}
    rows = []
    with Bench("tracking", keep=args.keep) as bench:
        for key in args.scenarios:
            label = SCENARIOS[key]
            with phase(f"scenario {key}: {label} ({tasks:,} tasks queued, {args.duration:g}s)"):
                if key == "a":
                    raw = run_nanobatch(bench, args, R, tasks)
                elif key == "b":
                    raw = run_nanobatch(bench, args, 2 * R, tasks)
                else:
                    raw = run_celery(bench, args, rates[key], tasks)
            start, end = raw["t0"] + args.warmup, raw["t0"] + args.duration
            per_min = rate_in_window(raw["done"], start, end)
            whole = rate_in_window(raw["done"], raw["t0"], raw["t0"] + args.duration)
            sim = raw["sim"]
            by_status = sim.get("by_status", {})
            served_errors = sum(n for s, n in by_status.items() if s not in {"200", "429"})
            ratio = per_min / physical
            results[key] = {
                "scenario": label,
                "completions_per_min": per_min,
                "completions_per_min_whole_run": whole,
                "completed_in_window": sum(1 for s in raw["done"] if start <= s < end),
                "completed_total": len(raw["done"]),
                "physical_limit": physical,
                "ratio": ratio,
                "rate_limited_429": sim.get("rate_limited", 0),
                "failed_tasks": raw["failed"],
                "upstream_errors_served": served_errors,
                "sim_stats": sim,
                "status_counts": raw["counts"],
                "celery_rate_limit": rates.get(key),
            }
            rows.append(
                [
                    f"{key}  {label}",
                    per_min,
                    physical,
                    ratio,
                    sim.get("rate_limited", 0),
                    raw["failed"] + served_errors,
                ]
            )
            console.print(
                f"  {per_min:,.1f}/min in the window, ratio {ratio:.3f}, "
                f"429s {sim.get('rate_limited', 0)}, requests {sim.get('requests', 0)}"
            )
    columns = ["scenario", "completions/min", "physical limit", "ratio", "429s served", "errors"]
    caption = (
        f"R = {R} rpm (simulator, sliding 60 s, real time); C = {args.workers}x{args.concurrency}; "
        f"L = uniform {args.latency[0]:g}-{args.latency[1]:g}s x {args.time_scale:g} "
        f"(mean {l_mean:.2f}s); steady window {args.warmup:g}-{args.duration:g}s; "
        "errors = failed tasks + 5xx/other non-429 errors served"
    )
    text = print_table("tracking: completions/min vs the provider limit", columns, rows, caption=caption)
    verdicts = []
    if "a" in results:
        a = results["a"]
        verdicts.append(
            f"(a) ratio {a['ratio']:.3f} (target >= 0.98: "
            f"{'met' if a['ratio'] >= 0.98 else 'MISSED'}), 429s {a['rate_limited_429']} "
            f"(target 0: {'met' if a['rate_limited_429'] == 0 else 'MISSED'})"
        )
    if "b" in results:
        b = results["b"]
        verdicts.append(
            f"(b) ratio {b['ratio']:.3f} (target >= 0.90: "
            f"{'met' if b['ratio'] >= 0.90 else 'MISSED'}), 429s {b['rate_limited_429']}"
        )
    for line in verdicts:
        console.print(line)
    return {
        "params": {
            "rpm": R,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "latency": args.latency,
            "time_scale": args.time_scale,
            "latency_mean_s": l_mean,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "tasks_queued": tasks,
            "thumbnails": args.thumbnails,
            "seed": args.seed,
            "celery_rate_limits": rates,
        },
        "scenarios": results,
        "table": {"columns": columns, "rows": rows, "caption": caption},
        "markdown": markdown_table(columns, rows),
        "verdicts": verdicts,
        "text": text,
    }


def parse_latency(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    return (float(low), float(high or low))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rpm", type=int, default=600, help="R: the simulator's requests/minute (600)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker (8)")
    parser.add_argument("--latency", type=parse_latency, default=(8.0, 20.0), help="seconds MIN-MAX (8-20)")
    parser.add_argument("--time-scale", type=float, default=0.02, help="latency multiplier (0.02)")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds per scenario (90)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds excluded at the start (30)")
    parser.add_argument("--tasks", type=int, default=0, help="tasks queued per scenario (default: enough)")
    parser.add_argument("--scenarios", default="a,b,c,d", help="comma list of a,b,c,d (all)")
    parser.add_argument(
        "--no-thumbnails",
        dest="thumbnails",
        action="store_false",
        help="full-size images instead of thumbnails",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs)")
    parser.add_argument("--name", default="tracking", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    write_results(args.name, run(args))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: workers stopped, databases dropped, keys deleted[/yellow]")
        raise SystemExit(130) from None
