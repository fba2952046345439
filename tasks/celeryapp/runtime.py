"""Building this process's :class:`~nanobatch.tasks.runtime.Runtime`: the composition root.

Here the Celery app, the publisher and the Celery-free resources are put together, once per process
(``get_runtime``), or explicitly for the CLI, the Python API, the embedded worker and tests.
"""

from __future__ import annotations

import functools
import threading

from celery import Celery

from nanobatch.models.catalog import load_catalog
from nanobatch.models.db import Database
from nanobatch.tasks.celeryapp import app
from nanobatch.tasks.celeryapp.app import configure_app
from nanobatch.tasks.celeryapp.publisher import Dispatcher
from nanobatch.tasks.dispatch import fill
from nanobatch.tasks.runtime import Runtime, provider_config, redis_for
from nanobatch.tasks.settings import Settings
from nanobatch.tasks.telemetry import Telemetry
from nanobatch.workers.limiter import RateLimiter
from nanobatch.workers.providers.body_gate import BodyGate
from nanobatch.workers.providers.factory import make_http_client, make_provider
from nanobatch.workers.providers.redacted import redacted
from nanobatch.workers.retry import RetryPolicy


def build_runtime(settings: Settings, app: Celery) -> Runtime:
    redis = redis_for(settings)
    limiter = RateLimiter(redis, prefix=settings.limiter_prefix, adaptation=settings.adaptation)
    for pool, limits in settings.limits.items():
        limiter.seed_limits(pool, limits)  # fills only what `nanobatch limits set` has not set
    http = make_http_client(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.request_timeout,
        max_connections=max(settings.concurrency * 2, 10),
        total_timeout=settings.request_timeout,
        max_response_bytes=settings.max_response_bytes,
    )
    gate = BodyGate(settings.decode_slots)
    dispatcher = Dispatcher(app, redis, prefix=settings.limiter_prefix, queue=settings.queue)
    dispatcher.publish_all = settings.dispatch_publish_all
    runtime = Runtime(
        settings=settings,
        app=app,
        catalog=load_catalog(settings.catalog_file),
        db=Database(
            settings.database_url,
            pool_size=min(settings.concurrency + 2, 40),
            idle_transaction_limit=settings.db_idle_transaction_limit or None,
        ),
        redis=redis,
        limiter=limiter,
        http=http,
        provider=redacted(make_provider(provider_config(settings), http, gate), settings.api_key_value),
        gate=gate,
        dispatcher=dispatcher,
        telemetry=Telemetry(redis, prefix=settings.limiter_prefix),
        policy=RetryPolicy(
            base=settings.backoff_base, cap=settings.backoff_cap, max_attempts=settings.max_attempts
        ),
    )
    dispatcher.filler = functools.partial(fill, runtime)
    return runtime


_current: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    """This process's runtime, built on first use from the environment's settings."""
    global _current
    with _lock:
        if _current is None:
            _current = build_runtime(Settings(), app)
        return _current


def installed_runtime() -> Runtime | None:
    """This process's runtime if it was built or installed already (never builds one)."""
    with _lock:
        return _current


def install_runtime(runtime: Runtime | None) -> None:
    """Replace this process's runtime (embedded mode, tests, after a fork); ``None`` forgets it.

    The previous runtime is not closed: whoever built it owns it (after a fork, closing the parent's
    pooled sockets from the child would be wrong).
    """
    global _current
    with _lock:
        _current = runtime


def connect(settings: Settings, *, migrate: bool = True) -> Runtime:
    """A runtime on ``settings`` for a client (the CLI, the Python API): the process's Celery app is
    pointed at the same broker, and (``migrate``) the database schema is brought up to date."""
    configure_app(app, settings)
    runtime = build_runtime(settings, app)
    if migrate:
        runtime.db.upgrade()
    return runtime
