"""OpenAICompatProvider against httpx.MockTransport: requests, result parsing, error classification."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from PIL import Image

from nanobatch.models.catalog import load_catalog
from nanobatch.models.status import ErrorCode
from nanobatch.workers.errors import (
    BillingError,
    ContentBlocked,
    DailyQuotaExhausted,
    InvalidRequest,
    NoImageReturned,
    ProviderError,
    RateLimited,
    UpstreamUnavailable,
)
from nanobatch.workers.providers.base import ImageRequest, InputImage, ProviderConfig
from nanobatch.workers.providers.factory import make_provider
from nanobatch.workers.providers.openai_compat import OpenAICompatProvider, api_root

BASE = "https://relay.test"
KEY = "sk-TESTKEY0123456789abcdefghijkl"
Handler = Callable[[httpx.Request], httpx.Response]


def _image(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (30, 30, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


PNG, JPEG, WEBP = _image("PNG"), _image("JPEG"), _image("WEBP")
OK = {"created": 1760000000, "data": [{"b64_json": base64.b64encode(PNG).decode()}]}
REQUEST = ImageRequest(model="gpt-image-1", prompt="a blue mug", aspect_ratio="3:2", width=1536, height=1024)


def provider(handler: Handler, **config: Any) -> OpenAICompatProvider:
    settings: dict[str, Any] = {
        "kind": "openai",
        "base_url": BASE,
        "auth": "bearer",
        "api_key": KEY,
        **config,
    }
    return OpenAICompatProvider(
        ProviderConfig(**settings), httpx.Client(transport=httpx.MockTransport(handler))
    )


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> Handler:
    return lambda request: httpx.Response(status, json=body, headers=headers)


def recording(*responses: httpx.Response) -> tuple[list[httpx.Request], Handler]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses[min(len(seen), len(responses)) - 1]

    return seen, handler


def openai_error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def raised(handler: Handler, request: ImageRequest = REQUEST, **config: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        provider(handler, **config).generate(request)
    return info.value


# --- what we send --------------------------------------------------------------------------------


def test_generation_request_uses_catalog_pixels_and_bearer_auth() -> None:
    # Given the catalog's pixels for gpt-image-1 at 3:2
    width, height = load_catalog().resolve("gpt-image-1").dimensions(None, "3:2")
    seen, handler = recording(httpx.Response(200, json=OK))

    provider(handler).generate(REQUEST)

    sent = seen[0]
    assert str(sent.url) == f"{BASE}/v1/images/generations"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(sent.content) == {
        "model": "gpt-image-1",
        "prompt": "a blue mug",
        "n": 1,
        "size": f"{width}x{height}",
        "output_format": "png",
    }


def test_response_format_is_not_sent_because_gpt_image_models_reject_it() -> None:
    seen, handler = recording(httpx.Response(200, json=OK))
    provider(handler).generate(REQUEST)
    assert "response_format" not in json.loads(seen[0].content)


def test_size_is_auto_without_pixels_and_jpeg_is_requested() -> None:
    seen, handler = recording(httpx.Response(200, json=OK))
    provider(handler).generate(ImageRequest(model="gpt-image-1", prompt="p", output_format="jpeg"))
    body = json.loads(seen[0].content)
    assert (body["size"], body["output_format"]) == ("auto", "jpeg")


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://relay.test", "https://relay.test/v1"),
        ("https://relay.test/", "https://relay.test/v1"),
        ("https://relay.test/v1", "https://relay.test/v1"),
        ("https://relay.test/v1/", "https://relay.test/v1"),
        ("https://relay.test/openai/v1", "https://relay.test/openai/v1"),
        ("https://relay.test/openai", "https://relay.test/openai/v1"),
    ],
)
def test_api_root_does_not_double_v1(base_url: str, expected: str) -> None:
    assert api_root(base_url) == expected
    seen, handler = recording(httpx.Response(200, json=OK))
    provider(handler, base_url=base_url).generate(REQUEST)
    assert str(seen[0].url) == f"{expected}/images/generations"


def test_no_auth_header_without_a_key() -> None:
    seen, handler = recording(httpx.Response(200, json=OK))
    provider(handler, api_key=None).generate(REQUEST)
    assert "authorization" not in seen[0].headers


def _multipart_names(request: httpx.Request) -> list[str]:
    body = request.read().decode("latin-1")
    return [chunk.split('"')[0] for chunk in body.split('Content-Disposition: form-data; name="')[1:]]


def test_edit_with_two_images_is_multipart_image_array() -> None:
    seen, handler = recording(httpx.Response(200, json=OK))
    request = ImageRequest(
        model="gpt-image-1",
        prompt="combine them",
        width=1024,
        height=1024,
        input_images=(InputImage(PNG), InputImage(JPEG, "image/jpeg")),
    )

    provider(handler).generate(request)

    sent = seen[0]
    assert str(sent.url) == f"{BASE}/v1/images/edits"
    assert sent.headers["content-type"].startswith("multipart/form-data")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    names = _multipart_names(sent)
    assert names.count("image[]") == 2
    assert {"model", "prompt", "size", "n", "output_format"} <= set(names)
    body = sent.read()
    assert PNG in body and JPEG in body
    assert b"1024x1024" in body and b"combine them" in body


def test_edit_with_one_image_uses_the_plain_image_field() -> None:
    seen, handler = recording(httpx.Response(200, json=OK))
    provider(handler).generate(ImageRequest(model="gpt-image-1", prompt="p", input_images=(InputImage(PNG),)))
    names = _multipart_names(seen[0])
    assert names.count("image") == 1
    assert "image[]" not in names


def test_factory_builds_an_openai_provider() -> None:
    client = httpx.Client(transport=httpx.MockTransport(answer(200, OK)))
    made = make_provider(ProviderConfig(kind="openai", base_url=BASE, auth="bearer"), client)
    assert isinstance(made, OpenAICompatProvider)
    assert made.name == "openai"


def test_factory_rejects_unknown_kinds() -> None:
    client = httpx.Client(transport=httpx.MockTransport(answer(200, OK)))
    with pytest.raises(ValueError, match="unknown provider kind"):
        make_provider(ProviderConfig(kind="dalle"), client)  # type: ignore[arg-type]


# --- results -------------------------------------------------------------------------------------


def test_b64_result_with_usage_and_revised_prompt() -> None:
    body = {
        "created": 1,
        "data": [{"b64_json": base64.b64encode(PNG).decode(), "revised_prompt": "a blue ceramic mug"}],
        "usage": {"input_tokens": 50, "output_tokens": 1056, "total_tokens": 1106},
    }
    result = provider(answer(200, body)).generate(REQUEST)
    assert result.data == PNG
    assert result.mime_type == "image/png"
    assert result.revised_prompt == "a blue ceramic mug"
    assert (result.prompt_tokens, result.output_tokens, result.total_tokens) == (50, 1056, 1106)


def test_chat_style_usage_names_are_accepted() -> None:
    body = {**OK, "usage": {"prompt_tokens": 7, "completion_tokens": 9}}
    result = provider(answer(200, body)).generate(REQUEST)
    assert (result.prompt_tokens, result.output_tokens, result.total_tokens) == (7, 9, 16)


@pytest.mark.parametrize(("data", "mime"), [(JPEG, "image/jpeg"), (WEBP, "image/webp"), (PNG, "image/png")])
def test_mime_type_comes_from_the_bytes(data: bytes, mime: str) -> None:
    body = {"data": [{"b64_json": base64.b64encode(data).decode()}]}
    assert provider(answer(200, body)).generate(REQUEST).mime_type == mime


def test_url_on_the_api_origin_is_fetched_with_the_key() -> None:
    seen, handler = recording(
        httpx.Response(200, json={"data": [{"url": "/files/img-1.png"}]}), httpx.Response(200, content=PNG)
    )
    result = provider(handler).generate(REQUEST)
    assert result.data == PNG
    assert str(seen[1].url) == f"{BASE}/files/img-1.png"
    assert seen[1].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    "url", ["https://cdn.example/img.png", "http://relay.test/img.png", "https://relay.test:8443/img.png"]
)
def test_url_on_a_foreign_origin_is_fetched_without_the_key(url: str) -> None:
    seen, handler = recording(
        httpx.Response(200, json={"data": [{"url": url}]}), httpx.Response(200, content=JPEG)
    )
    result = provider(handler).generate(REQUEST)
    assert result.mime_type == "image/jpeg"
    assert str(seen[1].url) == url
    assert "authorization" not in seen[1].headers


@pytest.mark.parametrize("url", ["http://[::1/img.png", "ftp://files.test/img.png", "https://host:99999/x"])
def test_a_malformed_result_url_is_a_bad_answer(url: str) -> None:
    error = raised(answer(200, {"data": [{"url": url}]}))
    assert type(error) is UpstreamUnavailable
    assert "malformed image url" in error.message


def test_data_url_is_decoded_in_place() -> None:
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert provider(answer(200, {"data": [{"url": url}]})).generate(REQUEST).data == PNG


def test_failed_download_is_classified_by_status() -> None:
    _, handler = recording(
        httpx.Response(200, json={"data": [{"url": "https://cdn.example/x.png"}]}), httpx.Response(503)
    )
    assert type(raised(handler)) is UpstreamUnavailable


def test_empty_data_is_no_image() -> None:
    assert type(raised(answer(200, {"created": 1, "data": []}))) is NoImageReturned


@pytest.mark.parametrize("content", [b"<html>oops</html>", b'{"data": [', b'"text"'])
def test_malformed_200_is_transient(content: bytes) -> None:
    assert type(raised(lambda request: httpx.Response(200, content=content))) is UpstreamUnavailable


# --- errors --------------------------------------------------------------------------------------

RATE_LIMIT = openai_error(
    "Rate limit reached for gpt-image-1 on images per minute (IPM): Limit 5, Used 5.",
    "requests",
    "rate_limit_exceeded",
)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
    ],
)
def test_429_retry_after_headers(headers: dict[str, str], seconds: float) -> None:
    error = raised(answer(429, RATE_LIMIT, headers=headers))
    assert type(error) is RateLimited
    assert error.retry_after == pytest.approx(seconds)
    assert error.provider_status == "rate_limit_exceeded"


def test_429_names_the_exhausted_limit_as_a_quota_id() -> None:
    error = raised(answer(429, RATE_LIMIT, headers={"retry-after": "12"}))
    assert type(error) is RateLimited
    assert error.quota_ids == ("ImagesPerMinute",)


def test_429_on_a_per_day_limit_is_daily_exhausted() -> None:
    body = openai_error(
        "Rate limit reached for gpt-image-1 in organization org-x on requests per day (RPD): Limit 200, "
        "Used 200, Requested 1. Please try again in 7m12s.",
        "requests",
        "rate_limit_exceeded",
    )
    error = raised(answer(429, body, headers={"retry-after": "432"}))
    assert type(error) is DailyQuotaExhausted
    assert error.quota_ids == ("RequestsPerDay",)
    assert error.retry_after == 432.0


def test_429_retry_after_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    error = raised(answer(429, RATE_LIMIT, headers={"retry-after": format_datetime(when, usegmt=True)}))
    assert isinstance(error, RateLimited)
    assert error.retry_after is not None
    assert 25 <= error.retry_after <= 30


def test_429_without_hint() -> None:
    error = raised(answer(429, RATE_LIMIT))
    assert isinstance(error, RateLimited)
    assert error.retry_after is None


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (
            429,
            openai_error(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            ),
        ),
        (
            400,
            openai_error(
                "Billing hard limit has been reached", "invalid_request_error", "billing_hard_limit_reached"
            ),
        ),
        (429, openai_error("Your billing is not active.", "billing_error", None)),
    ],
)
def test_quota_and_billing_problems_are_billing_errors(status: int, body: dict[str, Any]) -> None:
    # Issue #12: credit/billing exhaustion has its own code (``billing``): pay, then ``retry``.
    error = raised(answer(status, body))
    assert type(error) is BillingError
    assert error.code is ErrorCode.BILLING


@pytest.mark.parametrize(
    "body",
    [
        openai_error(
            "Your request was rejected as a result of our safety system.",
            "invalid_request_error",
            "content_policy_violation",
        ),
        openai_error(
            "Your request was rejected by the safety system.",
            "image_generation_user_error",
            "moderation_blocked",
        ),
        openai_error(
            "Image rejected by our safety system. Try another prompt.", "image_generation_user_error", None
        ),
    ],
)
def test_content_policy_is_content_blocked(body: dict[str, Any]) -> None:
    error = raised(answer(400, body))
    assert type(error) is ContentBlocked
    assert error.status_code == 400
    assert error.reason in {"content_policy_violation", "moderation_blocked", "image_generation_user_error"}


def test_image_user_error_without_safety_wording_is_invalid() -> None:
    body = openai_error("The image is too large.", "image_generation_user_error", None)
    assert type(raised(answer(400, body))) is InvalidRequest


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "invalid_value"), (401, "invalid_api_key"), (403, None), (404, "model_not_found"), (413, None)],
)
def test_client_errors_are_invalid_requests(status: int, code: str | None) -> None:
    error = raised(answer(status, openai_error(f"problem {status}", "invalid_request_error", code)))
    assert type(error) is InvalidRequest
    assert f"problem {status}" in error.message
    assert error.status_code == status


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_unavailable(status: int) -> None:
    assert (
        type(raised(answer(status, openai_error("overloaded", "server_error", None)))) is UpstreamUnavailable
    )


def test_relay_error_as_a_bare_string() -> None:
    error = raised(answer(400, {"error": "model not supported"}))
    assert type(error) is InvalidRequest
    assert "model not supported" in error.message


# --- the key never leaks -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 429, 500])
def test_key_echoed_by_upstream_is_redacted(status: int) -> None:
    secret = "plain-secret-value-42"

    def echo(request: httpx.Request) -> httpx.Response:
        key = request.headers["authorization"].removeprefix("Bearer ")
        body = openai_error(f"Incorrect API key provided: {key}.", "invalid_request_error", "invalid_api_key")
        return httpx.Response(status, json=body)

    for key in (KEY, secret):
        error = raised(echo, api_key=key)
        for text in (str(error), repr(error), error.message, *map(str, error.args)):
            assert key not in text
        assert "[REDACTED]" in error.message
