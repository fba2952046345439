"""Gemini native ``generateContent`` for image models, translated into our request/result/error types.

Why a hand-written client rather than ``google-genai``: a worker needs one pooled ``httpx.Client``
shared by its threads, explicit timeouts, and every failure classified into :mod:`workers.errors`
(DESIGN §7) — the SDK hides the 429 details (QuotaFailure, RetryInfo) we schedule by.

Wire format (DESIGN §8): camelCase request; responses are read in camelCase or snake_case
(``inlineData``/``inline_data``), because relays re-serialise either way. Thought parts
(``thought: true``, Gemini 3 interim images and reasoning text) are skipped.

Output format: the Gemini Developer API has **no** field to choose the output mime type — the
``outputMimeType`` in ``imageConfig`` is rejected with ``400 Invalid JSON payload received. Unknown
name "outputMimeType"`` and ``google-genai`` refuses ``output_mime_type`` outside Vertex. So a "jpeg"
request is not forwarded; we record the mime the bytes actually are and leave conversion to storage.

429 classification order (real bodies in ``tests/fixtures/upstream/gemini``):

1. credits exhausted ("Your prepayment credits are depleted", dyad-sh/dyad#3626) → :class:`BillingError`;
2. a quota of 0 (``quotaValue: "0"``, ``limit: 0``, billing disabled) → :class:`QuotaMisconfigured`,
   winning over ``PerDay`` (parking until midnight would loop forever);
3. several ``…-FreeTier`` violations at once (per minute *and* per day) with no stated limit — what a
   model without a free tier answers a project without billing (google-gemini/gemini-cli#8437) —
   → :class:`QuotaMisconfigured` "billing not enabled for this model";
4. ``PerDay`` → :class:`DailyQuotaExhausted`; other quota violations or a ``RetryInfo`` →
   :class:`RateLimited`;
5. anything else (no QuotaFailure, no RetryInfo, an HTML page) → :class:`RateLimited` with code
   ``unclassified_429``: still a wait, bounded like every other (``workers.retry``).

Google's *every* 429 message says "check your plan and billing details", so that phrase alone never
means misconfiguration. The wait is a lower bound (:mod:`workers.providers.waits`): the precise
"Please retry in 58.934310785s" of the message, else the truncated whole-second ``retryDelay`` + 1 s.

A 200 without an image is classified by ``finishReason`` / ``promptFeedback.blockReason`` through
:data:`FINISH_REASONS` / :data:`BLOCK_REASON_CLASSES`, which decide every value the google-genai SDK
enums list (a unit test walks the installed SDK, so a new value fails CI until it is decided here).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx

from nanobatch.models.status import ErrorCode
from nanobatch.workers.errors import (
    AccountRestricted,
    BillingError,
    ContentBlocked,
    DailyQuotaExhausted,
    InvalidRequest,
    NoImageReturned,
    ProviderError,
    QuotaMisconfigured,
    RateLimited,
    UpstreamUnavailable,
)
from nanobatch.workers.providers.base import ImageRequest, ImageResult, ProviderConfig, checked
from nanobatch.workers.providers.body_gate import BodyGate
from nanobatch.workers.providers.http import (
    as_dict,
    as_int,
    as_list,
    as_str,
    body_excerpt,
    exchange,
    first_dict,
    json_body,
    parse_duration,
    retry_after_from_headers,
    sniff_mime,
    status_error_class,
    success_payload,
    truncate,
)
from nanobatch.workers.providers.service_tier import with_service_tier
from nanobatch.workers.providers.waits import google_message_delay, google_retry_after
from nanobatch.workers.redact import redact


class NoImage(StrEnum):
    """What a 200 answer without an image means, by its finishReason / blockReason."""

    BLOCKED = "blocked"  # refused for safety or policy: fail now, not retried (ContentBlocked)
    RETRY = "retry"  # no image this time: retried a bounded few times (NoImageReturned)
    INVALID = "invalid"  # our request was wrong; the same request fails again (InvalidRequest)
    ACCOUNT = "account"  # the account itself is limited or disabled (AccountRestricted)


#: Every ``FinishReason`` of google-genai ``types.py`` (3.6.1), decided. A value missing here (a newer
#: SDK) is treated as RETRY, and fails ``test_every_sdk_finish_reason_is_decided`` until added.
FINISH_REASONS: dict[str, NoImage] = {
    "FINISH_REASON_UNSPECIFIED": NoImage.RETRY,
    "STOP": NoImage.RETRY,  # finished, but with text only: the model chose not to draw this time
    "MAX_TOKENS": NoImage.RETRY,  # ran out of output tokens (thinking) before the image
    "SAFETY": NoImage.BLOCKED,
    "RECITATION": NoImage.BLOCKED,
    "LANGUAGE": NoImage.BLOCKED,  # unsupported language: the prompt must change
    "OTHER": NoImage.RETRY,
    "BLOCKLIST": NoImage.BLOCKED,
    "PROHIBITED_CONTENT": NoImage.BLOCKED,
    "SPII": NoImage.BLOCKED,
    "MALFORMED_FUNCTION_CALL": NoImage.RETRY,  # we send no tools: a model glitch
    "IMAGE_SAFETY": NoImage.BLOCKED,
    "IMAGE_PROHIBITED_CONTENT": NoImage.BLOCKED,
    "IMAGE_OTHER": NoImage.RETRY,
    "NO_IMAGE": NoImage.RETRY,
    "IMAGE_RECITATION": NoImage.BLOCKED,
    "UNEXPECTED_TOOL_CALL": NoImage.RETRY,
    "TOO_MANY_TOOL_CALLS": NoImage.RETRY,
    "MISSING_THOUGHT_SIGNATURE": NoImage.INVALID,  # a multi-turn request without signatures: ours
    "MALFORMED_RESPONSE": NoImage.RETRY,
    "ESCALATION": NoImage.BLOCKED,  # "filtered by an escalation rule"
    "PUP_LIMITED_DISABLED": NoImage.ACCOUNT,  # account limited for Prohibited Use Policy violations
    "CONTINUATION": NoImage.RETRY,  # per-request token limit hit mid-answer; we do not continue
    "MODEL_ARMOR": NoImage.BLOCKED,
}

#: Every ``BlockedReason`` of google-genai ``types.py``: a blocked prompt is refused whatever the why.
BLOCK_REASON_CLASSES: dict[str, NoImage] = {
    "BLOCKED_REASON_UNSPECIFIED": NoImage.BLOCKED,
    "SAFETY": NoImage.BLOCKED,
    "OTHER": NoImage.BLOCKED,
    "BLOCKLIST": NoImage.BLOCKED,
    "PROHIBITED_CONTENT": NoImage.BLOCKED,
    "IMAGE_SAFETY": NoImage.BLOCKED,
    "MODEL_ARMOR": NoImage.BLOCKED,
    "JAILBREAK": NoImage.BLOCKED,
}

#: finishReason values that mean "refused for safety or policy": fail now, not retried.
BLOCK_REASONS = frozenset(reason for reason, kind in FINISH_REASONS.items() if kind is NoImage.BLOCKED)

_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_ZERO_QUOTA = re.compile(
    r"\blimit:\s*0(?![\d.])|billing (?:is )?(?:not enabled|disabled)|enable billing|BILLING_DISABLED",
    re.IGNORECASE,
)
#: A 4xx that says billing must be turned on before anything is served.
_ENABLE_BILLING = re.compile(
    r"enable billing|requires billing to be enabled|billing (?:is )?not enabled", re.I
)
#: ErrorInfo reasons that mean the project or key was switched off by Google.
_ACCOUNT_REASONS = frozenset({"CONSUMER_SUSPENDED", "PROJECT_SUSPENDED"})
#: Credits used up: "Your prepayment credits are depleted. Please go to AI Studio ... billing."
_CREDITS_GONE = re.compile(
    r"prepayment credits are depleted|credits? (?:are|is|has been) (?:depleted|exhausted|used up)"
    r"|insufficient (?:funds|balance|credits?)",
    re.IGNORECASE,
)

JSON = dict[str, Any]


class GeminiProvider:
    """``POST {base}/{version}/models/{model}:generateContent`` for one image per call."""

    name = "gemini"

    def __init__(self, config: ProviderConfig, client: httpx.Client, gate: BodyGate | None = None) -> None:
        self._config = config
        self._client = client
        self._gate = gate

    def generate(self, request: ImageRequest) -> ImageResult:
        key = self._config.api_key
        with exchange(
            self._client,
            "POST",
            self.url_for(request.model),
            secret=key,
            gate=self._gate,
            json=with_service_tier(
                build_body(request, modalities=self._config.api_version != "v1"), request.service_tier
            ),
            headers=self.auth_headers(),
        ) as response:
            if not response.is_success:
                raise error_from_response(response, key)
            payload = success_payload(response, key)
            return checked(request, parse_generate_response(payload, key))  # decoded inside the slot

    def url_for(self, model: str) -> str:
        """The generateContent URL for ``model`` (the catalog's ``upstream_id``, as the request carries)."""
        base = self._config.base_url.rstrip("/")
        model = model.removeprefix("models/")
        return f"{base}/{self._config.api_version}/models/{model}:generateContent"

    def auth_headers(self) -> dict[str, str]:
        key = self._config.api_key
        if not key:
            return {}
        if self._config.auth == "bearer":
            return {"authorization": f"Bearer {key}"}
        return {"x-goog-api-key": key}


# --- request -------------------------------------------------------------------------------------


def build_body(request: ImageRequest, *, modalities: bool = True) -> JSON:
    """The generateContent body: prompt text, then reference images, image-only output.

    ``modalities=False`` leaves out ``responseModalities``, which the stable ``/v1/`` API rejects
    with 400 ("Unknown name \"responseModalities\""); image models answer with an image without it.
    """
    parts: list[JSON] = [{"text": request.prompt}]
    parts += [
        {"inlineData": {"mimeType": image.mime_type, "data": base64.b64encode(image.data).decode("ascii")}}
        for image in request.input_images
    ]
    image_config: JSON = {"aspectRatio": request.aspect_ratio}
    if request.image_size is not None:
        image_config["imageSize"] = request.image_size
    config: JSON = {"responseModalities": ["IMAGE"]} if modalities else {}
    config["imageConfig"] = image_config
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}


# --- success (200) -------------------------------------------------------------------------------


def parse_generate_response(payload: JSON, key: str | None = None) -> ImageResult:
    """An :class:`ImageResult`, or the error DESIGN §7 assigns to a 200 without an image."""
    block = as_dict(payload.get("promptFeedback")).get("blockReason")
    if block:
        raise _prompt_blocked(payload, str(block), key)
    candidate = first_dict(payload.get("candidates"))
    parts = [p for p in as_list(as_dict(candidate.get("content")).get("parts")) if isinstance(p, dict)]
    finish = candidate.get("finishReason")
    image = _first_image(parts)
    if image is None:
        raise _no_image_error(finish, candidate, _joined_text(parts), key)
    data, declared = _decode_inline(image, key)
    return _result(payload, data, declared, finish, _joined_text(parts))


def _first_image(parts: list[JSON]) -> JSON | None:
    """The first non-thought part's inline data (``inlineData`` or ``inline_data``)."""
    for part in parts:
        if part.get("thought"):
            continue
        inline = part.get("inlineData") or part.get("inline_data")
        if isinstance(inline, dict) and inline.get("data"):
            return inline
    return None


def _joined_text(parts: list[JSON]) -> str | None:
    texts = [str(p["text"]) for p in parts if p.get("text") and not p.get("thought")]
    return "\n".join(texts) or None


def _decode_inline(inline: JSON, key: str | None) -> tuple[bytes, str | None]:
    declared = inline.get("mimeType") or inline.get("mime_type")
    try:
        data = base64.b64decode(str(inline["data"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UpstreamUnavailable(redact(f"undecodable image data: {exc}", key), status_code=200) from exc
    return data, str(declared) if declared else None


def _result(
    payload: JSON, data: bytes, declared: str | None, finish: object, text: str | None
) -> ImageResult:
    usage = as_dict(payload.get("usageMetadata"))
    extra = _usage_extra(usage)
    mime = sniff_mime(data) or declared or "application/octet-stream"
    if declared and declared != mime:
        extra["declared_mime_type"] = declared
    return ImageResult(
        data=data,
        mime_type=mime,
        text=text,
        prompt_tokens=as_int(usage.get("promptTokenCount")),
        output_tokens=as_int(usage.get("candidatesTokenCount")),
        total_tokens=as_int(usage.get("totalTokenCount")),
        finish_reason=str(finish) if finish else None,
        model_version=as_str(payload.get("modelVersion")),
        response_id=as_str(payload.get("responseId")),
        extra=extra,
    )


def _usage_extra(usage: JSON) -> dict[str, object]:
    extra: dict[str, object] = {}
    if as_int(usage.get("thoughtsTokenCount")) is not None:
        extra["thoughts_tokens"] = as_int(usage.get("thoughtsTokenCount"))
    if isinstance(usage.get("candidatesTokensDetails"), list):
        extra["candidates_tokens_details"] = usage["candidatesTokensDetails"]
    return extra


def _prompt_blocked(payload: JSON, reason: str, key: str | None) -> ContentBlocked:
    feedback = as_dict(payload.get("promptFeedback"))
    detail = feedback.get("blockReasonMessage")
    message = f"prompt blocked: blockReason={reason}" + (f" ({detail})" if detail else "")
    return ContentBlocked(redact(truncate(message), key), reason=reason)


def _no_image_error(finish: object, candidate: JSON, text: str | None, key: str | None) -> ProviderError:
    reason = str(finish).upper() if finish else "NO_CANDIDATE"
    said = " ".join(str(s) for s in (candidate.get("finishMessage"), text) if s)
    message = redact(
        truncate(f"no image returned: finishReason={reason}" + (f": {said}" if said else "")), key
    )
    kind = FINISH_REASONS.get(reason, NoImage.RETRY)
    if kind is NoImage.BLOCKED:
        return ContentBlocked(message, reason=reason)
    if kind is NoImage.INVALID:
        return InvalidRequest(message, status_code=200, provider_status=reason)
    if kind is NoImage.ACCOUNT:
        return AccountRestricted(message, status_code=200, provider_status=reason)
    return NoImageReturned(message, status_code=200, provider_status=reason)


# --- errors (non-2xx) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GoogleError:
    """The ``{"error": {...}}`` body Google APIs send with every non-2xx status."""

    code: int | None
    message: str
    status: str | None
    details: list[JSON] = field(default_factory=list)

    def of_type(self, type_url: str) -> list[JSON]:
        return [d for d in self.details if d.get("@type") == type_url]

    def violations(self) -> list[JSON]:
        found = (v for d in self.of_type(_QUOTA_FAILURE) for v in as_list(d.get("violations")))
        return [v for v in found if isinstance(v, dict)]

    def quota_ids(self) -> tuple[str, ...]:
        return tuple(str(v["quotaId"]) for v in self.violations() if v.get("quotaId"))

    def retry_delay(self) -> float | None:
        delays = [parse_duration(d.get("retryDelay")) for d in self.of_type(_RETRY_INFO)]
        return next((d for d in delays if d is not None), None)

    def retry_delay_text(self) -> str | None:
        """The raw ``RetryInfo.retryDelay`` ("58s": Google truncates it to whole seconds)."""
        texts = [d.get("retryDelay") for d in self.of_type(_RETRY_INFO)]
        return next((t for t in texts if isinstance(t, str)), None)

    def reasons(self) -> list[str]:
        return [str(d["reason"]) for d in self.of_type(_ERROR_INFO) if d.get("reason")]


def parse_google_error(payload: object, *, unwrap: bool = True) -> GoogleError | None:
    """The error object (also inside the one-element list some endpoints wrap it in).

    Relays often pass Google's whole error body on as the *message* of their own
    (``{"error": {"message": "{\\n  \\"error\\": {\\n    \\"code\\": 429, …", "code": 429}}``,
    google-gemini/gemini-cli#2020): that inner body is the answer, so it is read instead.
    """
    if isinstance(payload, list) and payload:
        payload = payload[0]
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None
    message = str(error.get("message") or "")
    if unwrap and message.lstrip().startswith(("{", "[")):
        try:
            inner = parse_google_error(json.loads(message), unwrap=False)
        except ValueError:
            inner = None
        if inner is not None:
            return inner
    details = [d for d in as_list(error.get("details")) if isinstance(d, dict)]
    return GoogleError(as_int(error.get("code")), message, as_str(error.get("status")), details)


def error_from_response(response: httpx.Response, key: str | None = None) -> ProviderError:
    """Classify a non-2xx response (DESIGN §7); every message is redacted of the key."""
    status = response.status_code
    error = parse_google_error(json_body(response))
    if error is None:
        message = redact(f"HTTP {status}: {body_excerpt(response)}", key)
        if status == 429:
            return RateLimited(
                f"unrecognised 429 (no Google error body): {message}",
                retry_after=retry_after_from_headers(response.headers),
                code=ErrorCode.UNCLASSIFIED_429,
            )
        if status == 402:
            return BillingError(message, status_code=402)
        return status_error_class(status)(message, status_code=status)
    if status == 429:
        return _rate_limit_error(error, response.headers, key)
    if status == 402 or _CREDITS_GONE.search(error.message):
        text = redact(truncate(error.message or f"HTTP {status}"), key)
        return BillingError(text, status_code=status, provider_status=error.status)
    text = redact(truncate(error.message or f"HTTP {status}"), key)
    if 400 <= status < 500 and (
        "BILLING_DISABLED" in error.reasons() or _ENABLE_BILLING.search(error.message)
    ):
        # "This API method requires billing to be enabled", "Gemini API free tier is not available in
        # your country. Please enable billing on your project in Google AI Studio." (FAILED_PRECONDITION)
        return QuotaMisconfigured(
            f"billing is not enabled on this project: {text}",
            status_code=status,
            provider_status=error.status,
        )
    if 400 <= status < 500 and _ACCOUNT_REASONS.intersection(error.reasons()):
        return AccountRestricted(text, status_code=status, provider_status=error.status)
    return _status_error(status, error, key)


def _rate_limit_error(error: GoogleError, headers: httpx.Headers, key: str | None) -> ProviderError:
    message = redact(truncate(error.message or "RESOURCE_EXHAUSTED"), key)
    status = error.status or "RESOURCE_EXHAUSTED"
    if _CREDITS_GONE.search(error.message):
        return BillingError(message, status_code=429, provider_status=status)
    if _quota_is_zero(error):
        return QuotaMisconfigured(
            f"quota is 0 for this project/model (check billing and tier): {message}",
            status_code=429,
            provider_status=status,
        )
    if _no_free_tier(error):
        return QuotaMisconfigured(
            f"billing is not enabled for {_quota_model(error) or 'this model'} on this project: it has "
            f"no free-tier quota (every free-tier limit refused at once, none stated); enable billing: "
            f"{message}",
            status_code=429,
            provider_status=status,
        )
    delay_text = error.retry_delay_text()
    retry_after = google_retry_after(error.message, delay_text)
    if retry_after is None:
        retry_after = retry_after_from_headers(headers)
    quota_ids = error.quota_ids()
    if not error.violations() and delay_text is None and google_message_delay(error.message) is None:
        return RateLimited(
            f"unrecognised 429 (no QuotaFailure, no RetryInfo): {message}",
            retry_after=retry_after,
            provider_status=status,
            code=ErrorCode.UNCLASSIFIED_429,
        )
    kind = DailyQuotaExhausted if any("PerDay" in q for q in quota_ids) else RateLimited
    return kind(message, retry_after=retry_after, quota_ids=quota_ids, provider_status=status)


def _no_free_tier(error: GoogleError) -> bool:
    """Several free-tier limits refused at once, and none states a value.

    A project that really used up its free tier hits one limit at a time and Google states it
    (``quotaValue``, ``limit: N``); every free-tier limit at once on the first call, none with a
    value, is a model that has no free tier for a project without billing (gemini-cli#8437: per-minute
    tokens, per-minute requests and per-day requests together) — parking would repeat it every day.
    """
    violations = error.violations()
    ids = {str(v.get("quotaId") or "") for v in violations}
    return (
        len(ids) >= 2
        and all("FreeTier" in quota for quota in ids)
        and not any(v.get("quotaValue") not in (None, "") for v in violations)
        and not re.search(r"\blimit:\s*[1-9]", error.message)
    )


def _quota_model(error: GoogleError) -> str | None:
    models = [as_dict(v.get("quotaDimensions")).get("model") for v in error.violations()]
    return next((str(m) for m in models if m), None)


def _quota_is_zero(error: GoogleError) -> bool:
    if any(str(v.get("quotaValue")) == "0" for v in error.violations()):
        return True
    return bool(_ZERO_QUOTA.search(error.message)) or "BILLING_DISABLED" in error.reasons()


def _status_error(status: int, error: GoogleError, key: str | None) -> ProviderError:
    message = error.message or error.status or f"HTTP {status}"
    missing = [r for r in error.reasons() if r not in message]
    if missing:
        message += f" [{', '.join(missing)}]"
    klass = status_error_class(status)
    if klass is InvalidRequest and not 400 <= status < 500:
        message = f"unexpected HTTP {status} (check base_url): {message}"
    return klass(redact(truncate(message), key), status_code=status, provider_status=error.status)
