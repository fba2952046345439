"""Batch API lane memory (issue 16): peak RSS of building and ingesting one upstream job of N tasks.

    python -m bench.lanes_memory                    # N = 2,000 and 20,000
    python -m bench.lanes_memory --tasks 1000,100000

Each size gets a fresh database and Redis prefix; N batch-lane rows are inserted, then this process
(no worker) runs the lane's pass: build (claim N rows, build each request, spool the JSONL, resumable
upload), then, once the simulator has answered the job, poll (stream the responses file line by line
and finish every task: check, stage, complete, publish). The simulator runs in a child process
(``nanobatch simulator``, thumbnails), so its own memory is not counted. Peak RSS is read from
``/proc/self/status`` (VmHWM) after resetting it (``/proc/self/clear_refs``) before each phase.
Flat memory means the peaks do not grow with N.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from typing import Any

from bench.harness import (
    Bench,
    markdown_table,
    nanobatch_env,
    nanobatch_runtime,
    phase,
    print_table,
    wait_until,
    write_products_csv,
    write_results,
)

POOL = "gemini-2.5-flash-image"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_simulator(bench: Bench, turnaround: float) -> str:
    port = free_port()
    cmd = [sys.executable, "-m", "nanobatch.cli", "simulator", "--port", str(port), "--latency", "0-0"]
    cmd += ["--thumbnails", "--batch-turnaround", str(turnaround)]
    log = (bench.tmp / f"sim-{port}.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    bench.on_close(f"simulator pid {proc.pid}", lambda: (proc.terminate(), proc.wait(timeout=20)))
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _up(port), timeout=60, what="the simulator")
    return url


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def run_size(bench: Bench, tasks: int, turnaround: float) -> dict[str, Any]:
    from sqlalchemy import text

    from nanobatch.tasks import batch_lane
    from nanobatch.tasks.intake import IntakeOptions, read_file
    from nanobatch.tasks.producer import BatchOptions, submit

    sim_url = start_simulator(bench, turnaround)
    ns = bench.namespace(str(tasks))
    env = nanobatch_env(
        bench.database(),
        ns,
        sim_url,
        bench.tmp / f"images-{tasks}",
        batch_job_max_requests=tasks,
        batch_poll_interval=1,
    )
    rt = nanobatch_runtime(bench, env)
    options = IntakeOptions(model=POOL, allow_retired_model=True)
    intake = read_file(write_products_csv(bench.tmp / f"m-{tasks}.csv", tasks), rt.catalog, options)
    submit(rt.db, None, intake, BatchOptions(name=f"mem-{tasks}", lane="batch"), intake_options=options)
    result: dict[str, Any] = {"tasks": tasks, "rss_before_kib": rss_kib()}
    reset_peak()
    started = time.monotonic()
    report = batch_lane.run(rt)
    result |= {
        "build_s": time.monotonic() - started,
        "build_peak_kib": peak_kib(),
        "jobs": report.jobs_created,
    }

    def done() -> bool:
        with rt.db.engine.connect() as conn:
            left = conn.execute(
                text("SELECT count(*) FROM generation_tasks WHERE status IN ('pending', 'processing')")
            ).scalar_one()
        if left:
            time.sleep(1)
            batch_lane.run(rt)
        return left == 0

    reset_peak()
    started = time.monotonic()
    wait_until(done, timeout=3600, interval=0.5, what=f"{tasks} tasks ingested")
    result |= {"ingest_s": time.monotonic() - started, "ingest_peak_kib": peak_kib()}
    with rt.db.engine.connect() as conn:
        result["completed"] = conn.execute(
            text("SELECT count(*) FROM generation_tasks WHERE status = 'completed'")
        ).scalar_one()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default="2000,20000")
    parser.add_argument("--turnaround", type=float, default=5.0, help="simulator batch turnaround (s)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    results = []
    with Bench("lanes-memory", keep=args.keep) as bench:
        for size in (int(n) for n in args.tasks.split(",")):
            with phase(f"{size:,} tasks in one Batch API job"):
                results.append(run_size(bench, size, args.turnaround))
    columns = [
        "tasks",
        "completed",
        "RSS before MiB",
        "build peak MiB",
        "build s",
        "ingest peak MiB",
        "ingest s",
    ]
    rows = [
        [
            r["tasks"],
            r["completed"],
            r["rss_before_kib"] / 1024,
            r["build_peak_kib"] / 1024,
            r["build_s"],
            r["ingest_peak_kib"] / 1024,
            r["ingest_s"],
        ]
        for r in results
    ]
    print_table("Batch API lane: one job of N tasks, peak RSS of this process", columns, rows)
    print(markdown_table(columns, rows))
    write_results("lanes-memory", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
