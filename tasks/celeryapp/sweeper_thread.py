"""The recovery sweep in every worker process: a dedicated thread, never a task of the pool.

So recovery needs no beat, is never stuck behind a backlog of generate tasks, and survives the death
of any one worker: each worker process tries every ``interval`` seconds, and the sweep's Redis turn
and lock let one of them do it at a time (``tasks.sweep.sweep``). Between sweeps the same thread
fills the dispatch window every ``fill_interval`` seconds (``tasks.dispatch``): that bounds how late a
retry is published once its ``not_before`` passed when no task ends to trigger a refill.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError

from nanobatch.tasks.dispatch import fill
from nanobatch.tasks.runtime import Runtime
from nanobatch.tasks.sweep import sweep

log = logging.getLogger("nanobatch.sweeper")


def start_sweeper_thread(
    runtime_factory: Callable[[], Runtime],
    interval: float,
    stop: threading.Event,
    fill_interval: float | None = None,
) -> threading.Thread:
    """Sweep now, then every ``interval`` seconds until ``stop`` is set, and fill the dispatch window
    every ``fill_interval`` seconds in between; returns the started thread."""
    tick = min(interval, fill_interval or interval)

    def run() -> None:
        next_sweep = 0.0
        while not stop.is_set():
            sweeping = time.monotonic() >= next_sweep
            try:
                if sweeping:
                    next_sweep = time.monotonic() + interval
                    sweep(runtime_factory(), turn=interval / 2)
                else:
                    fill(runtime_factory())
            except (RedisError, OSError, OperationalError, InterfaceError) as exc:  # a service is down
                log.warning("sweep failed (%s: %s); retrying in %gs", type(exc).__name__, exc, tick)
            except Exception:
                log.exception("sweep failed; retrying in %gs", tick)
            stop.wait(tick)

    thread = threading.Thread(target=run, name="nanobatch-sweeper", daemon=True)
    thread.start()
    return thread
