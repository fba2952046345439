"""The Files API's storage: resumable uploads, file resources and the files batch jobs produce.

Files live on disk in a folder the simulator owns (``SimulatorConfig.batch_dir`` or a temp dir
made on first use and removed when the simulator stops), never in memory: an upload is appended
chunk by chunk as it arrives, a download is streamed from disk, so a 2 GB JSONL costs the
simulator disk, not heap.

Protocol (google-genai ``files.upload`` -> ``_api_client.upload_file``; Gemini "resumable upload"):

1. ``POST /upload/v1beta/files`` with ``X-Goog-Upload-Protocol: resumable``,
   ``X-Goog-Upload-Command: start``, ``X-Goog-Upload-Header-Content-Length`` (optional) and
   ``-Content-Type``, body ``{"file": {"displayName": ...}}`` -> 200 with ``X-Goog-Upload-URL``
   (``.../upload/v1beta/files?upload_id=...&upload_protocol=resumable``) and
   ``X-Goog-Upload-Status: active``.
2. ``POST`` the upload URL with ``X-Goog-Upload-Command: upload`` (``upload, finalize`` for the
   last chunk) and ``X-Goog-Upload-Offset`` = bytes already received. A chunk answers
   ``X-Goog-Upload-Status: active`` and an empty body; the finalize answers ``final`` and
   ``{"file": {...}}``. ``query`` reports ``X-Goog-Upload-Size-Received``; ``cancel`` drops it.
   The upload id is the credential here (the SDK sends no API key with chunks), as upstream.

The File resource carries ``sizeBytes`` as a string (proto int64), RFC 3339 times, ``state``
``ACTIVE``, ``source`` ``UPLOADED`` or ``GENERATED``; only generated files (batch results) have a
``downloadUri`` and can be downloaded, as the SDK's ``files.download`` documents.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import shutil
import string
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

#: The Files API's per-file limit.
MAX_FILE_BYTES = 2 * 1024**3
#: Files expire after 48 hours upstream; the simulator reports the same expiration time.
FILE_TTL_SECONDS = 48 * 3600
#: Resource ids as upstream spells them: lower-case letters and digits (the SDK's ``t_file_name``
#: extracts ``[a-z0-9]+`` from a file URI).
ID_ALPHABET = string.ascii_lowercase + string.digits
FILE_ID_LENGTH = 12


def new_id(length: int) -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(length))


def rfc3339(at: float) -> str:
    """``2025-09-07T11:55:07.827892Z``: the timestamp format of every Gemini resource."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class UploadError(Exception):
    """An upload request the Files API refuses: ``status`` and a message for the error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Workspace:
    """The folder behind uploads and results: made on first use, removed on close if it is a temp dir."""

    def __init__(self, root: str | None) -> None:
        self._root = Path(root) if root else None
        self._owned = root is None
        self._path: Path | None = None
        self._lock = threading.Lock()

    def path(self) -> Path:
        with self._lock:
            if self._path is None:
                if self._root is None:
                    self._path = Path(tempfile.mkdtemp(prefix="nanobatch-sim-"))
                else:
                    self._root.mkdir(parents=True, exist_ok=True)
                    self._path = self._root
            return self._path

    def new_file(self, suffix: str) -> Path:
        return self.path() / f"{new_id(16)}{suffix}"

    def close(self) -> None:
        with self._lock:
            if self._path is not None and self._owned:
                shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


@dataclass
class StoredFile:
    """One file resource: metadata in memory, bytes on disk."""

    id: str
    path: Path
    mime_type: str
    size: int
    created: float
    source: str  # UPLOADED or GENERATED
    display_name: str | None = None
    sha256: bytes = b""

    @property
    def name(self) -> str:
        return f"files/{self.id}"

    def resource(self, base_url: str) -> dict[str, Any]:
        """The File resource as the API returns it (``types.File`` validates it strictly)."""
        body: dict[str, Any] = {"name": self.name}
        if self.display_name:
            body["displayName"] = self.display_name
        body |= {
            "mimeType": self.mime_type,
            "sizeBytes": str(self.size),
            "createTime": rfc3339(self.created),
            "updateTime": rfc3339(self.created),
            "expirationTime": rfc3339(self.created + FILE_TTL_SECONDS),
            "sha256Hash": base64.b64encode(self.sha256.hex().encode()).decode(),
            "uri": f"{base_url}/v1beta/{self.name}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.source == "GENERATED":
            body["downloadUri"] = f"{base_url}/v1beta/{self.name}:download?alt=media"
        return body


@dataclass
class Upload:
    """A resumable upload in progress: bytes received so far are already on disk."""

    id: str
    path: Path
    mime_type: str
    display_name: str | None
    declared_size: int | None
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)


class FileBook:
    """Every file resource and upload session of one simulator."""

    def __init__(self, workspace: Workspace, clock: Callable[[], float] = time.time) -> None:
        self.workspace = workspace
        self.clock = clock
        self._files: dict[str, StoredFile] = {}
        self._uploads: dict[str, Upload] = {}
        self._lock = threading.Lock()

    # -- uploads --------------------------------------------------------------------------------

    def start(self, display_name: str | None, mime_type: str, declared_size: int | None) -> Upload:
        if declared_size is not None and not 0 <= declared_size <= MAX_FILE_BYTES:
            raise UploadError(400, f"File size {declared_size} is outside 0..{MAX_FILE_BYTES} bytes.")
        upload = Upload(new_id(24), self.workspace.new_file(".part"), mime_type, display_name, declared_size)
        upload.path.touch()
        with self._lock:
            self._uploads[upload.id] = upload
        return upload

    def upload(
        self, upload_id: str, command: str, offset: str | None, body: bytes
    ) -> tuple[str, StoredFile | None]:
        """Apply one ``X-Goog-Upload-Command``; ``(upload status, the file once final)``."""
        upload = self._upload(upload_id)
        words = {word.strip() for word in command.lower().split(",") if word.strip()}
        if words == {"query"}:
            return "active", None
        if words == {"cancel"}:
            self._drop(upload)
            return "cancelled", None
        if not words or not words <= {"upload", "finalize"}:
            raise UploadError(400, f"Unsupported X-Goog-Upload-Command: {command!r}")
        if "upload" in words:
            self._append(upload, offset, body)
        if "finalize" in words:
            return "final", self._finalize(upload)
        return "active", None

    def received(self, upload_id: str) -> int:
        return self._upload(upload_id).received

    def _upload(self, upload_id: str) -> Upload:
        with self._lock:
            upload = self._uploads.get(upload_id)
        if upload is None:
            raise UploadError(404, "The upload session does not exist or has ended.")
        return upload

    def _append(self, upload: Upload, offset: str | None, body: bytes) -> None:
        if offset is None or not offset.strip().isdigit() or int(offset) != upload.received:
            raise UploadError(
                400, f"X-Goog-Upload-Offset {offset!r} does not match the {upload.received} bytes received."
            )
        if upload.received + len(body) > (upload.declared_size or MAX_FILE_BYTES):
            raise UploadError(
                400, "The upload is larger than the declared X-Goog-Upload-Header-Content-Length."
            )
        with upload.path.open("ab") as handle:
            handle.write(body)
        upload.digest.update(body)
        upload.received += len(body)

    def _finalize(self, upload: Upload) -> StoredFile:
        if upload.declared_size is not None and upload.received != upload.declared_size:
            raise UploadError(
                400, f"Received {upload.received} bytes, the upload declared {upload.declared_size}."
            )
        with self._lock:
            self._uploads.pop(upload.id, None)
        stored = StoredFile(
            id=new_id(FILE_ID_LENGTH),
            path=upload.path,
            mime_type=upload.mime_type,
            size=upload.received,
            created=self.clock(),
            source="UPLOADED",
            display_name=upload.display_name,
            sha256=upload.digest.digest(),
        )
        return self._add(stored)

    def _drop(self, upload: Upload) -> None:
        with self._lock:
            self._uploads.pop(upload.id, None)
        upload.path.unlink(missing_ok=True)

    # -- generated files ------------------------------------------------------------------------

    @contextmanager
    def produce(self, display_name: str | None, mime_type: str) -> Iterator[IO[bytes]]:
        """Write a file the service generated (batch results); it exists once the block ends."""
        path = self.workspace.new_file(".out")
        with path.open("wb") as handle:
            yield handle
        self.register(path, display_name, mime_type)

    def register(self, path: Path, display_name: str | None, mime_type: str) -> StoredFile:
        """Turn a finished file on disk into a GENERATED file resource."""
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        stored = StoredFile(
            id=new_id(FILE_ID_LENGTH),
            path=path,
            mime_type=mime_type,
            size=path.stat().st_size,
            created=self.clock(),
            source="GENERATED",
            display_name=display_name,
            sha256=digest.digest(),
        )
        return self._add(stored)

    def _add(self, stored: StoredFile) -> StoredFile:
        with self._lock:
            self._files[stored.id] = stored
        return stored

    # -- resources ------------------------------------------------------------------------------

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(file_id.removeprefix("files/"))

    def delete(self, file_id: str) -> bool:
        with self._lock:
            stored = self._files.pop(file_id.removeprefix("files/"), None)
        if stored is None:
            return False
        stored.path.unlink(missing_ok=True)
        return True

    def all(self) -> list[StoredFile]:
        """Every file, newest first."""
        with self._lock:
            files = list(self._files.values())
        return sorted(files, key=lambda f: f.created, reverse=True)
