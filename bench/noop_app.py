"""A Celery app with nanobatch's exact Celery configuration and one task that does nothing.

bench/overhead.py runs it as the "raw Celery no-op" baseline: same broker, same ``configure_app``
settings (late ack, prefetch 1, task events, json, results ignored), same threads pool and
concurrency, same message shape (one task-id argument) — so the difference to nanobatch's
``generate`` is the work of serving a task, not Celery configuration.

Environment: the ``NANOBATCH_*`` settings (``REDIS_URL``, ``QUEUE``, ``CONCURRENCY``).
"""

from __future__ import annotations

from celery import Celery

from nanobatch.tasks.celeryapp.app import configure_app
from nanobatch.tasks.settings import Settings

NOOP_TASK = "bench.noop"

app = configure_app(Celery("bench-noop"), Settings())


@app.task(name=NOOP_TASK, ignore_result=True)
def noop(task_id: str) -> None:
    return None
