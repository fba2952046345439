"""The "real night" scenario of bench/compare.py (``--scenario night``, issue 13).

    python -m bench.compare --scenario night              # R = 120 rpm per pool, 5 min window each
    python -m bench.compare --scenario night --rpm 600    # quick: 1 min window each, ~5-6 min in all
    python -m bench.compare --scenario night --rpm 600 --systems c,d   # the adaptive share on / off

What a night looks like, the same for the three systems (each on a fresh simulator, same seed):

- **two quota pools**: the batch alternates two models, ``gemini-2.5-flash-image`` (pool A) and
  ``gemini-nano-banana-2.1`` (pool B), each with R requests per sliding 60 s at the upstream;
- **a daily cap reached mid-run**: pool A allows ``D`` requests per Pacific day (``D`` = half of what
  R allows in the window), and it has as many tasks as ``D``: its cap is reached about half-way, and
  the rest of A's tasks must wait for the next day (nanobatch parks them; the others fail them);
- **a neighbour** on the same key (a thread of this process, its own httpx client): it sends 30 % of R
  to pool A and 10 % to pool B at a steady pace whatever it is answered, so the systems get 429s they
  did not cause;
- **workers scaled 2 -> 6 -> 3** (systems b, c and d): 4 more worker processes start at 25 % of the
  window and 3 get SIGTERM at 60 %. System a is one process and cannot scale; it keeps ``--threads``.

System d is nanobatch with its adaptive share turned off (``NANOBATCH_LIMITER_ADAPT=false``), to see
what the share buys in the same run.

The measurement window ``W`` is the first ``T`` seconds after the batch is released (``T`` is
``36000 / R`` rounded to whole minutes, at least 60 s, or ``--duration``), so the upstream's sliding
window admits at most ``R x T / 60`` requests per pool in it.
**Allowed** (what the upstream let this system complete in ``W``), per pool::

    allowed_calls(p) = min(R x T / 60, D(p)) - neighbour's admitted calls to p in W
    allowed(p)       = min(allowed_calls(p) x (1 - f), tasks(p))

where ``D(p)`` is the daily cap (none for B) and ``f`` the share of this system's admitted calls the
upstream answered 503 (each still spends quota; the realised share, not the configured expectation).
"% of allowed" = completions in ``W`` / sum of allowed(p); it is the same ratio as completions/min in
``W`` over allowed/min. After ``W`` the run goes on until every task is
settled (completed, failed, or parked until the daily reset) or ``T/2`` more has passed (``drain``),
then every process is stopped. The neighbour starts when the batch is released (workers are ready
before), so every call it makes counts in ``W``. **Lost** = tasks neither completed, failed, nor
still held durably (a nanobatch row that is pending/processing, a Celery message still in Redis):
for the thread-pool script, whatever it had not finished when the night ended. 429s, calls and paid
calls are the upstream's counts minus the neighbour's own.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.harness import (
    REDIS_URL,
    REPO,
    Bench,
    Worker,
    _epoch,
    console,
    markdown_table,
    nanobatch_env,
    nanobatch_runtime,
    phase,
    print_table,
    set_pool_limits,
    status_counts,
    submit_csv,
)
from bench.harness import finished_times as db_finished_times

POOL_A = "gemini-2.5-flash-image"  # its daily cap is reached mid-run
POOL_B = "gemini-nano-banana-2.1"
POOLS = (POOL_A, POOL_B)
SYSTEMS = {
    "a": "thread pool script",
    "b": "plain Celery + rate_limit",
    "c": "nanobatch",
    "d": "nanobatch, adaptive share off",
}


@dataclass(frozen=True)
class NightPlan:
    """Every number of one night, derived from R (and ``--duration``) by :func:`plan`."""

    rpm: int  # per pool, at the upstream and in nanobatch's limiter
    window: float  # T, seconds, a multiple of 60
    day_cap: dict[str, int]  # pool -> requests per Pacific day (pools not named: none)
    neighbour: dict[str, float]  # pool -> share of R the neighbour sends
    tasks: dict[str, int]  # pool -> tasks of the batch
    scale: tuple[tuple[float, int], ...]  # (seconds after release, worker processes)
    drain: float

    @property
    def total_tasks(self) -> int:
        return sum(self.tasks.values())

    def allowed_calls(self, pool: str, neighbour_admitted: int) -> int:
        quota = self.rpm * self.window / 60.0
        return max(0, int(min(quota, self.day_cap.get(pool, math.inf))) - neighbour_admitted)


def plan(rpm: int, duration: float | None) -> NightPlan:
    window = duration or max(60.0, 60.0 * round(36_000 / rpm / 60.0))  # R=120: 300 s; R=600: 60 s
    window = 60.0 * max(1, round(window / 60.0))
    per_window = rpm * window / 60.0
    day_cap = {POOL_A: round(per_window / 2)}
    neighbour = {POOL_A: 0.3, POOL_B: 0.1}
    tasks = {POOL_A: day_cap[POOL_A], POOL_B: round(per_window * (1 - neighbour[POOL_B]))}
    scale = ((0.0, 2), (0.25 * window, 6), (0.6 * window, 3))
    return NightPlan(rpm, window, day_cap, neighbour, tasks, scale, drain=window / 2)


# -- the neighbour -------------------------------------------------------------------------------


@dataclass
class Neighbour:
    """Another team's job on the same key: a steady pace per pool, whatever it is answered."""

    url: str
    rates: dict[str, float]  # pool -> requests per minute
    calls: list[tuple[float, str, int]] = field(default_factory=list)  # (sent at, pool, status)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self._client = httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0))
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="neighbour")
        for pool, rate in self.rates.items():
            thread = threading.Thread(target=self._pace, args=(pool, rate), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        if not hasattr(self, "_client"):
            return  # never started
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._pool.shutdown(wait=True)
        self._client.close()

    def admitted(self, pool: str, start: float, end: float) -> int:
        """Calls the upstream admitted (anything but a 429 or no answer) sent in ``[start, end)``."""
        return sum(
            1
            for at, p, status in list(self.calls)
            if p == pool and start <= at < end and status not in (0, 429)
        )

    def count(self, *statuses: int) -> int:
        return sum(1 for _, _, status in list(self.calls) if not statuses or status in statuses)

    def _pace(self, pool: str, rate: float) -> None:
        interval, due = 60.0 / rate, time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            self._pool.submit(self._call, pool)
            due += interval

    def _call(self, pool: str) -> None:
        body = {
            "contents": [{"role": "user", "parts": [{"text": "the neighbour's product photo"}]}],
            "generationConfig": {"responseModalities": ["IMAGE"]},
        }
        sent = time.time()
        try:
            status = self._client.post(
                f"{self.url}/v1beta/models/{pool}:generateContent", json=body
            ).status_code
        except httpx.HTTPError:
            status = 0
        self.calls.append((sent, pool, status))


# -- scaling workers on a schedule ---------------------------------------------------------------


@dataclass
class Scaler:
    """Starts and SIGTERMs worker processes as the plan's schedule says (newest stopped first)."""

    bench: Bench
    start_one: Any  # () -> Worker
    steps: list[tuple[float, int]]
    workers: list[Worker] = field(default_factory=list)
    log: list[tuple[float, int]] = field(default_factory=list)
    _stoppers: list[threading.Thread] = field(default_factory=list)

    def apply(self, elapsed: float) -> None:
        while self.steps and self.steps[0][0] <= elapsed:
            _, target = self.steps.pop(0)
            if target > len(self.workers):
                self.workers += [self.start_one() for _ in range(target - len(self.workers))]
            elif target < len(self.workers):
                leaving, self.workers = self.workers[target:], self.workers[:target]
                stopper = threading.Thread(target=self.bench.stop_workers, args=(leaving,), daemon=True)
                stopper.start()
                self._stoppers.append(stopper)
            self.log.append((round(elapsed, 1), target))
            console.print(f"  [dim]{elapsed:5.0f}s  workers -> {target}[/dim]")

    def finish(self) -> None:
        for stopper in self._stoppers:
            stopper.join()
        self.bench.stop_workers(self.workers)


# -- the batch -----------------------------------------------------------------------------------


def batch_rows(night: NightPlan) -> list[tuple[str, str, str]]:
    """(key, prompt, model): the pools interleaved as evenly as their task counts allow."""
    rows: list[tuple[str, str, str]] = []
    counts = dict.fromkeys(POOLS, 0)
    for i in range(night.total_tasks):
        pool = min(POOLS, key=lambda p: (counts[p] / night.tasks[p]) if counts[p] < night.tasks[p] else 2.0)
        counts[pool] += 1
        rows.append((f"SKU-{i:07d}", f"Studio product photo of item {i}, white background", pool))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "title", "prompt", "model"])
        writer.writerows((key, key, prompt, model) for key, prompt, model in rows)
    return path


def sim_config(args: argparse.Namespace, night: NightPlan) -> dict[str, Any]:
    return {
        "latency": args.latency,
        "time_scale": args.time_scale,
        "rpm": night.rpm,
        "model_limits": {pool: {"rpd": cap} for pool, cap in night.day_cap.items()},
        "fail_rates": {503: args.fail_503},
        "thumbnails": True,  # the night measures quota behaviour, not image bytes
        "seed": args.seed,
    }


def watch(night: NightPlan, probe: Any, settled: Any, scaler: Scaler | None, label: str) -> float:
    """Follow one system through the window and the drain; returns the release time (epoch)."""
    started = time.monotonic()
    last_print = -15.0
    while True:
        elapsed = time.monotonic() - started
        if scaler is not None:
            scaler.apply(elapsed)
        if elapsed >= night.window and (settled() or elapsed >= night.window + night.drain):
            return elapsed
        if elapsed - last_print >= 15:
            last_print = elapsed
            console.print(f"  [dim]{elapsed:5.0f}s  {label}: {probe()}[/dim]")
        time.sleep(0.25)


# -- the three systems ---------------------------------------------------------------------------


def run_threadpool(
    bench: Bench, args: argparse.Namespace, night: NightPlan, sim: Any, release: Callable[[], float]
) -> dict[str, Any]:
    times = bench.tmp / "night-threadpool.json"
    spacing = 60.0 / (night.rpm * len(POOLS))
    # The script takes models in turn from its list: one period of the batch's own mix of pools.
    period = night.total_tasks // math.gcd(*night.tasks.values())
    pattern = [model for _, _, model in batch_rows(night)[:period]]
    cmd = [
        sys.executable,
        str(REPO / "bench" / "threadpool_script.py"),
        *("--url", sim.url, "--tasks", str(night.total_tasks), "--workers", str(args.threads)),
        *("--spacing", f"{spacing:g}", "--retries", "5", "--models", ",".join(pattern)),
        *("--deadline", f"{night.window + night.drain:g}"),
        *("--out", str(bench.tmp / "night-threadpool-images"), "--times", str(times)),
    ]
    start = release()
    bench.run_process(cmd, timeout=night.window + night.drain + 120, log_name="night-threadpool.log")
    data = json.loads(times.read_text())
    return {
        "start": start,
        "done": sorted(data["done"]),
        "failed": len(data["failed"]),
        "held": 0,
        "parked": 0,
        "workers": f"1 process, {args.threads} threads",
        "detail": f"spacing {spacing:g}s, 5 retries",
    }


def run_celery(
    bench: Bench, args: argparse.Namespace, night: NightPlan, sim: Any, release: Callable[[], float]
) -> dict[str, Any]:
    ns = bench.namespace("night-celery")
    first = night.scale[0][1]
    rate = f"{night.rpm * len(POOLS) / first:g}/m"  # the total split by hand over the first workers
    env = {
        "BENCH_BROKER_URL": REDIS_URL,
        "BENCH_QUEUE": ns.queue,
        "BENCH_PREFIX": ns.prefix,
        "BENCH_SIM_URL": sim.url,
        "BENCH_RATE_LIMIT": rate,
        "BENCH_MAX_RETRIES": "5",
        "BENCH_OUTPUT_DIR": str(bench.tmp / "night-celery-images"),
    }

    def start_one() -> Worker:
        return bench.start_worker(
            app="baseline_app", queues=[ns.queue], concurrency=args.concurrency, env=env, label="nightcelery"
        )

    scaler = Scaler(bench, start_one, list(night.scale[1:]))
    scaler.workers = [start_one() for _ in range(first)]
    bench.wait_ready(scaler.workers)
    redis = bench.redis()
    start = release()
    publish(env, batch_rows(night))

    def counts() -> tuple[int, int]:
        return int(redis.llen(f"{ns.prefix}:done")), int(redis.llen(f"{ns.prefix}:failed"))

    watch(
        night,
        lambda: "done {:,}  failed {:,}".format(*counts()),
        lambda: sum(counts()) >= night.total_tasks,
        scaler,
        "celery",
    )
    scaler.finish()
    _, failed = counts()
    return {
        "start": start,
        "done": sorted(float(x) for x in redis.lrange(f"{ns.prefix}:done", 0, -1)),
        "failed": failed,
        "held": int(redis.llen(ns.queue)) + unacked_of(redis, ns.prefix),
        "parked": 0,
        "workers": "2 -> 6 -> 3 x " + str(args.concurrency),
        "detail": f"rate_limit {rate} per worker (the total over the first {first})",
    }


def publish(env: dict[str, str], rows: list[tuple[str, str, str]]) -> None:
    from celery import Celery

    app = Celery("night-producer", broker=env["BENCH_BROKER_URL"])
    app.conf.update(task_default_queue=env["BENCH_QUEUE"], task_serializer="json")
    with app.producer_or_acquire() as producer, producer.batch(1000):
        for key, prompt, model in rows:
            app.send_task(
                "baseline.generate", args=(key, prompt, model), queue=env["BENCH_QUEUE"], producer=producer
            )


def unacked_of(redis: Any, prefix: str) -> int:
    """Our messages in kombu's shared ``unacked`` hash (delivered, not acknowledged)."""
    count = 0
    for _tag, raw in redis.hscan_iter("unacked", count=1000):
        with contextlib.suppress(Exception):
            if str(json.loads(raw)[2]).startswith(prefix):
                count += 1
    return count


def run_nanobatch(
    bench: Bench, args: argparse.Namespace, night: NightPlan, sim: Any, release: Callable[[], float]
) -> dict[str, Any]:
    db_url = bench.database()
    ns = bench.namespace("night-nb")
    env = nanobatch_env(db_url, ns, sim.url, bench.tmp / "night-nb-images", concurrency=args.concurrency)
    adapt = not (args.no_adapt or args.system == "d")
    env["NANOBATCH_LIMITER_ADAPT"] = "true" if adapt else "false"
    env.update(dict(item.split("=", 1) for item in args.worker_env))  # what-ifs: --worker-env K=V
    runtime = nanobatch_runtime(bench, env)
    for pool in POOLS:  # what the operator bought, as `nanobatch limits set` would say it
        set_pool_limits(runtime.redis, ns.prefix, pool, rpm=night.rpm, **_rpd(night, pool))
    csv_path = write_csv(bench.tmp / "night.csv", batch_rows(night))

    def start_one() -> Worker:
        return bench.start_worker(
            app="nanobatch.tasks",
            queues=[ns.queue, ns.control_queue],
            concurrency=args.concurrency,
            env=env,
            label="nightnb",
        )

    first = night.scale[0][1]
    scaler = Scaler(bench, start_one, list(night.scale[1:]))
    scaler.workers = [start_one() for _ in range(first)]
    bench.wait_ready(scaler.workers)
    start = release()
    submit_csv(runtime, csv_path, "night", model=POOL_A)

    def settled() -> bool:
        counts = status_counts(runtime.db.engine)
        return (
            counts.get("completed", 0) + counts.get("failed", 0) + parked(runtime.db.engine)
            >= night.total_tasks
        )

    shares: list[tuple[float, dict[str, float]]] = []

    def probe() -> str:
        counts = status_counts(runtime.db.engine)
        now = {pool: round(runtime.limiter.state(pool).share, 3) for pool in POOLS}
        shares.append((round(time.time() - start, 1), now))
        return (
            ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
            + f"; parked {parked(runtime.db.engine):,}; share "
            + " ".join(f"{share:.2f}" for share in now.values())
        )

    watch(night, probe, settled, scaler, "nanobatch")
    scaler.finish()
    counts = status_counts(runtime.db.engine)
    states = {pool: runtime.limiter.state(pool) for pool in POOLS}
    return {
        "start": start,
        "done": db_finished_times(runtime.db.engine, "completed"),
        "failed": counts.get("failed", 0),
        "held": counts.get("pending", 0) + counts.get("processing", 0),
        "parked": parked(runtime.db.engine),
        "workers": "2 -> 6 -> 3 x " + str(args.concurrency),
        "detail": f"limiter rpm {night.rpm} per pool, rpd {night.day_cap[POOL_A]} on A, adaptive share "
        + ("on" if adapt else "off"),
        "counts": counts,
        "share_drops": {pool: state.share_drops for pool, state in states.items()},
        "done_by_pool": {pool: finished_by_model(runtime.db.engine, pool) for pool in POOLS},
        "share_trace": shares,
    }


def finished_by_model(engine: Any, model: str) -> list[float]:
    """Completion times of ``model``'s tasks (epoch s): where a pool's throughput went."""
    from sqlalchemy import text

    query = (
        "SELECT finished_at FROM generation_tasks WHERE status = 'completed' AND model = :m"
        " AND finished_at IS NOT NULL"
    )
    with engine.connect() as conn:
        return sorted(_epoch(r[0]) for r in conn.execute(text(query), {"m": model}))


def _rpd(night: NightPlan, pool: str) -> dict[str, int]:
    return {"rpd": night.day_cap[pool]} if pool in night.day_cap else {}


def parked(engine: Any) -> int:
    """Pending rows parked past the next hour: waiting for the daily reset, durably."""
    from sqlalchemy import text

    with engine.connect() as conn:
        query = "SELECT count(*) FROM generation_tasks WHERE status = 'pending' AND not_before > :t"
        return int(conn.execute(text(query), {"t": _utc(time.time() + 3600)}).scalar_one())


def _utc(epoch: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)


# -- the whole night -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    night = plan(args.rpm, args.duration)
    runners = {"a": run_threadpool, "b": run_celery, "c": run_nanobatch, "d": run_nanobatch}
    rows: list[list[Any]] = []
    results: dict[str, Any] = {}
    rates = {pool: share * night.rpm for pool, share in night.neighbour.items()}
    with Bench("compare-night", keep=args.keep) as bench:
        for key in args.systems:
            with phase(
                f"night, system {key}: {SYSTEMS[key]} ({night.total_tasks:,} tasks, window {night.window:g}s)"
            ):
                args.system = key
                sim = bench.simulator(**sim_config(args, night))
                neighbour = Neighbour(sim.url, rates)

                def release(neighbour: Neighbour = neighbour) -> float:
                    """The batch is released: the night (and the neighbour) starts now."""
                    neighbour.start()
                    return time.time()

                try:
                    data = runners[key](bench, args, night, sim, release)
                finally:
                    neighbour.stop()
                stats = sim.stats()
            result = measure(night, args, data, stats, neighbour)
            results[key] = {"system": SYSTEMS[key], **result}
            rows.append([f"{key}  {SYSTEMS[key]}", *(result[c] for c in COLUMN_KEYS)])
            console.print("  " + ", ".join(f"{c} {fmt_cell(result[c])}" for c in COLUMN_KEYS))
    caption = describe(night, args)
    text = print_table(
        "compare --scenario night: same upstream, neighbour, two pools, daily cap",
        COLUMNS,
        rows,
        caption=caption,
    )
    return {
        "params": {
            "scenario": "night",
            "rpm_per_pool": night.rpm,
            "window_s": night.window,
            "drain_s": night.drain,
            "day_cap": night.day_cap,
            "neighbour_share_of_rpm": night.neighbour,
            "tasks": night.tasks,
            "scale": night.scale,
            "latency": args.latency,
            "time_scale": args.time_scale,
            "fail_503": args.fail_503,
            "seed": args.seed,
            "concurrency": args.concurrency,
            "threads": args.threads,
            "adaptive_share": not args.no_adapt,
            "worker_env": args.worker_env,
        },
        "systems": results,
        "table": {"columns": COLUMNS, "rows": rows, "caption": caption},
        "markdown": markdown_table(COLUMNS, rows),
        "text": text,
    }


COLUMNS = [
    "system",
    "completed in W",
    "allowed in W",
    "% of allowed",
    "completions/min in W",
    "allowed/min",
    "completed",
    "failed",
    "parked",
    "lost",
    "our calls",
    "429s to us",
    "% calls 429",
    "paid calls",
]
COLUMN_KEYS = [
    "completed_in_window",
    "allowed_in_window",
    "pct_of_allowed",
    "completions_per_min",
    "allowed_per_min",
    "completed",
    "failed",
    "parked",
    "lost",
    "our_calls",
    "our_429s",
    "pct_calls_429",
    "paid_calls",
]


def measure(
    night: NightPlan,
    args: argparse.Namespace,
    data: dict[str, Any],
    stats: dict[str, Any],
    neighbour: Neighbour,
) -> dict[str, Any]:
    start = data["start"]
    end = start + night.window
    by_status = {k: int(v) for k, v in stats.get("by_status", {}).items()}
    nb_total, nb_429, nb_200 = neighbour.count(), neighbour.count(429), neighbour.count(200)
    our_calls = sum(by_status.values()) - nb_total
    our_429 = int(stats.get("rate_limited", by_status.get("429", 0))) - nb_429
    # f as the upstream drew it for this system's admitted calls (the configured share is only the
    # expectation; using it would let a lucky run exceed 100 %).
    our_503 = by_status.get("503", 0) - neighbour.count(503)
    admitted = our_calls - our_429
    fail = our_503 / admitted if admitted > 0 else args.fail_503
    nb_admitted = {pool: neighbour.admitted(pool, start, end) for pool in POOLS}
    allowed_calls = {pool: night.allowed_calls(pool, nb_admitted[pool]) for pool in POOLS}
    allowed = sum(min(allowed_calls[p] * (1 - fail), night.tasks[p]) for p in POOLS)
    done = data["done"]
    in_window = sum(1 for t in done if start <= t < end)
    completed, failed = len(done), int(data["failed"])
    minutes = night.window / 60.0
    return {
        "completed_in_window": in_window,
        "allowed_in_window": round(allowed, 1),
        "pct_of_allowed": f"{in_window / allowed:.1%}" if allowed else "-",
        "completions_per_min": in_window / minutes,
        "allowed_per_min": allowed / minutes,
        "completed": completed,
        "failed": failed,
        "parked": int(data["parked"]),
        "lost": night.total_tasks - completed - failed - int(data["held"]),
        "our_calls": our_calls,
        "our_429s": our_429,
        "pct_calls_429": f"{our_429 / our_calls:.2%}" if our_calls else "-",
        "paid_calls": by_status.get("200", 0) - nb_200,
        "held_durably": int(data["held"]),
        "neighbour": {
            "calls": nb_total,
            "429s": nb_429,
            "admitted_in_window": nb_admitted,
        },
        "allowed_calls_in_window": allowed_calls,
        "fail_503_realised": round(fail, 4),
        "our_503s": our_503,
        "workers": data["workers"],
        "detail": data["detail"],
        "db_counts": data.get("counts"),
        "share_drops": data.get("share_drops"),
        "sim_stats": stats,
        "completion_offsets_s": [round(t - start, 3) for t in done],
        "completed_in_window_by_pool": {
            pool: sum(1 for t in times if start <= t < end)
            for pool, times in data.get("done_by_pool", {}).items()
        },
        "share_trace": data.get("share_trace", []),
        # Per pool, for the share analysis (docs/architecture.md, "Adaptive share").
        "completion_offsets_by_pool_s": {
            pool: [round(t - start, 3) for t in sorted(times)]
            for pool, times in data.get("done_by_pool", {}).items()
        },
    }


def fmt_cell(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def describe(night: NightPlan, args: argparse.Namespace) -> str:
    neighbour = ", ".join(f"{share:.0%} of R on {pool}" for pool, share in night.neighbour.items())
    tasks = ", ".join(f"{n:,} on {pool}" for pool, n in night.tasks.items())
    return (
        f"R = {night.rpm} rpm per pool; window W = {night.window:g}s (+ drain up to {night.drain:g}s); "
        f"daily cap {night.day_cap[POOL_A]:,} on {POOL_A}; neighbour {neighbour}; tasks {tasks}; "
        f"workers 2 -> 6 -> 3 (at {night.scale[1][0]:g}s, {night.scale[2][0]:g}s) x {args.concurrency} "
        "threads (b, c, d); "
        f"latency {args.latency[0]:g}-{args.latency[1]:g}s x {args.time_scale:g}, {args.fail_503:.0%} 503s, "
        f"seed {args.seed}. allowed(p) = min((min(R·T/60, cap(p)) - neighbour's admitted calls to p "
        f"in W) x (1-f), tasks(p)), f = the system's realised 503 share."
    )
