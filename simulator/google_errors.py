"""Error answers exactly as the Gemini API shapes them (``google.rpc.Status`` as JSON).

Clients classify errors by these bodies -- ``status``, ``QuotaFailure.violations[].quotaId`` and
``RetryInfo.retryDelay`` -- and never by messages, so the shapes here follow Google's, including
the unkind parts: ``retryDelay`` is whole seconds, *truncated* (``"58s"``), while the message
carries the precise figure (``"Please retry in 58.934310785s."``), so a sub-second wait reads
``"0s"``; a per-day 429 advertises a short delay (about 40 s) that does not mean the quota is back,
so only the ``quotaId`` (``...PerDay...``) says "wait for Pacific midnight". No ``Retry-After``
header; ``ErrorInfo`` with ``API_KEY_INVALID`` for a wrong key; unknown request fields answer
``Invalid JSON payload received. Unknown name ...`` with a ``BadRequest`` detail. A 502 is not a
Google body at all but an HTML page from the front end, which is what clients actually meet.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from nanobatch.simulator.protocol import Reply
from nanobatch.simulator.quotas import RPM, QuotaViolation

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

#: ``google.rpc.Code`` numbers by status name: a ``google.rpc.Status`` *embedded* in a resource (a
#: batch job's ``error``, a failed request inside a batch) carries these, not HTTP statuses.
GRPC_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}

FAULT_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}

RATE_LIMIT_DOCS = "https://ai.google.dev/gemini-api/docs/rate-limits"

#: What a per-day 429 advertises in RetryInfo (DESIGN section 8: "~40 s", not the time to midnight).
DAILY_RETRY_HINT_SECONDS = 40.0

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
SERVICE = "generativelanguage.googleapis.com"

#: The ``echo_key`` fault's 429: a short per-minute wait and a made-up limit.
ECHO_RETRY_SECONDS = 1.5
ECHO_QUOTA_VALUE = 60

BAD_GATEWAY_HTML = (
    b"<!DOCTYPE html>\n<html lang=en><meta charset=utf-8><title>Error 502 (Server Error)!!1</title>"
    b"<p><b>502.</b> <ins>That's an error.</ins><p>The server encountered a temporary error and "
    b"could not complete your request.<p>Please try again in 30 seconds. <ins>That's all we know.</ins>"
)


def format_duration(seconds: float) -> str:
    """A protobuf Duration in JSON form, millisecond precision: ``26.5s``, ``0.412s``, ``3s``."""
    millis = max(1, math.ceil(round(seconds * 1000, 6)))
    whole, frac = divmod(millis, 1000)
    return f"{whole}s" if frac == 0 else f"{whole}.{frac:03d}".rstrip("0") + "s"


def precise_duration(seconds: float) -> str:
    """A Duration as protobuf's JSON mapping prints it (0, 3, 6 or 9 decimals): ``58.934310785s``."""
    nanos = max(0, round(seconds * 1_000_000_000))
    whole, fraction = divmod(nanos, 1_000_000_000)
    if fraction == 0:
        return f"{whole}s"
    digits = f"{fraction:09d}"
    while digits.endswith("000"):
        digits = digits[:-3]
    return f"{whole}.{digits}s"


def whole_seconds(seconds: float) -> str:
    """``RetryInfo.retryDelay`` as the real API sends it: whole seconds, truncated (``0.9`` -> ``0s``)."""
    return f"{max(0, math.floor(seconds))}s"


def advertised_delay(violation: QuotaViolation) -> float:
    """The wait a 429 claims: the real one, except per-day quotas, which claim about 40 s.

    The fraction of the real wait is kept so the message still shows a precise-looking figure.
    """
    if "PerDay" in violation.kind.quota_id:
        return DAILY_RETRY_HINT_SECONDS + violation.retry_after % 1
    return violation.retry_after


def google_error(
    code: int, message: str, details: list[dict[str, Any]] | None = None, status: str | None = None
) -> Reply:
    """``{"error": {"code", "message", "status", "details"?}}`` with the matching HTTP status."""
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": status or STATUS_NAMES.get(code, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return Reply.json(code, {"error": error})


def rpc_status(status: str, message: str) -> dict[str, Any]:
    """An embedded ``google.rpc.Status``: ``{"code": <google.rpc.Code>, "message"}``.

    No ``details``: google-genai's ``JobError.details`` is a list of strings, so Any-typed details
    would not validate; no ``status`` name either (that belongs to the HTTP error envelope only).
    """
    return {"code": GRPC_CODES.get(status, GRPC_CODES["UNKNOWN"]), "message": message}


def embedded_status(reply: Reply) -> dict[str, Any]:
    """The ``google.rpc.Status`` inside an HTTP error answer, re-coded for embedding."""
    error = json.loads(reply.body).get("error", {})
    name = str(error.get("status") or STATUS_NAMES.get(reply.status, "UNKNOWN"))
    return rpc_status(name, str(error.get("message") or ""))


def api_key_invalid() -> Reply:
    message = "API key not valid. Please pass a valid API key."
    return google_error(
        400,
        message,
        [
            {
                "@type": ERROR_INFO,
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": SERVICE},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
        ],
    )


def api_key_missing() -> Reply:
    return google_error(
        403,
        "Method doesn't allow unregistered callers (callers without established "
        "identity). Please use API Key or other form of API consumer identity to call "
        "this API.",
    )


def invalid_argument(message: str) -> Reply:
    return google_error(400, message)


def unknown_fields(fields: list[tuple[str, str]]) -> Reply:
    """400 for request fields the API does not know, as ``(name as sent, where)`` pairs.

    Wording and the ``BadRequest.fieldViolations`` detail follow real answers quoted in public issue
    threads (e.g. ``Unknown name "outputMimeType" at 'generation_config.image_config': Cannot find
    field.``); every unknown name is listed, one line each, as upstream does.
    """
    violations: list[dict[str, str]] = []
    for name, where in fields:
        at = f" at '{where}'" if where else ""
        description = f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.'
        violations.append(
            {"field": where, "description": description} if where else {"description": description}
        )
    message = "\n".join(v["description"] for v in violations)
    return google_error(400, message, [{"@type": BAD_REQUEST, "fieldViolations": violations}])


def developer_instruction_disabled(model: str) -> Reply:
    """400 for ``systemInstruction`` on a model without one. The wording is the real API's, as quoted
    in public issue threads for other models (``Developer instruction is not enabled for models/...``)."""
    return invalid_argument(f"Developer instruction is not enabled for models/{model}")


def model_not_found(model: str, version: str) -> Reply:
    return google_error(
        404,
        f"models/{model} is not found for API version {version}, or is not "
        "supported for generateContent. Call ListModels to see the list of available "
        "models and their supported methods.",
    )


def quota_exceeded(violation: QuotaViolation, consumer: str | None = None) -> Reply:
    """The 429 a quota violation earns: Help, QuotaFailure and RetryInfo details.

    The message carries the precise wait and ``RetryInfo`` the truncated one, as upstream does.
    ``consumer`` (an API key, for the ``echo_key`` fault only) is named in the message and the
    quota dimensions.
    """
    kind, wait = violation.kind, advertised_delay(violation)
    dimensions = {"model": violation.model, "location": "global"}
    if consumer is not None:
        dimensions["consumer"] = f"api_key:{consumer}"
    who = f", consumer: api_key:{consumer}" if consumer is not None else ""
    message = (
        f"You exceeded your current quota, please check your plan and billing details. For more "
        f"information on this error, head to: {RATE_LIMIT_DOCS}.\n* Quota exceeded for metric: "
        f"{kind.quota_metric}, limit: {violation.limit}, model: {violation.model}{who}\n"
        f"Please retry in {precise_duration(wait)}."
    )
    return google_error(
        429,
        message,
        [
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Learn more about Gemini API quotas", "url": RATE_LIMIT_DOCS}],
            },
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": kind.quota_metric,
                        "quotaId": kind.quota_id,
                        "quotaDimensions": dimensions,
                        "quotaValue": str(violation.limit),
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": whole_seconds(wait)},
        ],
    )


def key_echo(status: int, model: str, key: str) -> Reply:
    """The ``echo_key`` fault: a 429 or 400 repeating the caller's key, as sent and lower-cased.

    The key lands where clients copy error text into logs and database rows -- the message, the
    ``quotaId``, the ``quotaDimensions`` and a model field -- so redaction is tested on all of them.
    The 429 stays per-minute (a client classifies and retries it); the 400 is a permanent refusal.
    """
    tagged_model = f"{model}@{key.lower()}"
    if status == 429:
        kind = dataclasses.replace(RPM, quota_id=f"{RPM.quota_id}-{key}")
        limit = ECHO_QUOTA_VALUE
        return quota_exceeded(QuotaViolation(kind, tagged_model, limit, limit, ECHO_RETRY_SECONDS), key)
    message = f"Request contains an invalid argument for consumer api_key:{key} on model {tagged_model}."
    info = {
        "@type": ERROR_INFO,
        "reason": "CONSUMER_INVALID",
        "domain": "googleapis.com",
        "metadata": {"service": SERVICE, "consumer": f"api_key:{key}", "modelVersion": tagged_model},
    }
    return google_error(400, message, [info])


def fault(status: int) -> Reply:
    """An injected failure: HTML for 502 (a front-end error), a Google Status body otherwise."""
    if status == 502:
        return Reply(502, BAD_GATEWAY_HTML, "text/html; charset=UTF-8")
    return google_error(status, FAULT_MESSAGES.get(status, "Simulated upstream failure."))
