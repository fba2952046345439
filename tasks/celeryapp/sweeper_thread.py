"""The recovery sweep on a thread of its own, in every worker process.

Why not (only) a beat-scheduled Celery task: the sweep task ran in the worker's thread pool, next to
the generate tasks. When every thread was held — 16 calls stuck on a slow upstream — no sweep ran, so
expired leases were not reclaimed and lost messages not re-dispatched exactly when recovery mattered.
A dedicated daemon thread per worker process cannot be starved by the pool. Concurrent sweepers (one
per process, on every host) take turns under the Redis lock in :func:`nanobatch.tasks.sweep.sweep`, so
N workers do not sweep N times per interval.

Started from Celery's ``worker_ready`` signal and stopped on ``worker_shutdown``
(``tasks.celeryapp.definitions``); the embedded worker starts one itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from nanobatch.tasks.runtime import Runtime
from nanobatch.tasks.sweep import sweep

log = logging.getLogger("nanobatch.sweeper")


@dataclass
class SweeperThread:
    """A running sweeper: ``stop()`` ends it after the sweep in progress, if any."""

    thread: threading.Thread
    stopping: threading.Event

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()


def start_sweeper_thread(
    runtime: Callable[[], Runtime], *, interval: float, name: str = "nanobatch-sweeper"
) -> SweeperThread:
    """Sweep now and then every ``interval`` seconds on a daemon thread, until stopped.

    ``runtime`` is called for every round (the process's current runtime, e.g. ``get_runtime``), so a
    runtime replaced meanwhile is picked up. A failed round is logged; the next one retries.
    """
    stopping = threading.Event()

    def run() -> None:
        while not stopping.is_set():
            try:
                sweep(runtime())
            except (SQLAlchemyError, RedisError) as exc:  # an outage: one line a round, not a traceback
                log.warning("sweep failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, interval)
            except Exception:  # keep sweeping: the next round retries whatever failed
                log.exception("sweep failed; retrying in %.1fs", interval)
            stopping.wait(interval)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return SweeperThread(thread, stopping)
