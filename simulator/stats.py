"""What the upstream saw: counters and the last request summaries, per simulator instance.

Benchmarks and tests prove client behaviour from the *server's* side (no request above the rpm,
peak concurrency under the cap, every 429 honoured), so the counters are exact and updated before
the answer is written: once a client holds a response, ``stats()`` already includes it. Summaries
never contain an API key, only the style it was presented in.

``requests`` counts arrivals; every finished request lands in ``by_route`` and ``by_status``
exactly once. ``by_status`` keys are HTTP statuses as strings, plus ``"timeout"`` (held, never
answered) and ``"drop"`` (cut mid-body) for requests that got no complete answer. ``faults``
counts every injected fault by label (a status, ``timeout``, ``drop``, ``no_image`` or a hostile
mode: ``truncated``, ``oversized``, ``trickle``, ``echo_key``, ``larger_image``), and
``abandoned`` the streamed answers (``oversized``, ``trickle``) whose client hung up before the
last byte -- how a test proves a client gave up on a body rather than read it all. ``by_tier``
counts image requests by the ``serviceTier`` they asked for (``standard`` when none), and
``batch`` the Batch API's events (jobs created and ended by state, requests answered and failed,
files uploaded).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from nanobatch.simulator.protocol import ImageJob

PROMPT_PREVIEW = 80
RECENT_KEPT = 1000


@dataclass
class RequestRecord:
    """The summary of one request, filled in as the pipeline learns about it."""

    route: str
    at: float = field(default_factory=time.time)
    auth: str = "none"
    model: str | None = None
    aspect_ratio: str | None = None
    image_size: str | None = None
    width: int | None = None
    height: int | None = None
    n: int = 0
    n_input_images: int = 0
    input_mime_types: list[str] = field(default_factory=list)
    input_sha256: list[str] = field(default_factory=list)
    prompt: str = ""
    status: int | None = None
    outcome: str = ""
    fault: str | None = None
    images: int = 0
    service_tier: str | None = None

    def describe(self, job: ImageJob) -> None:
        self.model, self.aspect_ratio, self.image_size = job.model.name, job.aspect_ratio, job.image_size
        self.width, self.height, self.n = job.width, job.height, job.n
        self.n_input_images = len(job.input_mime_types)
        self.input_mime_types = list(job.input_mime_types)
        self.input_sha256 = list(job.input_sha256)
        self.prompt = job.prompt[:PROMPT_PREVIEW]
        self.service_tier = job.service_tier

    @property
    def status_key(self) -> str:
        return str(self.status) if self.status is not None else self.outcome

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Stats:
    """Thread-safe counters; one instance per simulator."""

    def __init__(self, keep: int = RECENT_KEPT) -> None:
        self._lock = threading.Lock()
        self._recent: deque[RequestRecord] = deque(maxlen=keep)
        self._in_flight = self._peak = 0
        self._requests = self._rate_limited = self._blocked = self._images = self._inputs = 0
        self._by_route: Counter[str] = Counter()
        self._by_status: Counter[str] = Counter()
        self._by_model: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._abandoned: Counter[str] = Counter()
        self._by_tier: Counter[str] = Counter()
        self._batch: Counter[str] = Counter()

    def begin(self) -> None:
        with self._lock:
            self._requests += 1
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)

    def end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def received_inputs(self, count: int) -> None:
        with self._lock:
            self._inputs += count

    def abandoned(self, label: str) -> None:
        """Count a streamed answer whose client left before its last byte."""
        with self._lock:
            self._abandoned[label] += 1

    def finish(self, record: RequestRecord) -> None:
        """Count a finished request (call before its answer is written)."""
        with self._lock:
            self._by_route[record.route] += 1
            self._by_status[record.status_key] += 1
            if record.model:
                self._by_model[record.model] += 1
            self._rate_limited += record.status == 429
            self._blocked += record.outcome == "blocked"
            self._images += record.images
            if record.fault:
                self._faults[record.fault] += 1
            if record.service_tier:
                self._by_tier[record.service_tier] += 1
            self._recent.append(record)

    def batch_event(self, name: str, count: int = 1) -> None:
        """Count a Batch API event: ``jobs_created``, ``requests_answered``, ``requests_failed``,
        ``files_uploaded`` or ``jobs_<state>`` (a job reaching a terminal state)."""
        with self._lock:
            self._batch[name] += count

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "by_route": dict(self._by_route),
                "by_status": dict(self._by_status),
                "by_model": dict(self._by_model),
                "rate_limited": self._rate_limited,
                "current_concurrency": self._in_flight,
                "peak_concurrency": self._peak,
                "images_served": self._images,
                "input_images_received": self._inputs,
                "blocked": self._blocked,
                "faults": dict(self._faults),
                "abandoned": dict(self._abandoned),
                "by_tier": dict(self._by_tier),
                "batch": dict(self._batch),
            }

    def recent(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            records = list(self._recent)[-limit:] if limit > 0 else []
        return [record.to_dict() for record in records]

    def reset(self) -> None:
        """Zero every counter; requests still in flight stay counted as in flight."""
        with self._lock:
            self._zero()
            self._recent.clear()

    def _zero(self) -> None:
        self._requests = self._rate_limited = self._blocked = self._images = self._inputs = 0
        self._peak = self._in_flight
        counters = (self._by_route, self._by_status, self._by_model, self._faults, self._abandoned)
        for counter in (*counters, self._by_tier, self._batch):
            counter.clear()
