"""OpenAI-compatible image endpoints (``/v1/images/generations`` and ``/v1/images/edits``).

Why: many teams reach image models through OpenAI-shaped relays or gpt-image models; the same
:class:`ImageRequest` must work there, with failures in the same error tree as Gemini so the retry
policy never needs to know which protocol it spoke.

Choices worth knowing:

* ``response_format`` is **not** sent. GPT image models reject it (``400 Unknown parameter:
  'response_format'``) and always answer ``b64_json``; DALL·E and many relays default to ``url``.
  We accept both — ``b64_json``, or a ``url`` fetched with the same client (``data:`` URLs decoded
  in place). The API key goes only to the ``base_url`` origin, never to a CDN or a foreign host.
* Edits are multipart: one reference image as ``image``, several as ``image[]`` (the documented
  array form).
* The result's mime type is sniffed from the bytes; the requested ``output_format`` is only a
  fallback for bytes we cannot recognise.
* Error mapping (real bodies in ``tests/fixtures/upstream/openai``): content-policy codes →
  :class:`ContentBlocked`; ``insufficient_quota``, ``billing_hard_limit_reached``, the spend-limit
  codes, HTTP 402 and relays' variants (one-api/new-api ``insufficient_user_quota``, "user quota is
  not enough", OpenRouter "Insufficient credits") → :class:`BillingError` (pay, then retry); a 429
  whose limit is 0 ("Limit: 0/1min": the account may not use the model at all, songquanpeng/one-api#881)
  → :class:`QuotaMisconfigured`; a per-day limit (``RPD``/``TPD``/``IPD`` in the message — OpenAI has
  no structured quota id, so the abbreviation is the only signal) → :class:`DailyQuotaExhausted`;
  other recognisable 429s → :class:`RateLimited`; a 429 of no known shape → :class:`RateLimited`
  with code ``unclassified_429`` (still a bounded wait). Then the shared status table.
* The wait is the longest explicit hint (``retry-after-ms``, ``retry-after``, "try again in 2.226s"
  / "1m30s" / "20ms" / "after 51.84 seconds" in the message), else the reset time of the spent limit
  (``x-ratelimit-reset-requests`` / ``-tokens``, e.g. ``6m0s``): :mod:`workers.providers.waits`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from nanobatch.models.status import ErrorCode
from nanobatch.workers.errors import (
    BillingError,
    ContentBlocked,
    DailyQuotaExhausted,
    NoImageReturned,
    ProviderError,
    QuotaMisconfigured,
    RateLimited,
    UpstreamUnavailable,
)
from nanobatch.workers.providers.base import ImageRequest, ImageResult, InputImage, ProviderConfig, checked
from nanobatch.workers.providers.body_gate import BodyGate
from nanobatch.workers.providers.http import (
    as_dict,
    as_int,
    as_str,
    body_excerpt,
    exchange,
    first_dict,
    json_body,
    retry_after_from_headers,
    sniff_mime,
    status_error_class,
    success_payload,
    truncate,
)
from nanobatch.workers.providers.waits import lower_bound, message_delay, reset_headers_delay
from nanobatch.workers.redact import redact

CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "moderation_blocked", "content_filter"})
BILLING_CODES = frozenset(
    {
        "insufficient_quota",
        "billing_hard_limit_reached",
        "billing_not_active",
        "organization_usage_limit_exceeded",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        # Relays (one-api / new-api and their forks): the relay account's own balance.
        "insufficient_user_quota",
        "pre_consume_token_quota_failed",
        "insufficient_balance",
        "insufficient_credits",
    }
)
_SAFETY_WORDING = re.compile(r"\bsafety\b|content polic|moderation", re.IGNORECASE)
_BILLING_WORDING = re.compile(
    r"insufficient[_ ](?:user[_ ])?quota|billing (?:hard )?limit|billing (?:is )?not active"
    r"|user quota is not enough|insufficient (?:credits|balance|funds)"
    r"|credit balance is too low|prepayment credits are depleted|requires more credits|额度不足|余额不足",
    re.IGNORECASE,
)
#: "Limit: 0/1min", "Limit 0, Used 0", "Limit: 0.000000 / min": the account may not use this at all.
_ZERO_LIMIT = re.compile(r"\blimit:?\s*0+(?:\.0+)?(?=\s*(?:/|,|\s|$|\.(?!\d)))", re.IGNORECASE)
#: What a recognisable rate-limit answer says (OpenAI, Azure OpenAI, most relays).
_RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded", "rate_limit_error", "too_many_requests", "429"})
_RATE_LIMIT_TYPES = frozenset({"requests", "tokens", "images", "rate_limit_error", "rate_limit_exceeded"})
_RATE_LIMIT_WORDING = re.compile(r"rate limit|too many requests|call rate limit", re.IGNORECASE)
#: OpenAI names the exhausted limit only in prose ("… on requests per day (RPD): Limit 200 …"); the
#: abbreviation becomes a Google-style quota id so "PerDay" means the same for both providers.
_LIMIT_NAMES = {
    "RPM": "RequestsPerMinute",
    "RPD": "RequestsPerDay",
    "TPM": "TokensPerMinute",
    "TPD": "TokensPerDay",
    "IPM": "ImagesPerMinute",
    "IPD": "ImagesPerDay",
}
_LIMIT_ABBREVIATION = re.compile(r"\((RPM|RPD|TPM|TPD|IPM|IPD)\)", re.IGNORECASE)
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class OpenAICompatProvider:
    """One image per call through an OpenAI-shaped images API."""

    name = "openai"

    def __init__(self, config: ProviderConfig, client: httpx.Client, gate: BodyGate | None = None) -> None:
        self._config = config
        self._client = client
        self._gate = gate
        self._root = api_root(config.base_url)

    def generate(self, request: ImageRequest) -> ImageResult:
        key = self._config.api_key
        url, body = self.request_parts(request)
        with exchange(
            self._client, "POST", url, secret=key, gate=self._gate, headers=self._auth_headers(), **body
        ) as response:
            if not response.is_success:
                raise error_from_response(response, key)
            payload = success_payload(response, key)
            item = first_dict(payload.get("data"))
            if not is_result_link(item):
                result = build_result(payload, item, self._image_bytes(item), request.output_format)
                return checked(request, result)  # decoded inside the slot
        # A result link is fetched after this answer's gate slot is given back: a thread never holds two
        # slots, so the gate cannot deadlock. (The check takes a decode slot of its own.)
        return checked(request, build_result(payload, item, self._image_bytes(item), request.output_format))

    def request_parts(self, request: ImageRequest) -> tuple[str, dict[str, Any]]:
        """URL and body: ``generations`` (JSON) without reference images, ``edits`` (multipart) with."""
        if not request.input_images:
            return f"{self._root}/images/generations", {"json": generation_body(request)}
        fields = {k: str(v) for k, v in generation_body(request).items() if k != "prompt"}
        fields["prompt"] = request.prompt
        return f"{self._root}/images/edits", {"data": fields, "files": edit_files(request.input_images)}

    def _auth_headers(self) -> dict[str, str]:
        key = self._config.api_key
        return {"authorization": f"Bearer {key}"} if key else {}

    def _image_bytes(self, item: dict[str, Any]) -> bytes:
        key = self._config.api_key
        if item.get("b64_json"):
            return _b64decode(str(item["b64_json"]), key)
        url = as_str(item.get("url"))
        if url is None:
            raise NoImageReturned("response has neither data[0].b64_json nor data[0].url", status_code=200)
        if url.startswith("data:"):
            return _b64decode(url.partition(",")[2], key)
        return self._download(self._resolve(url))

    def _resolve(self, url: str) -> str:
        """An absolute http(s) URL for a result link; a garbled one is a bad answer (transient)."""
        absolute = urljoin(self._root + "/", url) if _parses(url) else ""
        if not (_parses(absolute) and urlsplit(absolute).scheme in ("http", "https")):
            message = f"malformed image url in a 200 response: {truncate(url, 200)}"
            raise UpstreamUnavailable(redact(message, self._config.api_key), status_code=200)
        return absolute

    def _download(self, url: str) -> bytes:
        """Fetch a result URL; the key is sent only back to the API's own origin."""
        key = self._config.api_key
        headers = self._auth_headers() if same_origin(url, self._root) else {}
        with exchange(self._client, "GET", url, secret=key, gate=self._gate, headers=headers) as response:
            if not response.is_success:
                raise error_from_response(response, key)
            return response.content


# --- request -------------------------------------------------------------------------------------


def api_root(base_url: str) -> str:
    """``{base}/v1`` without doubling a ``/v1`` the user already put in ``base_url``."""
    base = base_url.rstrip("/")
    return base if base.endswith("/v1") else f"{base}/v1"


def generation_body(request: ImageRequest) -> dict[str, Any]:
    size = f"{request.width}x{request.height}" if request.width and request.height else "auto"
    return {
        "model": request.model,
        "prompt": request.prompt,
        "n": 1,
        "size": size,
        "output_format": request.output_format,
    }


def edit_files(images: tuple[InputImage, ...]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart file fields: ``image`` for one reference, ``image[]`` for several."""
    field = "image" if len(images) == 1 else "image[]"
    return [
        (field, (f"image-{i}.{_EXTENSIONS.get(img.mime_type, 'png')}", img.data, img.mime_type))
        for i, img in enumerate(images)
    ]


def _parses(url: str) -> bool:
    """True when ``url`` splits cleanly, host and port included (urllib raises on ``[::1`` or ``:99999``)."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return False
    return bool(parts.hostname) or not parts.scheme


def same_origin(a: str, b: str) -> bool:
    """Scheme, host and effective port all equal (RFC 6454 origin); unparsable means "no"."""
    try:
        return _origin(a) == _origin(b)
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(scheme)


# --- success -------------------------------------------------------------------------------------


def build_result(
    payload: dict[str, Any], item: dict[str, Any], data: bytes, output_format: str
) -> ImageResult:
    usage = as_dict(payload.get("usage"))
    prompt_tokens = as_int(usage.get("input_tokens", usage.get("prompt_tokens")))
    output_tokens = as_int(usage.get("output_tokens", usage.get("completion_tokens")))
    total = as_int(usage.get("total_tokens"))
    if total is None and prompt_tokens is not None and output_tokens is not None:
        total = prompt_tokens + output_tokens
    extra: dict[str, object] = {}
    if isinstance(usage.get("input_tokens_details"), dict):
        extra["input_tokens_details"] = usage["input_tokens_details"]
    return ImageResult(
        data=data,
        mime_type=sniff_mime(data) or f"image/{output_format}",
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        total_tokens=total,
        model_version=as_str(payload.get("model")),
        revised_prompt=as_str(item.get("revised_prompt")),
        extra=extra,
    )


def is_result_link(item: dict[str, Any]) -> bool:
    """True when the image is behind an http(s) ``url`` (not ``b64_json`` nor a ``data:`` URL)."""
    url = as_str(item.get("url"))
    return not item.get("b64_json") and url is not None and not url.startswith("data:")


def _b64decode(text: str, key: str | None) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UpstreamUnavailable(redact(f"undecodable image data: {exc}", key), status_code=200) from exc


# --- errors --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAIError:
    """``{"error": {"message", "type", "param", "code"}}`` (relays sometimes send a bare string)."""

    message: str
    type: str | None = None
    param: str | None = None
    code: str | None = None

    def describe(self) -> str:
        tags = ", ".join(f"{k}={v}" for k, v in (("type", self.type), ("code", self.code)) if v)
        return f"{self.message} ({tags})" if tags else self.message


def parse_openai_error(payload: object) -> OpenAIError | None:
    if isinstance(payload, list) and payload:  # Google's OpenAI-compatible endpoint wraps it in a list
        payload = payload[0]
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, str):
        return OpenAIError(message=error)
    if not isinstance(error, dict):
        return OpenAIError(message=str(payload["message"])) if payload.get("message") else None
    return OpenAIError(
        message=str(error.get("message") or ""),
        type=as_str(error.get("type")),
        param=as_str(error.get("param")),
        code=as_str(error.get("code")),
    )


def error_from_response(response: httpx.Response, key: str | None = None) -> ProviderError:
    """Classify a non-2xx response; every message is redacted of the key."""
    status = response.status_code
    error = parse_openai_error(json_body(response))
    if error is None:
        error = OpenAIError(message=f"HTTP {status}: {body_excerpt(response)}")
    message = redact(truncate(error.describe()), key)
    tag = error.code or error.type
    if is_content_policy(error):
        return ContentBlocked(message, reason=tag or "content_policy", status_code=status)
    if is_billing(error) or status == 402:
        return BillingError(message, status_code=status, provider_status=tag)
    if status == 429:
        return _rate_limit_error(error, message, response.headers)
    return status_error_class(status)(message, status_code=status, provider_status=tag)


def _rate_limit_error(error: OpenAIError, message: str, headers: httpx.Headers) -> ProviderError:
    tag = error.code or error.type
    if _ZERO_LIMIT.search(error.message):
        return QuotaMisconfigured(
            f"the limit is 0 for this account/model (raise the usage tier or enable the model): {message}",
            status_code=429,
            provider_status=tag,
        )
    said = message_delay(error.message)
    retry_after = lower_bound(retry_after_from_headers(headers), said)
    if retry_after is None:
        retry_after = reset_headers_delay(headers)
    quota_ids = quota_ids_from_message(error.message)
    if not (quota_ids or said is not None or _is_rate_limit(error)):
        return RateLimited(
            f"unrecognised 429: {message}",
            retry_after=retry_after,
            provider_status=tag,
            code=ErrorCode.UNCLASSIFIED_429,
        )
    kind = DailyQuotaExhausted if any("PerDay" in q for q in quota_ids) else RateLimited
    return kind(
        message, retry_after=retry_after, quota_ids=quota_ids, provider_status=tag or "rate_limit_exceeded"
    )


def _is_rate_limit(error: OpenAIError) -> bool:
    """The answer says what it is: a rate-limit code or type, or the words."""
    return (
        (error.code or "").lower() in _RATE_LIMIT_CODES
        or (error.type or "").lower() in _RATE_LIMIT_TYPES
        or bool(_RATE_LIMIT_WORDING.search(error.message))
    )


def quota_ids_from_message(message: str) -> tuple[str, ...]:
    """``("RequestsPerDay",)`` from "... on requests per day (RPD): Limit 200 ..."; ``()`` if unnamed."""
    found = (_LIMIT_NAMES[m.upper()] for m in _LIMIT_ABBREVIATION.findall(message))
    return tuple(dict.fromkeys(found))


def is_content_policy(error: OpenAIError) -> bool:
    if error.code in CONTENT_POLICY_CODES:
        return True
    return error.type == "image_generation_user_error" and bool(_SAFETY_WORDING.search(error.message))


def is_billing(error: OpenAIError) -> bool:
    return error.code in BILLING_CODES or bool(_BILLING_WORDING.search(error.message))
