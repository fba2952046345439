"""The baseline: plain Celery, rate-limited the way most people do it — Celery's per-task ``rate_limit``.

Nothing of nanobatch is imported here. One task calls the simulator's Gemini endpoint with httpx,
writes the image to a file, and records its completion time in Redis (for the benchmark to count):

- ``rate_limit`` comes from ``BENCH_RATE_LIMIT`` (e.g. ``"300/m"``). Celery enforces it **per worker
  instance** (a token bucket in each worker's consumer, celery docs "Tasks → rate_limit", celery#5732),
  so with two workers the upstream sees up to twice the number. The benchmarks say which value they
  set: ``R/2`` per worker (the total split by hand — correct only while exactly two workers run) or
  ``R`` per worker (what people write when they read "rate_limit = the provider's RPM").
- 429 and 5xx answers (and transport errors) raise, and ``autoretry_for`` + ``retry_backoff`` +
  ``retry_jitter`` retry them with exponential backoff, at most ``BENCH_MAX_RETRIES`` (default 5)
  times — the documented recipe. ``retryDelay`` in Google's 429 body is not read (the recipe does not).
- Otherwise Celery's defaults: prefetch multiplier 4, early ack, json, results ignored.

A task may name its model (third argument; the night scenario's two pools), else ``BENCH_MODEL``.

Environment: ``BENCH_BROKER_URL`` (required), ``BENCH_QUEUE``, ``BENCH_PREFIX`` (Redis keys for the
completion records), ``BENCH_SIM_URL``, ``BENCH_RATE_LIMIT``, ``BENCH_MAX_RETRIES``, ``BENCH_OUTPUT_DIR``,
``BENCH_MODEL``.
"""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery, Task

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_QUEUE", "baseline")
PREFIX = os.environ.get("BENCH_PREFIX", "baseline")
SIM_URL = os.environ.get("BENCH_SIM_URL", "http://127.0.0.1:8089").rstrip("/")
RATE_LIMIT = os.environ.get("BENCH_RATE_LIMIT") or None
MAX_RETRIES = int(os.environ.get("BENCH_MAX_RETRIES", "5"))
OUTPUT_DIR = Path(os.environ.get("BENCH_OUTPUT_DIR", "baseline-images"))
MODEL = os.environ.get("BENCH_MODEL", "gemini-2.5-flash-image")

app = Celery("baseline", broker=BROKER_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_client: httpx.Client | None = None
_redis: redis.Redis | None = None


def client() -> httpx.Client:
    global _client
    if _client is None:
        _client = httpx.Client(
            timeout=httpx.Timeout(120.0, connect=10.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=200),
        )
    return _client


def records() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER_URL)
    return _redis


class UpstreamError(Exception):
    """A 429 or 5xx answer: retried by ``autoretry_for``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status


class RecordedTask(Task):  # type: ignore[misc]
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        records().rpush(f"{PREFIX}:failed", f"{time.time()}")


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@app.task(
    name="baseline.generate",
    base=RecordedTask,
    rate_limit=RATE_LIMIT,
    autoretry_for=(UpstreamError, httpx.TransportError),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
    ignore_result=True,
)
def generate(key: str, prompt: str, model: str | None = None) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "1:1"}},
    }
    response = client().post(f"{SIM_URL}/v1beta/models/{model or MODEL}:generateContent", json=body)
    if response.status_code == 429 or response.status_code >= 500:
        raise UpstreamError(response.status_code)
    if response.status_code != 200:
        records().rpush(f"{PREFIX}:failed", f"{time.time()}")
        return
    parts = response.json()["candidates"][0]["content"]["parts"]
    inline = next(
        p.get("inlineData") or p.get("inline_data")
        for p in parts
        if p.get("inlineData") or p.get("inline_data")
    )
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUTPUT_DIR / f"{_SAFE.sub('_', key)}.png").write_bytes(base64.b64decode(inline["data"]))
    records().rpush(f"{PREFIX}:done", f"{time.time()}")


@app.task(name="baseline.noop", ignore_result=True)
def noop(task_id: str | None = None) -> None:
    return None
