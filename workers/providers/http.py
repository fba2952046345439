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

Resource bounds (decisions, not accidents):

* **One deadline for the whole call.** httpx's read timeout is per read, so an upstream sending a
  byte every few seconds would hold a worker thread forever. :class:`UpstreamTransport` gives every
  request a deadline (``total_timeout``, i.e. ``NANOBATCH_REQUEST_TIMEOUT``), shared with an enclosing
  :func:`call_deadline` (a result link fetched after the answer shares its call's deadline): waiting
  for a pooled connection, connecting, writing and *every single read* get at most the time left, and
  none once it is gone → ``httpx.TimeoutException`` → :class:`UpstreamTimeout`.
* **A cap on an answer's size.** :func:`exchange` refuses a declared ``Content-Length`` above the
  client's ``max_response_bytes`` before reading, and counts the bytes it reads (after decompression,
  so a compressed bomb is cut off too) → :class:`UpstreamUnavailable` with code
  ``response_too_large``: a transient upstream fault, retried a bounded number of times.

Also here: the pooled client factory, ``Retry-After``/``retryDelay`` parsing, the status → class
fallback table and image-format sniffing.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore
import httpx

from nanobatch.models.status import ErrorCode
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


class UpstreamClient(httpx.Client):
    """An ``httpx.Client`` that also knows the largest answer :func:`exchange` may read."""

    def __init__(self, *, max_response_bytes: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_response_bytes = max_response_bytes


def make_http_client(
    *,
    connect_timeout: float,
    read_timeout: float,
    max_connections: int,
    total_timeout: float | None = None,
    max_response_bytes: int | None = None,
) -> httpx.Client:
    """A pooled client meant to be shared by all threads of one worker process.

    ``read_timeout`` also bounds writes and waiting for a pooled connection; ``total_timeout`` bounds a
    whole request, connect to last byte (see the module doc); ``max_response_bytes`` caps what
    :func:`exchange` reads. Keep-alive slots equal the connection cap because a worker's threads reuse
    connections to one upstream host. Redirects are not followed: an API endpoint that redirects is
    misconfigured.
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return UpstreamClient(
        max_response_bytes=max_response_bytes,
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        limits=limits,
        transport=UpstreamTransport(limits=limits, total_timeout=total_timeout),
        follow_redirects=False,
        headers={"user-agent": USER_AGENT},
    )


# --- the overall deadline ------------------------------------------------------------------------

_deadline = threading.local()


def current_deadline() -> float | None:
    """This thread's deadline (``time.monotonic()`` value) for the call it is making, if any."""
    return typing.cast(float | None, getattr(_deadline, "at", None))


@contextmanager
def call_deadline(seconds: float | None) -> Iterator[None]:
    """Everything this thread sends or reads inside the block must end within ``seconds`` (nested
    deadlines keep the earlier one)."""
    previous = current_deadline()
    if seconds is not None:
        at = time.monotonic() + seconds
        _deadline.at = at if previous is None else min(previous, at)
    try:
        yield
    finally:
        _deadline.at = previous


def _time_left(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` shortened to the time left before this thread's deadline; ``expired`` once past it."""
    at = current_deadline()
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise expired("the call's overall deadline passed (NANOBATCH_REQUEST_TIMEOUT)")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write waits at most until the calling thread's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync network backend, with connects bounded by the calling thread's deadline."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: typing.Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineBody(httpx.SyncByteStream):
    """A response body read under its request's deadline (the body is read after ``handle_request``)."""

    def __init__(self, inner: typing.Any, at: float) -> None:
        self._inner = inner
        self._at = at

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._inner)
        while True:
            with call_deadline(max(0.0, self._at - time.monotonic())):
                chunk = next(chunks, None)
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        self._inner.close()


class UpstreamTransport(httpx.HTTPTransport):
    """httpx's transport whose connections honour an overall deadline per request (module doc).

    httpx does not expose httpcore's ``network_backend``; the pool is rebuilt with the same settings
    httpx uses for a direct connection (no proxy, TLS verified).
    """

    def __init__(self, *, limits: httpx.Limits, total_timeout: float | None = None) -> None:
        super().__init__(limits=limits)
        self.total_timeout = total_timeout
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_DeadlineBackend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with call_deadline(self.total_timeout):
            at = current_deadline()
            if at is not None:  # waiting for a pooled connection counts too
                timeouts = dict(request.extensions.get("timeout", {}))
                pool = timeouts.get("pool")
                left = max(0.0, at - time.monotonic())
                timeouts["pool"] = left if pool is None else min(pool, left)
                request.extensions = {**request.extensions, "timeout": timeouts}
            response = super().handle_request(request)
        if at is not None:
            response.stream = _DeadlineBody(response.stream, at)
        return response


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
    at = current_deadline()
    if isinstance(exc, httpx.TimeoutException) and at is not None and time.monotonic() >= at:
        detail = f"no complete answer before the call's deadline (NANOBATCH_REQUEST_TIMEOUT): {detail}"
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
    cap = getattr(client, "max_response_bytes", None)
    try:
        response = client.send(client.build_request(method, url, **kwargs), stream=True)
    except TRANSLATED as exc:
        raise translate_httpx_error(exc, secret) from exc
    try:
        declared = response.headers.get("content-length")
        if cap is not None and declared is not None and declared.strip().isdigit() and int(declared) > cap:
            raise too_large(response, f"declares {int(declared):,} bytes (Content-Length)", cap)
        with gate.hold(declared) if gate else nullcontext():
            try:
                read_capped(response, cap)
            except TRANSLATED as exc:
                raise translate_httpx_error(exc, secret) from exc
            yield response
    finally:
        response.close()
        release_response(response)


def read_capped(response: httpx.Response, cap: int | None) -> bytes:
    """``response.read()``, stopping with :func:`too_large` as soon as more than ``cap`` bytes arrived
    (counted after decompression). The body ends up in ``response.content`` as with ``read``."""
    if cap is None:
        return response.read()
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > cap:
            raise too_large(response, f"sent more than {cap:,} bytes", cap)
        chunks.append(chunk)
    # What ``Response.read`` itself does: the joined body becomes ``response.content``.
    response._content = b"".join(chunks)
    return response._content


def too_large(response: httpx.Response, what: str, cap: int) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"the answer {what}: over the {cap:,}-byte limit (NANOBATCH_MAX_RESPONSE_BYTES)",
        status_code=response.status_code,
        provider_status="response_too_large",
        code=ErrorCode.RESPONSE_TOO_LARGE,
    )


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
