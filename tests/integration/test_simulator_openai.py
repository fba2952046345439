"""The OpenAI images routes over loopback: generations (b64_json and url), edits multipart, errors."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai.types import ImagesResponse
from PIL import Image

from nanobatch.simulator.testing import SimulatorFactory

pytestmark = pytest.mark.integration

GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"


@pytest.fixture
def simulator() -> Iterator[SimulatorFactory]:
    with SimulatorFactory(latency=(0, 0)) as factory:
        yield factory


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def png(size: tuple[int, int] = (8, 8), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (9, 9, 9)).save(buffer, fmt)
    return buffer.getvalue()


def generate(http: httpx.Client, url: str, **fields: Any) -> httpx.Response:
    return http.post(url + GENERATIONS, json={"model": "gpt-image-1", "prompt": "a lamp", **fields})


def test_generation_b64_json_at_the_requested_size(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator()
    response = generate(http, sim.url, size="1536x1024", n=2)
    assert response.status_code == 200
    payload = response.json()
    assert [decode(item["b64_json"]).size for item in payload["data"]] == [(1536, 1024)] * 2
    assert payload["data"][0]["revised_prompt"] == "a lamp"
    assert payload["data"][0]["b64_json"] != payload["data"][1]["b64_json"]
    usage = payload["usage"]
    assert usage["output_tokens"] == 2 * 1056
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert sim.stats()["images_served"] == 2


def test_answers_carry_every_field_real_ones_do(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator()
    payload = generate(http, sim.url, size="1024x1536").json()
    assert set(payload) == {"created", "background", "data", "output_format", "quality", "size", "usage"}
    assert (payload["background"], payload["output_format"]) == ("opaque", "png")
    assert (payload["quality"], payload["size"]) == ("high", "1024x1536")  # auto is reported as used
    usage = payload["usage"]
    assert usage["output_tokens_details"] == {"image_tokens": 1056, "text_tokens": 0}
    assert usage["input_tokens_details"]["text_tokens"] == usage["input_tokens"]
    ImagesResponse.model_validate(payload)


@pytest.mark.parametrize(
    ("fields", "reported"),
    [
        ({"quality": "low"}, ("low", "opaque")),
        ({"quality": "hd", "background": "transparent"}, ("high", "transparent")),
        ({"quality": "standard", "background": "auto"}, ("medium", "opaque")),
        ({"quality": "max", "output_format": "webp"}, ("max", "opaque")),
    ],
)
def test_quality_and_background_report_what_was_used(
    http: httpx.Client, simulator: SimulatorFactory, fields: dict[str, Any], reported: tuple[str, str]
) -> None:
    sim = simulator()
    payload = generate(http, sim.url, **fields).json()
    assert (payload["quality"], payload["background"]) == reported
    ImagesResponse.model_validate(payload)


def test_auto_size_is_the_catalog_square_and_gemini_models_are_accepted(
    http: httpx.Client, simulator: SimulatorFactory
) -> None:
    sim = simulator()
    response = generate(http, sim.url, model="gemini-3-pro-image", size="auto", output_format="jpeg")
    image = decode(response.json()["data"][0]["b64_json"])
    assert (image.size, image.format) == ((1024, 1024), "JPEG")


def test_generation_url_is_served_by_the_simulator(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator()
    url = generate(http, sim.url, size="512x512", response_format="url").json()["data"][0]["url"]
    assert url.startswith(sim.url + "/_sim/files/")
    download = http.get(url)
    assert download.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(download.content)).size == (512, 512)
    assert http.get(sim.url + "/_sim/files/nope").status_code == 404


def test_edit_with_several_files(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator()
    files = [
        ("image[]", ("a.png", png(), "image/png")),
        ("image[]", ("b.jpg", png(fmt="JPEG"), "application/octet-stream")),
    ]
    data = {"model": "gpt-image-1", "prompt": "combine them", "size": "1024x1536"}
    response = http.post(sim.url + EDITS, data=data, files=files)
    assert response.status_code == 200, response.text
    assert decode(response.json()["data"][0]["b64_json"]).size == (1024, 1536)
    assert sim.stats()["input_images_received"] == 2
    assert sim.requests(1)[0]["input_mime_types"] == ["image/png", "image/jpeg"]


def test_edit_with_a_single_image_field(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator()
    response = http.post(
        sim.url + EDITS,
        data={"model": "gemini-2.5-flash-image", "prompt": "x"},
        files={"image": ("a.png", png(), "image/png")},
    )
    assert decode(response.json()["data"][0]["b64_json"]).size == (1024, 1024)


def test_edit_errors(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator()
    no_image = http.post(
        sim.url + EDITS,
        data={"model": "gpt-image-1", "prompt": "x"},
        files={"mask": ("m.png", png(), "image/png")},
    )
    assert (no_image.status_code, no_image.json()["error"]["param"]) == (400, "image")
    not_an_image = http.post(
        sim.url + EDITS,
        data={"model": "gpt-image-1", "prompt": "x"},
        files={"image": ("a.txt", b"hello", "text/plain")},
    )
    assert not_an_image.status_code == 400
    too_many = http.post(
        sim.url + EDITS,
        data={"model": "gemini-2.5-flash-image", "prompt": "x"},
        files=[("image[]", (f"{i}.png", png(), "image/png")) for i in range(4)],
    )
    assert too_many.status_code == 400
    json_body = http.post(sim.url + EDITS, json={"model": "gpt-image-1", "prompt": "x"})
    assert json_body.status_code == 400


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"model": "dall-e-9"}, 404, "model_not_found"),
        ({"size": "1000x1000"}, 400, None),
        ({"n": 0}, 400, None),
        ({"background": "clear"}, 400, None),
    ],
)
def test_generation_errors_are_openai_shaped(
    http: httpx.Client, simulator: SimulatorFactory, fields: dict[str, Any], status: int, code: str | None
) -> None:
    sim = simulator()
    response = generate(http, sim.url, **fields)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code


def test_bearer_auth(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator(api_key="sim-key")
    missing = generate(http, sim.url)
    wrong = http.post(
        sim.url + GENERATIONS,
        json={"model": "gpt-image-1", "prompt": "x"},
        headers={"Authorization": "Bearer bad"},
    )
    right = http.post(
        sim.url + GENERATIONS,
        json={"model": "gpt-image-1", "prompt": "x"},
        headers={"Authorization": "Bearer sim-key"},
    )
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert "bad" not in wrong.text


def test_rate_limit_has_retry_after_header(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator(rpm=1)
    assert generate(http, sim.url).status_code == 200
    limited = generate(http, sim.url)
    assert limited.status_code == 429
    assert 0 < float(limited.headers["retry-after"]) <= 60
    assert limited.json()["error"] == {
        **limited.json()["error"],
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }


def test_block_words_are_moderation_errors(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator(block_words=("gore",))
    blocked = generate(http, sim.url, prompt="lots of gore")
    assert (blocked.status_code, blocked.json()["error"]["code"]) == (400, "moderation_blocked")
    assert sim.stats()["blocked"] == 1
