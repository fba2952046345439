"""Per-process resources a worker (or the CLI) needs: database, Redis, limiter, HTTP client, provider.

This module describes them; :mod:`nanobatch.tasks.celeryapp.runtime` builds them, lazily once per
process from :class:`Settings` (so a forked child never reuses its parent's sockets: Celery's
``worker_process_init`` resets it), shared by all worker threads. With no
``NANOBATCH_REDIS_URL`` the limiter and queue bookkeeping use an in-process Redis emulator
(fakeredis with Lua), which is what the embedded demo runs on.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from redis import Redis

from nanobatch.models.catalog import Catalog
from nanobatch.models.db import Database
from nanobatch.tasks.settings import Settings
from nanobatch.tasks.telemetry import Telemetry
from nanobatch.workers.limiter import RateLimiter
from nanobatch.workers.providers.base import Provider, ProviderConfig
from nanobatch.workers.providers.body_gate import BodyGate
from nanobatch.workers.retry import RetryPolicy
from nanobatch.workers.store import Store, open_store

if TYPE_CHECKING:  # the Celery side builds runtimes; this module only describes them
    from celery import Celery

    from nanobatch.tasks.celeryapp.publisher import Dispatcher

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


_PROCESS_NAME: tuple[int, str] | None = None


def process_name() -> str:
    """``host:pid:nonce``, one per process: what its claims write into ``generation_tasks.worker``
    and the name it heartbeats under. The nonce tells apart a restarted container that got the same
    host name and pid (``restart: unless-stopped``): its heartbeat must not keep its predecessor's
    tasks alive. A forked child gets a name of its own."""
    global _PROCESS_NAME
    pid = os.getpid()
    if _PROCESS_NAME is None or _PROCESS_NAME[0] != pid:
        _PROCESS_NAME = (pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:6]}")
    return _PROCESS_NAME[1]


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
    worker_name: str = field(default_factory=process_name)
    #: The process's decode slots (shared with the provider): every image decode takes one.
    gate: BodyGate | None = None

    @functools.cached_property
    def store(self) -> Store:
        """The image store (``NANOBATCH_OUTPUT_DIR``: a folder or a bucket), opened once per process."""
        return open_store(self.settings.output_dir)

    def close(self) -> None:
        self.http.close()
        self.db.dispose()
