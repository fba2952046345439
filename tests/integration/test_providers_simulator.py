"""Both providers against the simulator on a loopback port: every fault it can inject lands on one of
our error classes, and successful images have the catalog's exact pixels.

Each test reads as a scenario: start a simulator configured for one behaviour (the ``simulator``
factory fixture of ``tests/integration/conftest.py``), make one or two calls through the real pooled
client, assert the class (and fields) the retry policy will see.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

from nanobatch.models.catalog import load_catalog
from nanobatch.simulator.server import RunningSimulator
from nanobatch.simulator.testing import wait_until
from nanobatch.workers.errors import (
    ContentBlocked,
    DailyQuotaExhausted,
    InvalidRequest,
    NoImageReturned,
    ProviderError,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from nanobatch.workers.providers.base import ImageRequest, InputImage, Provider, ProviderConfig
from nanobatch.workers.providers.factory import make_http_client, make_provider

pytestmark = pytest.mark.integration

KINDS = ["gemini", "openai"]
RIGHT_KEY = "AIzaSyRIGHT-0123456789abcdefghijklm"
WRONG_KEY = "AIzaSyWRONG-0123456789abcdefghijklm"
CATALOG = load_catalog()

StartSimulator = Callable[..., RunningSimulator]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with make_http_client(connect_timeout=2.0, read_timeout=60.0, max_connections=4) as shared:
        yield shared


def provider(kind: str, sim: RunningSimulator, client: httpx.Client, api_key: str | None = None) -> Provider:
    auth = "x-goog-api-key" if kind == "gemini" else "bearer"
    config = ProviderConfig(kind=kind, base_url=sim.url, auth=auth, api_key=api_key)  # type: ignore[arg-type]
    return make_provider(config, client)


def request_for(kind: str, prompt: str = "a red enamel mug on a desk", **changes: Any) -> ImageRequest:
    """A catalog-consistent request: 3 Pro 1K for Gemini, gpt-image-1 for OpenAI-compatible."""
    model, size, ratio = (
        ("gemini-3-pro-image", "1K", "1:1") if kind == "gemini" else ("gpt-image-1", None, "1:1")
    )
    fields: dict[str, Any] = {"model": model, "image_size": size, "aspect_ratio": ratio, **changes}
    spec = CATALOG.resolve(fields["model"])
    width, height = spec.dimensions(fields["image_size"], fields["aspect_ratio"])
    return ImageRequest(prompt=prompt, width=width, height=height, **fields)


def failure(kind: str, sim: RunningSimulator, client: httpx.Client, **request: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        provider(kind, sim, client, request.pop("api_key", None)).generate(request_for(kind, **request))
    return info.value


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


# --- success -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "model", "size", "ratio", "pixels"),
    [
        ("gemini", "gemini-3-pro-image", "4K", "21:9", (6336, 2688)),
        ("gemini", "gemini-2.5-flash-image", None, "16:9", (1344, 768)),
        ("openai", "gpt-image-1", None, "3:2", (1536, 1024)),
    ],
)
def test_text_to_image_is_a_png_with_the_catalog_pixels(
    simulator: StartSimulator,
    client: httpx.Client,
    kind: str,
    model: str,
    size: str | None,
    ratio: str,
    pixels: tuple[int, int],
) -> None:
    # Given a full-size simulator (no thumbnails)
    sim = simulator(thumbnails=False)
    assert CATALOG.resolve(model).dimensions(size, ratio) == pixels

    # When we ask for one image
    result = provider(kind, sim, client).generate(
        request_for(kind, model=model, image_size=size, aspect_ratio=ratio)
    )

    # Then it is a PNG of exactly the catalog's size
    assert result.mime_type == "image/png"
    with Image.open(io.BytesIO(result.data)) as image:
        assert (image.format, image.size) == ("PNG", pixels)


@pytest.mark.parametrize("kind", KINDS)
def test_edit_with_two_input_images_reaches_the_upstream(
    simulator: StartSimulator, client: httpx.Client, kind: str
) -> None:
    sim = simulator()
    before = sim.stats()["input_images_received"]
    images = (InputImage(png(8, 8, (255, 0, 0))), InputImage(png(8, 8, (0, 0, 255))))

    result = provider(kind, sim, client).generate(
        request_for(kind, "put both on a shelf", input_images=images)
    )

    assert result.data
    assert sim.stats()["input_images_received"] - before == 2


@pytest.mark.parametrize(("kind", "style"), [("gemini", "x-goog-api-key"), ("openai", "bearer")])
def test_the_right_key_is_accepted_in_the_protocols_header(
    simulator: StartSimulator, client: httpx.Client, kind: str, style: str
) -> None:
    sim = simulator(api_key=RIGHT_KEY)
    assert provider(kind, sim, client, RIGHT_KEY).generate(request_for(kind)).data
    assert sim.requests()[-1]["auth"] == style


def test_gemini_relay_style_bearer_auth(simulator: StartSimulator, client: httpx.Client) -> None:
    sim = simulator(api_key=RIGHT_KEY)
    config = ProviderConfig(kind="gemini", base_url=sim.url, auth="bearer", api_key=RIGHT_KEY)
    assert make_provider(config, client).generate(request_for("gemini")).data
    assert sim.requests()[-1]["auth"] == "bearer"


@pytest.mark.parametrize("kind", KINDS)
def test_mime_type_is_what_came_back(simulator: StartSimulator, client: httpx.Client, kind: str) -> None:
    # Given an upstream that answers JPEG (Gemini: by its own choice; OpenAI: because we asked)
    sim = simulator(image_format_default="jpeg")
    result = provider(kind, sim, client).generate(request_for(kind, output_format="jpeg"))
    assert result.mime_type == "image/jpeg"
    assert result.data[:3] == b"\xff\xd8\xff"


# --- rate limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_per_minute_quota_is_rate_limited_with_a_wait(
    simulator: StartSimulator, client: httpx.Client, kind: str
) -> None:
    # Given one request per minute, already used
    sim = simulator(rpm=1)
    provider(kind, sim, client).generate(request_for(kind))

    error = failure(kind, sim, client)

    assert type(error) is RateLimited
    assert error.retry_after is not None and error.retry_after > 0
    assert any("PerMinute" in quota_id for quota_id in error.quota_ids)


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_per_minute_quota_is_rate_limited(
    simulator: StartSimulator, client: httpx.Client, kind: str
) -> None:
    # Given room for one image's tokens per minute (~1.1k output tokens each)
    sim = simulator(tpm=2000)
    provider(kind, sim, client).generate(request_for(kind))

    error = failure(kind, sim, client)

    assert type(error) is RateLimited
    assert error.retry_after is not None and error.retry_after > 0
    assert any("PerMinute" in quota_id for quota_id in error.quota_ids)


@pytest.mark.parametrize("kind", KINDS)
def test_concurrency_cap_is_rate_limited(simulator: StartSimulator, client: httpx.Client, kind: str) -> None:
    # Given one slot, held for a while by a first call
    sim = simulator(concurrency=1, latency=(1.0, 1.0))
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(provider(kind, sim, client).generate, request_for(kind))
        wait_until(lambda: sim.stats()["current_concurrency"], message="the first call in flight")
        time.sleep(0.1)  # arrival is counted a moment before quota admission; let it take the slot

        error = failure(kind, sim, client)

        assert first.result().data
    assert type(error) is RateLimited


@pytest.mark.parametrize("kind", KINDS)
def test_per_day_quota_is_daily_exhausted(simulator: StartSimulator, client: httpx.Client, kind: str) -> None:
    sim = simulator(rpd=1)
    provider(kind, sim, client).generate(request_for(kind))

    error = failure(kind, sim, client)

    assert type(error) is DailyQuotaExhausted
    assert any("PerDay" in quota_id for quota_id in error.quota_ids)


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@pytest.mark.parametrize("kind", KINDS)
def test_server_faults_are_unavailable(
    simulator: StartSimulator, client: httpx.Client, kind: str, status: int
) -> None:
    error = failure(kind, simulator(fail_rates={status: 1.0}), client)
    assert type(error) is UpstreamUnavailable
    assert error.status_code == status


@pytest.mark.parametrize("kind", KINDS)
def test_block_word_is_content_blocked(simulator: StartSimulator, client: httpx.Client, kind: str) -> None:
    sim = simulator(block_words=("forbidden",))
    error = failure(kind, sim, client, prompt="a forbidden mug")
    assert type(error) is ContentBlocked
    assert error.reason


def test_no_image_answer_is_transient(simulator: StartSimulator, client: httpx.Client) -> None:
    error = failure("gemini", simulator(no_image_rate=1.0), client)
    assert type(error) is NoImageReturned


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_key_is_invalid_and_never_echoed(
    simulator: StartSimulator, client: httpx.Client, kind: str
) -> None:
    sim = simulator(api_key=RIGHT_KEY)
    error = failure(kind, sim, client, api_key=WRONG_KEY)
    assert type(error) is InvalidRequest
    for text in (str(error), repr(error), error.message, *map(str, error.args)):
        assert WRONG_KEY not in text
        assert RIGHT_KEY not in text


@pytest.mark.parametrize("kind", KINDS)
def test_held_request_times_out(simulator: StartSimulator, kind: str) -> None:
    # Given an upstream that never answers (held ~3 s so the server thread ends soon after)
    sim = simulator(timeout_rate=1.0, time_scale=0.005)
    with make_http_client(connect_timeout=2.0, read_timeout=0.3, max_connections=2) as impatient:
        error = failure(kind, sim, impatient)
    assert type(error) is UpstreamTimeout
    assert isinstance(error.__cause__, httpx.TimeoutException)


@pytest.mark.parametrize("kind", KINDS)
def test_dropped_connection_is_unavailable(
    simulator: StartSimulator, client: httpx.Client, kind: str
) -> None:
    error = failure(kind, simulator(drop_rate=1.0), client)
    assert type(error) is UpstreamUnavailable
    assert isinstance(error.__cause__, httpx.TransportError)


def test_the_stable_v1_api_is_served_without_response_modalities(simulator, client: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    # The simulator refuses responseModalities on /v1/ with 400, as the real API does.
    sim = simulator()
    config = ProviderConfig(kind="gemini", base_url=sim.url, api_version="v1")
    result = make_provider(config, client).generate(request_for("gemini"))
    assert result.data and sim.stats()["requests"] == 1
