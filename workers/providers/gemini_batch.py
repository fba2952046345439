"""The Gemini Batch API (half price, results within a day) on an injected ``httpx.Client``.

Wire format (google-genai ``batches.py``, ``files.py``, ``_api_client.upload_file``; docs/lanes.md):

* create: ``POST {base}/{version}/models/{model}:batchGenerateContent`` with
  ``{"batch": {"displayName", "inputConfig": {"requests": {"requests": [{"request", "metadata":
  {"key"}}]}}}}`` (inline, at most ``inline_limit_bytes``: 20 MB upstream) or ``"inputConfig":
  {"fileName": "files/..."}`` naming an uploaded JSONL of ``{"key", "request"}`` lines. The answer
  is an operation ``batches/{id}`` (:class:`BatchJob`).
* upload: resumable, ``POST {base}/upload/{version}/files`` (``X-Goog-Upload-Command: start``)
  -> ``x-goog-upload-url``; then chunks of ``chunk_bytes`` with ``upload`` / ``upload, finalize``
  and ``X-Goog-Upload-Offset``. The JSONL is spooled to a temporary *file* first (its size must be
  declared), so 100k requests cost disk, not memory.
* poll ``GET batches/{id}``; list ``GET batches?pageSize&pageToken``; ``POST batches/{id}:cancel``;
  ``DELETE batches/{id}``.
* results: ``response.inlinedResponses.inlinedResponses[]`` (``metadata.output`` mirrors it) for
  inline jobs, each ``{"metadata": {"key"}, "response" | "error"}``; ``response.responsesFile`` for
  file jobs, downloaded from ``GET {base}/{version}/files/{id}:download?alt=media`` and read line
  by line (``{"key", "response" | "error"}``).

Every result goes through the same classification as a standard call: a ``response`` through
:func:`workers.providers.gemini.parse_generate_response` (image, safety block, no image), an
``error`` (an embedded ``google.rpc.Status`` whose ``code`` is a ``google.rpc.Code``) through
:func:`workers.providers.gemini.error_from_response` as the HTTP answer that status maps to, so a
batch result and a standard call can never be judged differently. Errors of the Batch API calls
themselves are classified the same way; httpx failures are translated by
:mod:`workers.providers.http`. The API key is only ever sent as a header and redacted from messages.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from nanobatch.workers.errors import ProviderError, UpstreamUnavailable
from nanobatch.workers.providers.base import ImageResult, ProviderConfig
from nanobatch.workers.providers.gemini import error_from_response, parse_generate_response
from nanobatch.workers.providers.http import (
    TRANSLATED,
    as_dict,
    as_int,
    as_list,
    as_str,
    exchange,
    release_response,
    success_payload,
    translate_httpx_error,
)
from nanobatch.workers.redact import redact

logger = logging.getLogger("nanobatch.workers.batch")

#: The Batch API's inline limit for a create request (20 MB); larger batches go through a file.
INLINE_LIMIT_BYTES = 20 * 1024 * 1024
#: Upload chunk size: google-genai's (8 MiB), a multiple of the 256 KiB upstream granularity.
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024
UPLOAD_GRANULARITY = 256 * 1024
JSONL_MIME = "application/jsonl"
LIST_PAGE_SIZE = 50

#: ``google.rpc.Code`` -> (HTTP status, status name): how an embedded status maps to the HTTP
#: answer the same failure would have been on a standard call (google.rpc code.proto).
RPC_CODES: dict[int, tuple[int, str]] = {
    1: (499, "CANCELLED"),
    2: (500, "UNKNOWN"),
    3: (400, "INVALID_ARGUMENT"),
    4: (504, "DEADLINE_EXCEEDED"),
    5: (404, "NOT_FOUND"),
    6: (409, "ALREADY_EXISTS"),
    7: (403, "PERMISSION_DENIED"),
    8: (429, "RESOURCE_EXHAUSTED"),
    9: (400, "FAILED_PRECONDITION"),
    10: (409, "ABORTED"),
    11: (400, "OUT_OF_RANGE"),
    12: (501, "UNIMPLEMENTED"),
    13: (500, "INTERNAL"),
    14: (503, "UNAVAILABLE"),
    15: (500, "DATA_LOSS"),
    16: (401, "UNAUTHENTICATED"),
}

JSON = dict[str, Any]
Outcome = ImageResult | ProviderError


class BatchState(StrEnum):
    UNSPECIFIED = "BATCH_STATE_UNSPECIFIED"
    PENDING = "BATCH_STATE_PENDING"
    RUNNING = "BATCH_STATE_RUNNING"
    SUCCEEDED = "BATCH_STATE_SUCCEEDED"
    FAILED = "BATCH_STATE_FAILED"
    CANCELLED = "BATCH_STATE_CANCELLED"
    EXPIRED = "BATCH_STATE_EXPIRED"

    @property
    def is_terminal(self) -> bool:
        return self in (BatchState.SUCCEEDED, BatchState.FAILED, BatchState.CANCELLED, BatchState.EXPIRED)


class InlineBatchTooLarge(ValueError):
    """The inline create body would exceed the limit: send the requests as a file instead."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"inline batch body exceeds {limit} bytes; upload the requests as a JSONL file")
        self.limit = limit


@dataclass(frozen=True)
class BatchStats:
    """``metadata.batchStats`` (int64 counts arrive as strings; absent ones are ``None``)."""

    requests: int | None = None
    pending: int | None = None
    succeeded: int | None = None
    failed: int | None = None


@dataclass(frozen=True)
class BatchJob:
    """One batch operation as last seen. ``operation`` is the raw JSON (inline results live there)."""

    name: str
    state: BatchState
    model: str | None = None
    display_name: str | None = None
    stats: BatchStats = BatchStats()
    create_time: str | None = None
    update_time: str | None = None
    end_time: str | None = None
    responses_file: str | None = None
    error: str | None = None
    operation: JSON = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.state.is_terminal

    @property
    def inlined_responses(self) -> list[Any]:
        metadata = as_dict(self.operation.get("metadata"))
        output = as_dict(self.operation.get("response")) or as_dict(metadata.get("output"))
        return as_list(as_dict(output.get("inlinedResponses")).get("inlinedResponses"))


@dataclass(frozen=True)
class UploadedFile:
    """A Files API resource (``files/...``)."""

    name: str
    size_bytes: int | None = None
    mime_type: str | None = None
    display_name: str | None = None
    uri: str | None = None


class GeminiBatchClient:
    """Create, poll, cancel and delete batch jobs, upload their input and read their results."""

    def __init__(
        self,
        config: ProviderConfig,
        client: httpx.Client,
        *,
        inline_limit_bytes: int = INLINE_LIMIT_BYTES,
        chunk_bytes: int = UPLOAD_CHUNK_BYTES,
    ) -> None:
        if inline_limit_bytes < 1:
            raise ValueError(f"inline_limit_bytes must be positive, got {inline_limit_bytes}")
        if chunk_bytes < UPLOAD_GRANULARITY or chunk_bytes % UPLOAD_GRANULARITY:
            raise ValueError(f"chunk_bytes must be a multiple of {UPLOAD_GRANULARITY}, got {chunk_bytes}")
        self._config = config
        self._client = client
        self.inline_limit_bytes = inline_limit_bytes
        self.chunk_bytes = chunk_bytes

    # -- creating -------------------------------------------------------------------------------

    def create_inline(
        self, model: str, requests: Iterable[tuple[str, JSON]], *, display_name: str | None = None
    ) -> BatchJob:
        """A job over ``(key, GenerateContentRequest body)`` pairs sent in the create request.

        Raises :class:`InlineBatchTooLarge` *before sending* once the body passes the limit (the
        iterable is then partly consumed; :meth:`submit` chooses the route without that problem).
        """
        body = inline_body(requests, display_name, self.inline_limit_bytes)
        return self._create(model, body)

    def create_from_file(self, model: str, file_name: str, *, display_name: str | None = None) -> BatchJob:
        """A job over an uploaded JSONL (``files/...``, see :meth:`upload_jsonl`)."""
        batch: JSON = {"inputConfig": {"fileName": _resource(file_name, "files")}}
        if display_name:
            batch = {"displayName": display_name, **batch}
        return self._create(model, json.dumps({"batch": batch}).encode())

    def submit(
        self, model: str, requests: Iterable[tuple[str, JSON]], *, display_name: str | None = None
    ) -> BatchJob:
        """Inline if the requests fit the limit, else upload them and create from the file.

        The requests are spooled to a temporary file once, so choosing costs disk, not memory
        (at most the inline limit is held, to send it).
        """
        with tempfile.TemporaryFile() as spool:
            size = write_jsonl(spool, requests)
            spool.seek(0)
            try:
                body = inline_body(read_jsonl(spool), display_name, self.inline_limit_bytes)
            except InlineBatchTooLarge:
                uploaded = self._upload(spool, size, display_name)
                return self.create_from_file(model, uploaded.name, display_name=display_name)
        return self._create(model, body)

    def _create(self, model: str, body: bytes) -> BatchJob:
        url = f"{self._base()}/models/{model.removeprefix('models/')}:batchGenerateContent"
        payload = self._call("POST", url, content=body, headers={"content-type": "application/json"})
        return parse_operation(payload, self._config.api_key)

    # -- uploading ------------------------------------------------------------------------------

    def upload_jsonl(
        self, requests: Iterable[tuple[str, JSON]], *, display_name: str | None = None
    ) -> UploadedFile:
        """Write ``{"key", "request"}`` lines to a temporary file, then upload it resumably."""
        with tempfile.TemporaryFile() as spool:
            size = write_jsonl(spool, requests)
            return self._upload(spool, size, display_name)

    def _upload(self, spool: IO[bytes], size: int, display_name: str | None) -> UploadedFile:
        url, key = self._start_upload(size, display_name), self._config.api_key
        spool.seek(0)
        offset = 0
        while True:
            chunk = spool.read(self.chunk_bytes)
            last = offset + len(chunk) >= size
            headers = {
                "X-Goog-Upload-Command": "upload, finalize" if last else "upload",
                "X-Goog-Upload-Offset": str(offset),
            }
            with exchange(self._client, "POST", url, secret=key, content=chunk, headers=headers) as r:
                if not r.is_success:
                    raise error_from_response(r, key)
                status = r.headers.get("x-goog-upload-status")
                payload = success_payload(r, key) if last else {}
            offset += len(chunk)
            if last:
                return _uploaded(payload, status)
            if status != "active":
                raise UpstreamUnavailable(f"upload interrupted at byte {offset} (upload status {status})")

    def _start_upload(self, size: int, display_name: str | None) -> str:
        headers = {
            **self._auth(),
            "content-type": "application/json",
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": JSONL_MIME,
        }
        body = {"file": {"displayName": display_name}} if display_name else {"file": {}}
        root = self._config.base_url.rstrip("/")
        url = f"{root}/upload/{self._config.api_version}/files"
        key = self._config.api_key
        with exchange(self._client, "POST", url, secret=key, json=body, headers=headers) as response:
            if not response.is_success:
                raise error_from_response(response, key)
            upload_url = response.headers.get("x-goog-upload-url")
        if not upload_url:
            raise UpstreamUnavailable("upload start answered without an x-goog-upload-url header")
        return self._same_host(upload_url)

    def _same_host(self, upload_url: str) -> str:
        """The upload URL on ``base_url``'s scheme and host, as google-genai does (relays, simulator)."""
        base, upload = urlsplit(self._config.base_url), urlsplit(upload_url)
        return urlunsplit(upload._replace(scheme=base.scheme, netloc=base.netloc))

    # -- polling and ending ---------------------------------------------------------------------

    def get(self, name: str) -> BatchJob:
        payload = self._call("GET", f"{self._base()}/{_resource(name, 'batches')}")
        return parse_operation(payload, self._config.api_key)

    def list(self, *, page_size: int = LIST_PAGE_SIZE) -> Iterator[BatchJob]:
        """Every job, following ``nextPageToken``; inline results are not in list pages."""
        token: str | None = None
        while True:
            params: dict[str, str | int] = {"pageSize": page_size}
            if token:
                params["pageToken"] = token
            page = self._call("GET", f"{self._base()}/batches", params=params)
            for operation in as_list(page.get("operations")):
                if isinstance(operation, dict):
                    yield parse_operation(operation, self._config.api_key)
            token = as_str(page.get("nextPageToken"))
            if not token:
                return

    def cancel(self, name: str) -> None:
        self._call("POST", f"{self._base()}/{_resource(name, 'batches')}:cancel")

    def delete(self, name: str) -> None:
        self._call("DELETE", f"{self._base()}/{_resource(name, 'batches')}")

    def delete_file(self, name: str) -> None:
        self._call("DELETE", f"{self._base()}/{_resource(name, 'files')}")

    # -- results --------------------------------------------------------------------------------

    def results(self, job: BatchJob, *, keys: Sequence[str] | None = None) -> Iterator[tuple[str, Outcome]]:
        """``(key, ImageResult | ProviderError)`` for every answered request of a succeeded job.

        Inline answers are matched by ``metadata.key``; an answer without one takes the key at its
        position in ``keys`` (the order the requests were sent), else its position as a string.
        A responses file is streamed line by line; a line that is not JSON is logged and skipped,
        so callers must treat a key with no result as not done.
        """
        if job.state is not BatchState.SUCCEEDED:
            raise ValueError(f"{job.name} has no results (state {job.state.value})")
        key = self._config.api_key
        if job.responses_file:
            for number, line in enumerate(self.download_lines(job.responses_file), start=1):
                item = _json_line(line, number, job.name)
                if item is not None:
                    yield str(item.get("key", "")), outcome_of(item, key)
            return
        for position, item in enumerate(job.inlined_responses):
            item = as_dict(item)
            yield _inline_key(item, position, keys), outcome_of(item, key)

    def download_lines(self, file_name: str) -> Iterator[bytes]:
        """The lines of a generated file, streamed: one line in memory at a time."""
        url = f"{self._base()}/{_resource(file_name, 'files')}:download"
        key = self._config.api_key
        request = self._client.build_request("GET", url, params={"alt": "media"}, headers=self._auth())
        try:
            response = self._client.send(request, stream=True)
        except TRANSLATED as exc:
            raise translate_httpx_error(exc, key) from exc
        try:
            if not response.is_success:
                response.read()
                raise error_from_response(response, key)
            yield from _lines(response, key)
        except TRANSLATED as exc:
            raise translate_httpx_error(exc, key) from exc
        finally:
            response.close()
            release_response(response)

    # -- plumbing -------------------------------------------------------------------------------

    def _base(self) -> str:
        return f"{self._config.base_url.rstrip('/')}/{self._config.api_version}"

    def _auth(self) -> dict[str, str]:
        key = self._config.api_key
        if not key:
            return {}
        if self._config.auth == "bearer":
            return {"authorization": f"Bearer {key}"}
        return {"x-goog-api-key": key}

    def _call(self, method: str, url: str, **kwargs: Any) -> JSON:
        """One JSON exchange: the answer object, or the classified error raised."""
        key = self._config.api_key
        headers = {**self._auth(), **kwargs.pop("headers", {})}
        with exchange(self._client, method, url, secret=key, headers=headers, **kwargs) as response:
            if not response.is_success:
                raise error_from_response(response, key)
            return success_payload(response, key) if response.content.strip() else {}


# --- bodies --------------------------------------------------------------------------------------


def _envelope(display_name: str | None) -> tuple[bytes, bytes]:
    batch: JSON = {"displayName": display_name} if display_name else {}
    opened = json.dumps({"batch": {**batch, "inputConfig": {"requests": {"requests": []}}}}).encode()
    head, _, tail = opened.partition(b"[]")
    return head + b"[", b"]" + tail


def inline_body(requests: Iterable[tuple[str, JSON]], display_name: str | None, limit: int) -> bytes:
    """The inline create body, built item by item; :class:`InlineBatchTooLarge` once past ``limit``."""
    head, tail = _envelope(display_name)
    parts, size = [head], len(head) + len(tail)
    for index, (key, request) in enumerate(requests):
        item = json.dumps({"request": request, "metadata": {"key": key}}, separators=(",", ":")).encode()
        size += len(item) + (1 if index else 0)
        if size > limit:
            raise InlineBatchTooLarge(limit)
        parts.append(b"," + item if index else item)
    parts.append(tail)
    return b"".join(parts)


def write_jsonl(sink: IO[bytes], requests: Iterable[tuple[str, JSON]]) -> int:
    """``{"key", "request"}`` lines into ``sink``; the number of bytes written."""
    size = 0
    for key, request in requests:
        line = json.dumps({"key": key, "request": request}, separators=(",", ":")).encode() + b"\n"
        sink.write(line)
        size += len(line)
    sink.flush()
    return size


def read_jsonl(source: IO[bytes]) -> Iterator[tuple[str, JSON]]:
    """The ``(key, request)`` pairs :func:`write_jsonl` wrote."""
    for line in source:
        item = json.loads(line)
        yield str(item["key"]), dict(item["request"])


# --- answers -------------------------------------------------------------------------------------


def parse_operation(payload: JSON, key: str | None = None) -> BatchJob:
    """A batch operation (create, get, list item) as a :class:`BatchJob`."""
    metadata = as_dict(payload.get("metadata"))
    output = as_dict(payload.get("response")) or as_dict(metadata.get("output"))
    stats = as_dict(metadata.get("batchStats"))
    error = as_dict(payload.get("error"))
    try:
        state = BatchState(str(metadata.get("state") or BatchState.UNSPECIFIED))
    except ValueError:
        state = BatchState.UNSPECIFIED
    return BatchJob(
        name=str(payload.get("name") or metadata.get("name") or ""),
        state=state,
        model=as_str(metadata.get("model")),
        display_name=as_str(metadata.get("displayName")),
        stats=BatchStats(
            requests=as_int(stats.get("requestCount")),
            pending=as_int(stats.get("pendingRequestCount")),
            succeeded=as_int(stats.get("successfulRequestCount")),
            failed=as_int(stats.get("failedRequestCount")),
        ),
        create_time=as_str(metadata.get("createTime")),
        update_time=as_str(metadata.get("updateTime")),
        end_time=as_str(metadata.get("endTime")),
        responses_file=as_str(output.get("responsesFile")),
        error=redact(str(error.get("message") or error), key) if error else None,
        operation=payload,
    )


def outcome_of(item: JSON, key: str | None = None) -> Outcome:
    """One batch result classified exactly as a standard call's answer would be."""
    response = item.get("response")
    if isinstance(response, dict):
        try:
            return parse_generate_response(response, key)
        except ProviderError as exc:
            return exc
    status = item.get("error")
    if isinstance(status, dict):
        return error_of_status(status, key)
    return UpstreamUnavailable("batch result has neither a response nor an error", status_code=200)


def error_of_status(status: JSON, key: str | None = None) -> ProviderError:
    """An embedded ``google.rpc.Status`` classified as the HTTP error it stands for.

    ``code`` is a ``google.rpc.Code`` (8 = RESOURCE_EXHAUSTED); an HTTP-style code (>= 100) is
    taken as it is. Object ``details`` (QuotaFailure, RetryInfo) are kept for the 429 rules.
    """
    code = as_int(status.get("code"))
    if code is not None and code >= 100:
        http, name = code, as_str(status.get("status"))
    else:
        http, name = RPC_CODES.get(code or 2, (500, "UNKNOWN"))
        name = as_str(status.get("status")) or name
    error: JSON = {"code": http, "message": str(status.get("message") or name), "status": name}
    details = [d for d in as_list(status.get("details")) if isinstance(d, dict)]
    if details:
        error["details"] = details
    return error_from_response(httpx.Response(http, json={"error": error}), key)


def _uploaded(payload: JSON, status: str | None) -> UploadedFile:
    resource = as_dict(payload.get("file"))
    name = as_str(resource.get("name"))
    if status != "final" or not name:
        raise UpstreamUnavailable(f"upload did not finish (x-goog-upload-status: {status})")
    return UploadedFile(
        name=name,
        size_bytes=as_int(resource.get("sizeBytes")),
        mime_type=as_str(resource.get("mimeType")),
        display_name=as_str(resource.get("displayName")),
        uri=as_str(resource.get("uri")),
    )


def _lines(response: httpx.Response, key: str | None) -> Iterator[bytes]:
    """Split a streamed body into non-blank lines, holding one line (and one chunk) at a time."""
    buffer = bytearray()
    for chunk in response.iter_bytes():
        begin = 0
        while (cut := chunk.find(b"\n", begin)) >= 0:
            buffer += chunk[begin:cut]
            if buffer.strip():
                yield bytes(buffer)
            buffer.clear()
            begin = cut + 1
        buffer += chunk[begin:]
    if buffer.strip():
        yield bytes(buffer)


def _json_line(line: bytes, number: int, job: str) -> JSON | None:
    try:
        item = json.loads(line)
    except ValueError:
        item = None
    if not isinstance(item, dict):
        logger.warning("batch %s: result line %d is not a JSON object; skipped", job, number)
        return None
    return item


def _inline_key(item: JSON, position: int, keys: Sequence[str] | None) -> str:
    key = as_str(as_dict(item.get("metadata")).get("key")) or as_str(item.get("key"))
    if key is not None:
        return key
    if keys is not None and position < len(keys):
        return keys[position]
    return str(position)


def _resource(name: str, collection: str) -> str:
    """``batches/abc`` from ``abc`` or ``batches/abc`` (likewise ``files/...``)."""
    return name if name.startswith(f"{collection}/") else f"{collection}/{name}"
