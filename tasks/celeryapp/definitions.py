"""The Celery tasks. Each is a thin wrapper: the work lives in :mod:`tasks.serve` / :mod:`tasks.sweep`.

Task arguments are a task id only — never a prompt, a key or a path — so Flower, logs and the broker
never hold anything sensitive, and the database stays the single source of truth.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.signals import task_received, worker_init, worker_process_init, worker_ready, worker_shutdown

from nanobatch.tasks.celeryapp import app
from nanobatch.tasks.celeryapp.app import GENERATE_TASK, INBOX_TASK, SWEEP_TASK
from nanobatch.tasks.celeryapp.runtime import get_runtime, install_runtime
from nanobatch.tasks.celeryapp.sweeper_thread import SweeperThread, start_sweeper_thread
from nanobatch.tasks.inbox import process_inbox
from nanobatch.tasks.serve import serve
from nanobatch.tasks.settings import Settings
from nanobatch.tasks.sweep import sweep
from nanobatch.workers.malloc_tuning import pin_mmap_threshold


@worker_init.connect
def _tune_memory(**_: Any) -> None:
    """Pinned before any task runs; prefork children inherit it (see ``workers.malloc_tuning``)."""
    pin_mmap_threshold(Settings().malloc_mmap_threshold)


_sweeper: list[SweeperThread] = []


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    """Recovery on a thread of its own, so a pool full of stuck calls cannot starve it."""
    _sweeper.append(start_sweeper_thread(get_runtime, interval=get_runtime().settings.sweep_interval))


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    while _sweeper:
        _sweeper.pop().stop()


@worker_process_init.connect
def _fresh_runtime_after_fork(**_: Any) -> None:
    """A forked child must not reuse its parent's sockets (prefork pool only; threads share one)."""
    install_runtime(None)


@task_received.connect
def _note_delayed_message(request: Any, **_: Any) -> None:
    """Record that this worker now holds a delayed message in memory (see ``tasks.dispatch``)."""
    if request.task_name == GENERATE_TASK and request.eta is not None and request.args:
        get_runtime().dispatcher.received_delayed(str(request.args[0]), request.eta.timestamp())


@app.task(name=GENERATE_TASK, bind=True, ignore_result=True)
def generate(self: Task, task_id: str) -> str:
    return serve(get_runtime(), task_id, celery_task_id=self.request.id).value


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep_task() -> dict[str, int]:
    return sweep(get_runtime()).__dict__


@app.task(name=INBOX_TASK, ignore_result=True)
def inbox_task() -> dict[str, int]:
    runtime = get_runtime()
    return process_inbox(runtime, settle_seconds=runtime.settings.inbox_settle_seconds)
