"""GeminiBatchClient against the simulator: the whole round trip, inline and through a file."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from nanobatch.simulator.server import RunningSimulator
from nanobatch.simulator.testing import SimulatorFactory, wait_until
from nanobatch.workers.errors import ContentBlocked, InvalidRequest, ProviderError, UpstreamUnavailable
from nanobatch.workers.providers.base import ImageRequest, ImageResult, ProviderConfig
from nanobatch.workers.providers.gemini import build_body
from nanobatch.workers.providers.gemini_batch import (
    UPLOAD_GRANULARITY,
    BatchJob,
    BatchState,
    GeminiBatchClient,
)
from nanobatch.workers.providers.service_tier import with_service_tier

pytestmark = pytest.mark.integration

KEY = "sim-key"
MODEL = "gemini-2.5-flash-image"


@pytest.fixture
def simulator() -> Iterator[SimulatorFactory]:
    with SimulatorFactory(
        latency=(0, 0), thumbnails=True, batch_turnaround=0, api_key=KEY, seed=5
    ) as factory:
        yield factory


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def batch_client(sim: RunningSimulator, http: httpx.Client, **options: Any) -> GeminiBatchClient:
    return GeminiBatchClient(ProviderConfig(base_url=sim.url, api_key=KEY), http, **options)


def body(prompt: str, ratio: str = "1:1") -> dict[str, Any]:
    return build_body(ImageRequest(model=MODEL, prompt=prompt, aspect_ratio=ratio))


def wait_done(client: GeminiBatchClient, job: BatchJob) -> BatchJob:
    return wait_until(lambda: (seen := client.get(job.name)).done and seen, timeout=30, message=job.name)


def test_inline_round_trip_classifies_every_result(simulator: SimulatorFactory, http: httpx.Client) -> None:
    sim = simulator(block_words=("knife",))
    client = batch_client(sim, http)
    requests = [("sku-1", body("a red lamp", "4:5")), ("sku-2", body("a knife")), ("sku-3", body("x", "7:1"))]
    job = wait_done(client, client.create_inline(MODEL, requests, display_name="night"))
    assert job.state is BatchState.SUCCEEDED and job.stats.requests == 3 and job.display_name == "night"
    outcomes = dict(client.results(job))
    image = outcomes["sku-1"]
    assert isinstance(image, ImageResult) and image.mime_type == "image/png"
    width, height = Image.open(io.BytesIO(image.data)).size
    assert height > width  # 4:5, thumbnail size
    assert isinstance(outcomes["sku-2"], ContentBlocked)
    assert isinstance(outcomes["sku-3"], InvalidRequest) and "7:1" in outcomes["sku-3"].message


def test_a_big_batch_goes_through_an_uploaded_file(simulator: SimulatorFactory, http: httpx.Client) -> None:
    sim = simulator(batch_request_fail_rate=0.1)
    client = batch_client(sim, http, inline_limit_bytes=10_000, chunk_bytes=UPLOAD_GRANULARITY)
    requests = [(f"sku-{i:03d}", body(f"chair number {i} " + "in oak " * 300)) for i in range(150)]
    job = wait_done(client, client.submit(MODEL, iter(requests), display_name="chairs"))
    assert job.responses_file and job.operation["metadata"]["inputConfig"]["fileName"].startswith("files/")
    assert sim.stats()["batch"]["files_uploaded"] == 1
    outcomes = list(client.results(job))
    assert [key for key, _ in outcomes] == [key for key, _ in requests]
    failed = [o for _, o in outcomes if isinstance(o, ProviderError)]
    assert failed and all(isinstance(o, UpstreamUnavailable) for o in failed)
    assert job.stats.failed == len(failed) and job.stats.succeeded == len(outcomes) - len(failed)


def test_cancel_delete_list_and_missing_jobs(simulator: SimulatorFactory, http: httpx.Client) -> None:
    sim = simulator(batch_turnaround=3600)
    client = batch_client(sim, http)
    first = client.create_inline(MODEL, [("a", body("a"))])
    second = client.submit(MODEL, [("b", body("b"))])
    assert {job.name for job in client.list(page_size=1)} == {first.name, second.name}
    client.cancel(first.name)
    assert client.get(first.name).state is BatchState.CANCELLED
    with pytest.raises(ValueError, match="no results"):
        list(client.results(client.get(first.name)))
    client.delete(second.name)
    with pytest.raises(InvalidRequest):
        client.get(second.name)


def test_job_failures_are_visible_on_the_job(simulator: SimulatorFactory, http: httpx.Client) -> None:
    sim = simulator(batch_fail_rate=1.0)
    client = batch_client(sim, http)
    job = wait_done(client, client.create_inline(MODEL, [("a", body("a"))]))
    assert job.state is BatchState.FAILED and job.error and "internal error" in job.error


def test_a_wrong_key_is_a_permanent_error_without_the_key(
    simulator: SimulatorFactory, http: httpx.Client
) -> None:
    sim = simulator()
    wrong = "AIzaSyWRONG-0123456789abcdefghijklmno"
    client = GeminiBatchClient(ProviderConfig(base_url=sim.url, api_key=wrong), http)
    with pytest.raises(InvalidRequest) as caught:
        client.upload_jsonl([("a", body("a"))])
    assert wrong not in str(caught.value)


def test_service_tier_field_is_honoured_by_the_simulator(
    simulator: SimulatorFactory, http: httpx.Client
) -> None:
    sim = simulator(flex_fail_rates={429: 1.0})
    url = f"{sim.url}/v1beta/models/{MODEL}:generateContent"
    flex = http.post(url, json=with_service_tier(body("a"), "flex"), headers={"x-goog-api-key": KEY})
    standard = http.post(url, json=with_service_tier(body("a"), None), headers={"x-goog-api-key": KEY})
    assert (flex.status_code, standard.status_code) == (429, 200)
    assert sim.stats()["by_tier"] == {"flex": 1, "standard": 1}
