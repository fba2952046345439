"""google-genai's batches and files modules, as an independent client, accept the simulator.

The SDK maps a batch operation through ``_BatchJob_from_mldev`` and drops unknown fields before
validating, so on top of driving it we validate what it would parse with the strict models
(``extra="forbid"``): every inlined ``GenerateContentResponse``, every per-request ``JobError`` and
every ``File`` resource. A simulator answer those models reject is a simulator bug.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import types

from nanobatch.simulator.server import RunningSimulator
from nanobatch.simulator.testing import SimulatorFactory, wait_until

pytestmark = pytest.mark.integration

KEY = "test-key"
FLASH = "gemini-2.5-flash-image"
PRO = "gemini-3-pro-image"


@pytest.fixture
def simulator() -> Iterator[SimulatorFactory]:
    with SimulatorFactory(latency=(0, 0), api_key=KEY, thumbnails=True, batch_turnaround=0) as factory:
        yield factory


def client_for(sim: RunningSimulator) -> genai.Client:
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=sim.url, api_version="v1beta"))


def image_config(ratio: str = "3:2") -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        response_modalities=["IMAGE"], image_config=types.ImageConfig(aspect_ratio=ratio)
    )


def wait_done(client: genai.Client, name: str) -> types.BatchJob:
    def probe() -> types.BatchJob | None:
        job = client.batches.get(name=name)
        return job if job.done else None

    return wait_until(probe, timeout=20, message=f"{name} done")


def raw(sim: RunningSimulator, path: str) -> dict[str, Any]:
    return dict(httpx.get(sim.url + path, headers={"x-goog-api-key": KEY}).json())


def test_inline_job_created_polled_and_read_through_the_sdk(simulator: SimulatorFactory) -> None:
    sim = simulator()
    client = client_for(sim)
    src: list[types.InlinedRequestDict] = [
        {"contents": "a red bicycle", "config": image_config(), "metadata": {"key": "sku-1"}},
        {"contents": "a blue kettle", "config": image_config("1:1"), "metadata": {"key": "sku-2"}},
        {"contents": "bad ratio", "config": image_config("7:1"), "metadata": {"key": "sku-3"}},
    ]
    created = client.batches.create(model=FLASH, src=src, config={"display_name": "overnight"})
    assert created.name and created.name.startswith("batches/") and created.display_name == "overnight"
    job = wait_done(client, created.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED and job.model == f"models/{FLASH}"
    assert job.dest and job.dest.inlined_responses and len(job.dest.inlined_responses) == 3
    first, second, third = job.dest.inlined_responses
    assert [r.metadata for r in (first, second, third)] == [
        {"key": "sku-1"},
        {"key": "sku-2"},
        {"key": "sku-3"},
    ]
    assert first.response and first.response.parts and first.response.parts[0].inline_data
    assert second.response and third.error and third.error.code == 3 and "7:1" in (third.error.message or "")
    assert job.create_time and job.end_time and job.end_time >= job.create_time


def test_inline_answers_validate_strictly(simulator: SimulatorFactory) -> None:
    sim = simulator(batch_request_fail_rate=0.5, seed=11)
    client = client_for(sim)
    src: list[types.InlinedRequestDict] = [
        {"contents": f"lamp {i}", "config": image_config(), "metadata": {"key": str(i)}} for i in range(8)
    ]
    name = client.batches.create(model=PRO, src=src).name
    assert name
    wait_done(client, name)
    answers = raw(sim, f"/v1beta/{name}")["response"]["inlinedResponses"]["inlinedResponses"]
    kinds = set()
    for answer in answers:
        parsed = types.InlinedResponse.model_validate(answer)
        if parsed.response is not None:
            types.GenerateContentResponse.model_validate(answer["response"])
            kinds.add("response")
        else:
            assert parsed.error is not None and parsed.error.code == 13
            kinds.add("error")
    assert kinds == {"response", "error"}


def test_list_cancel_and_delete_through_the_sdk(simulator: SimulatorFactory) -> None:
    sim = simulator(batch_turnaround=3600)
    client = client_for(sim)
    names = [client.batches.create(model=FLASH, src=[{"contents": f"p{i}"}]).name for i in range(3)]
    listed = [job.name for job in client.batches.list(config={"page_size": 2})]
    assert sorted(listed) == sorted(names)  # the pager followed nextPageToken
    assert all(job.state == types.JobState.JOB_STATE_PENDING for job in client.batches.list())
    client.batches.cancel(name=names[0])
    assert client.batches.get(name=names[0]).state == types.JobState.JOB_STATE_CANCELLED
    client.batches.delete(name=names[1])
    with pytest.raises(genai.errors.ClientError) as caught:
        client.batches.get(name=names[1])
    assert caught.value.code == 404


def test_file_job_uploaded_and_downloaded_through_the_sdk(simulator: SimulatorFactory) -> None:
    sim = simulator()
    client = client_for(sim)
    lines = [
        {"key": f"sku-{i}", "request": {"contents": [{"parts": [{"text": f"a chair {i}"}]}]}}
        for i in range(4)
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    uploaded = client.files.upload(
        file=io.BytesIO(data), config={"mime_type": "application/jsonl", "display_name": "chairs"}
    )
    assert uploaded.name and uploaded.size_bytes == len(data) and uploaded.source == types.FileSource.UPLOADED
    assert client.files.get(name=uploaded.name).display_name == "chairs"
    job = wait_done(client, client.batches.create(model=FLASH, src=uploaded.name).name or "")
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED and job.dest and job.dest.file_name
    results = client.files.download(file=job.dest.file_name)
    parsed = [json.loads(line) for line in results.splitlines()]
    assert [p["key"] for p in parsed] == [f"sku-{i}" for i in range(4)]
    for line in parsed:
        types.GenerateContentResponse.model_validate(line["response"])
    generated = client.files.get(name=job.dest.file_name)
    assert generated.download_uri and generated.source == types.FileSource.GENERATED
    assert client.files.download(file=generated) == results


def test_big_uploads_arrive_whole_in_sdk_sized_chunks(simulator: SimulatorFactory) -> None:
    sim = simulator()
    client = client_for(sim)
    data = b"x" * (8 * 1024 * 1024 + 1000)  # the SDK sends 8 MiB chunks: two requests
    uploaded = client.files.upload(file=io.BytesIO(data), config={"mime_type": "application/jsonl"})
    assert uploaded.name
    stored = sim.app.uploads.get(uploaded.name)
    assert stored is not None and stored.path.stat().st_size == len(data)


def test_file_resources_validate_strictly(simulator: SimulatorFactory) -> None:
    sim = simulator()
    client = client_for(sim)
    uploaded = client.files.upload(file=io.BytesIO(b"{}\n"), config={"mime_type": "application/jsonl"})
    types.File.model_validate(raw(sim, f"/v1beta/{uploaded.name}"))
    listing = raw(sim, "/v1beta/files")
    assert [types.File.model_validate(f).name for f in listing["files"]] == [uploaded.name]


def test_service_tier_from_the_sdk_reaches_the_simulator(simulator: SimulatorFactory) -> None:
    sim = simulator(flex_fail_rates={503: 1.0})
    client = client_for(sim)
    config = types.GenerateContentConfig(
        response_modalities=["IMAGE"], service_tier=types.ServiceTier.PRIORITY
    )
    response = client.models.generate_content(model=FLASH, contents="a lamp", config=config)
    assert response.parts and response.parts[0].inline_data
    flex = types.GenerateContentConfig(response_modalities=["IMAGE"], service_tier="flex")
    with pytest.raises(genai.errors.ServerError) as caught:
        client.models.generate_content(model=FLASH, contents="a lamp", config=flex)
    assert caught.value.code == 503
    assert sim.stats()["by_tier"] == {"priority": 1, "flex": 1}
