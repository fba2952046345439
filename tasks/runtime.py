"""Per-process resources a worker (or the CLI) needs: database, Redis, limiter, HTTP client, provider.

Built lazily once per process from :class:`Settings` (so a forked child never reuses its parent's
sockets: Celery's ``worker_process_init`` resets it), shared by all worker threads. With no
``NANOBATCH_REDIS_URL`` the limiter and queue bookkeeping use an in-process Redis emulator
(fakeredis with Lua), which is what the embedded demo runs on.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from celery import Celery
from redis import Redis

from nanobatch.models.catalog import Catalog, load_catalog
from nanobatch.models.db import Database
from nanobatch.tasks import app
from nanobatch.tasks.dispatch import Dispatcher
from nanobatch.tasks.settings import Settings
from nanobatch.tasks.telemetry import Telemetry
from nanobatch.workers.limiter import RateLimiter
from nanobatch.workers.providers.base import Provider, ProviderConfig
from nanobatch.workers.providers.body_gate import BodyGate
from nanobatch.workers.providers.factory import make_http_client, make_provider
from nanobatch.workers.retry import RetryPolicy

_EMBEDDED_REDIS: Redis | None = None
_EMBEDDED_LOCK = threading.Lock()


def embedded_redis() -> Redis:
    """One in-process Redis emulator per process (shared by producer and worker threads)."""
    global _EMBEDDED_REDIS
    with _EMBEDDED_LOCK:
        if _EMBEDDED_REDIS is None:
            import fakeredis

            _EMBEDDED_REDIS = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        return _EMBEDDED_REDIS


def redis_for(settings: Settings) -> Redis:
    if settings.redis_url:
        return Redis.from_url(settings.redis_url, health_check_interval=30, socket_timeout=30)
    return embedded_redis()


def provider_config(settings: Settings) -> ProviderConfig:
    return ProviderConfig(
        kind=settings.provider,
        base_url=settings.provider_base_url,
        api_version=settings.api_version,
        auth=settings.auth,
        api_key=settings.api_key_value,
    )


@dataclass
class Runtime:
    settings: Settings
    app: Celery
    catalog: Catalog
    db: Database
    redis: Redis
    limiter: RateLimiter
    http: httpx.Client
    provider: Provider
    dispatcher: Dispatcher
    policy: RetryPolicy
    telemetry: Telemetry
    worker_name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @property
    def output_dir(self) -> Path:
        return self.settings.output_dir

    def close(self) -> None:
        self.http.close()
        self.db.dispose()


def build_runtime(settings: Settings, app: Celery) -> Runtime:
    redis = redis_for(settings)
    limiter = RateLimiter(redis, prefix=settings.limiter_prefix)
    for pool, limits in settings.limits.items():
        limiter.seed_limits(pool, limits)  # fills only what `nanobatch limits set` has not set
    http = make_http_client(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.request_timeout,
        max_connections=max(settings.concurrency * 2, 10),
    )
    return Runtime(
        settings=settings,
        app=app,
        catalog=load_catalog(settings.catalog_file),
        db=Database(settings.database_url, pool_size=min(settings.concurrency + 2, 40)),
        redis=redis,
        limiter=limiter,
        http=http,
        provider=make_provider(provider_config(settings), http, BodyGate(settings.decode_slots)),
        dispatcher=Dispatcher(app, redis, prefix=settings.limiter_prefix, queue=settings.queue),
        telemetry=Telemetry(redis, prefix=settings.limiter_prefix),
        policy=RetryPolicy(
            base=settings.backoff_base, cap=settings.backoff_cap, max_attempts=settings.max_attempts
        ),
    )


_current: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    """This process's runtime, built on first use from the environment's settings."""
    global _current
    with _lock:
        if _current is None:
            _current = build_runtime(Settings(), app)
        return _current


def install_runtime(runtime: Runtime | None) -> None:
    """Replace this process's runtime (embedded mode, tests, after a fork); ``None`` forgets it.

    The previous runtime is not closed: whoever built it owns it (after a fork, closing the parent's
    pooled sockets from the child would be wrong).
    """
    global _current
    with _lock:
        _current = runtime
