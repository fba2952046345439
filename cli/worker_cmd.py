"""``nanobatch worker`` / ``nanobatch beat`` / ``nanobatch sweep``: running the engine.

``nanobatch worker`` keeps its Celery worker running: when the worker stops on an unrecoverable error
(kombu/Celery can give up on a broker restart, e.g. ``AttributeError: 'NoneType' object has no
attribute 'hostname'`` while restoring unacknowledged messages, or after the broker stayed down longer
than Celery's connection retries), it is started again in the same process after a backoff, and the
restart is logged. Only a shutdown someone asked for (SIGTERM, Ctrl-C) ends the command.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer
from celery.signals import worker_init, worker_shutting_down
from celery.worker import state as worker_state

from nanobatch.cli.context import console, fail, image_store, load_settings, runtime_for, setup_logging
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
    image_store(settings, check=True)  # a bad store is one line and exit 2, not a failure per task
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
    code = keep_running(CeleryWorkerRun(argv), log=logging.getLogger("nanobatch.worker"))
    if code:
        raise typer.Exit(code)


#: Pauses before restarting a worker that stopped on an unrecoverable error, one per failure in a row.
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0)
#: A worker that ran this long before failing starts the backoff over.
STABLE_AFTER = 300.0


@dataclass(frozen=True)
class WorkerRun:
    """How one run of the Celery worker ended."""

    exitcode: int
    shutdown_requested: bool  # SIGTERM/SIGINT/SIGQUIT: stop for good
    duration: float


def restart_delay(failures_in_a_row: int) -> float:
    return RESTART_DELAYS[min(max(failures_in_a_row, 1), len(RESTART_DELAYS)) - 1]


class WorkerRunner:
    """Runs the worker once (:meth:`run`) and waits between runs (:meth:`pause`)."""

    def run(self) -> WorkerRun:
        raise NotImplementedError

    def pause(self, seconds: float) -> bool:
        """Wait before the next run; ``True`` when a shutdown was requested meanwhile."""
        raise NotImplementedError


def keep_running(runner: WorkerRunner, *, log: logging.Logger) -> int:
    """Run the worker until it stops because someone asked it to; restart it (with backoff) when it
    stopped on an error. Returns the exit code of the last run."""
    failures = 0
    while True:
        run = runner.run()
        if run.shutdown_requested or run.exitcode == 0:
            return run.exitcode
        failures = 1 if run.duration >= STABLE_AFTER else failures + 1
        delay = restart_delay(failures)
        log.error(
            "the Celery worker stopped on an unrecoverable error (exit code %d) after %.0fs; "
            "restarting it in %gs (failure %d in a row)",
            run.exitcode,
            run.duration,
            delay,
            failures,
        )
        if runner.pause(delay):
            return 0  # asked to stop while waiting: a clean stop
        log.warning("restarting the Celery worker (failure %d in a row)", failures)


class CeleryWorkerRun(WorkerRunner):
    """``celery worker`` in this process (``app.worker_main``), its exit code read from the worker."""

    def __init__(self, argv: list[str], app: Any = celery_app, clock: Callable[[], float] = time.monotonic):
        self.argv = argv
        self.app = app
        self.clock = clock
        self.requested = threading.Event()
        self._worker: Any = None
        # Connected for the command's lifetime: Celery's signal handlers stay installed between runs.
        worker_init.connect(self._on_init, weak=False)
        worker_shutting_down.connect(self._on_shutting_down, weak=False)

    def _on_init(self, sender: Any = None, **_: Any) -> None:
        self._worker = sender

    def _on_shutting_down(self, **_: Any) -> None:
        self.requested.set()

    def run(self) -> WorkerRun:
        self._worker = None
        worker_state.should_stop = None  # flags a failed run may have left behind
        worker_state.should_terminate = None
        started = self.clock()
        self.app.worker_main(self.argv)
        worker = self._worker
        exitcode = getattr(worker, "exitcode", None) if worker is not None else 1
        return WorkerRun(int(exitcode or 0), self.requested.is_set(), self.clock() - started)

    def pause(self, seconds: float) -> bool:
        return self.requested.wait(seconds)


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
        f"batches outside their window {report.held_by_window}, "
        f"recorded results published {report.published}"
    )


def _refuse_paid_upstream_without_key(settings: Settings) -> None:
    if settings.provider_base_url == GOOGLE_BASE_URL and not settings.api_key_value:
        raise fail(
            "no API key: set GEMINI_API_KEY (or NANOBATCH_API_KEY), or point NANOBATCH_PROVIDER_BASE_URL at "
            "a simulator (`nanobatch simulator`)",
            2,
        )
