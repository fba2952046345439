"""The local-folder backend: files under a root directory, written atomically (temporary name,
fsync, rename), so a crash never leaves a half-written file under a real name."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from nanobatch.workers.store.base import CHUNK, StorageError, StoredObject


def write_atomic(path: Path, data: bytes, *, create: bool = False) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder; ``create``: fail with
    :class:`FileExistsError` if ``path`` exists (a hard link is the atomic "create if absent")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; images are meant to be served and shared
        with os.fdopen(fd, "wb") as handle:
            view = memoryview(data)
            for start in range(0, len(view), CHUNK):
                handle.write(view[start : start + CHUNK])
            handle.flush()
            os.fsync(handle.fileno())
        if create:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_path(uri: str | None) -> str | None:
    """The file-system path of a ``file://`` URI; other URIs (object stores) pass unchanged."""
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return uri
    return url2pathname(parsed.path)


class LocalStore:
    """A folder on this host (or a shared mount): what ``NANOBATCH_OUTPUT_DIR`` has always been."""

    is_local = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    @property
    def location(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        """The file of ``key``, which must lie inside the root (hostile names are refused)."""
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StorageError(f"refusing to use a path outside {self.root}: {path}")
        return path

    def uri(self, key: str) -> str:
        return self.path(key).as_uri()

    def key_of(self, uri: str) -> str | None:
        text = file_path(uri)
        if text is None or "://" in text:
            return None
        path = Path(text)
        if self.root not in path.parents:
            return None
        return path.relative_to(self.root).as_posix()

    def check(self) -> None:
        """The folder (or, before the first image, its nearest existing parent) is a writable
        directory; nothing is created here (a refused submit leaves no trace)."""
        from nanobatch.workers.store.base import StoreConfigError

        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise StoreConfigError(f"NANOBATCH_OUTPUT_DIR {self.root}: {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StoreConfigError(f"NANOBATCH_OUTPUT_DIR {self.root}: {existing} is not writable")

    def put(self, key: str, data: bytes, content_type: str, *, create: bool = False) -> StoredObject:
        path = self.path(key)
        try:
            write_atomic(path, data, create=create)
        except FileExistsError:
            raise
        except OSError as exc:
            raise StorageError(f"could not write {path}: {exc}") from exc
        return StoredObject(path.as_uri(), len(data), hashlib.sha256(data).hexdigest())

    def read(self, key: str, max_bytes: int) -> bytes:
        path = self.path(key)
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise StorageError(f"{path}: larger than {max_bytes:,} bytes")
        return data

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def chunks(self, key: str) -> Iterator[bytes]:
        with self.path(key).open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    def copy(self, source: str, target: str) -> None:
        """A hard link where possible (no bytes copied), else a copy; renamed into place."""
        src, dst = self.path(source), self.path(target)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{id(self)}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(src, tmp)
            except FileNotFoundError:
                raise
            except OSError:  # no hard links on this file system: copy
                shutil.copyfile(src, tmp)
                with tmp.open("rb+") as handle:
                    os.fsync(handle.fileno())
            os.replace(tmp, dst)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"could not copy {src} to {dst}: {exc}") from exc

    def move(self, source: str, target: str) -> None:
        os.rename(self.path(source), self.path(target))

    def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: something else is still there
            path.parent.rmdir()

    def list(self, prefix: str) -> list[str]:
        folder = self.path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        if prefix.strip("/"):
            shutil.rmtree(self.path(prefix.rstrip("/")), ignore_errors=True)
        else:
            for key in keys:
                self.path(key).unlink(missing_ok=True)
        return len(keys)

    def sign(self, key: str, seconds: int) -> str:
        return self.uri(key)  # a local file has no signed form: its URI is how this host reads it
