"""The one boundary between httpx and our error tree, plus the wire helpers both providers share.

Why one module: a transport failure means the same thing whichever protocol we speak, so the mapping
from httpx exceptions to :mod:`workers.errors` lives here, in a table a test walks for completeness
(every ``httpx.HTTPError`` subclass must have an explicit row, so a new httpx exception fails CI
instead of escaping a worker as an unclassified crash).

Transport mapping (decisions, not accidents):

* ``TimeoutException`` (connect/read/write/pool) → :class:`UpstreamTimeout`.
* ``NetworkError`` family, ``ProtocolError``/``RemoteProtocolError`` (the server dropped or garbled
  the connection), ``ProxyError`` (a proxy in the path failed) and ``DecodingError`` (a corrupt
  compressed body) → :class:`UpstreamUnavailable`: retrying the same request can succeed.
* ``LocalProtocolError`` (we built an illegal request), ``UnsupportedProtocol`` (``base_url`` has a
  bad scheme), ``TooManyRedirects`` and ``httpx.InvalidURL`` (not an ``HTTPError``) →
  :class:`InvalidRequest`: configuration or code errors that no retry fixes.
* ``HTTPStatusError`` is never raised by our code (we never call ``raise_for_status``); if it does
  arrive it is classified by its response status, like every other response.
* ``CookieConflict`` and the ``StreamError`` family are programming errors in *our* code; they are
  deliberately not translated so they surface with a full traceback.

Also here: the pooled client factory, ``Retry-After``/``retryDelay`` parsing, the status → class
fallback table and image-format sniffing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from nanobatch.workers.errors import (
    InvalidRequest,
    ProviderError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from nanobatch.workers.providers.body_gate import BodyGate
from nanobatch.workers.redact import redact

USER_AGENT = "nanobatch/0.1"

#: Exact httpx exception class → our error class. Looked up along the MRO at runtime (so an unknown
#: future subclass still lands on its parent's row), and checked class-by-class in the tests.
HTTPX_ERROR_MAP: Mapping[type[Exception], type[ProviderError]] = {
    httpx.HTTPError: UpstreamUnavailable,
    httpx.RequestError: UpstreamUnavailable,
    httpx.TransportError: UpstreamUnavailable,
    httpx.TimeoutException: UpstreamTimeout,
    httpx.ConnectTimeout: UpstreamTimeout,
    httpx.ReadTimeout: UpstreamTimeout,
    httpx.WriteTimeout: UpstreamTimeout,
    httpx.PoolTimeout: UpstreamTimeout,
    httpx.NetworkError: UpstreamUnavailable,
    httpx.ConnectError: UpstreamUnavailable,
    httpx.ReadError: UpstreamUnavailable,
    httpx.WriteError: UpstreamUnavailable,
    httpx.CloseError: UpstreamUnavailable,
    httpx.ProtocolError: UpstreamUnavailable,
    httpx.RemoteProtocolError: UpstreamUnavailable,
    httpx.LocalProtocolError: InvalidRequest,
    httpx.ProxyError: UpstreamUnavailable,
    httpx.UnsupportedProtocol: InvalidRequest,
    httpx.DecodingError: UpstreamUnavailable,
    httpx.TooManyRedirects: InvalidRequest,
    httpx.InvalidURL: InvalidRequest,
}

#: httpx exceptions classified by the response they carry, not by their class.
STATUS_MAPPED: tuple[type[Exception], ...] = (httpx.HTTPStatusError,)

#: httpx exceptions that signal a bug in our code; left untranslated on purpose.
NOT_TRANSLATED: tuple[type[Exception], ...] = (httpx.CookieConflict, httpx.StreamError)

#: What :func:`exchange` catches: everything in the table plus the status-carrying error.
TRANSLATED: tuple[type[Exception], ...] = (httpx.HTTPError, httpx.InvalidURL)


def make_http_client(*, connect_timeout: float, read_timeout: float, max_connections: int) -> httpx.Client:
    """A pooled client meant to be shared by all threads of one worker process.

    ``read_timeout`` also bounds writes and waiting for a pooled connection; keep-alive slots equal
    the connection cap because a worker's threads reuse connections to one upstream host.
    Redirects are not followed: an API endpoint that redirects is misconfigured.
    """
    return httpx.Client(
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        follow_redirects=False,
        headers={"user-agent": USER_AGENT},
    )


# --- transport errors -----------------------------------------------------------------------------


def error_class_for(exc_type: type[Exception]) -> type[ProviderError]:
    """Our class for an httpx exception type: the nearest row along its MRO."""
    for klass in exc_type.__mro__:
        if klass in HTTPX_ERROR_MAP:
            return HTTPX_ERROR_MAP[klass]
    raise TypeError(f"{exc_type.__name__} is not an httpx error we translate")


def translate_httpx_error(exc: Exception, *secrets: str | None) -> ProviderError:
    """The :class:`ProviderError` for an httpx exception (the caller raises it ``from exc``)."""
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        return status_error_class(status)(redact(str(exc), *secrets), status_code=status)
    name = type(exc).__name__
    detail = str(exc) or "no detail"
    return error_class_for(type(exc))(redact(detail, *secrets), provider_status=name)


@contextmanager
def exchange(
    client: httpx.Client,
    method: str,
    url: str | httpx.URL,
    *,
    secret: str | None = None,
    gate: BodyGate | None = None,
    **kwargs: Any,
) -> Iterator[httpx.Response]:
    """Send one request; yield the response with its body read: the single place httpx errors are caught.

    The body is read only once the headers are in and, when ``gate`` is given, while holding one of its
    slots, which stays held for the ``with`` block so the caller parses and decodes inside it (see
    :mod:`workers.providers.body_gate`). Building happens inside the boundary too, because a bad
    ``base_url`` raises ``InvalidURL`` there. ``kwargs`` go to ``client.build_request`` (``json``,
    ``data``, ``files``, ``headers``).
    """
    try:
        response = client.send(client.build_request(method, url, **kwargs), stream=True)
    except TRANSLATED as exc:
        raise translate_httpx_error(exc, secret) from exc
    try:
        with gate.hold(response.headers.get("content-length")) if gate else nullcontext():
            try:
                response.read()
            except TRANSLATED as exc:
                raise translate_httpx_error(exc, secret) from exc
            yield response
    finally:
        response.close()
        release_response(response)


def release_response(response: httpx.Response) -> None:
    """Break httpx 0.28's ``Response`` ↔ ``BoundSyncStream`` reference cycle once the body is closed.

    Without this a response (and its body: ~30 MB of base64 for a 4K image) is freed only when the
    cyclic garbage collector next runs, not when the last reference goes: a worker with 50 threads
    measured 5-6 GB of such garbage (encode/httpx#3733, #3746; still open upstream). The read body
    stays available as ``response.content``.
    """
    response.stream = httpx.ByteStream(b"")


# --- statuses ------------------------------------------------------------------------------------


def status_error_class(status: int) -> type[ProviderError]:
    """Fallback class for a non-2xx status once provider-specific rules (429, safety) have had a go.

    408 is the one 4xx that is transient (a proxy gave up waiting); 3xx means ``base_url`` points at
    something that redirects, which is a configuration error.
    """
    if status == 408:
        return UpstreamTimeout
    if status >= 500:
        return UpstreamUnavailable
    return InvalidRequest


def json_body(response: httpx.Response) -> object | None:
    """The decoded JSON body, or ``None`` when the body is not JSON (proxies answer with HTML)."""
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def success_payload(response: httpx.Response, secret: str | None = None) -> dict[str, Any]:
    """The JSON object of a 2xx answer; anything else is a garbled answer worth retrying."""
    payload = json_body(response)
    if not isinstance(payload, dict):
        message = redact(f"malformed JSON in a 200 response: {body_excerpt(response)}", secret)
        raise UpstreamUnavailable(message, status_code=response.status_code)
    return payload


def body_excerpt(response: httpx.Response, limit: int = 300) -> str:
    """A short, single-line excerpt of a non-JSON body for an error message."""
    text = response.content[:limit].decode("utf-8", "replace")
    return " ".join(text.split()) or response.reason_phrase or f"HTTP {response.status_code}"


# --- retry delays --------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*s?\s*$")


def parse_duration(text: object) -> float | None:
    """Seconds from a protobuf Duration string (``"26.5s"``, ``"0.412s"``, ``"3s"``); else ``None``."""
    if not isinstance(text, str):
        return None
    match = _DURATION.match(text)
    return float(match.group(1)) if match else None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds (fractions tolerated) or an HTTP date."""
    if not value or not value.strip():
        return None
    seconds = _float_or_none(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def parse_retry_after_ms(value: str | None) -> float | None:
    """Seconds from a ``retry-after-ms`` header (milliseconds, OpenAI's more precise variant)."""
    millis = _float_or_none(value) if value else None
    return None if millis is None else max(0.0, millis / 1000.0)


def retry_after_from_headers(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """The server's wait hint: ``retry-after-ms`` wins over ``retry-after`` when both are sent."""
    millis = parse_retry_after_ms(headers.get("retry-after-ms"))
    if millis is not None:
        return millis
    return parse_retry_after(headers.get("retry-after"), now=now)


def _float_or_none(value: str) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


# --- payloads ------------------------------------------------------------------------------------

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"WEBP", 8, "image/webp"),
)


def sniff_mime(data: bytes) -> str | None:
    """The image type the bytes really are (PNG/JPEG/WebP), whatever the request asked for."""
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic and (offset == 0 or data[:4] == b"RIFF"):
            return mime
    return None


def truncate(text: str, limit: int = 500) -> str:
    """``text`` cut to ``limit`` characters, marked when cut (upstream messages can be huge)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- tolerant JSON access (upstreams and relays omit, null or re-type fields) ---------------------


def as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def first_dict(value: object) -> dict[str, Any]:
    items = as_list(value)
    return as_dict(items[0]) if items else {}


def as_int(value: object) -> int | None:
    """An integer count; numeric strings accepted (proto int64 is a JSON string), bools rejected."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def as_str(value: object) -> str | None:
    return str(value) if value not in (None, "") else None
