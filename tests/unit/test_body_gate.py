"""The body gate: large answers are read and decoded a few at a time, small ones never wait."""

from __future__ import annotations

import base64
import gc
import io
import threading
import weakref

import httpx
import pytest
from PIL import Image

from nanobatch.simulator.testing import wait_until
from nanobatch.workers.providers.base import ImageRequest, ProviderConfig
from nanobatch.workers.providers.body_gate import BodyGate
from nanobatch.workers.providers.factory import make_provider
from nanobatch.workers.providers.http import exchange

BIG = b"x" * 4096
SMALL = b"{}"


def client_answering(body: bytes) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, content=body)))


def test_large_bodies_take_at_most_the_configured_slots() -> None:
    gate = BodyGate(2, small_body_bytes=1024)
    client = client_answering(BIG)
    release = threading.Event()
    inside = 0
    lock = threading.Lock()
    finished: list[int] = []

    def call() -> None:
        nonlocal inside
        with exchange(client, "GET", "https://up.test/x", gate=gate) as response:
            with lock:
                inside += 1
            release.wait(10)
            finished.append(len(response.content))
            with lock:
                inside -= 1

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    wait_until(lambda: inside == 2, timeout=5)
    # Four more threads are queued at the gate; none of them may get in while two are inside.
    with pytest.raises(AssertionError, match="timed out"):
        wait_until(lambda: inside > 2, timeout=0.3)
    release.set()
    for thread in threads:
        thread.join(10)
    assert finished == [len(BIG)] * 6
    assert gate.peak == 2


def test_small_and_large_bodies() -> None:
    gate = BodyGate(1, small_body_bytes=1024)
    with exchange(client_answering(SMALL), "GET", "https://up.test/x", gate=gate):
        assert gate.peak == 0  # declared small: no slot taken
    with exchange(client_answering(BIG), "GET", "https://up.test/x", gate=gate):
        assert gate.peak == 1


@pytest.mark.parametrize("header", [None, "garbled", "-5"])
def test_unknown_size_counts_as_large(header: str | None) -> None:
    gate = BodyGate(1, small_body_bytes=1 << 30)
    with gate.hold(header):
        assert gate.peak == 1


def test_a_gate_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        BodyGate(0)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (600, 600), (10, 200, 30)).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_providers_decode_inside_the_gate(kind: str) -> None:
    encoded = base64.b64encode(_png()).decode()
    if kind == "gemini":
        body = {
            "candidates": [
                {"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": encoded}}]}}
            ]
        }
    else:
        body = {"data": [{"b64_json": encoded}]}
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=body)))
    gate = BodyGate(1, small_body_bytes=1024)
    provider = make_provider(ProviderConfig(kind=kind, base_url="https://up.test"), client, gate)
    result = provider.generate(ImageRequest(model="m", prompt="p", width=600, height=600))
    assert result.mime_type == "image/png"
    assert gate.peak == 1


def test_openai_result_link_is_downloaded_after_the_first_slot_is_returned() -> None:
    """One slot and an unsized first answer: holding it while downloading would deadlock."""
    png = _png()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/images/generations"):
            # No Content-Length (a streamed body): the gate must treat it as large.
            return httpx.Response(
                200, stream=httpx.ByteStream(b'{"data": [{"url": "https://up.test/f.png"}]}')
            )
        return httpx.Response(200, content=png)

    gate = BodyGate(1, small_body_bytes=1024)
    client = httpx.Client(transport=httpx.MockTransport(handler))
    provider = make_provider(ProviderConfig(kind="openai", base_url="https://up.test"), client, gate)
    done: list[bytes] = []
    worker = threading.Thread(
        target=lambda: done.append(provider.generate(ImageRequest(model="m", prompt="p")).data)
    )
    worker.start()
    worker.join(10)
    assert done == [png]


def test_a_read_response_is_freed_without_the_cycle_collector() -> None:
    """httpx 0.28 links Response and its stream both ways; a 30 MB body must not wait for the GC."""
    client = client_answering(BIG)
    gc.disable()
    try:
        with exchange(client, "GET", "https://up.test/x") as response:
            assert response.content == BIG
            freed = weakref.ref(response)
        del response
        assert freed() is None
    finally:
        gc.enable()


def test_a_thread_holding_a_slot_decodes_inside_it_without_taking_a_second() -> None:
    gate = BodyGate(1)
    with gate.hold(None), gate.hold(None):  # the answer's slot, then its image's decode: no deadlock
        assert gate.peak == 1
    with gate.hold(None):  # released properly: the slot is free again
        assert gate.peak == 1
