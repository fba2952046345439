"""Which API key a request presents, and how -- compared in constant time, never logged.

Gemini accepts a key three ways (``x-goog-api-key`` header, ``Authorization: Bearer`` as relays
send it, ``?key=`` in the query); OpenAI-style endpoints only the bearer header. The style is
recorded in request summaries so a test can prove which one a client used; the key itself never
leaves this module.
"""

from __future__ import annotations

import hmac

from nanobatch.simulator import google_errors
from nanobatch.simulator.protocol import HttpRequest, Reply

NO_KEY = "none"


def bearer_token(request: HttpRequest) -> str | None:
    value = request.header("authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def google_key(request: HttpRequest) -> tuple[str, str | None]:
    """``(style, key)`` for the first key found: header, then bearer, then query string."""
    header = request.header("x-goog-api-key")
    if header:
        return "x-goog-api-key", header
    token = bearer_token(request)
    if token:
        return "bearer", token
    query = request.query_value("key")
    if query:
        return "query", query
    return NO_KEY, None


def openai_key(request: HttpRequest) -> tuple[str, str | None]:
    token = bearer_token(request)
    return ("bearer", token) if token else (NO_KEY, None)


def key_matches(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def google_refusal(request: HttpRequest, expected: str | None) -> Reply | None:
    """The error a Gemini endpoint answers when a key is required and missing or wrong, else ``None``."""
    if expected is None:
        return None
    key = google_key(request)[1]
    if key is None:
        return google_errors.api_key_missing()
    if not key_matches(key, expected):
        return google_errors.api_key_invalid()
    return None
