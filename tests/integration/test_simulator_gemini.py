"""The Gemini generateContent routes over real loopback HTTP: answers, validation, auth, safety."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.genai import types
from PIL import Image

from nanobatch.simulator.server import RunningSimulator
from nanobatch.simulator.testing import SimulatorFactory

pytestmark = pytest.mark.integration

PRO = "/v1beta/models/gemini-3-pro-image:generateContent"


@pytest.fixture
def simulator() -> Iterator[SimulatorFactory]:
    with SimulatorFactory(latency=(0, 0)) as factory:
        yield factory


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def body(
    prompt: str = "a red bicycle",
    *,
    ratio: str | None = None,
    size: str | None = None,
    images: int = 0,
    **image_config: Any,
) -> dict[str, Any]:
    config = {k: v for k, v in {"aspectRatio": ratio, "imageSize": size, **image_config}.items() if v}
    png = base64.b64encode(_png()).decode()
    parts = [{"text": prompt}] + [{"inlineData": {"mimeType": "image/png", "data": png}}] * images
    return {
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": config},
    }


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


class Poster:
    """``post(path, payload)`` against one simulator through a shared keep-alive client."""

    def __init__(self, http: httpx.Client, sim: RunningSimulator) -> None:
        self.http, self.sim = http, sim

    def __call__(self, path: str, payload: Any, **kwargs: Any) -> httpx.Response:
        return self.http.post(self.sim.url + path, json=payload, **kwargs)


def image_of(response: httpx.Response) -> Image.Image:
    parts = response.json()["candidates"][0]["content"]["parts"]
    inline = next(part["inlineData"] for part in parts if "inlineData" in part)
    return Image.open(io.BytesIO(base64.b64decode(inline["data"])))


def error_of(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]


@pytest.mark.parametrize("version", ["v1beta", "v1"])
def test_both_api_versions_answer_with_an_image_at_catalog_size(
    http: httpx.Client, simulator: SimulatorFactory, version: str
) -> None:
    sim = simulator()
    post = Poster(http, sim)
    payload = body(ratio="16:9", size="2K")
    if version == "v1":
        del payload["generationConfig"]["responseModalities"]  # v1 has no such field
    response = post(f"/{version}/models/gemini-3-pro-image:generateContent", payload)
    assert response.status_code == 200
    assert image_of(response).size == (2752, 1536)
    payload = response.json()
    types.GenerateContentResponse.model_validate(payload)
    assert payload["modelVersion"] == "gemini-3-pro-image"
    assert payload["candidates"][0]["finishReason"] == "STOP"
    usage = payload["usageMetadata"]
    assert usage["candidatesTokenCount"] == 1120 and usage["thoughtsTokenCount"] > 0
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + 1120 + usage["thoughtsTokenCount"]


def test_alias_resolves_and_flash_has_no_size(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator()
    post = Poster(http, sim)
    response = post("/v1beta/models/nano-banana:generateContent", body(ratio="16:9"))
    assert image_of(response).size == (1344, 768)
    assert response.json()["modelVersion"] == "nano-banana"  # echoes what was asked
    assert response.json()["usageMetadata"]["candidatesTokenCount"] == 1290
    assert sim.requests(1)[0]["model"] == "gemini-2.5-flash-image"


@pytest.mark.parametrize(
    ("path_model", "version"),
    [
        ("gemini-3-pro-image-preview", "gemini-3-pro-image-preview"),
        ("models%2Fgemini-3-pro-image", "gemini-3-pro-image"),
        ("gemini-2.5-flash-image", "gemini-2.5-flash-image"),
    ],
)
def test_model_version_echoes_the_model_of_the_path(
    http: httpx.Client, simulator: SimulatorFactory, path_model: str, version: str
) -> None:
    sim = simulator()
    response = Poster(http, sim)(f"/v1beta/models/{path_model}:generateContent", body())
    assert response.json()["modelVersion"] == version


def test_three_pro_thinks_first_and_signs_its_answer(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator()
    payload = body()
    payload["generationConfig"]["responseModalities"] = ["TEXT", "IMAGE"]
    answer = Poster(http, sim)(PRO, payload).json()
    types.GenerateContentResponse.model_validate(answer)
    parts = answer["candidates"][0]["content"]["parts"]
    assert parts[0]["thought"] is True and parts[0]["text"]
    assert "thoughtSignature" not in parts[0]
    text, image = parts[1], parts[2]
    assert "thought" not in text and text["thoughtSignature"]  # first part after the thoughts
    assert "inlineData" in image and image["thoughtSignature"] != text["thoughtSignature"]
    base64.b64decode(image["thoughtSignature"], validate=True)
    usage = answer["usageMetadata"]
    assert usage["thoughtsTokenCount"] == len(parts[0]["text"]) // 4


def test_flash_image_does_not_think(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator()
    answer = Poster(http, sim)("/v1beta/models/gemini-2.5-flash-image:generateContent", body()).json()
    [part] = answer["candidates"][0]["content"]["parts"]
    assert set(part) == {"inlineData"}
    assert "thoughtsTokenCount" not in answer["usageMetadata"]


def test_snake_case_request_and_models_prefix(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator()
    post = Poster(http, sim)
    payload = {
        "contents": [{"parts": [{"text": "snake"}]}],
        "generation_config": {
            "response_modalities": ["IMAGE"],
            "image_config": {"aspect_ratio": "21:9", "image_size": "1K"},
        },
    }
    response = post("/v1beta/models/models%2Fgemini-3-pro-image:generateContent", payload)
    assert response.status_code == 200
    assert image_of(response).size == (1584, 672)


def test_edit_with_two_inline_images_is_counted(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator()
    post = Poster(http, sim)
    response = post(PRO, body("put the logo on the mug", ratio="1:1", images=2))
    assert response.status_code == 200
    prompt_details = response.json()["usageMetadata"]["promptTokensDetails"]
    details = {d["modality"]: d["tokenCount"] for d in prompt_details}
    assert details["IMAGE"] == 2 * 560
    assert sim.stats()["input_images_received"] == 2
    [summary] = sim.requests(1)
    assert summary["n_input_images"] == 2 and summary["input_mime_types"] == ["image/png", "image/png"]


def test_text_and_image_modalities_give_a_text_part_first(
    http: httpx.Client, simulator: SimulatorFactory
) -> None:
    sim = simulator()
    post = Poster(http, sim)
    payload = body()
    payload["generationConfig"]["responseModalities"] = ["TEXT", "IMAGE"]
    parts = post(PRO, payload).json()["candidates"][0]["content"]["parts"]
    answer = [part for part in parts if not part.get("thought")]
    assert "text" in answer[0] and "inlineData" in answer[1]


def test_jpeg_when_the_simulator_is_set_to_it(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator(image_format_default="jpeg")
    post = Poster(http, sim)
    response = post(PRO, body(ratio="3:4"))
    inline = next(
        p["inlineData"] for p in response.json()["candidates"][0]["content"]["parts"] if not p.get("thought")
    )
    assert inline["mimeType"] == "image/jpeg"
    assert image_of(response).format == "JPEG"


def test_thumbnails_are_small_with_real_size_in_headers(
    http: httpx.Client, simulator: SimulatorFactory
) -> None:
    sim = simulator(thumbnails=True)
    post = Poster(http, sim)
    response = post(PRO, body(ratio="21:9", size="4K"))
    assert (response.headers["X-Sim-Image-Width"], response.headers["X-Sim-Image-Height"]) == ("6336", "2688")
    assert image_of(response).size == (256, 109)


@pytest.mark.parametrize(
    ("path", "payload", "status", "google_status"),
    [
        ("/v1beta/models/gemini-9-ultra:generateContent", body(), 404, "NOT_FOUND"),
        ("/v1beta/models/gpt-image-1:generateContent", body(), 404, "NOT_FOUND"),
        (PRO, body(ratio="5:3"), 400, "INVALID_ARGUMENT"),
        (PRO, body(size="2k"), 400, "INVALID_ARGUMENT"),
        ("/v1beta/models/gemini-2.5-flash-image:generateContent", body(size="1K"), 400, "INVALID_ARGUMENT"),
        ("/v1beta/models/gemini-2.5-flash-image:generateContent", body(images=4), 400, "INVALID_ARGUMENT"),
        (PRO, body(images=15), 400, "INVALID_ARGUMENT"),
        (PRO, {"contents": []}, 400, "INVALID_ARGUMENT"),
        (PRO, body(outputMimeType="image/jpeg"), 400, "INVALID_ARGUMENT"),
        (PRO, body(output_mime_type="image/jpeg"), 400, "INVALID_ARGUMENT"),
        (PRO.replace("v1beta", "v1"), body(), 400, "INVALID_ARGUMENT"),
        (
            "/v1beta/models/gemini-2.5-flash-image:generateContent",
            {**body(), "systemInstruction": {"parts": [{"text": "be terse"}]}},
            400,
            "INVALID_ARGUMENT",
        ),
    ],
)
def test_validation_errors(
    http: httpx.Client,
    simulator: SimulatorFactory,
    path: str,
    payload: dict[str, Any],
    status: int,
    google_status: str,
) -> None:
    sim = simulator(rpm=1)
    post = Poster(http, sim)
    response = post(path, payload)
    assert response.status_code == status
    assert error_of(response)["code"] == status and error_of(response)["status"] == google_status
    assert post(PRO, body()).status_code == 200  # the rejected request consumed no quota


def test_auth_styles_and_errors(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator(api_key="sim-key")
    post = Poster(http, sim)
    missing = post(PRO, body())
    assert (missing.status_code, error_of(missing)["status"]) == (403, "PERMISSION_DENIED")
    wrong = post(PRO, body(), headers={"x-goog-api-key": "nope"})
    assert (wrong.status_code, error_of(wrong)["status"]) == (400, "INVALID_ARGUMENT")
    assert error_of(wrong)["details"][0]["reason"] == "API_KEY_INVALID"
    assert "sim-key" not in wrong.text and "nope" not in wrong.text
    assert post(PRO, body(), headers={"x-goog-api-key": "sim-key"}).status_code == 200
    assert post(PRO, body(), headers={"Authorization": "Bearer sim-key"}).status_code == 200
    assert post(PRO + "?key=sim-key", body()).status_code == 200
    styles = [summary["auth"] for summary in sim.requests(10)]
    assert styles == ["none", "x-goog-api-key", "x-goog-api-key", "bearer", "query"]
    assert "sim-key" not in str(sim.requests(10))


def test_block_words_give_both_safety_shapes(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator(block_words=("gore", "knife"))
    post = Poster(http, sim)
    prompt_block = post(PRO, body("a scene with GORE")).json()
    assert prompt_block["promptFeedback"]["blockReason"] == "SAFETY"
    assert "candidates" not in prompt_block
    image_block = post(PRO, body("a chef's knife")).json()
    assert image_block["candidates"][0]["finishReason"] == "IMAGE_SAFETY"
    assert "content" not in image_block["candidates"][0]
    for payload in (prompt_block, image_block):
        types.GenerateContentResponse.model_validate(payload)
    assert sim.stats()["blocked"] == 2 and sim.stats()["images_served"] == 0


def test_no_image_rate_answers_200_without_an_image(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator(no_image_rate=1.0)
    post = Poster(http, sim)
    payload = post(PRO, body()).json()
    candidate = payload["candidates"][0]
    assert candidate["finishReason"] == "NO_IMAGE"
    assert [list(part) for part in candidate["content"]["parts"]] == [["text"]]
    types.GenerateContentResponse.model_validate(payload)
    assert sim.stats()["faults"] == {"no_image": 1}
