"""The official SDKs, as independent clients, accept what the simulator says.

``google-genai`` parses answers into strict pydantic models (unknown keys are errors) and maps HTTP
errors into its own exceptions; the ``openai`` SDK does the same for the images API. If either SDK
rejects a simulator answer, the simulator is wrong, whatever our own clients think of it. That
includes the unkind answers: 3 Pro thought parts, the 400s real Gemini gives for fields it lacks,
and every hostile fault mode (a hostile 200 is still a well-formed answer; only its content lies).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import errors, types
from openai.types import ImagesResponse
from PIL import Image

from nanobatch.simulator.server import RunningSimulator
from nanobatch.simulator.testing import SimulatorFactory

pytestmark = pytest.mark.integration

KEY = "test-key"
PRO = "/v1beta/models/gemini-3-pro-image:generateContent"
FLASH = "/v1beta/models/gemini-2.5-flash-image:generateContent"
GENERATIONS = "/v1/images/generations"
HOSTILE_200S: list[dict[str, Any]] = [
    {"truncated_rate": 1.0},
    {"oversized_rate": 1.0, "oversize_bytes": 2 * 1024 * 1024},
    {"larger_image_rate": 1.0},
    {"trickle_rate": 1.0, "trickle_interval": 0.001, "trickle_limit": 0.05},
]


@pytest.fixture
def simulator() -> Iterator[SimulatorFactory]:
    with SimulatorFactory(latency=(0, 0), api_key=KEY) as factory:
        yield factory


class RecordingClient(httpx.Client):
    """An httpx client that keeps every response body the SDK receives."""

    def __init__(self) -> None:
        super().__init__(timeout=30, event_hooks={"response": [self._keep]})
        self.bodies: list[Any] = []

    def _keep(self, response: httpx.Response) -> None:
        response.read()
        self.bodies.append((response.status_code, response.json()))


def gemini_client(sim: RunningSimulator, recorder: httpx.Client | None = None) -> genai.Client:
    options = types.HttpOptions(base_url=sim.url, api_version="v1beta", httpx_client=recorder)
    return genai.Client(api_key=KEY, http_options=options)


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def image_config(ratio: str = "16:9", size: str | None = "2K") -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        response_modalities=["IMAGE"], image_config=types.ImageConfig(aspect_ratio=ratio, image_size=size)
    )


def first_image(response: types.GenerateContentResponse) -> Image.Image:
    assert response.candidates and response.candidates[0].content and response.candidates[0].content.parts
    blob = next(part.inline_data for part in response.candidates[0].content.parts if part.inline_data)
    assert blob.data is not None
    return Image.open(io.BytesIO(blob.data))


def test_genai_generate_content_returns_a_decodable_image(simulator: SimulatorFactory) -> None:
    sim = simulator()
    client = gemini_client(sim)  # keep a reference: a collected genai.Client closes its connection pool
    response = client.models.generate_content(
        model="gemini-3-pro-image", contents="a red bicycle", config=image_config()
    )
    assert first_image(response).size == (2752, 1536)
    assert response.usage_metadata and response.usage_metadata.candidates_token_count == 1120
    assert sim.requests(1)[0]["auth"] == "x-goog-api-key"


def test_genai_edit_with_an_input_image(simulator: SimulatorFactory) -> None:
    sim = simulator()
    contents: list[types.PartUnionDict] = [
        types.Part.from_bytes(data=png_bytes(), mime_type="image/png"),
        "put a hat on it",
    ]
    client = gemini_client(sim)
    response = client.models.generate_content(
        model="gemini-2.5-flash-image", contents=contents, config=image_config("4:5", None)
    )
    assert first_image(response).size == (896, 1152)
    assert sim.stats()["input_images_received"] == 1
    assert sim.requests(1)[0]["input_mime_types"] == ["image/png"]


def test_every_answer_the_sdk_receives_validates_strictly(simulator: SimulatorFactory) -> None:
    sim = simulator(block_words=("gore", "knife"))
    recorder = RecordingClient()
    client = gemini_client(sim, recorder)
    text_and_image = types.GenerateContentConfig(response_modalities=["TEXT", "IMAGE"])
    for prompt, config in [
        ("a lamp", image_config()),
        ("a lamp", text_and_image),
        ("gore", image_config()),
        ("a knife", image_config()),
    ]:
        client.models.generate_content(model="gemini-3-pro-image", contents=prompt, config=config)
    assert len(recorder.bodies) == 4
    for status, body in recorder.bodies:
        assert status == 200
        types.GenerateContentResponse.model_validate(body)
    recorder.close()


@pytest.mark.parametrize(
    "settings",
    [
        {"no_image_rate": 1.0},
        {"thumbnails": True},
        {"image_format_default": "jpeg"},
    ],
)
def test_other_answer_shapes_validate_strictly(simulator: SimulatorFactory, settings: dict[str, Any]) -> None:
    sim = simulator(**settings)
    png = base64.b64encode(png_bytes()).decode()
    parts = [{"text": "x"}, {"inline_data": {"mime_type": "image/png", "data": png}}]
    payload = {"contents": [{"parts": parts}]}
    response = httpx.post(sim.url + PRO, json=payload, headers={"x-goog-api-key": KEY})
    assert response.status_code == 200
    types.GenerateContentResponse.model_validate(response.json())


def test_genai_surfaces_a_429_with_retry_info(simulator: SimulatorFactory) -> None:
    sim = simulator(rpm=1)
    client = gemini_client(sim)
    client.models.generate_content(model="gemini-3-pro-image", contents="one", config=image_config())
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-3-pro-image", contents="two", config=image_config())
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"
    details = caught.value.details["error"]["details"]
    retry = next(d for d in details if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
    assert retry["retryDelay"].endswith("s") and float(retry["retryDelay"][:-1]) > 0
    assert sim.stats()["by_status"] == {"200": 1, "429": 1}  # the SDK did not retry on its own


def test_genai_wrong_key_is_a_client_error(simulator: SimulatorFactory) -> None:
    sim = simulator()
    options = types.HttpOptions(base_url=sim.url, api_version="v1beta")
    client = genai.Client(api_key="wrong", http_options=options)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-3-pro-image", contents="x", config=image_config())
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"


def openai_client(sim: RunningSimulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key=KEY, max_retries=0)


def test_openai_generate_b64_json_decodes(simulator: SimulatorFactory) -> None:
    sim = simulator()
    result = openai_client(sim).images.generate(
        model="gpt-image-1", prompt="a lamp", size="1024x1024", response_format="b64_json"
    )
    assert result.data and result.data[0].b64_json
    assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (1024, 1024)
    assert result.usage and result.usage.output_tokens == 1056
    assert sim.requests(1)[0]["auth"] == "bearer"


def test_openai_edit_with_two_images(simulator: SimulatorFactory) -> None:
    sim = simulator()
    images = [("a.png", png_bytes(), "image/png"), ("b.png", png_bytes(), "image/png")]
    result = openai_client(sim).images.edit(
        model="gpt-image-1", image=images, prompt="merge", size="1024x1536"
    )
    assert result.data and result.data[0].b64_json
    assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (1024, 1536)
    assert sim.stats()["input_images_received"] == 2


def test_openai_rate_limit_error(simulator: SimulatorFactory) -> None:
    sim = simulator(rpm=1)
    client = openai_client(sim)
    client.images.generate(model="gpt-image-1", prompt="one")
    with pytest.raises(openai.RateLimitError) as caught:
        client.images.generate(model="gpt-image-1", prompt="two")
    assert caught.value.code == "rate_limit_exceeded"
    assert float(caught.value.response.headers["retry-after"]) > 0


def test_genai_reads_three_pro_thoughts_and_signatures(simulator: SimulatorFactory) -> None:
    sim = simulator()
    recorder = RecordingClient()
    client = gemini_client(sim, recorder)
    config = types.GenerateContentConfig(response_modalities=["TEXT", "IMAGE"])
    response = client.models.generate_content(model="gemini-3-pro-image", contents="a lamp", config=config)
    assert response.candidates and response.candidates[0].content
    parts = response.candidates[0].content.parts or []
    assert parts[0].thought is True and parts[0].text
    assert [part.thought for part in parts[1:]] == [None, None]
    image = next(part for part in parts if part.inline_data)
    assert isinstance(image.thought_signature, bytes) and image.thought_signature
    usage = response.usage_metadata
    assert usage and usage.thoughts_token_count and usage.candidates_token_count == 1120
    assert usage.total_token_count == (usage.prompt_token_count or 0) + 1120 + usage.thoughts_token_count
    assert response.model_version == "gemini-3-pro-image"
    [(status, body)] = recorder.bodies
    assert status == 200
    types.GenerateContentResponse.model_validate(body)
    recorder.close()


def test_genai_surfaces_the_developer_instruction_400(simulator: SimulatorFactory) -> None:
    sim = simulator()
    client = gemini_client(sim)
    config = types.GenerateContentConfig(response_modalities=["IMAGE"], system_instruction="be terse")
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash-image", contents="a lamp", config=config)
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    assert caught.value.message == "Developer instruction is not enabled for models/gemini-2.5-flash-image"


def test_genai_on_v1_gets_the_unknown_response_modalities_400(simulator: SimulatorFactory) -> None:
    sim = simulator()
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=sim.url, api_version="v1"))
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-3-pro-image", contents="a lamp", config=image_config())
    assert caught.value.code == 400 and caught.value.message
    assert 'Unknown name "responseModalities"' in caught.value.message
    response = client.models.generate_content(model="gemini-3-pro-image", contents="a lamp")  # no modalities
    assert first_image(response).size == (1024, 1024)


@pytest.mark.parametrize("key", ["outputMimeType", "output_mime_type"])
def test_output_mime_type_is_refused_by_sdk_and_server_alike(simulator: SimulatorFactory, key: str) -> None:
    sim = simulator()
    jpeg = types.GenerateContentConfig(image_config=types.ImageConfig(output_mime_type="image/jpeg"))
    client = gemini_client(sim)
    with pytest.raises(ValueError, match="output_mime_type"):  # the SDK will not even send it...
        client.models.generate_content(model="gemini-3-pro-image", contents="x", config=jpeg)
    payload = {
        "contents": [{"parts": [{"text": "x"}]}],
        "generationConfig": {"imageConfig": {key: "image/jpeg"}},
    }
    response = httpx.post(sim.url + PRO, json=payload, headers={"x-goog-api-key": KEY})
    with pytest.raises(errors.ClientError) as caught:  # ...and the server refuses it from raw clients
        errors.APIError.raise_for_response(response)
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    assert caught.value.message == (
        f"Invalid JSON payload received. Unknown name \"{key}\" at 'generation_config.image_config': "
        "Cannot find field."
    )


@pytest.mark.parametrize("settings", HOSTILE_200S)
@pytest.mark.parametrize("path", [PRO, FLASH])
def test_hostile_gemini_200s_still_validate_strictly(
    simulator: SimulatorFactory, settings: dict[str, Any], path: str
) -> None:
    sim = simulator(**settings)
    response = httpx.post(
        sim.url + path,
        json={"contents": [{"parts": [{"text": "a lamp"}]}]},
        headers={"x-goog-api-key": KEY},
        timeout=30,
    )
    assert response.status_code == 200
    types.GenerateContentResponse.model_validate(response.json())
    assert sim.stats()["faults"] == {next(iter(settings)).removesuffix("_rate"): 1}


@pytest.mark.parametrize("settings", HOSTILE_200S)
def test_hostile_openai_200s_still_validate_strictly(
    simulator: SimulatorFactory, settings: dict[str, Any]
) -> None:
    sim = simulator(**settings)
    result = openai_client(sim).images.generate(model="gpt-image-1", prompt="a lamp", size="256x256")
    assert result.data and result.data[0].b64_json
    raw = httpx.post(
        sim.url + GENERATIONS,
        json={"model": "gpt-image-1", "prompt": "a lamp", "size": "256x256"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    ImagesResponse.model_validate(raw.json())


def test_openai_answer_validates_strictly_with_every_field(simulator: SimulatorFactory) -> None:
    sim = simulator()
    result = openai_client(sim).images.generate(
        model="gpt-image-1", prompt="a lamp", size="1024x1536", quality="medium", background="transparent"
    )
    assert (result.size, result.quality, result.background, result.output_format) == (
        "1024x1536",
        "medium",
        "transparent",
        "png",
    )
    assert result.usage and result.usage.output_tokens_details
    assert result.usage.output_tokens_details.image_tokens == 1056
    ImagesResponse.model_validate(result.model_dump(exclude_unset=True))


@pytest.mark.parametrize("status", [429, 400])
def test_genai_maps_key_echo_errors_and_keeps_the_key_in_them(
    simulator: SimulatorFactory, status: int
) -> None:
    sim = simulator(echo_key_rate=1.0, echo_key_status=status)
    client = gemini_client(sim)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-3-pro-image", contents="x", config=image_config())
    assert caught.value.code == status
    assert KEY in str(caught.value.details)  # what a careless client would log


@pytest.mark.parametrize(("status", "error"), [(429, openai.RateLimitError), (400, openai.BadRequestError)])
def test_openai_maps_key_echo_errors(
    simulator: SimulatorFactory, status: int, error: type[Exception]
) -> None:
    sim = simulator(echo_key_rate=1.0, echo_key_status=status)
    with pytest.raises(error) as caught:
        openai_client(sim).images.generate(model="gpt-image-1", prompt="x")
    assert KEY in str(caught.value)
