"""Bound how many large response bodies one worker process holds in memory at once.

Why: a 4K image comes back as JSON with the picture base64-encoded inside it. Reading, parsing and
decoding one photo-like 4K PNG (~22 MB) briefly costs ~100 MB (the raw body, the parsed string, the
decoded bytes); a worker with 50 calls in flight whose answers arrive together would need ~5 GB.
The upstream *latency* is what makes high concurrency worthwhile, not the decode — decoding is CPU
work under the GIL, so two or three at a time use a 2-core machine fully.

So the call itself runs unbounded (the request is sent and we wait for the status line and headers
with every thread), and only then, before the body is read, a thread takes one of a few slots. An
unread body waits in the socket: TCP flow control stops the server after a few hundred kilobytes,
so the waiting costs kernel buffers, not heap. Small bodies (errors, thumbnails: a declared
``Content-Length`` below the threshold) skip the gate, so they never queue behind large ones.

Decoding an image's pixels (``workers.imagecheck``) takes a slot too, also for a small body (a
flat-colour 4K PNG is a few kilobytes but 50 MB of pixels). A thread that already holds a slot —
decoding the answer whose body it holds — does not take a second one: holding is per thread and
re-entrant, so the gate cannot deadlock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Bodies at most this large (declared by ``Content-Length``) are read without taking a slot.
SMALL_BODY_BYTES = 1 << 20


class BodyGate:
    """A process-wide counting gate for reading and decoding large (or unsized) response bodies."""

    def __init__(self, slots: int, *, small_body_bytes: int = SMALL_BODY_BYTES) -> None:
        if slots < 1:
            raise ValueError(f"a body gate needs at least one slot, got {slots}")
        self.slots = slots
        self.small_body_bytes = small_body_bytes
        self._semaphore = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._held = 0
        self._peak = 0
        self._mine = threading.local()  # does this thread hold a slot already?

    @contextmanager
    def hold(self, content_length: str | None) -> Iterator[None]:
        """Hold a slot for the ``with`` block unless the declared body is small (``None``: unsized, so
        a slot), or this thread holds one already."""
        if _declared_size(content_length) <= self.small_body_bytes or getattr(self._mine, "held", False):
            yield
            return
        with self._semaphore:
            with self._lock:
                self._held += 1
                self._peak = max(self._peak, self._held)
            self._mine.held = True
            try:
                yield
            finally:
                self._mine.held = False
                with self._lock:
                    self._held -= 1

    @property
    def peak(self) -> int:
        """Most slots ever held at once (for tests and telemetry)."""
        return self._peak


def _declared_size(content_length: str | None) -> float:
    """The declared body size; an absent or garbled header counts as unbounded."""
    try:
        size = int(content_length) if content_length is not None else -1
    except ValueError:
        size = -1
    return float("inf") if size < 0 else float(size)
