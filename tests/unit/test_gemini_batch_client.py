"""GeminiBatchClient against httpx.MockTransport: the bytes we send and how every answer is read."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from nanobatch.simulator.google_errors import GRPC_CODES
from nanobatch.workers.errors import (
    ContentBlocked,
    DailyQuotaExhausted,
    InvalidRequest,
    NoImageReturned,
    RateLimited,
    UpstreamUnavailable,
)
from nanobatch.workers.providers.base import ImageRequest, ImageResult, ProviderConfig
from nanobatch.workers.providers.gemini import build_body
from nanobatch.workers.providers.gemini_batch import (
    RPC_CODES,
    UPLOAD_GRANULARITY,
    BatchState,
    GeminiBatchClient,
    InlineBatchTooLarge,
    error_of_status,
    inline_body,
    outcome_of,
    parse_operation,
)
from nanobatch.workers.providers.service_tier import ServiceTier, parse_service_tier, with_service_tier

BASE = "https://gemini.test"
KEY = "AIzaSyTEST-0123456789abcdefghijklmno"
Handler = Callable[[httpx.Request], httpx.Response]
MODEL = "gemini-2.5-flash-image"


def png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (0, 90, 200)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


IMAGE_RESPONSE = {
    "candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": png()}}]}}],
    "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 1290, "totalTokenCount": 1297},
}


def client(handler: Handler, **options: Any) -> GeminiBatchClient:
    config = ProviderConfig(base_url=BASE, api_key=KEY)
    return GeminiBatchClient(config, httpx.Client(transport=httpx.MockTransport(handler)), **options)


def operation(state: str = "BATCH_STATE_SUCCEEDED", **extra: Any) -> dict[str, Any]:
    """An operation shaped like a real one (counts as strings, both output copies)."""
    body: dict[str, Any] = {
        "name": "batches/abc123",
        "metadata": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": f"models/{MODEL}",
            "displayName": "night",
            "createTime": "2025-09-07T11:55:07.827892252Z",
            "updateTime": "2025-09-07T11:55:07.827892252Z",
            "batchStats": {"requestCount": "5", "pendingRequestCount": "2", "successfulRequestCount": "3"},
            "state": state,
            "name": "batches/abc123",
        },
    }
    return body | extra


def request_body(prompt: str = "a lamp") -> dict[str, Any]:
    return build_body(ImageRequest(model=MODEL, prompt=prompt))


# -- bodies and operations -----------------------------------------------------------------------


def test_inline_body_has_the_sdk_shape() -> None:
    body = json.loads(inline_body([("a", request_body()), ("b", request_body("x"))], "night", 10_000))
    items = body["batch"]["inputConfig"]["requests"]["requests"]
    assert body["batch"]["displayName"] == "night"
    assert [item["metadata"] for item in items] == [{"key": "a"}, {"key": "b"}]
    assert items[0]["request"] == request_body()


def test_inline_body_stops_at_the_limit_before_reading_everything() -> None:
    read: list[str] = []

    def requests() -> Iterator[tuple[str, dict[str, Any]]]:
        for i in range(1000):
            read.append(str(i))
            yield str(i), request_body("p" * 100)

    with pytest.raises(InlineBatchTooLarge):
        inline_body(requests(), None, 2_000)
    assert len(read) < 20


def test_create_inline_over_the_limit_sends_nothing() -> None:
    sent: list[httpx.Request] = []
    batch = client(lambda r: sent.append(r) or httpx.Response(200, json={}), inline_limit_bytes=500)
    with pytest.raises(InlineBatchTooLarge):
        batch.create_inline(MODEL, [("a", request_body("x" * 600))])
    assert sent == []


def test_create_inline_posts_to_batch_generate_content_with_the_key_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=operation("BATCH_STATE_PENDING"))

    job = client(handler).create_inline(f"models/{MODEL}", [("k", request_body())], display_name="night")
    assert str(seen[0].url) == f"{BASE}/v1beta/models/{MODEL}:batchGenerateContent"
    assert seen[0].headers["x-goog-api-key"] == KEY and seen[0].headers["content-type"] == "application/json"
    assert job.state is BatchState.PENDING and not job.done


def test_parse_operation_reads_string_counts_times_and_outputs() -> None:
    job = parse_operation(operation(done=True, response={"responsesFile": "files/out1"}))
    assert (job.name, job.model, job.display_name) == ("batches/abc123", f"models/{MODEL}", "night")
    assert (job.stats.requests, job.stats.pending, job.stats.succeeded, job.stats.failed) == (5, 2, 3, None)
    assert job.responses_file == "files/out1" and job.done and job.create_time
    failed = parse_operation(operation("BATCH_STATE_FAILED", error={"code": 13, "message": f"bad {KEY}"}))
    assert failed.error == "bad [REDACTED]"
    assert (
        parse_operation({"name": "batches/x", "metadata": {"state": "NEW"}}).state is BatchState.UNSPECIFIED
    )


# -- results -------------------------------------------------------------------------------------


def inline_job(*answers: dict[str, Any]) -> Any:
    output = {"inlinedResponses": {"inlinedResponses": list(answers)}}
    return parse_operation(operation(done=True, response={"@type": "t", **output}))


def test_inline_results_are_classified_like_standard_calls() -> None:
    daily = {
        "code": 8,
        "message": "quota",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel", "quotaValue": "100"}],
            }
        ],
    }
    job = inline_job(
        {"metadata": {"key": "ok"}, "response": IMAGE_RESPONSE},
        {"metadata": {"key": "blocked"}, "response": {"promptFeedback": {"blockReason": "SAFETY"}}},
        {"metadata": {"key": "empty"}, "response": {"candidates": [{"finishReason": "NO_IMAGE"}]}},
        {"metadata": {"key": "internal"}, "error": {"code": 13, "message": "boom"}},
        {"metadata": {"key": "bad"}, "error": {"code": 3, "message": "Unsupported aspect ratio"}},
        {"metadata": {"key": "daily"}, "error": daily},
        {"metadata": {"key": "http-style"}, "error": {"code": 429, "message": "slow down"}},
        {"metadata": {"key": "nothing"}},
    )
    outcomes = dict(client(lambda r: httpx.Response(500)).results(job))
    ok = outcomes["ok"]
    assert isinstance(ok, ImageResult) and ok.mime_type == "image/png" and ok.output_tokens == 1290
    assert isinstance(outcomes["blocked"], ContentBlocked)
    assert isinstance(outcomes["empty"], NoImageReturned)
    assert isinstance(outcomes["internal"], UpstreamUnavailable) and outcomes["internal"].status_code == 500
    assert isinstance(outcomes["bad"], InvalidRequest) and "aspect ratio" in outcomes["bad"].message
    assert isinstance(outcomes["daily"], DailyQuotaExhausted)
    assert type(outcomes["http-style"]) is RateLimited
    assert isinstance(outcomes["nothing"], UpstreamUnavailable)


def test_inline_results_without_metadata_take_keys_by_position() -> None:
    job = inline_job({"response": IMAGE_RESPONSE}, {"response": IMAGE_RESPONSE}, {"response": IMAGE_RESPONSE})
    keys = [key for key, _ in client(lambda r: httpx.Response(500)).results(job, keys=["x", "y"])]
    assert keys == ["x", "y", "2"]


def test_a_job_that_did_not_succeed_has_no_results() -> None:
    with pytest.raises(ValueError, match="BATCH_STATE_RUNNING"):
        list(client(lambda r: httpx.Response(500)).results(parse_operation(operation("BATCH_STATE_RUNNING"))))


def test_file_results_stream_line_by_line_across_chunk_boundaries(caplog: pytest.LogCaptureFixture) -> None:
    lines = [
        json.dumps({"key": "a", "response": IMAGE_RESPONSE}).encode(),
        b"garbage",
        json.dumps({"key": "b", "error": {"code": 14, "message": "overloaded"}}).encode(),
    ]
    body = b"\n".join(lines) + b"\n\n"
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=iter([body[i : i + 7] for i in range(0, len(body), 7)]))

    job = parse_operation(operation(done=True, response={"responsesFile": "files/out1"}))
    with caplog.at_level(logging.WARNING):
        outcomes = list(client(handler).results(job))
    assert [key for key, _ in outcomes] == ["a", "b"]
    assert isinstance(outcomes[0][1], ImageResult) and isinstance(outcomes[1][1], UpstreamUnavailable)
    assert str(seen[0].url) == f"{BASE}/v1beta/files/out1:download?alt=media"
    assert "line 2 is not a JSON object" in caplog.text


def test_a_failed_download_is_classified_and_redacted() -> None:
    body = {"error": {"code": 403, "message": f"no access for {KEY}", "status": "PERMISSION_DENIED"}}
    batch = client(lambda r: httpx.Response(403, json=body))
    with pytest.raises(InvalidRequest) as caught:
        list(batch.download_lines("files/out1"))
    assert KEY not in str(caught.value)


def test_every_rpc_code_maps_like_the_simulator_names_it() -> None:
    for name, code in GRPC_CODES.items():
        if code:
            assert RPC_CODES[code][1] == name
    assert isinstance(error_of_status({"code": 14}), UpstreamUnavailable)
    assert isinstance(outcome_of({"error": {"code": 4, "message": "late"}}), UpstreamUnavailable)


# -- calls ---------------------------------------------------------------------------------------


def test_list_follows_page_tokens() -> None:
    pages = {
        None: {"operations": [operation("BATCH_STATE_RUNNING")], "nextPageToken": "p2"},
        "p2": {"operations": [operation("BATCH_STATE_PENDING")]},
    }
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.url.params.get("pageToken")
        asked.append(token)
        return httpx.Response(200, json=pages[token])

    states = [job.state for job in client(handler).list(page_size=1)]
    assert states == [BatchState.RUNNING, BatchState.PENDING] and asked == [None, "p2"]


def test_get_cancel_delete_hit_the_batch_resource_and_classify_errors() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.method == "GET":
            return httpx.Response(
                404, json={"error": {"code": 404, "message": "gone", "status": "NOT_FOUND"}}
            )
        return httpx.Response(200, json={})

    batch = client(handler)
    batch.cancel("abc")
    batch.delete("batches/abc")
    with pytest.raises(InvalidRequest):
        batch.get("abc")
    assert seen == [
        ("POST", "/v1beta/batches/abc:cancel"),
        ("DELETE", "/v1beta/batches/abc"),
        ("GET", "/v1beta/batches/abc"),
    ]


def test_rate_limits_and_transport_failures_of_the_calls_are_our_errors() -> None:
    limited = client(lambda r: httpx.Response(429, json={"error": {"code": 429, "message": "x"}}))
    with pytest.raises(RateLimited):
        limited.get("abc")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(UpstreamUnavailable):
        client(refuse).get("abc")


class FakeUploads:
    """A Files API upload endpoint that checks the protocol as upstream does."""

    def __init__(self) -> None:
        self.received = b""
        self.commands: list[tuple[str, str, int, bool]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("upload_id") is None:
            assert request.headers["x-goog-upload-protocol"] == "resumable"
            assert request.headers["x-goog-upload-command"] == "start"
            self.declared = int(request.headers["x-goog-upload-header-content-length"])
            url = "https://uploads.elsewhere/upload/v1beta/files?upload_id=u1&upload_protocol=resumable"
            return httpx.Response(200, headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"})
        command, offset = request.headers["x-goog-upload-command"], request.headers["x-goog-upload-offset"]
        self.commands.append((request.url.host, command, int(offset), "x-goog-api-key" in request.headers))
        assert int(offset) == len(self.received)
        self.received += request.content
        if command == "upload":
            return httpx.Response(200, headers={"x-goog-upload-status": "active"})
        file = {"name": "files/in1", "sizeBytes": str(len(self.received)), "mimeType": "application/jsonl"}
        return httpx.Response(200, json={"file": file}, headers={"x-goog-upload-status": "final"})


def test_upload_streams_jsonl_in_granular_chunks_on_the_base_host() -> None:
    uploads = FakeUploads()
    requests = [(f"sku-{i}", request_body("p" * 2000)) for i in range(300)]
    uploaded = client(uploads, chunk_bytes=UPLOAD_GRANULARITY).upload_jsonl(requests, display_name="in")
    assert uploaded.name == "files/in1" and uploaded.size_bytes == len(uploads.received) == uploads.declared
    assert [c[1] for c in uploads.commands] == ["upload"] * (len(uploads.commands) - 1) + ["upload, finalize"]
    assert len(uploads.commands) == -(-uploads.declared // UPLOAD_GRANULARITY) >= 3
    assert {c[0] for c in uploads.commands} == {"gemini.test"}  # rewritten onto base_url, like the SDK
    assert not any(c[3] for c in uploads.commands)  # the upload id is the credential
    lines = [json.loads(line) for line in uploads.received.splitlines()]
    assert lines[0] == {"key": "sku-0", "request": requests[0][1]} and len(lines) == 300


def test_submit_goes_inline_when_it_fits_and_through_a_file_when_not() -> None:
    uploads = FakeUploads()
    created: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(":batchGenerateContent"):
            created.append(json.loads(request.content))
            return httpx.Response(200, json=operation("BATCH_STATE_PENDING"))
        return uploads(request)

    small = client(handler, inline_limit_bytes=100_000)
    small.submit(MODEL, [("a", request_body())])
    assert "requests" in created[-1]["batch"]["inputConfig"] and uploads.commands == []
    tight = client(handler, inline_limit_bytes=300)
    tight.submit(MODEL, [("a", request_body()), ("b", request_body())], display_name="n")
    assert created[-1]["batch"] == {"displayName": "n", "inputConfig": {"fileName": "files/in1"}}
    assert len(uploads.received.splitlines()) == 2


def test_chunk_size_must_follow_the_upload_granularity() -> None:
    with pytest.raises(ValueError, match="multiple"):
        client(lambda r: httpx.Response(200), chunk_bytes=1000)


# -- service tiers -------------------------------------------------------------------------------


def test_service_tier_is_a_top_level_field_added_to_a_copy() -> None:
    body = request_body()
    flexed = with_service_tier(body, "FLEX")
    assert flexed["serviceTier"] == "flex" and "serviceTier" not in body
    assert with_service_tier(body, ServiceTier.PRIORITY)["serviceTier"] == "priority"
    assert with_service_tier(body, None) == body
    with pytest.raises(ValueError, match="valid tiers"):
        parse_service_tier("turbo")
