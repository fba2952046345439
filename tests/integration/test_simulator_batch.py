"""The simulator's Batch API, Files API and service tiers over real HTTP (raw httpx, no SDK)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from nanobatch.simulator.server import RunningSimulator
from nanobatch.simulator.testing import SimulatorFactory, wait_until

pytestmark = pytest.mark.integration

FLASH = "gemini-2.5-flash-image"
CREATE = f"/v1beta/models/{FLASH}:batchGenerateContent"
KEY = "sim-key"


@pytest.fixture
def simulator() -> Iterator[SimulatorFactory]:
    with SimulatorFactory(latency=(0, 0), thumbnails=True, batch_turnaround=0, seed=7) as factory:
        yield factory


def request(prompt: str, ratio: str = "1:1") -> dict[str, Any]:
    return {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": ratio}},
    }


def inline_body(*prompts: str, ratio: str = "1:1") -> dict[str, Any]:
    items = [{"request": request(p, ratio), "metadata": {"key": f"k{i}"}} for i, p in enumerate(prompts)]
    return {"batch": {"displayName": "night", "inputConfig": {"requests": {"requests": items}}}}


def create(sim: RunningSimulator, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = httpx.post(sim.url + CREATE, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def finished(sim: RunningSimulator, name: str, **headers: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        operation = httpx.get(f"{sim.url}/v1beta/{name}", headers=headers).json()
        return operation if operation.get("done") else None

    return wait_until(probe, timeout=20, message=f"{name} done")


def upload(sim: RunningSimulator, data: bytes, chunk: int | None = None) -> dict[str, Any]:
    start = httpx.post(
        sim.url + "/upload/v1beta/files",
        json={"file": {"displayName": "requests"}},
        headers={
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(len(data)),
            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
        },
    )
    assert start.status_code == 200, start.text
    url, offset, step = start.headers["x-goog-upload-url"], 0, chunk or len(data)
    while True:
        piece = data[offset : offset + step]
        last = offset + len(piece) >= len(data)
        answer = httpx.post(
            url,
            content=piece,
            headers={
                "X-Goog-Upload-Command": "upload, finalize" if last else "upload",
                "X-Goog-Upload-Offset": str(offset),
            },
        )
        assert answer.status_code == 200, answer.text
        offset += len(piece)
        if last:
            assert answer.headers["x-goog-upload-status"] == "final"
            return dict(answer.json()["file"])
        assert answer.headers["x-goog-upload-status"] == "active"


def jsonl(*keys: str) -> bytes:
    return b"".join(json.dumps({"key": k, "request": request(f"prompt {k}")}).encode() + b"\n" for k in keys)


def test_inline_job_answers_in_input_order_with_the_generate_content_images(
    simulator: SimulatorFactory,
) -> None:
    sim = simulator()
    operation = create(sim, inline_body("a red lamp", "a blue cat", "a green hat", ratio="16:9"))
    assert (
        operation["name"].startswith("batches/")
        and operation["metadata"]["batchStats"]["requestCount"] == "3"
    )
    done = finished(sim, operation["name"])
    assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    answers = done["response"]["inlinedResponses"]["inlinedResponses"]
    assert [a["metadata"]["key"] for a in answers] == ["k0", "k1", "k2"]
    assert done["metadata"]["output"]["inlinedResponses"] == done["response"]["inlinedResponses"]
    part = answers[0]["response"]["candidates"][0]["content"]["parts"][0]["inlineData"]
    image = Image.open(io.BytesIO(base64.b64decode(part["data"])))
    assert max(image.size) == 256 and image.size[0] > image.size[1]  # thumbnails mode, 16:9
    assert sim.stats()["batch"] == {"jobs_created": 1, "requests_answered": 3, "jobs_succeeded": 1}


def test_invalid_requests_and_injected_failures_are_per_request_errors(simulator: SimulatorFactory) -> None:
    sim = simulator(block_words=("knife",))
    body = inline_body("a lamp", "a knife", "a hat")
    body["batch"]["inputConfig"]["requests"]["requests"][2]["request"]["generationConfig"]["imageConfig"] = {
        "aspectRatio": "7:1"
    }
    answers = finished(sim, create(sim, body)["name"])["response"]["inlinedResponses"]["inlinedResponses"]
    assert "response" in answers[0]
    blocked = answers[1]["response"]  # a safety block is a 200 answer without an image, as upstream
    assert "inlineData" not in json.dumps(blocked) and (
        "promptFeedback" in blocked or "candidates" in blocked
    )
    assert answers[2]["error"]["code"] == 3 and "7:1" in answers[2]["error"]["message"]

    failing = simulator(batch_request_fail_rate=1.0)
    done = finished(failing, create(failing, inline_body("a", "b"))["name"])
    errors = [a["error"] for a in done["response"]["inlinedResponses"]["inlinedResponses"]]
    assert [e["code"] for e in errors] == [13, 13]
    assert done["metadata"]["batchStats"]["failedRequestCount"] == "2"


@pytest.mark.parametrize(
    ("setting", "state"), [("batch_fail_rate", "FAILED"), ("batch_expire_rate", "EXPIRED")]
)
def test_injected_job_failure_and_expiry_end_without_results(
    simulator: SimulatorFactory, setting: str, state: str
) -> None:
    sim = simulator(**{setting: 1.0})
    done = finished(sim, create(sim, inline_body("a"))["name"])
    assert done["metadata"]["state"] == f"BATCH_STATE_{state}"
    assert "response" not in done and "output" not in done["metadata"]
    assert ("error" in done) == (state == "FAILED")


def test_a_job_waits_its_turnaround_and_cancel_ends_it_at_once(simulator: SimulatorFactory) -> None:
    sim = simulator(batch_turnaround=3600)
    name = create(sim, inline_body("a"))["name"]
    assert httpx.get(f"{sim.url}/v1beta/{name}").json()["metadata"]["state"] == "BATCH_STATE_PENDING"
    assert httpx.post(f"{sim.url}/v1beta/{name}:cancel").json() == {}
    operation = httpx.get(f"{sim.url}/v1beta/{name}").json()
    assert operation["metadata"]["state"] == "BATCH_STATE_CANCELLED" and operation["done"] is True
    assert httpx.delete(f"{sim.url}/v1beta/{name}").json() == {}
    assert httpx.get(f"{sim.url}/v1beta/{name}").status_code == 404


def test_list_pages_newest_first_without_inline_results(simulator: SimulatorFactory) -> None:
    sim = simulator()
    names = [create(sim, inline_body(f"p{i}"))["name"] for i in range(3)]
    for name in names:
        finished(sim, name)
    first = httpx.get(sim.url + "/v1beta/batches", params={"pageSize": 2}).json()
    second = httpx.get(
        sim.url + "/v1beta/batches", params={"pageSize": 2, "pageToken": first["nextPageToken"]}
    ).json()
    listed = [op["name"] for op in first["operations"] + second["operations"]]
    assert sorted(listed) == sorted(names) and "nextPageToken" not in second
    assert all("response" not in op for op in first["operations"])


def test_file_job_streams_jsonl_in_and_out(simulator: SimulatorFactory) -> None:
    sim = simulator()
    data = jsonl(*(f"sku-{i}" for i in range(5))) + b"not json\n"
    stored = upload(sim, data, chunk=100)
    assert stored["sizeBytes"] == str(len(data)) and stored["source"] == "UPLOADED"
    body = {"batch": {"displayName": "file job", "inputConfig": {"fileName": stored["name"]}}}
    done = finished(sim, create(sim, body)["name"])
    results_file = done["response"]["responsesFile"]
    assert done["metadata"]["inputConfig"] == {"fileName": stored["name"]}
    assert done["metadata"]["batchStats"]["successfulRequestCount"] == "5"
    lines = httpx.get(
        f"{sim.url}/v1beta/{results_file}:download", params={"alt": "media"}
    ).content.splitlines()
    parsed = [json.loads(line) for line in lines]
    assert [p["key"] for p in parsed[:5]] == [f"sku-{i}" for i in range(5)]
    assert all("response" in p for p in parsed[:5]) and parsed[5]["error"]["code"] == 3
    resource = httpx.get(f"{sim.url}/v1beta/{results_file}").json()
    assert resource["source"] == "GENERATED" and resource["downloadUri"].endswith(":download?alt=media")
    also = httpx.get(f"{sim.url}/download/v1beta/{results_file}:download", params={"alt": "media"})
    assert also.content.splitlines() == lines


def test_uploaded_files_cannot_be_downloaded_and_missing_ones_are_refused(
    simulator: SimulatorFactory,
) -> None:
    sim = simulator()
    stored = upload(sim, jsonl("a"))
    assert httpx.get(f"{sim.url}/v1beta/{stored['name']}:download?alt=media").status_code == 400
    assert httpx.get(f"{sim.url}/v1beta/files/nosuchfile").status_code == 403
    body = {"batch": {"inputConfig": {"fileName": "files/nosuchfile"}}}
    assert httpx.post(sim.url + CREATE, json=body).status_code == 404


def test_upload_offsets_must_follow_what_was_received(simulator: SimulatorFactory) -> None:
    sim = simulator()
    start = httpx.post(
        sim.url + "/upload/v1beta/files",
        headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start"},
    )
    url = start.headers["x-goog-upload-url"]
    first = httpx.post(
        url, content=b"abc", headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "0"}
    )
    assert first.headers["x-goog-upload-size-received"] == "3"
    wrong = httpx.post(
        url, content=b"def", headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "0"}
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_create_is_refused_over_the_inline_limit_for_unknown_models_and_without_a_key(
    simulator: SimulatorFactory,
) -> None:
    sim = simulator(batch_inline_limit_bytes=2000, api_key=KEY)
    auth = {"x-goog-api-key": KEY}
    too_big = httpx.post(sim.url + CREATE, json=inline_body("x" * 3000), headers=auth)
    assert (
        too_big.status_code == 400 and "exceeds the limit: 2000 bytes" in too_big.json()["error"]["message"]
    )
    unknown = httpx.post(
        sim.url + "/v1beta/models/gpt-image-1:batchGenerateContent", json=inline_body("a"), headers=auth
    )
    assert unknown.status_code == 404
    assert httpx.post(sim.url + CREATE, json=inline_body("a")).status_code == 403
    assert httpx.get(sim.url + "/v1beta/batches").status_code == 403
    assert (
        httpx.post(sim.url + "/upload/v1beta/files", headers={"x-goog-api-key": "wrong"}).status_code == 400
    )
    assert finished(sim, create(sim, inline_body("a"), **auth)["name"], **auth)["done"] is True


def test_stopping_the_simulator_stops_jobs_and_removes_its_files(simulator: SimulatorFactory) -> None:
    sim = simulator(batch_turnaround=3600)
    create(sim, inline_body("a"))
    folder = sim.app.workspace.path()
    assert any(folder.iterdir())
    sim.stop()
    assert not folder.exists()
    assert all(not job.thread.is_alive() for job in sim.app.batches._jobs.values() if job.thread)


def test_a_given_batch_dir_is_kept(simulator: SimulatorFactory, tmp_path: Path) -> None:
    sim = simulator(batch_dir=str(tmp_path / "sim"))
    finished(sim, create(sim, inline_body("a"))["name"])
    sim.stop()
    assert any((tmp_path / "sim").iterdir())


# -- service tiers ------------------------------------------------------------------------------


GENERATE = f"/v1beta/models/{FLASH}:generateContent"


def test_flex_requests_meet_capacity_errors_that_standard_ones_do_not(simulator: SimulatorFactory) -> None:
    sim = simulator(flex_fail_rates={503: 1.0})
    standard = httpx.post(sim.url + GENERATE, json=request("a lamp"))
    flex = httpx.post(sim.url + GENERATE, json={**request("a lamp"), "serviceTier": "flex"})
    priority = httpx.post(sim.url + GENERATE, json={**request("a lamp"), "serviceTier": "priority"})
    assert (standard.status_code, flex.status_code, priority.status_code) == (200, 503, 200)
    assert flex.json()["error"]["status"] == "UNAVAILABLE"
    stats = sim.stats()
    assert stats["faults"] == {"flex_503": 1}
    assert stats["by_tier"] == {"standard": 1, "flex": 1, "priority": 1}
    assert [r["service_tier"] for r in sim.requests(3)] == ["standard", "flex", "priority"]


def test_flex_429s_are_google_shaped(simulator: SimulatorFactory) -> None:
    sim = simulator(flex_fail_rates={429: 1.0})
    response = httpx.post(sim.url + GENERATE, json={**request("a lamp"), "service_tier": "FLEX"})
    assert response.status_code == 429 and response.json()["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_an_unknown_tier_is_a_400(simulator: SimulatorFactory) -> None:
    sim = simulator()
    response = httpx.post(sim.url + GENERATE, json={**request("a lamp"), "serviceTier": "turbo"})
    assert response.status_code == 400 and "service_tier" in response.json()["error"]["message"]
