"""Error answers as OpenAI-compatible image endpoints shape them.

``{"error": {"message", "type", "param", "code"}}``; a 429 carries ``retry-after`` (seconds, here
with a fraction), ``retry-after-ms`` and the ``x-ratelimit-*`` headers the openai SDK and relays
use, because OpenAI-style clients read the wait from headers rather than from the body.
"""

from __future__ import annotations

from nanobatch.simulator.google_errors import (
    BAD_GATEWAY_HTML,
    ECHO_QUOTA_VALUE,
    ECHO_RETRY_SECONDS,
    format_duration,
)
from nanobatch.simulator.protocol import Reply
from nanobatch.simulator.quotas import RPM, QuotaViolation

FAULTS = {
    500: ("The server had an error while processing your request. Sorry about that!", "server_error"),
    503: ("The server is overloaded or not ready yet.", "server_error"),
    504: ("Gateway timeout.", "timeout"),
}


def openai_error(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    payload = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return Reply.json(status, payload, headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> Reply:
    return openai_error(400, message, param=param, code=code)


def api_key_invalid() -> Reply:
    return openai_error(
        401,
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


def api_key_missing() -> Reply:
    return openai_error(
        401,
        "You didn't provide an API key. You need to provide your API key in an "
        "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    )


def model_not_found(model: str) -> Reply:
    return openai_error(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def rate_limited(violation: QuotaViolation, consumer: str | None = None) -> Reply:
    """429 with the wait in ``retry-after`` (fractional seconds) and ``retry-after-ms``.

    ``consumer`` (an API key, for the ``echo_key`` fault only) is named in the message.
    """
    wait = format_duration(violation.retry_after).removesuffix("s")
    unit = violation.kind.unit
    kind = "tokens" if unit == "tokens" else "requests"
    who = f" for api key {consumer}" if consumer is not None else ""
    message = (
        f"Rate limit reached for {violation.model}{who} on {unit} ({violation.kind.name.upper()}): "
        f"Limit {violation.limit}, Used {violation.used}. Please try again in {wait}s."
    )
    headers = {
        "retry-after": wait,
        "retry-after-ms": str(max(1, round(violation.retry_after * 1000))),
        f"x-ratelimit-limit-{kind}": str(violation.limit),
        f"x-ratelimit-remaining-{kind}": "0",
        f"x-ratelimit-reset-{kind}": f"{wait}s",
    }
    return openai_error(429, message, kind=kind, code="rate_limit_exceeded", headers=headers)


def key_echo(status: int, model: str, key: str) -> Reply:
    """The ``echo_key`` fault: a 429 or 400 repeating the caller's key, as sent and lower-cased, in
    the message and in the ``param``/model fields clients copy into logs and database rows."""
    tagged_model = f"{model}@{key.lower()}"
    if status == 429:
        limit = ECHO_QUOTA_VALUE
        return rate_limited(QuotaViolation(RPM, tagged_model, limit, limit, ECHO_RETRY_SECONDS), key)
    message = f"Incorrect API key provided: {key}. The model {tagged_model} is not available to it."
    return openai_error(400, message, param=tagged_model, code="invalid_api_key")


def content_blocked() -> Reply:
    return openai_error(
        400,
        "Your request was rejected as a result of our safety system. Your request "
        "may contain content that is not allowed by our safety system.",
        kind="image_generation_user_error",
        code="moderation_blocked",
    )


def fault(status: int) -> Reply:
    if status == 502:
        return Reply(502, BAD_GATEWAY_HTML, "text/html; charset=UTF-8")
    message, kind = FAULTS.get(status, ("Simulated upstream failure.", "server_error"))
    return openai_error(status, message, kind=kind)
