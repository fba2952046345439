"""``nanobatch worker`` / ``nanobatch beat`` / ``nanobatch sweep``: running the engine."""

from __future__ import annotations

import threading

import typer

from nanobatch.cli.context import console, fail, load_settings, runtime_for, setup_logging
from nanobatch.tasks.celeryapp import app as celery_app
from nanobatch.tasks.celeryapp.app import control_queue
from nanobatch.tasks.celeryapp.embedded import EmbeddedWorker
from nanobatch.tasks.settings import GOOGLE_BASE_URL, Settings
from nanobatch.tasks.sweep import sweep


def worker_command(
    concurrency: int | None = typer.Option(
        None, "--concurrency", "-c", help="Threads (default NANOBATCH_CONCURRENCY)"
    ),
    beat: bool = typer.Option(
        False,
        "--beat",
        "-B",
        help="Also run the beat scheduler (nightly inbox only; recovery needs no beat). One per cluster",
    ),
    loglevel: str = typer.Option("info", "--loglevel", "-l"),
    hostname: str | None = typer.Option(None, "--hostname", "-n", help="Celery node name"),
) -> None:
    """Start a worker (threads pool). Without NANOBATCH_REDIS_URL it runs embedded, in this process."""
    settings = load_settings(**({"concurrency": concurrency} if concurrency else {}))
    _refuse_paid_upstream_without_key(settings)
    setup_logging(loglevel)
    runtime = runtime_for(settings)
    runtime.db.upgrade()
    if settings.embedded:
        console.print(
            "embedded worker (in-process broker and limiter); Ctrl-C stops. Set NANOBATCH_REDIS_URL "
            "to share work and limits between workers."
        )
        with EmbeddedWorker(runtime, sweep_interval=min(settings.sweep_interval, 2.0)):
            threading.Event().wait()
        return
    argv = [
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(settings.concurrency),
        "--queues",
        f"{settings.queue},{control_queue(settings)}",
        "--events",
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv += ["--hostname", hostname]
    if beat:
        argv.append("--beat")
    celery_app.worker_main(argv)


def beat_command(loglevel: str = typer.Option("info", "--loglevel", "-l")) -> None:
    """Run the beat scheduler: the nightly inbox. Recovery needs no beat (every worker sweeps)."""
    settings = load_settings()
    if settings.embedded:
        raise fail("beat needs NANOBATCH_REDIS_URL (the embedded worker sweeps by itself)", 2)
    runtime_for(settings).close()
    celery_app.start(["beat", "--loglevel", loglevel])


def sweep_command() -> None:
    """Run one sweep now: reclaim tasks of dead workers, re-dispatch pending rows without a live message."""
    settings = load_settings()
    runtime = runtime_for(settings)
    try:
        report = sweep(runtime)
    finally:
        runtime.close()
    if not report.ran:
        console.print("another process is sweeping right now; nothing done")
        return
    console.print(
        f"reclaimed {report.reclaimed} ({report.reclaimed_silent} from workers without a heartbeat), "
        f"dispatched {report.dispatched}, already queued {report.skipped_live}, "
        f"batches outside their window {report.held_by_window}"
    )


def _refuse_paid_upstream_without_key(settings: Settings) -> None:
    if settings.provider_base_url == GOOGLE_BASE_URL and not settings.api_key_value:
        raise fail(
            "no API key: set GEMINI_API_KEY (or NANOBATCH_API_KEY), or point NANOBATCH_PROVIDER_BASE_URL at "
            "a simulator (`nanobatch simulator`)",
            2,
        )
