"""Separate OS processes share one pool through real Redis, as workers on many hosts do.

Each child records what Redis decided and when (Redis ``TIME``, returned as ``decided_at``), so the
assertions are about the limiter's decisions, never about this machine's wall clock or speed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import threading
import time
from typing import Any

import pytest
import redis

from nanobatch.workers.limiter import PoolLimits, RateLimiter

pytestmark = pytest.mark.integration

SPAWN = mp.get_context("spawn")
POOL = "multiprocess-pool"
PROCESSES = 4


def _limiter(url: str, prefix: str) -> RateLimiter:
    return RateLimiter(redis.Redis.from_url(url), prefix=prefix)


def _hammer_rpm(url: str, prefix: str, seconds: float, start: Any, results: Any) -> None:
    """Acquire as fast as the limiter allows for ``seconds`` of Redis time; report admission times."""
    limiter = _limiter(url, prefix)
    start.wait(timeout=60)
    admitted: list[float] = []
    stop_at = None
    while True:
        admission = limiter.acquire(POOL, holder=f"pid-{os.getpid()}")
        assert admission.decided_at is not None
        stop_at = stop_at or admission.decided_at + seconds
        if admission.admitted:
            admitted.append(admission.decided_at)
        if admission.decided_at >= stop_at:
            break
        if not admission.admitted:
            time.sleep(admission.wait_seconds)  # the client behaviour under test: sleep, retry
    results.put((os.getpid(), admitted))


def _grab_until_full(url: str, prefix: str, seed: int, start: Any, results: Any) -> None:
    """Acquire random costs until the first denial; report what was admitted."""
    limiter = _limiter(url, prefix)
    rng = random.Random(seed)
    start.wait(timeout=60)
    images = tokens = 0
    while True:
        want_images, want_tokens = rng.randint(1, 3), rng.randint(500, 3000)
        admission = limiter.acquire(POOL, holder=f"pid-{os.getpid()}", tokens=want_tokens, images=want_images)
        if not admission.admitted:
            break
        images, tokens = images + want_images, tokens + want_tokens
    results.put((images, tokens))


def _hold_slot_until_killed(url: str, prefix: str, lease: float, results: Any) -> None:
    limiter = _limiter(url, prefix)
    admission = limiter.acquire(POOL, holder="doomed", lease_seconds=lease)
    results.put((admission.admitted, admission.decided_at))
    threading.Event().wait(120)  # "calling the provider" when SIGKILL arrives; never releases


def _run(target: Any, args_for: Any) -> list[Any]:
    """Start PROCESSES children together (a barrier), collect one result each, and reap them."""
    start, results = SPAWN.Barrier(PROCESSES), SPAWN.Queue()
    children = [SPAWN.Process(target=target, args=(*args_for(n), start, results)) for n in range(PROCESSES)]
    for child in children:
        child.start()
    try:
        return [results.get(timeout=60) for _ in children]
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()


def test_four_processes_never_beat_the_rpm_and_track_it_closely(redis_url: str, key_prefix: str) -> None:
    # Given rpm=600: one admission per 100 ms, shared by four competing processes
    _limiter(redis_url, key_prefix).set_limits(POOL, PoolLimits(rpm=600))
    interval = 0.1

    # When each hammers acquire for 3 s of Redis time
    reports = _run(_hammer_rpm, lambda n: (redis_url, key_prefix, 3.0))

    # Then admissions, merged across processes, keep the emission interval: a late one's successor
    # may follow at once (the schedule is kept), but never three come within one interval
    times = sorted(t for _, admitted in reports for t in admitted)
    assert min(c - a for a, c in zip(times, times[2:], strict=False)) >= interval - 1e-6
    assert all(sum(1 for t in times if start <= t < start + 60) <= 600 for start in times)
    # And nearly every slot between the first and last admission was used (no lost capacity)
    possible = (times[-1] - times[0]) / interval + 1
    assert len(times) >= 0.9 * possible, (len(times), possible)
    assert len(times) >= 20
    assert sum(1 for _, admitted in reports if admitted) >= 2  # they really competed


def test_four_processes_never_overfill_the_sliding_windows(redis_url: str, key_prefix: str) -> None:
    # Given ipm=40 and tpm=40,000 and no rpm: nothing paces the callers but the sliding logs
    _limiter(redis_url, key_prefix).set_limits(POOL, PoolLimits(ipm=40, tpm=40_000))

    # When four processes grab random costs at once until each is denied
    reports = _run(_grab_until_full, lambda n: (redis_url, key_prefix, n))

    # Then together they never exceeded either limit, and stopped only when one was (nearly) full
    images, tokens = sum(i for i, _ in reports), sum(t for _, t in reports)
    assert images <= 40 and tokens <= 40_000
    assert images > 40 - 3 or tokens > 40_000 - 3000


def test_a_sigkilled_holders_slot_frees_itself_after_its_lease(redis_url: str, key_prefix: str) -> None:
    # Given concurrency=1 and a worker process holding the slot with a 2 s lease
    limiter = _limiter(redis_url, key_prefix)
    limiter.set_limits(POOL, PoolLimits(concurrency=1))
    lease = 2.0
    results = SPAWN.Queue()
    child = SPAWN.Process(target=_hold_slot_until_killed, args=(redis_url, key_prefix, lease, results))
    child.start()
    admitted, held_at = results.get(timeout=60)
    assert admitted
    assert limiter.acquire(POOL, holder="survivor").reason == "concurrency"

    # When that worker is SIGKILLed without releasing
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join(timeout=10)
    assert child.exitcode == -signal.SIGKILL

    # Then the slot frees itself once the lease has passed (polled, with a deadline)
    deadline = time.monotonic() + 20
    while True:
        admission = limiter.acquire(POOL, holder="survivor", lease_seconds=5)
        if admission.admitted or time.monotonic() > deadline:
            break
        time.sleep(min(admission.wait_seconds, 0.2))
    assert admission.admitted
    assert (admission.decided_at or 0) >= held_at + lease
