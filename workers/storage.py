"""Where generated images go: ``OUTPUT_DIR/<batch>/<safe key>.<ext>``, written atomically.

Keys come from customers' spreadsheets, so they are hostile until proven otherwise: a key is reduced
to a safe file name (no separators, no leading dots, bounded length), and whenever that changed the
key, a short hash of the original is appended so two different keys can never share a file. The
final path is checked to lie inside the output directory. Files are written to a temporary name in
the same directory, fsynced and renamed, so a crash never leaves a half-written image under the
final name and a retry simply replaces the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from PIL import Image

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 120
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class StorageError(Exception):
    """The image could not be stored (unsafe path, not an image, disk error)."""


@dataclass(frozen=True)
class StoredImage:
    path: Path
    uri: str
    sha256: str
    mime_type: str
    width: int
    height: int
    bytes: int


def safe_name(text: str) -> str:
    """A file-system-safe, collision-free name for an arbitrary key or batch name."""
    cleaned = _UNSAFE.sub("_", text).strip("._-")[:_MAX_NAME] or "item"
    if cleaned != text:
        cleaned = f"{cleaned}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:10]}"
    return cleaned


def extension_for(mime_type: str) -> str:
    try:
        return _EXTENSIONS[mime_type]
    except KeyError:
        raise StorageError(f"unsupported image type {mime_type!r}") from None


def inspect_image(data: bytes) -> tuple[str, int, int]:
    """(mime type, width, height) read from the bytes themselves, not from what the upstream claimed."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            mime = Image.MIME.get(image.format or "", "")
            width, height = image.size
    except Exception as exc:  # Pillow raises several unrelated types for garbage input
        raise StorageError(f"upstream returned bytes that are not an image: {exc}") from exc
    if mime not in _EXTENSIONS:
        raise StorageError(f"unsupported image format {mime or 'unknown'}")
    return mime, width, height


def target_path(output_dir: Path, batch: str, key: str, mime_type: str) -> Path:
    root = output_dir.resolve()
    path = (root / safe_name(batch) / f"{safe_name(key)}.{extension_for(mime_type)}").resolve()
    if root not in path.parents:
        raise StorageError(f"refusing to write outside {root}: {path}")
    return path


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; images are meant to be served and shared
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def uri_for(path: Path) -> str:
    """The URI recorded for a stored file (percent-escaped: ``file:///data/my%20images/a.png``)."""
    return path.as_uri()


def local_path(uri: str | None) -> str | None:
    """The file-system path of a ``file://`` result URI; other URIs (object stores) pass unchanged.

    The one inverse of :func:`uri_for`: every reader of ``result_uri`` (reuse, export, report) goes
    through here, so an escaped character (a space in the output directory) reads back as itself.
    """
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return uri
    return url2pathname(parsed.path)


def store_image(output_dir: Path, batch: str, key: str, data: bytes) -> StoredImage:
    """Validate, name and atomically write one image; returns its facts for the task row."""
    mime, width, height = inspect_image(data)
    path = target_path(output_dir, batch, key, mime)
    write_atomic(path, data)
    return StoredImage(
        path=path,
        uri=uri_for(path),
        sha256=hashlib.sha256(data).hexdigest(),
        mime_type=mime,
        width=width,
        height=height,
        bytes=len(data),
    )
