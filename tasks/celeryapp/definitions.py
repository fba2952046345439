"""The Celery tasks. Each is a thin wrapper: the work lives in :mod:`tasks.serve` / :mod:`tasks.sweep`.

Task arguments are a task id only — never a prompt, a key or a path — so Flower, logs and the broker
never hold anything sensitive, and the database stays the single source of truth.

The worker signals also give every worker process its liveness: a heartbeat (from ``worker_init``,
before the first claim, until ``worker_shutdown``, after the last task ended) and a recovery sweeper
thread (``worker_ready`` to ``worker_shutdown``). See :mod:`tasks.liveness` and ``sweeper_thread``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Task
from celery.signals import (
    task_received,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from redis.exceptions import RedisError

from nanobatch.tasks.celeryapp import app
from nanobatch.tasks.celeryapp.app import GENERATE_TASK, INBOX_TASK, SWEEP_TASK
from nanobatch.tasks.celeryapp.runtime import get_runtime, install_runtime, installed_runtime
from nanobatch.tasks.celeryapp.sweeper_thread import start_sweeper_thread
from nanobatch.tasks.inbox import process_inbox
from nanobatch.tasks.liveness import Heartbeat, fast_redis
from nanobatch.tasks.runtime import embedded_redis, process_name
from nanobatch.tasks.serve import serve
from nanobatch.tasks.settings import Settings
from nanobatch.tasks.sweep import sweep
from nanobatch.workers.malloc_tuning import pin_mmap_threshold

log = logging.getLogger("nanobatch.worker")


@worker_init.connect
def _tune_memory(**_: Any) -> None:
    """Pinned before any task runs; prefork children inherit it (see ``workers.malloc_tuning``)."""
    pin_mmap_threshold(Settings().malloc_mmap_threshold)


@worker_process_init.connect
def _fresh_runtime_after_fork(**_: Any) -> None:
    """A forked child must not reuse its parent's sockets (prefork pool only; threads share one).

    It claims under its own name (its own pid), so it heartbeats under that name too.
    """
    install_runtime(None)
    LIVENESS.start_heartbeat()


def _settings_and_name() -> tuple[Settings, str]:
    """The installed runtime's (embedded worker, tests), else the environment's: building the whole
    runtime must not be what a heartbeat waits for (it would not start while Redis is down)."""
    rt = installed_runtime()
    return (rt.settings, rt.worker_name) if rt is not None else (Settings(), process_name())


class ProcessLiveness:
    """This process's heartbeat and recovery sweeper thread; starting one again replaces it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heartbeat: Heartbeat | None = None
        self._sweeper_stop: threading.Event | None = None

    def start_heartbeat(self) -> None:
        settings, name = _settings_and_name()
        heartbeat = Heartbeat(
            embedded_redis() if settings.embedded else fast_redis(settings.broker_url),
            prefix=settings.limiter_prefix,
            name=name,
            interval=settings.heartbeat_interval,
            ttl=settings.heartbeat_ttl,
        )
        with self._lock:
            previous, self._heartbeat = self._heartbeat, heartbeat
        if previous is not None:
            previous.stop(forget=previous.key != heartbeat.key)
        heartbeat.start()

    def start_sweeper(self) -> None:
        settings, _ = _settings_and_name()
        stop = threading.Event()
        with self._lock:
            previous, self._sweeper_stop = self._sweeper_stop, stop
        if previous is not None:
            previous.set()
        start_sweeper_thread(get_runtime, settings.sweep_interval, stop, settings.dispatch_interval)

    def stop(self) -> None:
        """Stop sweeping and beating; the heartbeat key is deleted (no task is held any more)."""
        with self._lock:
            heartbeat, self._heartbeat = self._heartbeat, None
            stop, self._sweeper_stop = self._sweeper_stop, None
        if stop is not None:
            stop.set()
        if heartbeat is not None:
            heartbeat.stop()


LIVENESS = ProcessLiveness()


@worker_init.connect
def _start_heartbeat(**_: Any) -> None:
    """Before the consumer starts: no claim of this process is ever made without a heartbeat."""
    LIVENESS.start_heartbeat()


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    LIVENESS.start_sweeper()


@worker_shutdown.connect
@worker_process_shutdown.connect
def _stop_liveness(**_: Any) -> None:
    LIVENESS.stop()


@task_received.connect
def _note_received_message(request: Any, **_: Any) -> None:
    """Record that this worker now holds a message in memory: a delayed one until its ETA
    (``Dispatcher.received_delayed``; nanobatch itself no longer sends any), any other until a thread
    starts it (``Dispatcher.received``), so the sweeper republishes it at once if this worker dies
    (docs/architecture.md, "Dispatch"). Best effort: without the mark, ``redispatch_after`` still
    recovers the message."""
    if request.task_name != GENERATE_TASK or not request.args:
        return
    runtime = get_runtime()
    task_id = str(request.args[0])
    try:
        if request.eta is not None:
            runtime.dispatcher.received_delayed(task_id, request.eta.timestamp())
        else:
            runtime.dispatcher.received(task_id, runtime.worker_name)
    except (RedisError, OSError) as exc:
        log.warning("could not mark task %s as received: %s", task_id, exc)


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
