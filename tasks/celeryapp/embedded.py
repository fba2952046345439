"""A Celery worker and the sweeper inside the current process: the embedded default.

See docs/architecture.md, "Embedded default".

``nanobatch demo`` (and ``nanobatch worker`` without ``NANOBATCH_REDIS_URL``) must run on a machine
with nothing but Python. So the broker is kombu's in-memory transport and the limiter runs on an
in-process Redis emulator; both live only as long as this process, which is fine because the
database (SQLite by default) holds every task: on the next start the sweeper dispatches whatever is
still pending. The worker is a real Celery ``WorkController`` with the threads pool, the same code
path as a production worker, started in a thread of its own.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from celery.contrib.testing.worker import TestWorkController
from celery.utils.nodenames import anon_nodename
from celery.worker import state as worker_state

from nanobatch.tasks.celeryapp import definitions
from nanobatch.tasks.celeryapp.app import control_queue
from nanobatch.tasks.celeryapp.runtime import install_runtime
from nanobatch.tasks.celeryapp.sweeper_thread import start_sweeper_thread
from nanobatch.tasks.runtime import Runtime

log = logging.getLogger("nanobatch.embedded")


class EmbeddedWorker:
    """``with EmbeddedWorker(runtime): …`` runs tasks and sweeps until the block ends."""

    def __init__(
        self, runtime: Runtime, *, concurrency: int | None = None, sweep_interval: float = 2.0
    ) -> None:
        self.runtime = runtime
        self.concurrency = concurrency or runtime.settings.concurrency
        self.sweep_interval = sweep_interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._worker: TestWorkController | None = None

    def __enter__(self) -> EmbeddedWorker:
        self.start()
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        self.stop()

    def start(self) -> None:
        install_runtime(self.runtime)
        app = self.runtime.app
        assert definitions.generate.name in app.tasks  # the task module is loaded
        if self.runtime.settings.embedded:
            app.conf.broker_transport_options = {"polling_interval": 0.05}
        settings = self.runtime.settings
        self._worker = TestWorkController(
            app=app,
            concurrency=self.concurrency,
            pool="threads",
            hostname=anon_nodename(hostname="embedded"),
            queues=[settings.queue, control_queue(settings)],
            loglevel="WARNING",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            ready_callback=None,
        )
        worker_thread = threading.Thread(target=self._worker.start, name="celery-worker", daemon=True)
        worker_thread.start()
        self._worker.ensure_started()
        sweeper = start_sweeper_thread(
            lambda: self.runtime, self.sweep_interval, self._stop, settings.dispatch_interval
        )
        self._threads = [worker_thread, sweeper]

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        worker_state.should_terminate = 0
        for thread in self._threads:
            thread.join(timeout)
        definitions.LIVENESS.stop()  # a terminated WorkController sends no worker_shutdown
        worker_state.should_terminate = None
        install_runtime(None)
