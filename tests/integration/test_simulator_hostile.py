"""Hostile fault modes over real loopback HTTP: answers that are 200s (or errors) and still wrong.

Each mode is driven by its ``SimulatorConfig`` field (``truncated_rate``, ``oversized_rate`` +
``oversize_bytes``, ``trickle_rate`` + ``trickle_interval``/``trickle_limit``, ``echo_key_rate`` +
``echo_key_status``, ``larger_image_rate`` + ``larger_image_factor``) and counted in
``stats()["faults"]``; streamed answers a client walks away from are counted in
``stats()["abandoned"]``. Tests wait by polling the simulator's counters, never by sleeping.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.genai import types
from PIL import Image

from nanobatch.simulator.server import RunningSimulator
from nanobatch.simulator.testing import SimulatorFactory, wait_until

pytestmark = pytest.mark.integration

FLASH = "/v1beta/models/gemini-2.5-flash-image:generateContent"
PRO = "/v1beta/models/gemini-3-pro-image:generateContent"
GENERATIONS = "/v1/images/generations"
BODY = {"contents": [{"parts": [{"text": "a lamp"}]}], "generationConfig": {"responseModalities": ["IMAGE"]}}
OPENAI_BODY = {"model": "gpt-image-1", "prompt": "a lamp", "size": "256x256"}
KEY = "Sim-KEY-MixedCase-0123"


@pytest.fixture
def simulator() -> Iterator[SimulatorFactory]:
    with SimulatorFactory(latency=(0, 0), seed=1) as factory:
        yield factory


def gemini_image(payload: dict[str, Any]) -> bytes:
    """The bytes of the answer's (first non-thought) image, strictly base64-decoded."""
    parts = payload["candidates"][0]["content"]["parts"]
    inline = next(part["inlineData"] for part in parts if "inlineData" in part and not part.get("thought"))
    return base64.b64decode(inline["data"], validate=True)


def openai_image(payload: dict[str, Any]) -> bytes:
    return base64.b64decode(payload["data"][0]["b64_json"], validate=True)


def served(sim: RunningSimulator, path: str) -> bytes:
    """The image a request answers with, for the Gemini or the OpenAI route."""
    if path == GENERATIONS:
        return openai_image(httpx.post(sim.url + path, json=OPENAI_BODY, timeout=30).json())
    return gemini_image(httpx.post(sim.url + path, json=BODY, timeout=30).json())


# --- truncated -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "fmt"), [(FLASH, "png"), (FLASH, "jpeg"), (GENERATIONS, "png")])
def test_truncated_serves_valid_base64_of_half_the_real_file(
    simulator: SimulatorFactory, path: str, fmt: str
) -> None:
    whole = served(simulator(image_format_default=fmt), path)
    sim = simulator(image_format_default=fmt, truncated_rate=1.0)
    half = served(sim, path)
    assert half == whole[: len(whole) // 2]
    assert half[:3] in (b"\x89PN", b"\xff\xd8\xff")  # looks like the real thing
    with pytest.raises(OSError):  # PIL: truncated file / cannot identify
        Image.open(io.BytesIO(half)).load()
    assert sim.stats()["faults"] == {"truncated": 1} and sim.stats()["by_status"] == {"200": 1}


# --- larger_image ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "factor", "size"),
    [(FLASH, 2.0, (2048, 2048)), (GENERATIONS, 2.0, (512, 512)), (GENERATIONS, 1.5, (384, 384))],
)
def test_larger_image_is_bigger_than_asked(
    simulator: SimulatorFactory, path: str, factor: float, size: tuple[int, int]
) -> None:
    sim = simulator(larger_image_rate=1.0, larger_image_factor=factor)
    assert Image.open(io.BytesIO(served(sim, path))).size == size
    assert (sim.stats()["faults"], sim.stats()["by_status"]) == ({"larger_image": 1}, {"200": 1})
    assert sim.requests(1)[0]["width"] == size[0] / factor  # the summary keeps what was asked


def test_larger_image_thumbnail_headers_give_the_real_size(simulator: SimulatorFactory) -> None:
    sim = simulator(larger_image_rate=1.0, thumbnails=True)
    response = httpx.post(sim.url + FLASH, json=BODY)
    assert (response.headers["X-Sim-Image-Width"], response.headers["X-Sim-Image-Height"]) == ("2048", "2048")


# --- oversized ------------------------------------------------------------------------------------


def test_oversized_body_is_valid_json_of_the_configured_size(simulator: SimulatorFactory) -> None:
    size = 3 * 1024 * 1024 + 7
    sim = simulator(oversized_rate=1.0, oversize_bytes=size)
    response = httpx.post(sim.url + PRO, json=BODY, timeout=30)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content) == size
    payload = response.json()
    types.GenerateContentResponse.model_validate(payload)  # the official SDK takes it: only the size is wrong
    answer = [part for part in payload["candidates"][0]["content"]["parts"] if not part.get("thought")]
    assert set(answer[0]["text"]) == {"x"}
    assert Image.open(io.BytesIO(gemini_image(payload))).size == (1024, 1024)
    stats = sim.stats()
    assert (stats["faults"], stats["abandoned"], stats["by_status"]) == ({"oversized": 1}, {}, {"200": 1})


def test_oversized_openai_body_pads_revised_prompt(simulator: SimulatorFactory) -> None:
    sim = simulator(oversized_rate=1.0, oversize_bytes=1024 * 1024)
    payload = httpx.post(sim.url + GENERATIONS, json=OPENAI_BODY, timeout=30).json()
    assert len(payload["data"][0]["revised_prompt"]) > 900_000
    assert Image.open(io.BytesIO(openai_image(payload))).size == (256, 256)


def test_a_client_that_refuses_the_default_64_mib_is_seen_leaving(simulator: SimulatorFactory) -> None:
    sim = simulator(oversized_rate=1.0)
    with httpx.Client(timeout=30) as client, client.stream("POST", sim.url + PRO, json=BODY) as response:
        assert int(response.headers["content-length"]) == 64 * 1024 * 1024
        next(response.iter_raw())  # read a little, then give up as a size-capped client would
    wait_until(lambda: sim.stats()["abandoned"] == {"oversized": 1}, message="the stream to be abandoned")
    wait_until(lambda: sim.stats()["current_concurrency"] == 0, message="the request to end")


# --- trickle --------------------------------------------------------------------------------------


def test_trickle_sends_one_byte_at_a_time_and_stops_when_the_client_leaves(
    simulator: SimulatorFactory,
) -> None:
    sim = simulator(trickle_rate=1.0, trickle_interval=0.02, trickle_limit=60)
    with httpx.Client(timeout=httpx.Timeout(10, read=5)) as client:
        with client.stream("POST", sim.url + FLASH, json=BODY) as response:
            assert response.status_code == 200 and int(response.headers["content-length"]) > 1000
            pieces = iter(response.iter_raw())
            first = [next(pieces) for _ in range(5)]
        assert [len(piece) for piece in first] == [1] * 5  # a per-read timeout never fires
    wait_until(
        lambda: sim.stats()["abandoned"] == {"trickle": 1}, message="the trickle to notice the client left"
    )
    wait_until(lambda: sim.stats()["current_concurrency"] == 0, message="the trickling request to end")
    assert (sim.stats()["faults"], sim.stats()["by_status"]) == ({"trickle": 1}, {"200": 1})


def test_trickle_is_bounded_then_sends_the_rest(simulator: SimulatorFactory) -> None:
    sim = simulator(trickle_rate=1.0, trickle_interval=0.01, trickle_limit=0.2)
    response = httpx.post(sim.url + GENERATIONS, json=OPENAI_BODY, timeout=httpx.Timeout(30, read=5))
    assert Image.open(io.BytesIO(openai_image(response.json()))).size == (256, 256)
    assert sim.stats()["abandoned"] == {}


def test_stopping_the_simulator_ends_a_trickle(simulator: SimulatorFactory) -> None:
    sim = simulator(trickle_rate=1.0, trickle_interval=1.0, trickle_limit=3600)
    outcome: list[object] = []

    def patient_client() -> None:
        try:
            outcome.append(httpx.post(sim.url + FLASH, json=BODY, timeout=httpx.Timeout(60)).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=patient_client)
    thread.start()
    wait_until(lambda: sim.stats()["faults"] == {"trickle": 1}, message="the trickle to start")
    sim.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert outcome and isinstance(outcome[0], httpx.HTTPError)


# --- echo_key -------------------------------------------------------------------------------------


def _echoes(text: str) -> bool:
    return KEY in text and KEY.lower() in text


def test_gemini_429_echoes_the_key_in_message_quota_id_and_dimensions(simulator: SimulatorFactory) -> None:
    sim = simulator(echo_key_rate=1.0, api_key=KEY)
    response = httpx.post(sim.url + PRO, json=BODY, headers={"x-goog-api-key": KEY})
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED" and _echoes(error["message"])
    by_type = {detail["@type"].rsplit(".", 1)[-1]: detail for detail in error["details"]}
    [violation] = by_type["QuotaFailure"]["violations"]
    assert KEY in violation["quotaId"] and "PerMinute" in violation["quotaId"]
    assert _echoes(json.dumps(violation["quotaDimensions"]))
    assert by_type["RetryInfo"]["retryDelay"] == "1s"
    stats = sim.stats()
    assert (stats["faults"], stats["by_status"], stats["images_served"]) == ({"echo_key": 1}, {"429": 1}, 0)


def test_gemini_400_echoes_the_key_in_message_and_model_version(simulator: SimulatorFactory) -> None:
    sim = simulator(echo_key_rate=1.0, echo_key_status=400)
    response = httpx.post(sim.url + PRO + f"?key={KEY}", json=BODY)  # the key of any auth style
    error = response.json()["error"]
    assert (response.status_code, error["status"]) == (400, "INVALID_ARGUMENT")
    assert _echoes(error["message"])
    metadata = error["details"][0]["metadata"]
    assert KEY.lower() in metadata["modelVersion"] and KEY in metadata["consumer"]


@pytest.mark.parametrize("status", [429, 400])
def test_openai_errors_echo_the_key(simulator: SimulatorFactory, status: int) -> None:
    sim = simulator(echo_key_rate=1.0, echo_key_status=status)
    response = httpx.post(sim.url + GENERATIONS, json=OPENAI_BODY, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == status
    error = response.json()["error"]
    assert KEY in error["message"] and KEY.lower() in (error["param"] or error["message"])
    assert _echoes(error["message"] + (error["param"] or ""))


def test_echo_without_a_key_says_anonymous(simulator: SimulatorFactory) -> None:
    sim = simulator(echo_key_rate=1.0)
    assert "anonymous" in httpx.post(sim.url + PRO, json=BODY).json()["error"]["message"]


# --- all off --------------------------------------------------------------------------------------


def test_with_every_hostile_rate_at_zero_answers_are_whole_and_uncounted(simulator: SimulatorFactory) -> None:
    sim = simulator()
    assert Image.open(io.BytesIO(served(sim, FLASH))).size == (1024, 1024)
    assert Image.open(io.BytesIO(served(sim, GENERATIONS))).size == (256, 256)
    assert (sim.stats()["faults"], sim.stats()["abandoned"]) == ({}, {})
