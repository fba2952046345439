"""The adaptive share against a real upstream shape: real Redis, the simulator, and a neighbour
spending the same quota. Two identical clients run side by side, one with the adaptation and one
without; the one that adapts must be answered fewer 429s, and still get most of what it could.

The simulator's quota windows run twenty times faster than real time (its injected clock), so ten
upstream minutes take thirty seconds; the limiters run on the same clock (their ``now`` arguments),
so the adaptation under test is the default one, minutes and all. Counts are compared within one
run; nothing is timed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.server import RunningSimulator, start_simulator
from nanobatch.workers.limiter import Adaptation, PoolLimits, RateLimiter
from nanobatch.workers.providers.waits import google_retry_after

MODEL = "gemini-2.5-flash-image"
SPEED = 20.0  # simulated seconds per real second
UPSTREAM_RPM = 60  # per simulated minute = 600 per real minute
NEIGHBOUR_PER_SECOND = UPSTREAM_RPM * SPEED / 60 / 3  # a third of the quota, in real time
RUN_SECONDS = 30.0  # ten upstream minutes
BODY = {
    "contents": [{"role": "user", "parts": [{"text": "a mug"}]}],
    "generationConfig": {"responseModalities": ["IMAGE"]},
}


@dataclass
class Tally:
    calls: int = 0
    refused: int = 0
    paid: int = 0


class FastClock:
    def __init__(self) -> None:
        self.start = time.time()

    def __call__(self) -> float:
        return self.start + (time.time() - self.start) * SPEED


CLOCK = FastClock()  # the upstreams' and the limiters' time


@pytest.fixture
def upstreams() -> Iterator[list[RunningSimulator]]:
    config = SimulatorConfig(latency=(0.02, 0.05), rpm=UPSTREAM_RPM, thumbnails=True, seed=3)
    started = [start_simulator(config, clock=CLOCK) for _ in range(2)]
    yield started
    for simulator in started:
        simulator.stop()


def neighbour(url: str, stop: threading.Event) -> None:
    """Another job on the same key: a steady pace, whatever it is answered."""
    with httpx.Client(timeout=10.0) as client:
        while not stop.wait(1 / NEIGHBOUR_PER_SECOND):
            client.post(f"{url}/v1beta/models/{MODEL}:generateContent", json=BODY)


def client_loop(
    limiter: RateLimiter, url: str, stop: threading.Event, tally: Tally, lock: threading.Lock
) -> None:
    """What a worker does with the limiter around one call (tasks/serve.py: admit, call, handle_error),
    in the upstream's time: waits the limiter asks are upstream seconds, slept SPEED times shorter."""
    with httpx.Client(timeout=10.0) as http:
        while not stop.is_set():
            admission = limiter.acquire(MODEL, holder=uuid.uuid4().hex, now=CLOCK())
            if not admission.admitted:
                stop.wait(min(admission.wait_seconds / SPEED, 0.2))
                continue
            answer = http.post(f"{url}/v1beta/models/{MODEL}:generateContent", json=BODY)
            with lock:
                tally.calls += 1
                tally.paid += answer.status_code == 200
                tally.refused += answer.status_code == 429
            if answer.status_code == 429:
                error = answer.json()["error"]
                delay = next((d["retryDelay"] for d in error.get("details", []) if "retryDelay" in d), None)
                wait = google_retry_after(error.get("message", ""), delay) or 1.0
                limiter.cooldown(MODEL, wait, reason="429 PerMinute", now=CLOCK())
                limiter.adapt_after_refusal(MODEL, admitted_at=admission.decided_at, now=CLOCK())


def test_the_adaptive_share_gets_fewer_429s_from_a_shared_quota_than_a_fixed_rate(
    upstreams: list[RunningSimulator], redis_url: str, key_prefix: str
) -> None:
    # Given two clients with the whole quota as their rpm, one adapting, one not, each on its own
    # upstream with the same neighbour spending a third of it,
    client = redis.Redis.from_url(redis_url)
    limiters = {
        "adaptive": RateLimiter(client, prefix=f"{key_prefix}:adaptive", adaptation=Adaptation()),
        "fixed": RateLimiter(client, prefix=f"{key_prefix}:fixed", adaptation=None),
    }
    for limiter in limiters.values():
        limiter.set_limits(MODEL, PoolLimits(rpm=UPSTREAM_RPM))  # the whole quota
    tallies = {name: Tally() for name in limiters}
    stop, lock = threading.Event(), threading.Lock()
    threads = [threading.Thread(target=neighbour, args=(sim.url, stop)) for sim in upstreams]
    for (name, limiter), sim in zip(limiters.items(), upstreams, strict=True):
        threads += [
            threading.Thread(target=client_loop, args=(limiter, sim.url, stop, tallies[name], lock))
            for _ in range(6)
        ]
    # When both run for ten upstream minutes,
    for thread in threads:
        thread.start()
    stop.wait(RUN_SECONDS)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    adaptive, fixed = tallies["adaptive"], tallies["fixed"]
    share = limiters["adaptive"].state(MODEL, now=CLOCK())
    client.close()
    print(f"adaptive {adaptive}, fixed {fixed}, share now {share.share:.2f} after {share.share_drops} drops")

    # Then the fixed rate keeps running into the neighbour, the adaptive one mostly does not,
    assert fixed.refused >= 10, f"the neighbour should cost the fixed client 429s: {fixed}"
    assert adaptive.refused * 2 < fixed.refused, f"adaptive {adaptive} vs fixed {fixed}"
    assert adaptive.refused / adaptive.calls < fixed.refused / fixed.calls
    # and gives up little of what the upstream could give it: the shared share shows the reaction.
    assert adaptive.paid >= 0.8 * fixed.paid, f"adaptive {adaptive} vs fixed {fixed}"
    assert share.share < 1.0 and share.share_drops >= 1
