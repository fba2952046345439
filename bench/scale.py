"""Scale (issue 13): a 1,000,000-task backlog through the dispatch window vs publish-everything.

    python -m bench.scale                   # 1,000,000 rows (the lead's run; ~15-25 min)
    python -m bench.scale --rows 50000      # the quick run

Two designs, the same run, each on its own private PostgreSQL database and Redis prefix, against a
zero-latency simulator:

- ``window`` (shipped): submit writes rows and fills one window; workers refill it as tasks end
  (docs/architecture.md, "Dispatch");
- ``publish_all`` (the previous design, ``NANOBATCH_DISPATCH_PUBLISH_ALL=1``): submit publishes one
  message per row.

For each: Redis memory of the run's keys after submit and during the run (``MEMORY USAGE`` of every
key under the prefix, so other users of the same Redis do not count), the submitting process's peak
RSS, ``status`` latency in-process at that row count (``models.queries.batch_summaries``, what
``nanobatch status BATCH`` runs), refill time (``tasks.dispatch.fill`` called from this process
during the run, competing with the workers' own refills), completions/s over ``--run-seconds`` with
``--workers`` x ``--concurrency`` threads, and an urgent ``--urgent``-task batch (``--priority 10``)
submitted ``--urgent-after`` seconds into the run: seconds to its first and last completion.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import threading
import time
from typing import Any

from bench.harness import (
    Bench,
    console,
    finished_times,
    nanobatch_env,
    nanobatch_runtime,
    phase,
    print_table,
    rate_in_window,
    write_products_csv,
    write_results,
)

MODEL = "gemini-2.5-flash-image"  # as the other benchmarks (retired, still served: harness.submit_csv)


def namespace_bytes(redis: Any, prefix: str) -> int:
    """Bytes Redis spends on the keys of this run (``MEMORY USAGE``, every element counted)."""
    total = 0
    for key in redis.scan_iter(match=prefix + "*", count=1000):
        total += int(redis.memory_usage(key, samples=0) or 0)
    return total


def submit_rows(runtime: Any, csv_path: Any, name: str, *, priority: int | None = None) -> tuple[Any, float]:
    from nanobatch.tasks.intake import IntakeOptions, read_file
    from nanobatch.tasks.producer import BatchOptions, submit

    options = IntakeOptions(model=MODEL, allow_retired_model=True)
    started = time.perf_counter()
    intake = read_file(csv_path, runtime.catalog, options)
    report = submit(
        runtime.db,
        runtime.dispatcher,
        intake,
        BatchOptions(name=name, priority=priority),
        intake_options=options,
    )
    return report, time.perf_counter() - started


def status_latency(runtime: Any, name: str, repeats: int = 5) -> float:
    from nanobatch.models.queries import batch_summaries

    took = []
    for _ in range(repeats):
        started = time.perf_counter()
        with runtime.db.session() as session:
            batch_summaries(session, name)
        took.append(time.perf_counter() - started)
    return statistics.median(took)


def batch_finished(engine: Any, name: str) -> list[float]:
    from sqlalchemy import text

    from bench.harness import _epoch

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.finished_at FROM generation_tasks t JOIN batches b ON b.id = t.batch_id "
                "WHERE b.name = :n AND t.status = 'completed'"
            ),
            {"n": name},
        )
        return sorted(_epoch(r[0]) for r in rows)


def scenario(
    bench: Bench, args: argparse.Namespace, design: str, csv_path: Any, urgent_csv: Any
) -> dict[str, Any]:
    from nanobatch.tasks.dispatch import fill

    publish_all = design == "publish_all"
    sim = bench.simulator(latency=(0.0, 0.0), seed=1)
    db_url = bench.database()
    ns = bench.namespace(design)
    env = nanobatch_env(
        db_url,
        ns,
        sim.url,
        bench.tmp / f"images-{design}",
        dispatch_publish_all="1" if publish_all else "0",
        concurrency=args.concurrency,
        sweep_interval=5,
    )
    runtime = nanobatch_runtime(bench, env)
    redis = bench.redis()
    out: dict[str, Any] = {"design": design}

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with phase(f"{design}: submit {args.rows:,} rows"):
        report, seconds = submit_rows(runtime, csv_path, "backlog")
    out["submit_s"] = seconds
    out["submit_rows_per_s"] = report.new / seconds
    out["submit_dispatched"] = report.dispatched
    out["submit_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["submit_peak_rss_mb_before"] = rss_before
    out["redis_mb_after_submit"] = namespace_bytes(redis, ns.prefix) / 1e6
    out["status_ms"] = status_latency(runtime, "backlog") * 1000

    workers = [
        bench.start_worker(
            app="nanobatch.tasks",
            queues=[ns.queue, ns.control_queue],
            concurrency=args.concurrency,
            env=env,
            label=f"{design}-",
        )
        for _ in range(args.workers)
    ]
    bench.wait_ready(workers, timeout=120)
    started = time.time()
    stop = threading.Event()
    samples: dict[str, list[float]] = {"redis_mb": [], "fill_s": []}

    def sample() -> None:
        while not stop.wait(1.0):
            samples["redis_mb"].append(namespace_bytes(redis, ns.prefix) / 1e6)
            t0 = time.perf_counter()
            fill(runtime)
            samples["fill_s"].append(time.perf_counter() - t0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    urgent_at = None
    with phase(f"{design}: run {args.run_seconds}s ({args.workers} x {args.concurrency} threads)"):
        time.sleep(args.urgent_after)  # a bench, not a test: the run is a fixed span of wall time
        urgent_at = time.time()
        submit_rows(runtime, urgent_csv, "urgent", priority=10)
        time.sleep(max(0.0, args.run_seconds - (time.time() - started)))
    stop.set()
    sampler.join()
    ended = time.time()
    bench.stop_workers(workers)

    engine = runtime.db.engine
    done = finished_times(engine)
    warm = started + min(10.0, args.run_seconds / 4)
    out["completions_per_s"] = rate_in_window(done, warm, ended) / 60.0
    out["completed"] = len(done)
    out["redis_mb_run_max"] = max(samples["redis_mb"], default=0.0)
    out["fill_ms_median"] = statistics.median(samples["fill_s"]) * 1000 if samples["fill_s"] else None
    out["fill_ms_max"] = max(samples["fill_s"]) * 1000 if samples["fill_s"] else None
    urgent = batch_finished(engine, "urgent")
    out["urgent_first_s"] = urgent[0] - urgent_at if urgent else None
    out["urgent_last_s"] = urgent[-1] - urgent_at if len(urgent) >= args.urgent else None
    out["urgent_completed"] = len(urgent)
    out["status_ms_after_run"] = status_latency(runtime, "backlog") * 1000
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    with Bench("scale", keep=args.keep) as bench:
        with phase(f"writing {args.rows:,} + {args.urgent} rows of CSV"):
            csv_path = write_products_csv(bench.tmp / "backlog.csv", args.rows)
            urgent_csv = write_products_csv(bench.tmp / "urgent.csv", args.urgent, seed=11)
        results = [scenario(bench, args, design, csv_path, urgent_csv) for design in args.designs.split(",")]
    return {"params": vars(args), "results": results}


def show(payload: dict[str, Any]) -> None:
    rows = []
    labels = [
        ("submit rows/s", "submit_rows_per_s", 0),
        ("submit peak RSS MB", "submit_peak_rss_mb", 0),
        ("messages sent at submit", "submit_dispatched", 0),
        ("Redis MB after submit", "redis_mb_after_submit", 2),
        ("Redis MB during run (max)", "redis_mb_run_max", 2),
        ("status ms (backlog)", "status_ms", 1),
        ("status ms after run", "status_ms_after_run", 1),
        ("refill ms (median)", "fill_ms_median", 1),
        ("refill ms (max)", "fill_ms_max", 1),
        ("completions/s", "completions_per_s", 1),
        ("urgent first completion s", "urgent_first_s", 2),
        ("urgent last completion s", "urgent_last_s", 2),
        ("urgent completed", "urgent_completed", 0),
    ]
    results = payload["results"]
    for label, key, digits in labels:
        rows.append([label, *[_fmt(r.get(key), digits) for r in results]])
    print_table(f"scale: {payload['params']['rows']:,} rows", ["", *[r["design"] for r in results]], rows)


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--urgent", type=int, default=50)
    parser.add_argument("--urgent-after", type=float, default=15.0, help="seconds into the run")
    parser.add_argument("--run-seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--designs", default="window,publish_all")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--name", default="scale")
    args = parser.parse_args()
    payload = run(args)
    show(payload)
    path = write_results(args.name, payload)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
