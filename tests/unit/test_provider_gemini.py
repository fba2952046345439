"""GeminiProvider against httpx.MockTransport: the JSON we send, and every DESIGN §7 row we classify."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from nanobatch.models.catalog import load_catalog
from nanobatch.workers.errors import (
    ContentBlocked,
    DailyQuotaExhausted,
    InvalidRequest,
    NoImageReturned,
    ProviderError,
    QuotaMisconfigured,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from nanobatch.workers.providers.base import ImageRequest, InputImage, ProviderConfig
from nanobatch.workers.providers.factory import make_provider
from nanobatch.workers.providers.gemini import BLOCK_REASONS, GeminiProvider

BASE = "https://gemini.test"
KEY = "AIzaSyTEST-0123456789abcdefghijklmno"
Handler = Callable[[httpx.Request], httpx.Response]


def _image(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


PNG = _image("PNG")
JPEG = _image("JPEG")
B64_PNG = base64.b64encode(PNG).decode()


def provider(handler: Handler, **config: Any) -> GeminiProvider:
    settings: dict[str, Any] = {"base_url": BASE, "api_key": KEY, **config}
    return GeminiProvider(ProviderConfig(**settings), httpx.Client(transport=httpx.MockTransport(handler)))


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> Handler:
    return lambda request: httpx.Response(status, json=body, headers=headers)


def recording(body: object) -> tuple[list[httpx.Request], Handler]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=body)

    return seen, handler


def image_response(*parts: dict[str, Any], finish: str = "STOP", **top: Any) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"role": "model", "parts": list(parts)}, "finishReason": finish}],
        **top,
    }


def google_error(code: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status, "details": list(details)}}


def quota_failure(quota_id: str, value: str = "300") -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "quotaMetric": "generativelanguage.googleapis.com/generate_requests_per_model",
                "quotaId": quota_id,
                "quotaDimensions": {"model": "gemini-3-pro-image", "location": "global"},
                "quotaValue": value,
            }
        ],
    }


def retry_info(delay: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


OK = image_response({"inlineData": {"mimeType": "image/png", "data": B64_PNG}})
REQUEST = ImageRequest(model="gemini-3-pro-image", prompt="a red mug", aspect_ratio="16:9", image_size="2K")

# The 429 body of DESIGN §8, with its elided values filled in.
DESIGN_429 = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_requests_per_model",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                        "quotaDimensions": {"model": "gemini-3-pro-image", "location": "global"},
                        "quotaValue": "300",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26.5s"},
        ],
    }
}


def raised(handler: Handler, request: ImageRequest = REQUEST, **config: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        provider(handler, **config).generate(request)
    return info.value


# --- what we send --------------------------------------------------------------------------------


def test_request_url_headers_and_body_for_3_pro_with_a_reference_image() -> None:
    seen, handler = recording(OK)
    request = ImageRequest(
        model="gemini-3-pro-image",
        prompt="put the mug on a desk",
        aspect_ratio="16:9",
        image_size="2K",
        input_images=(InputImage(JPEG, "image/jpeg"),),
    )
    provider(handler).generate(request)

    sent = seen[0]
    assert sent.method == "POST"
    assert str(sent.url) == f"{BASE}/v1beta/models/gemini-3-pro-image:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY
    assert "authorization" not in sent.headers
    assert json.loads(sent.content) == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "put the mug on a desk"},
                    {"inlineData": {"mimeType": "image/jpeg", "data": base64.b64encode(JPEG).decode()}},
                ],
            }
        ],
        "generationConfig": {
            "responseModalities": ["IMAGE"],
            "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"},
        },
    }


def test_image_size_is_absent_for_2_5_flash_image() -> None:
    # Given the catalog says 2.5 flash takes no imageSize
    spec = load_catalog().resolve("gemini-2.5-flash-image")
    assert not spec.supports_image_size
    seen, handler = recording(OK)

    provider(handler).generate(ImageRequest(model=spec.name, prompt="p", aspect_ratio="3:4", image_size=None))

    image_config = json.loads(seen[0].content)["generationConfig"]["imageConfig"]
    assert image_config == {"aspectRatio": "3:4"}


def test_jpeg_is_not_forwarded_because_the_developer_api_rejects_output_mime_type() -> None:
    # Given upstream answers with a JPEG although we asked for nothing
    body = image_response({"inlineData": {"mimeType": "image/jpeg", "data": base64.b64encode(JPEG).decode()}})
    seen, handler = recording(body)

    result = provider(handler).generate(
        ImageRequest(model="gemini-2.5-flash-image", prompt="p", output_format="jpeg")
    )

    assert "outputMimeType" not in json.loads(seen[0].content)["generationConfig"]["imageConfig"]
    assert result.mime_type == "image/jpeg"


def test_bearer_auth_for_relays() -> None:
    seen, handler = recording(OK)
    provider(handler, auth="bearer").generate(REQUEST)
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert "x-goog-api-key" not in seen[0].headers


def test_no_auth_header_without_a_key() -> None:
    seen, handler = recording(OK)
    provider(handler, api_key=None).generate(REQUEST)
    assert "x-goog-api-key" not in seen[0].headers
    assert "authorization" not in seen[0].headers


def test_url_honours_api_version_and_trailing_slash() -> None:
    seen, handler = recording(OK)
    provider(handler, base_url=BASE + "/", api_version="v1").generate(
        ImageRequest(model="models/gemini-2.5-flash-image", prompt="p")
    )
    assert str(seen[0].url) == f"{BASE}/v1/models/gemini-2.5-flash-image:generateContent"


def test_v1_requests_leave_out_response_modalities_which_v1_rejects() -> None:
    seen, handler = recording(OK)
    provider(handler, api_version="v1").generate(REQUEST)
    provider(handler, api_version="v1beta").generate(REQUEST)
    v1, v1beta = (json.loads(request.content)["generationConfig"] for request in seen)
    assert "responseModalities" not in v1 and "imageConfig" in v1
    assert v1beta["responseModalities"] == ["IMAGE"]


def test_factory_builds_a_gemini_provider() -> None:
    client = httpx.Client(transport=httpx.MockTransport(answer(200, OK)))
    made = make_provider(ProviderConfig(kind="gemini", base_url=BASE), client)
    assert isinstance(made, GeminiProvider)
    assert made.name == "gemini"


# --- 200 with an image ---------------------------------------------------------------------------


def test_success_skips_thought_parts_and_records_usage() -> None:
    # Given a Gemini 3 answer: an interim thought image, thought text, then the final image
    body = image_response(
        {"text": "planning the composition", "thought": True},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(JPEG).decode()}, "thought": True},
        {"text": "Here is your mug."},
        {"inlineData": {"mimeType": "image/png", "data": B64_PNG}, "thoughtSignature": "c2ln"},
        usageMetadata={
            "promptTokenCount": 12,
            "candidatesTokenCount": 1120,
            "totalTokenCount": 1232,
            "thoughtsTokenCount": 100,
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1120}],
        },
        modelVersion="gemini-3-pro-image",
        responseId="resp-123",
    )

    result = provider(answer(200, body)).generate(REQUEST)

    assert result.data == PNG
    assert result.mime_type == "image/png"
    assert result.text == "Here is your mug."
    assert (result.prompt_tokens, result.output_tokens, result.total_tokens) == (12, 1120, 1232)
    assert result.extra["thoughts_tokens"] == 100
    assert result.finish_reason == "STOP"
    assert (result.model_version, result.response_id) == ("gemini-3-pro-image", "resp-123")


def test_snake_case_inline_data_is_accepted() -> None:
    body = image_response({"inline_data": {"mime_type": "image/png", "data": B64_PNG}})
    assert provider(answer(200, body)).generate(REQUEST).data == PNG


def test_mime_type_is_what_the_bytes_are_not_what_was_declared() -> None:
    body = image_response({"inlineData": {"mimeType": "image/png", "data": base64.b64encode(JPEG).decode()}})
    result = provider(answer(200, body)).generate(REQUEST)
    assert result.mime_type == "image/jpeg"
    assert result.extra["declared_mime_type"] == "image/png"


# --- 200 without an image ------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY"])
def test_prompt_block_reason_is_content_blocked(reason: str) -> None:
    body = {"promptFeedback": {"blockReason": reason}, "usageMetadata": {"promptTokenCount": 5}}
    error = raised(answer(200, body))
    assert isinstance(error, ContentBlocked)
    assert error.reason == reason


@pytest.mark.parametrize("reason", sorted(BLOCK_REASONS))
def test_safety_finish_reasons_are_content_blocked(reason: str) -> None:
    body = image_response({"text": "I can't make that."}, finish=reason)
    error = raised(answer(200, body))
    assert isinstance(error, ContentBlocked)
    assert error.reason == reason
    assert "I can't make that." in error.message


@pytest.mark.parametrize("reason", ["NO_IMAGE", "IMAGE_OTHER", "OTHER", "STOP", "MAX_TOKENS"])
def test_no_image_finish_reasons_are_transient(reason: str) -> None:
    body = image_response({"text": "Sure! Here is a description instead."}, finish=reason)
    error = raised(answer(200, body))
    assert type(error) is NoImageReturned
    assert error.provider_status == reason


def test_no_candidates_at_all_is_no_image() -> None:
    assert type(raised(answer(200, {"candidates": []}))) is NoImageReturned


def test_only_a_thought_image_is_no_image() -> None:
    body = image_response({"inlineData": {"mimeType": "image/png", "data": B64_PNG}, "thought": True})
    assert type(raised(answer(200, body))) is NoImageReturned


@pytest.mark.parametrize("content", [b"<html>oops</html>", b'{"candidates": [', b"[1, 2]"])
def test_malformed_200_is_transient(content: bytes) -> None:
    error = raised(lambda request: httpx.Response(200, content=content))
    assert type(error) is UpstreamUnavailable


def test_undecodable_image_data_is_transient() -> None:
    body = image_response({"inlineData": {"mimeType": "image/png", "data": "not base64!!"}})
    assert type(raised(answer(200, body))) is UpstreamUnavailable


# --- 429 -----------------------------------------------------------------------------------------


def test_design_429_body_is_a_per_minute_rate_limit() -> None:
    error = raised(answer(429, DESIGN_429))
    assert type(error) is RateLimited
    assert error.retry_after == 26.5
    assert error.quota_ids == ("GenerateRequestsPerMinutePerProjectPerModel",)
    assert error.status_code == 429


def test_per_day_quota_is_daily_exhausted() -> None:
    body = google_error(
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for metric: generate_requests_per_model_per_day, limit: 250",
        quota_failure("GenerateRequestsPerDayPerProjectPerModel", "250"),
        retry_info("3s"),
    )
    error = raised(answer(429, body))
    assert type(error) is DailyQuotaExhausted
    assert error.quota_ids == ("GenerateRequestsPerDayPerProjectPerModel",)
    assert error.retry_after == 4.0  # a whole-second retryDelay is truncated: rounded up by 1 s


def test_quota_value_zero_is_misconfigured_even_on_a_per_day_quota() -> None:
    body = google_error(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota.",
        quota_failure("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "0"),
        retry_info("20s"),
    )
    error = raised(answer(429, body))
    assert type(error) is QuotaMisconfigured
    assert "quota is 0" in error.message


def test_free_tier_limit_zero_message_is_misconfigured() -> None:
    message = (
        "You exceeded your current quota, please check your plan and billing details. * Quota exceeded for "
        "metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, "
        "model: gemini-3-pro-image"
    )
    assert type(raised(answer(429, google_error(429, "RESOURCE_EXHAUSTED", message)))) is QuotaMisconfigured


def test_the_generic_billing_sentence_alone_is_not_misconfiguration() -> None:
    # Every Gemini 429 says "check your plan and billing details"; DESIGN_429 has a 300 quota.
    assert "billing" in DESIGN_429["error"]["message"]  # type: ignore[index]
    assert type(raised(answer(429, DESIGN_429))) is RateLimited


@pytest.mark.parametrize(
    ("delay", "seconds"), [("26.5s", 26.5), ("0.412s", 0.412), ("3s", 4.0), ("1.000000001s", 1.000000001)]
)
def test_retry_delay_durations(delay: str, seconds: float) -> None:
    body = google_error(
        429, "RESOURCE_EXHAUSTED", "slow down", quota_failure("X-PerMinute"), retry_info(delay)
    )
    error = raised(answer(429, body))
    assert isinstance(error, RateLimited)
    assert error.retry_after == pytest.approx(seconds)


def test_retry_after_header_is_used_when_there_is_no_retry_info() -> None:
    body = google_error(429, "RESOURCE_EXHAUSTED", "slow down", quota_failure("RequestsPerMinute"))
    error = raised(answer(429, body, headers={"Retry-After": "7"}))
    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.0


def test_429_without_any_hint_has_no_retry_after() -> None:
    error = raised(answer(429, google_error(429, "RESOURCE_EXHAUSTED", "slow down")))
    assert type(error) is RateLimited
    assert error.retry_after is None
    assert error.quota_ids == ()


# --- other statuses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "google_status"),
    [(500, "INTERNAL"), (502, "UNAVAILABLE"), (503, "UNAVAILABLE"), (504, "DEADLINE_EXCEEDED"), (599, "X")],
)
def test_server_errors_are_unavailable(status: int, google_status: str) -> None:
    error = raised(answer(status, google_error(status, google_status, "The model is overloaded.")))
    assert type(error) is UpstreamUnavailable
    assert error.status_code == status


@pytest.mark.parametrize(
    ("status", "google_status", "message"),
    [
        (400, "INVALID_ARGUMENT", "Unsupported aspect ratio"),
        (400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
        (403, "PERMISSION_DENIED", "Generative Language API has not been used in project 42"),
        (404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta"),
        (401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
        (409, "ABORTED", "conflict"),
        (422, "INVALID_ARGUMENT", "unprocessable"),
    ],
)
def test_client_errors_are_invalid_requests_with_the_upstream_message(
    status: int, google_status: str, message: str
) -> None:
    error = raised(answer(status, google_error(status, google_status, message)))
    assert type(error) is InvalidRequest
    assert message in error.message
    assert error.provider_status == google_status


def test_invalid_key_reason_is_kept_in_the_message() -> None:
    body = google_error(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
        },
    )
    error = raised(answer(400, body))
    assert type(error) is InvalidRequest
    assert "API_KEY_INVALID" in error.message


def test_html_from_a_proxy_is_classified_by_status() -> None:
    error = raised(lambda request: httpx.Response(502, content=b"<html><body>Bad Gateway</body></html>"))
    assert type(error) is UpstreamUnavailable
    assert "Bad Gateway" in error.message


def test_transport_errors_are_translated_and_chained() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    error = raised(handler)
    assert type(error) is UpstreamTimeout
    assert isinstance(error.__cause__, httpx.ReadTimeout)


# --- the key never leaks -------------------------------------------------------------------------


def _assert_no_key(error: ProviderError, *secrets: str) -> None:
    for secret in secrets:
        for text in (str(error), repr(error), error.message, *map(str, error.args)):
            assert secret not in text


@pytest.mark.parametrize("status", [400, 403, 429, 500])
def test_key_echoed_by_upstream_is_redacted(status: int) -> None:
    # Given an upstream that echoes the key (and a plain, non-key-shaped secret) in its message
    secret = "plain-secret-value-42"

    def echo(request: httpx.Request) -> httpx.Response:
        key = request.headers["x-goog-api-key"]
        message = f"API key not valid: {key} (url ...?key={key})"
        return httpx.Response(status, json=google_error(status, "INVALID_ARGUMENT", message))

    for key in (KEY, secret):
        error = raised(echo, api_key=key)
        _assert_no_key(error, key)
        assert "[REDACTED]" in error.message


def test_key_in_no_image_text_is_redacted() -> None:
    body = image_response({"text": f"your key is {KEY}"}, finish="NO_IMAGE")
    _assert_no_key(raised(answer(200, body)), KEY)


def test_key_in_a_transport_error_is_redacted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect with {KEY}", request=request)

    _assert_no_key(raised(handler), KEY)
