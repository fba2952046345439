"""HTTP routes of the Batch API and the Files API (paths as google-genai builds them).

=================================================  ==============================================
``POST /{v}/models/{model}:batchGenerateContent``  create a job (inline requests or ``fileName``)
``GET /{v}/batches/{id}``                          the job's operation (results once succeeded)
``GET /{v}/batches?pageSize&pageToken``            ``{"operations": [...], "nextPageToken"}``
``POST /{v}/batches/{id}:cancel``                  cancel (``{}``)
``DELETE /{v}/batches/{id}``                       delete (``{}``)
``POST /upload/{v}/files``                         resumable upload: start, then chunks
``GET /{v}/files/{id}``, ``DELETE``, ``GET /{v}/files``   file resources
``GET /{v}/files/{id}:download?alt=media``         a generated file's bytes (also under ``/download``)
=================================================  ==============================================

Every route but an upload's chunks needs the API key when one is configured (chunks carry the
upload id instead, as the SDK sends them). Errors are Google-shaped (``google_errors``). A list
page leaves out inline results (they can be large; ``GET`` the job for them), as it leaves out the
inline requests: the list is for states and counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from nanobatch.models.catalog import Catalog, CatalogError
from nanobatch.simulator import google_errors
from nanobatch.simulator.auth import google_refusal
from nanobatch.simulator.batches import BatchBook, BatchJob, InlineArray
from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.protocol import HttpRequest, Outcome, Reply, Stream
from nanobatch.simulator.stats import Stats
from nanobatch.simulator.uploads import FileBook, StoredFile, UploadError

VERSION = r"(?P<version>v1beta|v1alpha|v1)"
CREATE = re.compile(rf"^/{VERSION}/models/(?P<model>[^/:]+):batchGenerateContent$")
BATCH = re.compile(rf"^/{VERSION}/batches/(?P<id>[^/:]+)(?P<verb>:cancel)?$")
BATCHES = re.compile(rf"^/{VERSION}/batches$")
UPLOAD = re.compile(rf"^/upload/{VERSION}/files$")
FILE = re.compile(rf"^(?:/download)?/{VERSION}/files/(?P<id>[^/:]+)(?P<verb>:download)?$")
FILES = re.compile(rf"^/{VERSION}/files$")
PAGE_DEFAULT, PAGE_MAX = 25, 1000
CHUNK_GRANULARITY = 256 * 1024  # upstream asks for chunks in multiples of 256 KiB (the last excepted)


class BatchRoutes:
    """Answers Batch API and Files API requests; ``handle`` returns ``None`` for other paths."""

    def __init__(
        self, config: SimulatorConfig, catalog: Catalog, files: FileBook, batches: BatchBook, stats: Stats
    ) -> None:
        self.config, self.catalog, self.files, self.batches, self.stats = (
            config,
            catalog,
            files,
            batches,
            stats,
        )

    def handle(self, request: HttpRequest) -> Outcome | None:
        path = request.path
        if UPLOAD.match(path) and request.query_value("upload_id"):
            return self._chunk(request)  # the upload id is the credential
        for pattern, route in (
            (CREATE, self._create),
            (BATCH, self._batch),
            (BATCHES, self._list),
            (UPLOAD, self._start_upload),
            (FILE, self._file),
            (FILES, self._list_files),
        ):
            match = pattern.match(path)
            if match:
                refusal = google_refusal(request, self.config.api_key)
                return refusal or route(request, match.groupdict())
        return None

    # -- batches --------------------------------------------------------------------------------

    def _create(self, request: HttpRequest, args: dict[str, Any]) -> Outcome:
        if request.method != "POST":
            return _not_allowed(request)
        limit = self.config.batch_inline_limit_bytes
        if len(request.body) > limit:
            return google_errors.invalid_argument(f"Request payload size exceeds the limit: {limit} bytes.")
        model = self._model(args["model"])
        if model is None:
            return google_errors.model_not_found(args["model"], args["version"])
        try:
            batch = _object(json.loads(request.body or b"{}"), "batch")
        except ValueError as exc:
            return google_errors.invalid_argument(f"Invalid JSON payload received. {exc}")
        if isinstance(batch, Reply):
            return batch
        job = self._start(model, args["version"], batch)
        return job if isinstance(job, Reply) else _operation(job)

    def _start(self, model: str, version: str, batch: dict[str, Any]) -> BatchJob | Reply:
        config = batch.get("inputConfig", batch.get("input_config"))
        if not isinstance(config, dict):
            return google_errors.invalid_argument(
                "* BatchGenerateContentRequest.batch.input_config: required"
            )
        name = batch.get("displayName", batch.get("display_name"))
        display = str(name) if name else None
        file_name = config.get("fileName", config.get("file_name"))
        requests = config.get("requests")
        if (file_name is None) == (requests is None):
            return google_errors.invalid_argument(
                "* BatchGenerateContentRequest.batch.input_config: exactly one of requests or file_name"
            )
        if file_name is not None:
            stored = self.files.get(str(file_name))
            if stored is None:
                return google_errors.google_error(404, f"File {file_name} not found.")
            return self.batches.create_from_file(model, version, display, stored)
        items = requests.get("requests") if isinstance(requests, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) and "request" in i for i in items):
            return google_errors.invalid_argument(
                "* BatchGenerateContentRequest.batch.input_config.requests.requests: "
                "every item needs a request"
            )
        return self.batches.create_inline(model, version, display, items)

    def _model(self, name: str) -> str | None:
        try:
            spec = self.catalog.resolve(name.removeprefix("models/"))
        except CatalogError:
            return None
        return name.removeprefix("models/") if spec is not None and spec.provider == "gemini" else None

    def _batch(self, request: HttpRequest, args: dict[str, Any]) -> Outcome:
        batch_id, verb = args["id"], args["verb"]
        if verb == ":cancel":
            if request.method != "POST":
                return _not_allowed(request)
            return Reply.json(200, {}) if self.batches.cancel(batch_id) else _no_batch(batch_id)
        if request.method == "DELETE":
            return Reply.json(200, {}) if self.batches.delete(batch_id) else _no_batch(batch_id)
        if request.method != "GET":
            return _not_allowed(request)
        job = self.batches.get(batch_id)
        return _no_batch(batch_id) if job is None else _operation(job)

    def _list(self, request: HttpRequest, args: dict[str, Any]) -> Reply:
        if request.method != "GET":
            return _not_allowed(request)
        paging = _paging(request)
        if isinstance(paging, Reply):
            return paging
        jobs, following = self.batches.page(*paging)
        operations = [json.loads(b"".join(_flat(job.operation(inline_output=False)))) for job in jobs]
        body: dict[str, Any] = {"operations": operations}
        if following is not None:
            body["nextPageToken"] = str(following)
        return Reply.json(200, body)

    # -- files ----------------------------------------------------------------------------------

    def _start_upload(self, request: HttpRequest, args: dict[str, Any]) -> Reply:
        if request.method != "POST":
            return _not_allowed(request)
        protocol = (request.header("x-goog-upload-protocol") or "").lower()
        command = (request.header("x-goog-upload-command") or "").lower()
        if protocol != "resumable" or command != "start":
            return google_errors.invalid_argument(
                "The simulator accepts resumable uploads only (X-Goog-Upload-Protocol: resumable, "
                "X-Goog-Upload-Command: start)."
            )
        declared = request.header("x-goog-upload-header-content-length")
        try:
            meta = json.loads(request.body or b"{}").get("file") or {}
            size = int(declared) if declared else None
            upload = self.files.start(
                meta.get("displayName") or meta.get("display_name"),
                request.header("x-goog-upload-header-content-type")
                or meta.get("mimeType")
                or "application/octet-stream",
                size,
            )
        except (ValueError, AttributeError):
            return google_errors.invalid_argument("Invalid upload start: bad JSON body or content length.")
        except UploadError as exc:
            return google_errors.google_error(exc.status, exc.message)
        query = f"upload_id={upload.id}&upload_protocol=resumable"
        url = f"{request.base_url}/upload/{args['version']}/files?{query}"
        headers = {
            "X-Goog-Upload-URL": url,
            "X-Goog-Upload-Status": "active",
            "X-Goog-Upload-Chunk-Granularity": str(CHUNK_GRANULARITY),
        }
        return Reply(200, b"", "text/plain; charset=utf-8", headers)

    def _chunk(self, request: HttpRequest) -> Reply:
        upload_id = request.query_value("upload_id") or ""
        command = request.header("x-goog-upload-command") or ""
        try:
            status, stored = self.files.upload(
                upload_id, command, request.header("x-goog-upload-offset"), request.body
            )
            received = self.files.received(upload_id) if status == "active" else None
        except UploadError as exc:
            return google_errors.google_error(exc.status, exc.message)
        headers = {"X-Goog-Upload-Status": status}
        if received is not None:
            headers["X-Goog-Upload-Size-Received"] = str(received)
        if stored is None:
            return Reply(200, b"", "text/plain; charset=utf-8", headers)
        self.stats.batch_event("files_uploaded")
        return Reply.json(200, {"file": stored.resource(request.base_url)}, headers)

    def _file(self, request: HttpRequest, args: dict[str, Any]) -> Outcome:
        stored = self.files.get(args["id"])
        if request.method == "DELETE" and not args["verb"]:
            return Reply.json(200, {}) if self.files.delete(args["id"]) else _no_file(args["id"])
        if request.method != "GET":
            return _not_allowed(request)
        if stored is None:
            return _no_file(args["id"])
        if args["verb"] or request.path.startswith("/download/"):
            return _download(stored)
        return Reply.json(200, stored.resource(request.base_url))

    def _list_files(self, request: HttpRequest, args: dict[str, Any]) -> Reply:
        if request.method != "GET":
            return _not_allowed(request)
        paging = _paging(request)
        if isinstance(paging, Reply):
            return paging
        size, offset = paging
        files = self.files.all()
        body: dict[str, Any] = {
            "files": [f.resource(request.base_url) for f in files[offset : offset + size]]
        }
        if offset + size < len(files):
            body["nextPageToken"] = str(offset + size)
        return Reply.json(200, body)


def _operation(job: BatchJob) -> Outcome:
    """The job's operation: a plain answer, or streamed from disk when inline results are in it."""
    parts = job.operation(inline_output=True)
    if all(isinstance(part, bytes) for part in parts):
        return Reply(200, b"".join(_flat(parts)), "application/json; charset=UTF-8")
    length = sum(len(part) if isinstance(part, bytes) else part.length for part in parts)
    return Stream(200, "application/json; charset=UTF-8", length, _flat(parts), label="batch")


def _flat(parts: list[bytes | InlineArray]) -> Iterator[bytes]:
    for part in parts:
        if isinstance(part, bytes):
            yield part
        else:
            yield from part.chunks()


def _download(stored: StoredFile) -> Outcome:
    if stored.source != "GENERATED":
        return google_errors.invalid_argument(
            f"Only generated files can be downloaded; {stored.name} was uploaded."
        )
    return Stream(200, stored.mime_type, stored.size, _file_chunks(stored), label="download")


def _file_chunks(stored: StoredFile, block: int = 1 << 20) -> Iterator[bytes]:
    with stored.path.open("rb") as handle:
        yield from iter(lambda: handle.read(block), b"")


def _object(body: object, name: str) -> dict[str, Any] | Reply:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, dict):
        return google_errors.invalid_argument(f"* BatchGenerateContentRequest.{name}: required")
    return value


def _paging(request: HttpRequest) -> tuple[int, int] | Reply:
    try:
        size = int(request.query_value("pageSize") or PAGE_DEFAULT)
        offset = int(request.query_value("pageToken") or 0)
    except ValueError:
        return google_errors.invalid_argument("Invalid pageSize or pageToken.")
    if size < 1 or offset < 0:
        return google_errors.invalid_argument("pageSize must be positive and pageToken valid.")
    return min(size, PAGE_MAX), offset


def _no_batch(batch_id: str) -> Reply:
    return google_errors.google_error(404, f"Batch batches/{batch_id} not found.")


def _no_file(file_id: str) -> Reply:
    return google_errors.google_error(
        403, f"You do not have permission to access the File {file_id} or it may not exist."
    )


def _not_allowed(request: HttpRequest) -> Reply:
    return google_errors.google_error(
        405, f"{request.method} {request.path} is not allowed", status="METHOD_NOT_ALLOWED"
    )
