"""Worker overhead and memory (issue 6): nanobatch tasks/s beside a raw Celery no-op; peak RSS at 4K.

    python -m bench.overhead                         # throughput + memory, ~4-6 minutes
    python -m bench.overhead --skip-memory --nb-tasks 1500

Part 1 — throughput of ONE worker process (threads pool, ``--concurrency`` 16), measured in the same
run, same broker, same Celery configuration (bench/noop_app.py applies nanobatch's ``configure_app``):
  * raw Celery: a task that does nothing, one task-id argument;
  * nanobatch: the real ``generate`` task (claim → admit → call → store → finish, PostgreSQL, the
    Redis limiter with no limits set, httpx to a zero-latency simulator serving thumbnails, a file
    written and fsynced per image).
The queue is filled first, then the worker starts; the rate is taken from the queue draining in the
steady window (after ``--warmup`` s), and for nanobatch cross-checked with the rows' ``finished_at``.
Target: nanobatch >= 40 % of the no-op rate.

Part 2 — peak memory of one nanobatch worker at concurrency 50 generating 4K images
(``gemini-3-pro-image``, 4K, 16:9 = 5504x3072, thumbnails off), latency 8-20 s x 0.05 so that 50
calls are really in flight at once. Two payloads:
  * ``sim``: the simulator's own PNGs — exact size but flat colour, ~60 KB each;
  * ``photo``: the same requests answered with one cached, noisy 5504x3072 PNG of ~22 MB (3 bits of
    noise per channel), standing in for a photographic 4K PNG. This is a bench-side substitution in
    the simulator's renderer (this process), not a simulator feature; its size is an assumption.
RSS of the worker's process tree is sampled every 0.1 s (psutil) and the kernel's VmHWM is read
before it stops. Target: < 1.5 GB.
"""

from __future__ import annotations

import argparse
import io
import os
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    REDIS_URL,
    Bench,
    console,
    finished_times,
    markdown_table,
    nanobatch_env,
    nanobatch_runtime,
    peak_rss_tree,
    phase,
    print_table,
    rate_in_window,
    status_counts,
    submit_csv,
    vm_hwm,
    wait_until,
    write_products_csv,
    write_results,
)

MB = 1024 * 1024


class QueueSampler:
    """Samples LLEN of a queue (and optionally a probe) every ``interval`` seconds in a thread."""

    def __init__(self, redis: Any, queue: str, interval: float = 0.1) -> None:
        self.redis, self.queue, self.interval = redis, queue, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), int(self.redis.llen(self.queue))))
            self._stop.wait(self.interval)

    def __enter__(self) -> QueueSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def drain_rate(self, start: float, window: float) -> tuple[float, float, float]:
        """(messages/s, window start, window end) of the drain in ``[start, start+window]``, ending early
        when the queue ran empty."""
        inside = [(t, n) for t, n in self.samples if t >= start]
        if len(inside) < 2:
            return 0.0, start, start
        t_a, n_a = inside[0]
        t_b, n_b = inside[-1]
        for t, n in inside:
            if t > start + window:
                break
            t_b, n_b = t, n
            if n == 0:
                break
        return ((n_a - n_b) / (t_b - t_a) if t_b > t_a else 0.0), t_a, t_b


class WaitEventSampler:
    """Samples what this database's sessions are doing (pg_stat_activity) every 0.1 s."""

    def __init__(self, db_url: str, interval: float = 0.1) -> None:
        self.db_name = db_url.rsplit("/", 1)[-1]
        self.interval = interval
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        from bench.harness import PG_ADMIN_URL

        with psycopg.connect(
            PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
        ) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'on CPU') "
                    "FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid() AND state <> 'idle'",
                    (self.db_name,),
                )
                for state, event in rows:
                    key = f"{state} / {event}"
                    self.counts[key] = self.counts.get(key, 0) + 1
                self._stop.wait(self.interval)

    def __enter__(self) -> WaitEventSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def shares(self) -> dict[str, float]:
        total = sum(self.counts.values()) or 1
        return {k: v / total for k, v in sorted(self.counts.items(), key=lambda kv: -kv[1])}


def publish_noop(app: Any, queue: str, count: int) -> None:
    import uuid

    from bench.noop_app import NOOP_TASK

    with app.producer_or_acquire() as producer, producer.batch(1000):
        for _ in range(count):
            app.send_task(NOOP_TASK, args=(str(uuid.uuid4()),), queue=queue, producer=producer)


def throughput(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    sim = bench.simulator(latency=(0.0, 0.0), thumbnails=True, seed=3)
    redis = bench.redis()
    out: dict[str, Any] = {}

    # Raw Celery no-op, nanobatch's configuration.
    ns = bench.namespace("noop")
    env = {
        "NANOBATCH_REDIS_URL": REDIS_URL,
        "NANOBATCH_QUEUE": ns.queue,
        "NANOBATCH_CONCURRENCY": str(args.concurrency),
        "NANOBATCH_LIMITER_PREFIX": ns.prefix,
    }
    from celery import Celery

    from nanobatch.tasks.celeryapp.app import configure_app
    from nanobatch.tasks.settings import Settings

    producer_app = configure_app(
        Celery("bench-noop-producer"),
        Settings(redis_url=REDIS_URL, queue=ns.queue, concurrency=args.concurrency),
    )
    with phase(f"raw Celery no-op: {args.noop_tasks:,} messages, 1 worker x {args.concurrency} threads"):
        publish_noop(producer_app, ns.queue, args.noop_tasks)
        worker = bench.start_worker(
            app="noop_app", queues=[ns.queue], concurrency=args.concurrency, env=env, label="noop"
        )
        with QueueSampler(redis, ns.queue) as sampler:
            bench.wait_ready([worker])
            t0 = time.time()
            cpu0, left0 = cpu_seconds(worker.pid), int(redis.llen(ns.queue))
            wait_until(
                lambda: redis.llen(ns.queue) == 0 or time.time() > t0 + args.warmup + args.window,
                timeout=args.warmup + args.window + 60,
                interval=0.2,
                what="the no-op queue",
            )
            time.sleep(0.3)
            cpu_ms = (cpu_seconds(worker.pid) - cpu0) * 1000 / max(1, left0 - int(redis.llen(ns.queue)))
        bench.stop_workers([worker])
        rate, a, b = sampler.drain_rate(t0 + args.warmup, args.window)
        out["noop"] = {
            "tasks_per_s": rate,
            "window": [a - t0, b - t0],
            "messages": args.noop_tasks,
            "worker_cpu_ms_per_task": cpu_ms,
        }
        console.print(f"  {rate:,.1f} tasks/s (window {a - t0:.1f}-{b - t0:.1f}s)")

    # nanobatch generate (and, with --what-if, the same with the budget bookkeeping skipped).
    out["nanobatch"] = nanobatch_rate(
        bench, args, sim, redis, app_module="nanobatch.tasks", label="nanobatch generate", profile=args.py_spy
    )
    if args.what_if:
        out["what_if"] = nanobatch_rate(
            bench,
            args,
            sim,
            redis,
            app_module="whatif_app",
            label="what-if: no per-task batches-row updates",
            profile=args.py_spy,
        )
    return out


def nanobatch_rate(
    bench: Bench,
    args: argparse.Namespace,
    sim: Any,
    redis: Any,
    *,
    app_module: str,
    label: str,
    profile: float,
) -> dict[str, Any]:
    db_url = bench.database()
    ns = bench.namespace("nb")
    env = nanobatch_env(
        db_url, ns, sim.url, bench.tmp / f"nb-images-{ns.prefix[-6:]}", concurrency=args.concurrency
    )
    runtime = nanobatch_runtime(bench, env)
    result: dict[str, Any] = {"app": app_module}
    with phase(f"{label}: {args.nb_tasks:,} tasks, {args.nb_workers} worker(s) x {args.concurrency} threads"):
        submit_csv(
            runtime,
            write_products_csv(bench.tmp / f"overhead-{ns.prefix[-6:]}.csv", args.nb_tasks),
            "overhead",
        )
        sim.reset()
        workers = [
            bench.start_worker(
                app=app_module,
                queues=[ns.queue, ns.control_queue],
                concurrency=args.concurrency,
                env=env,
                label="nb",
            )
            for _ in range(args.nb_workers)
        ]
        with QueueSampler(redis, ns.queue) as sampler, WaitEventSampler(db_url) as waits:
            bench.wait_ready(workers)
            t0 = time.time()
            spy = None
            if profile:  # sample the steady state, not the first task building the runtime
                time.sleep(args.warmup)
                spy = start_py_spy(bench, workers[0].pid, profile)
            cpu0 = sum(cpu_seconds(w.pid) for w in workers)
            me0 = cpu_seconds(os.getpid())
            done0 = status_counts(runtime.db.engine).get("completed", 0)
            wait_until(
                lambda: redis.llen(ns.queue) == 0 or time.time() > t0 + args.warmup + args.window,
                timeout=args.warmup + args.window + 120,
                interval=0.2,
                what="the nanobatch queue",
            )
            time.sleep(0.3)
            finished = max(1, status_counts(runtime.db.engine).get("completed", 0) - done0)
            result["worker_cpu_ms_per_task"] = (
                (sum(cpu_seconds(w.pid) for w in workers) - cpu0) * 1000 / finished
            )
            result["bench_process_cpu_ms_per_task"] = (cpu_seconds(os.getpid()) - me0) * 1000 / finished
            if spy is not None:
                result["py_spy"] = finish_py_spy(*spy)
        bench.stop_workers(workers)
        rate, a, b = sampler.drain_rate(t0 + args.warmup, args.window)
        done = finished_times(runtime.db.engine, "completed")
        db_rate = rate_in_window(done, a, b) / 60.0
        counts = status_counts(runtime.db.engine)
        result.update(
            {
                "tasks_per_s": rate,
                "tasks_per_s_db": db_rate,
                "window": [a - t0, b - t0],
                "tasks": args.nb_tasks,
                "workers": args.nb_workers,
                "status_counts": counts,
                "sim": sim.stats(),
                "pg_wait_events": waits.shares(),
            }
        )
        console.print(
            "  PostgreSQL sessions of this database, share of samples by state/wait event: "
            + ", ".join(f"{k} {v:.0%}" for k, v in list(waits.shares().items())[:5])
        )
        console.print(
            f"  {rate:,.1f} tasks/s from the queue, {db_rate:,.1f}/s from finished_at "
            f"(window {a - t0:.1f}-{b - t0:.1f}s); statuses {counts}"
        )
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (all its threads)."""
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def start_py_spy(bench: Bench, pid: int, seconds: float) -> tuple[Any, Path]:
    """Sample the worker with py-spy (raw folded stacks) for ``seconds``; needs ptrace rights."""
    import subprocess

    raw = bench.tmp / f"worker-{pid}.pyspy.txt"
    proc = subprocess.Popen(
        [
            "py-spy",
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "200",
            "--format",
            "raw",
            "-o",
            str(raw),
            "--nonblocking",
            "--gil",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    return proc, raw


def finish_py_spy(proc: Any, raw: Path, top: int = 25) -> dict[str, Any]:
    """Inclusive share of samples per function (a function counts once per stack), busy samples only."""
    proc.wait(timeout=120)
    if not raw.exists():
        return {"error": "py-spy produced nothing (ptrace not permitted?)"}
    from collections import Counter

    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith("thread (")]
        if frames and _is_waiting(frames[-1]):
            continue  # a thread waiting (I/O or idle): not CPU
        count = int(count_text)
        total += count
        for name in dict.fromkeys(_short(f) for f in frames):
            inclusive[name] += count
        if frames:
            leaf[_short(frames[-1])] += count
    top_incl = [(name, n / total) for name, n in inclusive.most_common(top)] if total else []
    top_leaf = [(name, n / total) for name, n in leaf.most_common(top)] if total else []
    ours = [
        (name, n / total)
        for name, n in inclusive.most_common()
        if name.split(" (", 1)[-1].startswith(("tasks/", "workers/", "models/", "limiter/", "providers/"))
    ][:top]
    console.print(
        f"[bold]py-spy --gil: {total:,} samples holding the GIL; inclusive share, nanobatch frames[/bold]"
    )
    for name, share in ours:
        console.print(f"  {share:6.1%}  {name}")
    console.print("[bold]py-spy: self (leaf) share[/bold]")
    for name, share in top_leaf[:15]:
        console.print(f"  {share:6.1%}  {name}")
    return {"gil_samples": total, "inclusive": top_incl, "inclusive_nanobatch": ours, "leaf": top_leaf}


_WAITING = {
    ("wait", "threading.py"),
    ("_wait_for_tstate_lock", "threading.py"),
    ("select", "selectors.py"),
    ("poll", "selectors.py"),
    ("get", "queue.py"),
    ("wait", "psycopg/connection.py"),
    ("_read_from_socket", "_parsers/socket.py"),
    ("read", "httpcore/_backends/sync.py"),
    ("readinto", "socket.py"),
    ("wait_for", "threading.py"),
}


def _is_waiting(frame: str) -> bool:
    """A leaf frame that blocks in a system call (I/O or a lock), i.e. not CPU."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    method = name.rsplit(".", 1)[-1]  # py-spy names methods "Class.method"
    return any(method == func and path.endswith(suffix) for func, suffix in _WAITING)


def _short(frame: str) -> str:
    """'func (path/to/module.py:12)' -> 'func (module.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


def photo_payload(width: int, height: int, bits: int = 3) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 2**bits, size=(height, width, 3), dtype=np.uint8) * (256 // 2**bits)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def memory(bench: Bench, args: argparse.Namespace, payload: str) -> dict[str, Any]:
    sim = bench.simulator(latency=(8.0, 20.0), time_scale=args.mem_time_scale, thumbnails=False, seed=4)
    size = (5504, 3072)
    payload_bytes = None
    if payload == "photo":
        from nanobatch.simulator.images import RenderedImage

        with phase("building the ~22 MB photo-like 5504x3072 PNG"):
            data = photo_payload(*size)
        payload_bytes = len(data)
        original = sim.app.renderer.render

        def render(prompt: str, width: int, height: int, **kw: Any) -> Any:
            if (width, height) == size and not kw.get("thumbnail") and kw.get("fmt", "png") == "png":
                return RenderedImage(data, "image/png", width, height)
            return original(prompt, width, height, **kw)

        sim.app.renderer.render = render  # this process's simulator only
    db_url = bench.database()
    ns = bench.namespace(f"mem{payload}")
    env = nanobatch_env(db_url, ns, sim.url, bench.tmp / f"mem-{payload}", concurrency=args.mem_concurrency)
    env.update(dict(item.split("=", 1) for item in args.worker_env))
    runtime = nanobatch_runtime(bench, env)
    tasks = args.mem_tasks if payload == "sim" else args.photo_tasks
    csv_path = write_products_csv(
        bench.tmp / f"mem-{payload}.csv",
        tasks,
        model="gemini-3-pro-image",
        image_size="4K",
        aspect_ratio="16:9",
    )
    submit_csv(
        runtime, csv_path, f"mem-{payload}", model="gemini-3-pro-image", image_size="4K", aspect_ratio="16:9"
    )
    worker = bench.start_worker(
        app="nanobatch.tasks",
        queues=[ns.queue, ns.control_queue],
        concurrency=args.mem_concurrency,
        env=env,
        label=f"mem{payload}",
    )
    bench.wait_ready([worker])
    idle = peak_rss_tree(worker.pid)
    peak = idle
    t0 = time.time()
    deadline = t0 + args.mem_timeout
    while time.time() < deadline:
        peak = max(peak, peak_rss_tree(worker.pid))
        counts = status_counts(runtime.db.engine)
        if counts.get("completed", 0) + counts.get("failed", 0) >= tasks:
            break
        time.sleep(0.1)
    hwm = vm_hwm(worker.pid)
    elapsed = time.time() - t0
    stats = sim.stats()
    bench.stop_workers([worker])
    counts = status_counts(runtime.db.engine)
    with runtime.db.engine.connect() as conn:
        from sqlalchemy import text

        avg_bytes = conn.execute(
            text("SELECT avg(bytes) FROM generation_tasks WHERE status='completed'")
        ).scalar()
        dims = conn.execute(
            text("SELECT DISTINCT width, height FROM generation_tasks WHERE status='completed'")
        ).fetchall()
    result = {
        "payload": payload,
        "tasks": tasks,
        "concurrency": args.mem_concurrency,
        "idle_rss": idle,
        "peak_rss_sampled": peak,
        "vm_hwm": hwm,
        "elapsed_s": elapsed,
        "status_counts": counts,
        "avg_image_bytes": float(avg_bytes or 0),
        "dimensions": [list(d) for d in dims],
        "sim_peak_concurrency": stats.get("peak_concurrency"),
        "sim": stats,
        "payload_bytes": payload_bytes,
    }
    console.print(
        f"  idle {idle / MB:,.0f} MB, peak {peak / MB:,.0f} MB (VmHWM {(hwm or 0) / MB:,.0f} MB), "
        f"avg image {float(avg_bytes or 0) / 1e6:.2f} MB, upstream peak concurrency "
        f"{stats.get('peak_concurrency')}, {counts}"
    )
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"params": vars(args).copy()}
    tables = []
    with Bench("overhead", keep=args.keep) as bench:
        if not args.skip_throughput:
            tp = throughput(bench, args)
            result["throughput"] = tp
            noop, nb = tp["noop"]["tasks_per_s"], tp["nanobatch"]["tasks_per_s"]
            ratio = nb / noop if noop else 0.0
            result["throughput_ratio"] = ratio
            columns = [
                f"task ({args.nb_workers} worker process(es), threads x {args.concurrency})",
                "tasks/s",
                "÷ raw no-op",
                "worker CPU ms/task",
                "target ≥ 40%",
            ]
            nbd = tp["nanobatch"]
            rows = [
                ["raw Celery no-op (same config)", noop, 1.0, tp["noop"]["worker_cpu_ms_per_task"], ""],
                [
                    "nanobatch generate (zero-latency simulator)",
                    nb,
                    f"{ratio:.1%}",
                    nbd["worker_cpu_ms_per_task"],
                    "met" if ratio >= 0.4 else "MISSED",
                ],
                ["  cross-check: finished_at in the same window", nbd["tasks_per_s_db"], "", "", ""],
                ["  simulator + bench process CPU ms/task", "", "", nbd["bench_process_cpu_ms_per_task"], ""],
                [
                    "  PostgreSQL samples waiting on a row lock",
                    f"{nbd['pg_wait_events'].get('active / Lock:transactionid', 0.0):.0%}",
                    "",
                    "",
                    "",
                ],
            ]
            if "what_if" in tp:
                wid = tp["what_if"]
                wi = wid["tasks_per_s"]
                rows.append(
                    [
                        "what-if: no per-task batches-row updates (prototype)",
                        wi,
                        f"{wi / noop:.1%}" if noop else "-",
                        wid["worker_cpu_ms_per_task"],
                        "met" if noop and wi / noop >= 0.4 else "MISSED",
                    ]
                )
                rows.append(
                    [
                        "  PostgreSQL samples waiting on a row lock",
                        f"{wid['pg_wait_events'].get('active / Lock:transactionid', 0.0):.0%}",
                        "",
                        "",
                        "",
                    ]
                )
            text = print_table("overhead: tasks/s per worker process", columns, rows)
            tables.append(
                {"columns": columns, "rows": rows, "markdown": markdown_table(columns, rows), "text": text}
            )
        if not args.skip_memory:
            mems = []
            for payload in [p.strip() for p in args.payloads.split(",") if p.strip()]:
                with phase(f"peak RSS, concurrency {args.mem_concurrency}, 4K 16:9, payload {payload}"):
                    mems.append(memory(bench, args, payload))
            result["memory"] = mems
            columns = [
                "payload",
                "tasks",
                "avg image MB",
                "upstream peak concurrency",
                "idle RSS MB",
                "peak RSS MB (sampled)",
                "VmHWM MB",
                "target < 1.5 GB",
            ]
            rows = [
                [
                    m["payload"] + (" (simulator PNG)" if m["payload"] == "sim" else " (~22 MB noisy PNG)"),
                    m["tasks"],
                    m["avg_image_bytes"] / 1e6,
                    m["sim_peak_concurrency"],
                    m["idle_rss"] / MB,
                    m["peak_rss_sampled"] / MB,
                    (m["vm_hwm"] or 0) / MB,
                    "met" if max(m["peak_rss_sampled"], m["vm_hwm"] or 0) < 1.5 * 1024**3 else "MISSED",
                ]
                for m in mems
            ]
            text = print_table(
                f"memory: one nanobatch worker, concurrency {args.mem_concurrency}, "
                "gemini-3-pro-image 4K 16:9 (5504x3072)",
                columns,
                rows,
            )
            tables.append(
                {"columns": columns, "rows": rows, "markdown": markdown_table(columns, rows), "text": text}
            )
    result["tables"] = tables
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=16, help="threads for the throughput part (16)")
    parser.add_argument("--noop-tasks", type=int, default=20_000, help="no-op messages queued (20,000)")
    parser.add_argument("--nb-tasks", type=int, default=3_000, help="nanobatch tasks queued (3,000)")
    parser.add_argument(
        "--nb-workers",
        type=int,
        default=1,
        help="nanobatch worker processes (1; >1 is a what-if: does throughput scale?)",
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds excluded after ready (3)")
    parser.add_argument("--window", type=float, default=30.0, help="longest measured window, s (30)")
    parser.add_argument("--mem-concurrency", type=int, default=50, help="threads for the memory part (50)")
    parser.add_argument("--mem-tasks", type=int, default=300, help="4K tasks with simulator PNGs (300)")
    parser.add_argument("--photo-tasks", type=int, default=150, help="4K tasks with ~22 MB PNGs (150)")
    parser.add_argument("--mem-time-scale", type=float, default=0.05, help="latency x for memory (0.05)")
    parser.add_argument("--mem-timeout", type=float, default=300.0, help="seconds per memory run (300)")
    parser.add_argument(
        "--py-spy",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="profile the nanobatch worker with py-spy for SECONDS during the window",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the memory-run workers (e.g. MALLOC_ARENA_MAX=2)",
    )
    parser.add_argument(
        "--what-if",
        action="store_true",
        help="also measure bench/whatif_app.py (budget bookkeeping skipped: the proposal)",
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--payloads", default="sim,photo", help="memory payloads to run (sim,photo)")
    parser.add_argument("--name", default="overhead", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, images)")
    args = parser.parse_args()
    write_results(args.name, run(args))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: workers stopped, databases dropped, keys deleted[/yellow]")
        raise SystemExit(130) from None
