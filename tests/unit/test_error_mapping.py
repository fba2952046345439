"""The httpx → error-tree mapping is complete, and the shared wire helpers parse what upstreams send.

Modelled on httpx's own ``test_httpcore_all_exceptions_mapped``: every ``httpx.HTTPError`` subclass
(walked recursively, so one added in a future httpx fails here) must have its own row.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from nanobatch.workers.errors import (
    InvalidRequest,
    ProviderError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from nanobatch.workers.providers import http
from nanobatch.workers.providers.factory import make_http_client

#: The classes a transport failure may become (leaves of the tree, never a base).
TRANSPORT_OUTCOMES = (UpstreamTimeout, UpstreamUnavailable, InvalidRequest)


def all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *all_subclasses(sub)}
    return found


HTTP_ERRORS = sorted({httpx.HTTPError, *all_subclasses(httpx.HTTPError)}, key=lambda c: c.__name__)
HTTPX_EXCEPTIONS = sorted(
    {obj for obj in vars(httpx).values() if isinstance(obj, type) and issubclass(obj, Exception)},
    key=lambda c: c.__name__,
)


def instance_of(cls: type[Exception]) -> Exception:
    request = httpx.Request("POST", "https://upstream.test/v1beta/models/m:generateContent")
    if issubclass(cls, httpx.HTTPStatusError):
        return cls("boom", request=request, response=httpx.Response(503, request=request))
    if issubclass(cls, httpx.RequestError):
        return cls("boom", request=request)
    return cls("boom")


@pytest.mark.parametrize("cls", HTTP_ERRORS, ids=lambda c: c.__name__)
def test_every_httpx_error_has_its_own_row(cls: type[Exception]) -> None:
    in_table = cls in http.HTTPX_ERROR_MAP
    by_status = cls in http.STATUS_MAPPED
    assert in_table != by_status, f"httpx.{cls.__name__} needs exactly one explicit mapping in http.py"


@pytest.mark.parametrize("cls", HTTP_ERRORS, ids=lambda c: c.__name__)
def test_every_httpx_error_translates_to_exactly_one_leaf(cls: type[Exception]) -> None:
    exc = instance_of(cls)
    error = http.translate_httpx_error(exc)
    matches = [leaf for leaf in TRANSPORT_OUTCOMES if isinstance(error, leaf)]
    assert len(matches) == 1
    if cls in http.HTTPX_ERROR_MAP:
        assert type(error) is http.HTTPX_ERROR_MAP[cls]


@pytest.mark.parametrize("cls", HTTPX_EXCEPTIONS, ids=lambda c: c.__name__)
def test_every_exported_httpx_exception_is_a_decision(cls: type[Exception]) -> None:
    # Non-HTTPError exceptions too (InvalidURL, CookieConflict, StreamError…): mapped or deliberately not.
    translated = cls in http.HTTPX_ERROR_MAP or cls in http.STATUS_MAPPED
    left_alone = issubclass(cls, http.NOT_TRANSLATED)
    assert translated != left_alone, f"decide what httpx.{cls.__name__} becomes"


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (httpx.ConnectTimeout, UpstreamTimeout),
        (httpx.ReadTimeout, UpstreamTimeout),
        (httpx.WriteTimeout, UpstreamTimeout),
        (httpx.PoolTimeout, UpstreamTimeout),
        (httpx.ConnectError, UpstreamUnavailable),
        (httpx.ReadError, UpstreamUnavailable),
        (httpx.WriteError, UpstreamUnavailable),
        (httpx.CloseError, UpstreamUnavailable),
        (httpx.RemoteProtocolError, UpstreamUnavailable),
        (httpx.ProxyError, UpstreamUnavailable),
        (httpx.DecodingError, UpstreamUnavailable),
        (httpx.LocalProtocolError, InvalidRequest),
        (httpx.UnsupportedProtocol, InvalidRequest),
        (httpx.TooManyRedirects, InvalidRequest),
        (httpx.InvalidURL, InvalidRequest),
    ],
)
def test_documented_decisions(cls: type[Exception], expected: type[ProviderError]) -> None:
    assert type(http.translate_httpx_error(instance_of(cls))) is expected


def test_an_unknown_future_subclass_falls_back_to_its_parent_row() -> None:
    class BrandNewTimeout(httpx.ReadTimeout):
        pass

    assert http.error_class_for(BrandNewTimeout) is UpstreamTimeout


def test_status_error_is_classified_by_its_status() -> None:
    request = httpx.Request("GET", "https://upstream.test/")
    for status, expected in [(503, UpstreamUnavailable), (404, InvalidRequest), (408, UpstreamTimeout)]:
        exc = httpx.HTTPStatusError("x", request=request, response=httpx.Response(status, request=request))
        error = http.translate_httpx_error(exc)
        assert type(error) is expected
        assert error.status_code == status


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."),
    ],
    ids=lambda e: type(e).__name__,
)
def test_exchange_raises_our_error_from_the_httpx_one(exc: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    client = httpx.Client(transport=httpx.MockTransport(handler))
    with pytest.raises(ProviderError) as info, http.exchange(client, "GET", "https://upstream.test/"):
        pass
    assert type(info.value) is http.error_class_for(type(exc))
    assert info.value.__cause__ is exc


def test_an_invalid_base_url_is_a_permanent_error() -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    with pytest.raises(InvalidRequest) as info, http.exchange(client, "GET", "http://[::1", secret="k"):
        pass
    assert isinstance(info.value.__cause__, httpx.InvalidURL)


def test_translated_messages_are_redacted() -> None:
    error = http.translate_httpx_error(
        httpx.ConnectError("proxy said: my-secret-key-value"), "my-secret-key-value"
    )
    assert "my-secret-key-value" not in str(error)


# --- statuses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (301, InvalidRequest),
        (400, InvalidRequest),
        (401, InvalidRequest),
        (403, InvalidRequest),
        (404, InvalidRequest),
        (408, UpstreamTimeout),
        (422, InvalidRequest),
        (500, UpstreamUnavailable),
        (502, UpstreamUnavailable),
        (503, UpstreamUnavailable),
        (504, UpstreamUnavailable),
        (529, UpstreamUnavailable),
    ],
)
def test_status_fallback_table(status: int, expected: type[ProviderError]) -> None:
    assert http.status_error_class(status) is expected


# --- retry hints ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("26.5s", 26.5),
        ("0.412s", 0.412),
        ("3s", 3.0),
        ("1.000000001s", 1.000000001),
        ("0s", 0.0),
        ("12", 12.0),
        ("", None),
        ("soon", None),
        ("-3s", None),
        (None, None),
        (3, None),
    ],
)
def test_parse_duration(text: object, seconds: float | None) -> None:
    assert http.parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        ("0.5", 0.5),
        (" 120 ", 120.0),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        (format_datetime(NOW - timedelta(seconds=90), usegmt=True), 0.0),
        ("-4", 0.0),
        ("nan", None),
        ("tomorrow", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert http.parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize(("value", "seconds"), [("1500", 1.5), ("250.5", 0.2505), ("x", None), (None, None)])
def test_parse_retry_after_ms(value: str | None, seconds: float | None) -> None:
    assert http.parse_retry_after_ms(value) == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_ms_wins_over_retry_after() -> None:
    headers = httpx.Headers({"retry-after": "9", "retry-after-ms": "1500"})
    assert http.retry_after_from_headers(headers) == 1.5
    assert http.retry_after_from_headers(httpx.Headers({"retry-after": "9"})) == 9.0
    assert http.retry_after_from_headers(httpx.Headers()) is None


# --- payload helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 8, "image/png"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 8, "image/jpeg"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"),
        (b"RIFF\0\0\0\0WAVEfmt ", None),
        (b"GIF89a", None),
        (b"", None),
    ],
)
def test_sniff_mime(data: bytes, mime: str | None) -> None:
    assert http.sniff_mime(data) == mime


# --- the client ----------------------------------------------------------------------------------


def test_make_http_client_is_explicit_about_timeouts_limits_and_redirects() -> None:
    with make_http_client(connect_timeout=3.0, read_timeout=120.0, max_connections=32) as client:
        assert client.timeout == httpx.Timeout(120.0, connect=3.0)
        assert client.follow_redirects is False
        assert client.headers["user-agent"] == "nanobatch/0.1"
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert pool._max_connections == 32
        assert pool._max_keepalive_connections == 32
