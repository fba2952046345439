"""Image store throughput and memory (issue 14): 4K images to an S3 server vs the local backend.

    python -m bench.storage                      # both backends, side by side (~3-6 minutes)
    python -m bench.storage --tasks 40 --backends s3

One real nanobatch worker process (``celery worker -P threads``, concurrency 50) per backend runs the
whole task path — claim, call, decode check, stage under the claim's key, record, publish, clear the
staging — for ``--tasks`` 4K images (``gemini-3-pro-image``, 4K, 16:9 = 5504x3072). The simulator
answers every call with one cached, noisy 5504x3072 PNG of ~22 MB (the ``photo`` payload of
bench/overhead.py), latency 8-20 s x ``--time-scale`` so that many calls are in flight at once.
Backends:
  * ``local``: ``NANOBATCH_OUTPUT_DIR`` a folder (temp file, fsync, rename; publish = hard link);
  * ``s3``: ``NANOBATCH_OUTPUT_DIR=s3://bench/images`` on moto's S3 server (``python -m moto.server``,
    its own process on a free loopback port): multipart upload of the staged image, server-side copy
    to publish, delete of the staging keys. Moto is a Python server on the same 2 cores: it measures
    our client path and its memory, not what S3 or MinIO would sustain.
Reported per backend: images/s of the worker (completed / time from the first claim to the last
finish), the mean time of one staging write (image + facts, as the workers timed it for the
``nanobatch_storage_write_seconds`` metric), peak RSS of the worker's process tree (sampled every
0.1 s) and its VmHWM. Bound: < 1.5 GB.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

from bench.harness import (
    Bench,
    console,
    markdown_table,
    nanobatch_env,
    nanobatch_runtime,
    peak_rss_tree,
    phase,
    print_table,
    status_counts,
    submit_csv,
    vm_hwm,
    write_products_csv,
    write_results,
)
from bench.overhead import photo_payload

MB = 1024 * 1024
SIZE = (5504, 3072)
BOUND = 1.5 * 1024**3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(bench: Bench) -> dict[str, str]:
    """moto's S3 server in its own process on loopback, with a ``bench`` bucket; the AWS variables."""
    port = free_port()
    log = (bench.tmp / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    bench.on_close("moto", lambda: (proc.terminate(), proc.wait(timeout=10)))
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(
                urllib.request.Request(f"{endpoint}/bench", method="PUT"), timeout=5
            ).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


def run_backend(bench: Bench, args: argparse.Namespace, backend: str, data: bytes) -> dict[str, Any]:
    from nanobatch.simulator.images import RenderedImage

    sim = bench.simulator(latency=(8.0, 20.0), time_scale=args.time_scale, thumbnails=False, seed=4)
    original = sim.app.renderer.render

    def render(prompt: str, width: int, height: int, **kw: Any) -> Any:
        if (width, height) == SIZE and not kw.get("thumbnail") and kw.get("fmt", "png") == "png":
            return RenderedImage(data, "image/png", width, height)
        return original(prompt, width, height, **kw)

    sim.app.renderer.render = render  # this process's simulator only
    cloud: dict[str, str] = {}
    output: Any = bench.tmp / f"images-{backend}"
    if backend == "s3":
        cloud = start_moto(bench)
        output = "s3://bench/images"
    ns = bench.namespace(backend)
    env = nanobatch_env(bench.database(), ns, sim.url, output, concurrency=args.concurrency)
    env["NANOBATCH_OUTPUT_DIR"] = str(output)
    saved = {k: os.environ.get(k) for k in cloud}
    os.environ.update(cloud)  # the producer-side runtime in this process opens the same store
    try:
        runtime = nanobatch_runtime(bench, env)
        csv_path = write_products_csv(
            bench.tmp / f"{backend}.csv",
            args.tasks,
            model="gemini-3-pro-image",
            image_size="4K",
            aspect_ratio="16:9",
        )
        submit_csv(
            runtime, csv_path, backend, model="gemini-3-pro-image", image_size="4K", aspect_ratio="16:9"
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    worker = bench.start_worker(
        app="nanobatch.tasks",
        queues=[ns.queue, ns.control_queue],
        concurrency=args.concurrency,
        env={**env, **cloud},
        label=f"store{backend}",
    )
    bench.wait_ready([worker])
    idle = peak = peak_rss_tree(worker.pid)
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        peak = max(peak, peak_rss_tree(worker.pid))
        counts = status_counts(runtime.db.engine)
        if counts.get("completed", 0) + counts.get("failed", 0) >= args.tasks:
            break
        time.sleep(0.1)
    hwm = vm_hwm(worker.pid)
    bench.stop_workers([worker])
    counts = status_counts(runtime.db.engine)
    with runtime.db.engine.connect() as conn:
        from sqlalchemy import text

        first, last, avg_bytes = conn.execute(
            text(
                "SELECT extract(epoch from min(started_at)), extract(epoch from max(finished_at)), "
                "avg(bytes) FROM generation_tasks WHERE status='completed'"
            )
        ).one()
        uris = [r[0] for r in conn.execute(text("SELECT result_uri FROM generation_tasks LIMIT 1"))]
    if backend == "s3" and not str(uris[0] if uris else "").startswith("s3://"):
        raise SystemExit(f"the worker did not write to the bucket ({uris}): wrong nanobatch imported?")
    span = float(last - first) if first is not None and last is not None else 0.0
    writes = runtime.telemetry.snapshot().storage_latency.get("stage")  # the workers' own timing
    completed = counts.get("completed", 0)
    result = {
        "backend": backend,
        "tasks": args.tasks,
        "concurrency": args.concurrency,
        "completed": completed,
        "status_counts": counts,
        "span_s": span,
        "images_per_s": completed / span if span else 0.0,
        "idle_rss": idle,
        "peak_rss_sampled": peak,
        "vm_hwm": hwm,
        "avg_image_bytes": float(avg_bytes or 0),
        "example_uri": uris[0] if uris else None,
        "stage_writes": writes.count if writes else 0,
        "stage_write_mean_s": writes.sum / writes.count if writes and writes.count else None,
        "sim_peak_concurrency": sim.stats().get("peak_concurrency"),
    }
    console.print(
        f"  {backend}: {completed} completed in {span:.1f}s = {result['images_per_s']:.2f} images/s, "
        f"peak RSS {peak / MB:,.0f} MB (VmHWM {(hwm or 0) / MB:,.0f} MB), {counts}"
    )
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"params": vars(args).copy(), "runs": []}
    with Bench("storage", keep=args.keep) as bench:
        with phase("building the ~22 MB photo-like 5504x3072 PNG"):
            data = photo_payload(*SIZE)
        result["payload_bytes"] = len(data)
        for backend in args.backends.split(","):
            with phase(f"{backend}: {args.tasks} 4K images, one worker, concurrency {args.concurrency}"):
                result["runs"].append(run_backend(bench, args, backend, data))
    columns = [
        "backend",
        "images",
        "images/s (1 worker)",
        "staging write s (mean)",
        "peak RSS MB",
        "VmHWM MB",
        "< 1.5 GB",
    ]
    rows = [
        [
            r["backend"],
            f"{r['completed']}/{r['tasks']}",
            r["images_per_s"],
            r["stage_write_mean_s"],
            r["peak_rss_sampled"] / MB,
            (r["vm_hwm"] or 0) / MB,
            "met" if max(r["peak_rss_sampled"], r["vm_hwm"] or 0) < BOUND else "MISSED",
        ]
        for r in result["runs"]
    ]
    title = (
        f"storage: 4K PNGs of {len(data) / 1e6:.1f} MB, one worker, concurrency {args.concurrency}, "
        f"latency 8-20 s x {args.time_scale}"
    )
    print_table(title, columns, rows)
    result["markdown"] = markdown_table(columns, rows)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100, help="4K images per backend (100)")
    parser.add_argument("--concurrency", type=int, default=50, help="worker threads (50)")
    parser.add_argument("--time-scale", type=float, default=0.05, help="upstream latency x (0.05)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per backend (600)")
    parser.add_argument("--backends", default="local,s3", help="local,s3 (both, side by side)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument("--name", default="storage", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    result = run(args)
    path = write_results(args.name, result)
    console.print(f"results: {path}")


if __name__ == "__main__":
    main()
