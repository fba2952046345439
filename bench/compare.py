"""Three ways to generate N images against the same rate-limited, flaky upstream (issue 6).

    python -m bench.compare                       # 1,000 tasks, R=120 rpm (the spec's), ~30 minutes
    python -m bench.compare --rpm 600 --systems a,c   # quicker: R scaled up 5x, ~5 minutes
    python -m bench.compare --scenario night --rpm 600   # the "real night" (bench/night.py), ~7 min

Same simulator settings for every system, each on a fresh simulator with the same seed: R requests
per sliding 60 s (real time, 429 with QuotaFailure + RetryInfo above it), latency uniform 8-20 s x
``--time-scale``, 3 % of requests answered 503 at once, real 1024x1024 PNGs (``--thumbnails`` for
small ones).

R = 120 rpm by default, as the task spec says: with 1,000 tasks that is a floor of 8.6 minutes *per
system* whatever the system does. ``--rpm`` scales it for quicker runs, and everything tuned *for*
the rate is scaled with it: the thread-pool script's spacing is 60/R s (0.5 s at 120 rpm), Celery's
rate_limit is R/2 per worker, nanobatch's limiter rpm is R. A faster R makes the fixed costs (start-up,
the last call's latency, the last retries' backoff) weigh more: 5x at R=600. Latency is time-scaled
(x0.1 by default: 0.8-2.0 s, mean 1.4 s); backoffs and quota windows stay real time.

Systems:
  a  single-process ThreadPoolExecutor(max_workers=10), spacing 60/R s, 5 retries with exponential
     backoff 1-16 s (bench/threadpool_script.py), own process
  b  plain Celery, rate_limit R/2 per worker (``--celery-rate total``: R), autoretry_for +
     retry_backoff, max 5 retries, 2 worker processes x ``--concurrency`` (bench/baseline_app.py)
  c  nanobatch, 2 worker processes x ``--concurrency`` (one also runs beat: the sweeper), limiter
     rpm = R, default retry policy (5 attempts, full-jitter backoff)

Columns: completed, failed, lost (= submitted - completed - failed when the run ends: all terminal,
or ``--timeout`` passed), 429s served, paid calls (= 200 responses the upstream served), wall time
(start to the last terminal task), completions/min (completed / wall), that rate as % of R, and as %
of the physical limit of that system: min(R x (1 - f), C x 60 / L_mean), where f is the share of
requests the upstream answers 503 — each still counts against R, as the simulator's quota is checked
before faults, so no system can complete more than R x (1 - f) images a minute — and C is the
system's concurrency (10 threads for a, workers x threads for b and c). Writes
bench/results/compare.json and bench/results/compare.png (completions over time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import night
from bench.harness import (
    REDIS_URL,
    REPO,
    RESULTS_DIR,
    Bench,
    console,
    markdown_table,
    nanobatch_env,
    nanobatch_runtime,
    phase,
    print_table,
    set_pool_limits,
    status_counts,
    submit_csv,
    write_products_csv,
    write_results,
)
from bench.harness import finished_times as db_finished_times
from bench.tracking import parse_latency, publish_baseline

POOL = "gemini-2.5-flash-image"
SYSTEMS = {
    "a": "thread pool script (10 threads)",
    "b": "plain Celery + rate_limit",
    "c": "nanobatch",
}


def sim_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "latency": args.latency,
        "time_scale": args.time_scale,
        "rpm": args.rpm,
        "fail_rates": {503: args.fail_503},
        "thumbnails": args.thumbnails,
        "seed": args.seed,
    }


def wait_terminal(probe: Any, total: int, timeout: float, label: str) -> None:
    started = time.monotonic()
    last_print = 0.0
    while True:
        completed, failed = probe()
        elapsed = time.monotonic() - started
        if completed + failed >= total:
            return
        if elapsed > timeout:
            console.print(
                f"[yellow]  {label}: timeout after {timeout:.0f}s with "
                f"{total - completed - failed} tasks not terminal[/yellow]"
            )
            return
        if elapsed - last_print >= 15:
            last_print = elapsed
            console.print(f"  [dim]{elapsed:5.0f}s  completed {completed:,}  failed {failed:,}[/dim]")
        time.sleep(0.5)


def run_threadpool(bench: Bench, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    sim = bench.simulator(**sim_config(args))
    times = bench.tmp / "threadpool-times.json"
    spacing = args.spacing if args.spacing is not None else 60.0 / args.rpm
    cmd = [
        sys.executable,
        str(REPO / "bench" / "threadpool_script.py"),
        "--url",
        sim.url,
        "--tasks",
        str(args.tasks),
        "--workers",
        str(args.threads),
        "--spacing",
        f"{spacing:g}",
        "--retries",
        "5",
        "--out",
        str(bench.tmp / "threadpool-images"),
        "--times",
        str(times),
    ]
    bench.run_process(cmd, timeout=timeout, log_name="threadpool.log")
    data = json.loads(times.read_text())
    return {
        "start": data["started"],
        "done": sorted(data["done"]),
        "failed": sorted(data["failed"]),
        "sim": sim.stats(),
        "concurrency": args.threads,
        "detail": f"spacing {spacing:g}s",
    }


def run_celery(bench: Bench, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    sim = bench.simulator(**sim_config(args))
    ns = bench.namespace("celery")
    rate = f"{args.rpm / args.workers:g}/m" if args.celery_rate == "share" else f"{args.rpm:g}/m"
    env = {
        "BENCH_BROKER_URL": REDIS_URL,
        "BENCH_QUEUE": ns.queue,
        "BENCH_PREFIX": ns.prefix,
        "BENCH_SIM_URL": sim.url,
        "BENCH_RATE_LIMIT": rate,
        "BENCH_MAX_RETRIES": "5",
        "BENCH_OUTPUT_DIR": str(bench.tmp / "celery-images"),
    }
    workers = [
        bench.start_worker(
            app="baseline_app", queues=[ns.queue], concurrency=args.concurrency, env=env, label="celery"
        )
        for _ in range(args.workers)
    ]
    bench.wait_ready(workers)
    redis = bench.redis()
    start = time.time()
    publish_baseline(env, args.tasks)

    def probe() -> tuple[int, int]:
        return int(redis.llen(f"{ns.prefix}:done")), int(redis.llen(f"{ns.prefix}:failed"))

    wait_terminal(probe, args.tasks, timeout, "celery")
    stats = sim.stats()
    bench.stop_workers(workers)
    return {
        "start": start,
        "done": sorted(float(x) for x in redis.lrange(f"{ns.prefix}:done", 0, -1)),
        "failed": sorted(float(x) for x in redis.lrange(f"{ns.prefix}:failed", 0, -1)),
        "sim": stats,
        "concurrency": args.workers * args.concurrency,
        "detail": f"rate_limit {rate} per worker",
    }


def run_nanobatch(bench: Bench, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    sim = bench.simulator(**sim_config(args))
    db_url = bench.database()
    ns = bench.namespace("nb")
    env = nanobatch_env(db_url, ns, sim.url, bench.tmp / "nanobatch-images", concurrency=args.concurrency)
    runtime = nanobatch_runtime(bench, env)
    set_pool_limits(runtime.redis, ns.prefix, POOL, rpm=args.rpm)
    csv_path = write_products_csv(bench.tmp / "compare.csv", args.tasks)
    workers = [
        bench.start_worker(
            app="nanobatch.tasks",
            queues=[ns.queue, ns.control_queue],
            concurrency=args.concurrency,
            env=env,
            label="nb",
            beat=(i == 0),
        )
        for i in range(args.workers)
    ]
    bench.wait_ready(workers)
    start = time.time()
    submit_csv(runtime, csv_path, "compare")

    def probe() -> tuple[int, int]:
        counts = status_counts(runtime.db.engine)
        return counts.get("completed", 0), counts.get("failed", 0)

    wait_terminal(probe, args.tasks, timeout, "nanobatch")
    stats = sim.stats()
    bench.stop_workers(workers)
    return {
        "start": start,
        "done": db_finished_times(runtime.db.engine, "completed"),
        "failed": db_finished_times(runtime.db.engine, "failed"),
        "sim": stats,
        "concurrency": args.workers * args.concurrency,
        "detail": f"limiter rpm {args.rpm}",
        "counts": status_counts(runtime.db.engine),
    }


def plot(series: dict[str, dict[str, Any]], args: argparse.Namespace, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("[yellow]matplotlib is not installed: no plot (pip install matplotlib)[/yellow]")
        return None
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    longest = 0.0
    for key, data in series.items():
        xs = [t - data["start"] for t in data["done"]]
        if not xs:
            continue
        longest = max(longest, xs[-1])
        ax.step([0.0, *xs], list(range(len(xs) + 1)), where="post", label=f"{key}  {SYSTEMS[key]}")
    ideal = min(args.tasks / (args.rpm / 60.0), longest)
    ax.plot(
        [0, ideal],
        [0, ideal * args.rpm / 60.0],
        linestyle="--",
        color="grey",
        linewidth=1,
        label=f"R = {args.rpm}/min (the upstream's limit)",
    )
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("images completed")
    ax.set_title(
        f"{args.tasks:,} tasks, R={args.rpm} rpm, latency {args.latency[0]:g}-{args.latency[1]:g} s "
        f"x {args.time_scale:g}, {args.fail_503:.0%} 503s"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    console.print(f"[dim]plot written to {path.relative_to(REPO)}[/dim]")
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    R = args.rpm
    l_mean = (args.latency[0] + args.latency[1]) / 2 * args.time_scale
    floor_s = args.tasks / (R / 60.0)
    timeout = args.timeout or max(600.0, 8 * floor_s + 120)
    runners = {"a": run_threadpool, "b": run_celery, "c": run_nanobatch}
    series: dict[str, dict[str, Any]] = {}
    rows = []
    results: dict[str, Any] = {}
    with Bench("compare", keep=args.keep) as bench:
        for key in args.systems:
            with phase(f"system {key}: {SYSTEMS[key]} ({args.tasks:,} tasks)"):
                data = runners[key](bench, args, timeout)
            series[key] = data
            completed, failed = len(data["done"]), len(data["failed"])
            lost = args.tasks - completed - failed
            ends = data["done"] + data["failed"]
            wall = (max(ends) - data["start"]) if ends else float("nan")
            per_min = completed / wall * 60 if ends and wall > 0 else 0.0
            quota_bound = R * (1.0 - args.fail_503)
            physical = min(quota_bound, data["concurrency"] * 60.0 / l_mean) if l_mean > 0 else quota_bound
            sim = data["sim"]
            paid = int(sim.get("by_status", {}).get("200", 0))
            rows.append(
                [
                    f"{key}  {SYSTEMS[key]}",
                    completed,
                    failed,
                    lost,
                    sim.get("rate_limited", 0),
                    paid,
                    wall,
                    per_min,
                    f"{per_min / R:.1%}",
                    f"{per_min / physical:.1%}",
                ]
            )
            results[key] = {
                "system": SYSTEMS[key],
                "detail": data["detail"],
                "completed": completed,
                "failed": failed,
                "lost": lost,
                "rate_limited_429": sim.get("rate_limited", 0),
                "paid_calls": paid,
                "wall_s": wall,
                "completions_per_min": per_min,
                "physical_limit_per_min": physical,
                "pct_of_physical": per_min / physical,
                "pct_of_rpm": per_min / R,
                "concurrency": data["concurrency"],
                "sim_stats": sim,
                "db_counts": data.get("counts"),
                "completion_offsets_s": [round(t - data["start"], 3) for t in data["done"]],
            }
            console.print(
                f"  completed {completed}, failed {failed}, lost {lost}, 429s "
                f"{sim.get('rate_limited', 0)}, paid {paid}, wall {wall:.1f}s, {per_min:.1f}/min"
            )
    columns = [
        "system",
        "completed",
        "failed",
        "lost",
        "429s served",
        "paid calls",
        "wall s",
        "completions/min",
        "% of R",
        "% of physical limit",
    ]
    limits = ", ".join(f"{k}: {results[k]['physical_limit_per_min']:.0f}/min" for k in results)
    caption = (
        f"R = {R} rpm, latency uniform {args.latency[0]:g}-{args.latency[1]:g}s x "
        f"{args.time_scale:g} (mean {l_mean:.2f}s), {args.fail_503:.0%} 503s, seed {args.seed}; "
        f"physical limit min(R·(1-f), C·60/L): {limits}"
    )
    text = print_table(
        f"compare: {args.tasks:,} images, same upstream for all", columns, rows, caption=caption
    )
    png = plot(series, args, RESULTS_DIR / f"{args.name}.png")
    return {
        "params": {
            "tasks": args.tasks,
            "rpm": R,
            "rpm_note": "the spec's 120" if R == 120 else "scaled from the spec's 120",
            "latency": args.latency,
            "time_scale": args.time_scale,
            "latency_mean_s": l_mean,
            "fail_503": args.fail_503,
            "thumbnails": args.thumbnails,
            "seed": args.seed,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "threads": args.threads,
            "celery_rate": args.celery_rate,
            "floor_s": floor_s,
            "timeout_s": timeout,
        },
        "systems": results,
        "table": {"columns": columns, "rows": rows, "caption": caption},
        "markdown": markdown_table(columns, rows),
        "plot": str(png.relative_to(REPO)) if png else None,
        "text": text,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1000, help="images per system (1,000)")
    parser.add_argument("--rpm", type=int, default=120, help="R, requests per minute (120, the spec's)")
    parser.add_argument("--latency", type=parse_latency, default=(8.0, 20.0), help="seconds MIN-MAX (8-20)")
    parser.add_argument("--time-scale", type=float, default=0.1, help="latency multiplier (0.1)")
    parser.add_argument("--fail-503", type=float, default=0.03, help="share of 503 answers (0.03)")
    parser.add_argument("--thumbnails", action="store_true", help="small images instead of 1024x1024")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for b and c (2)")
    parser.add_argument("--concurrency", type=int, default=16, help="threads per worker for b and c (16)")
    parser.add_argument("--threads", type=int, default=10, help="thread-pool size of system a (10)")
    parser.add_argument("--spacing", type=float, default=None, help="system a's spacing (default 60/R s)")
    parser.add_argument(
        "--celery-rate",
        choices=["share", "total"],
        default="share",
        help="system b's rate_limit per worker: R/workers (share) or R (total)",
    )
    parser.add_argument(
        "--systems", default="a,b,c", help="comma list of a,b,c (all); night: also d (nanobatch, share off)"
    )
    parser.add_argument(
        "--timeout", type=float, default=0.0, help="seconds per system (default: max(600, 8 x floor + 120))"
    )
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--scenario",
        choices=["default", "night"],
        default="default",
        help="default: the issue-6 comparison; night: neighbour, two pools, daily cap, 2->6->3 workers "
        "(bench/night.py)",
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="night: window W in seconds (default 72000/R, >= 120)"
    )
    parser.add_argument("--no-adapt", action="store_true", help="night: nanobatch without the adaptive share")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="night: extra environment of nanobatch workers (e.g. NANOBATCH_LIMITER_ADAPT_HOLD=120)",
    )
    parser.add_argument(
        "--name", default=None, help="results file name (bench/results/NAME.json; compare / compare-night)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, images)")
    args = parser.parse_args()
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    known = night.SYSTEMS if args.scenario == "night" else SYSTEMS
    if [s for s in args.systems if s not in known]:
        parser.error(f"systems must be among {', '.join(known)}")
    if args.tasks <= 0:
        parser.error("--tasks must be positive")
    if not 0.0 <= args.fail_503 < 1.0:  # also refuses NaN
        parser.error("--fail-503 must be in [0, 1)")
    if [item for item in args.worker_env if "=" not in item]:
        parser.error("--worker-env takes KEY=VALUE")
    if args.scenario == "night":
        if args.duration is not None and args.duration < 60:
            parser.error("--duration must be at least 60 seconds")
        write_results(args.name or "compare-night", night.run(args))
    else:
        write_results(args.name or "compare", run(args))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: workers stopped, databases dropped, keys deleted[/yellow]")
        raise SystemExit(130) from None
