"""The recovery sweep in every worker process: a dedicated thread, never a task of the pool.

So recovery needs no beat, is never stuck behind a backlog of generate tasks, and survives the death
of any one worker: each worker process tries every ``interval`` seconds, and the sweep's Redis turn
and lock let one of them do it at a time (``tasks.sweep.sweep``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError

from nanobatch.tasks.runtime import Runtime
from nanobatch.tasks.sweep import sweep

log = logging.getLogger("nanobatch.sweeper")


def start_sweeper_thread(
    runtime_factory: Callable[[], Runtime], interval: float, stop: threading.Event
) -> threading.Thread:
    """Sweep now, then every ``interval`` seconds until ``stop`` is set; returns the started thread."""

    def run() -> None:
        while not stop.is_set():
            try:
                sweep(runtime_factory(), turn=interval / 2)
            except (RedisError, OSError, OperationalError, InterfaceError) as exc:  # a service is down
                log.warning("sweep failed (%s: %s); retrying in %gs", type(exc).__name__, exc, interval)
            except Exception:
                log.exception("sweep failed; retrying in %gs", interval)
            stop.wait(interval)

    thread = threading.Thread(target=run, name="nanobatch-sweeper", daemon=True)
    thread.start()
    return thread
