"""The object-store backend (S3 and S3-compatible stores such as MinIO or R2, Google Cloud Storage,
Azure Blob) through obstore: one small Rust-backed client for all of them (docs/storage.md).

Configuration is the cloud's own environment only — obstore reads ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_*`` itself; nanobatch never reads, stores or logs a credential. An ``http://``
endpoint (MinIO on a private network, moto in tests) is allowed because the operator named it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import from_url

from nanobatch.workers.store.base import (
    CHUNK,
    CLOUD_SECRETS,
    StorageError,
    StoreConfigError,
    StoredObject,
    StoreUnavailable,
)

T = TypeVar("T")
#: The client's own retries (5xx, connection errors) are short: the caller retries longer, with
#: backoff, around whole operations (tasks/serve.py), so a worker never blocks minutes in one call.
RETRY: Any = {"max_retries": 3, "retry_timeout": timedelta(seconds=20)}
PROBE_RETRY: Any = {"max_retries": 0, "retry_timeout": timedelta(seconds=5)}
_AUTH_WORDS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "401", "403")
_UNREACHABLE_WORDS = ("error sending request", "connect", "dns", "timed out", "timeout")
_SECRET_ENV = sorted(CLOUD_SECRETS)
_QUERY = re.compile(r"\?[^\s]*")


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _client_options(connect_timeout: str) -> Any:
    endpoint = _endpoint() or ""
    return {
        "allow_http": endpoint.lower().startswith("http://"),
        "connect_timeout": connect_timeout,
        "timeout": "120s",
    }


def clean(message: object) -> str:
    """One line, no query strings (signatures) and no secret from the environment."""
    text = " ".join(str(message).split())
    text = _QUERY.sub("?…", text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "[redacted]")
    return text[:400]


class ObjectStore:
    """A bucket (and prefix) of an object store."""

    is_local = False

    def __init__(self, url: str, store: Any, probe: Any) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self._store = store
        self._probe = probe

    @classmethod
    def from_url(cls, url: str) -> ObjectStore:
        parts = urlsplit(url)
        if not parts.netloc:
            raise StoreConfigError(f"NANOBATCH_OUTPUT_DIR {url!r}: no bucket or container name")
        try:
            store = from_url(url, client_options=_client_options("5s"), retry_config=RETRY)
            probe = from_url(url, client_options=_client_options("3s"), retry_config=PROBE_RETRY)
        except Exception as exc:  # obstore raises its own configuration errors
            raise StoreConfigError(f"NANOBATCH_OUTPUT_DIR {url}: {clean(exc)}") from None
        return cls(url, store, probe)

    def __repr__(self) -> str:
        return f"ObjectStore({self.location!r})"

    @property
    def location(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def uri(self, key: str) -> str:
        return f"{self.location}/{key}"

    def key_of(self, uri: str) -> str | None:
        base = f"{self.location}/"
        return uri[len(base) :] if uri.startswith(base) else None

    # -- configuration check ---------------------------------------------------------------------

    def check(self) -> None:
        try:
            obstore.list_with_delimiter(self._probe)
        except Exception as exc:
            raise StoreConfigError(self._why(exc)) from None

    def _why(self, exc: Exception) -> str:
        text = clean(exc)
        where = self.location + (f" at {_endpoint()}" if _endpoint() else "")
        if "NoSuchBucket" in text or "ContainerNotFound" in text or "BucketNotFound" in text:
            return f"storage {where}: the bucket {self.bucket!r} does not exist"
        auth_words = (
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "Forbidden",
            "401",
            "403",
        )
        if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or any(
            w in text for w in auth_words
        ):
            return f"storage {where}: the credentials were refused (check the cloud's credential variables)"
        if "credential" in text.lower():
            return f"storage {where}: no usable credentials ({text[:160]})"
        if any(
            w in text.lower() for w in ("error sending request", "connect", "dns", "timed out", "timeout")
        ):
            return f"storage {where}: the endpoint cannot be reached"
        return f"storage {where}: {text[:200]}"

    # -- operations ------------------------------------------------------------------------------

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except NotFoundError:
            raise FileNotFoundError(what) from None
        except (AlreadyExistsError, PreconditionError):
            raise FileExistsError(what) from None
        except (PermissionDeniedError, UnauthenticatedError) as exc:
            raise StorageError(f"{what}: {clean(exc)}") from None
        except FileNotFoundError:
            raise
        except Exception as exc:  # network, 5xx after the client's retries, throttling
            raise StoreUnavailable(f"{what}: store unavailable: {clean(exc)[:200]}") from None

    def put(self, key: str, data: bytes, content_type: str, *, create: bool = False) -> StoredObject:
        attributes = {"Content-Type": content_type}
        view = memoryview(data)
        if create or len(view) <= CHUNK:
            body: Any = view
            mode: Any = "create" if create else "overwrite"
        else:  # multipart: the parts are views of the one buffer, never a second copy of the image
            body = (view[start : start + CHUNK] for start in range(0, len(view), CHUNK))
            mode = "overwrite"
        self._call(
            f"writing {self.uri(key)}",
            lambda: obstore.put(self._store, key, body, attributes=attributes, mode=mode),
        )
        return StoredObject(self.uri(key), len(data), hashlib.sha256(data).hexdigest())

    def read(self, key: str, max_bytes: int) -> bytes:
        def get() -> bytes:
            result = obstore.get(self._store, key)
            if int(result.meta["size"]) > max_bytes:
                raise StorageError(f"{self.uri(key)}: larger than {max_bytes:,} bytes")
            return bytes(result.bytes())

        return self._call(f"reading {self.uri(key)}", get)

    def size(self, key: str) -> int | None:
        try:
            return int(self._call(f"reading {self.uri(key)}", lambda: obstore.head(self._store, key))["size"])
        except FileNotFoundError:
            return None

    def chunks(self, key: str) -> Iterator[bytes]:
        result = self._call(f"reading {self.uri(key)}", lambda: obstore.get(self._store, key))
        for chunk in result.stream(min_chunk_size=CHUNK):
            yield bytes(chunk)

    def copy(self, source: str, target: str) -> None:
        self._call(
            f"copying {self.uri(source)} to {self.uri(target)}",
            lambda: obstore.copy(self._store, source, target),
        )

    def move(self, source: str, target: str) -> None:
        self.copy(source, target)
        self.delete(source)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call(f"deleting {self.uri(key)}", lambda: obstore.delete(self._store, key))

    def list(self, prefix: str) -> list[str]:
        def keys() -> list[str]:
            found: list[str] = []
            for page in obstore.list(self._store, prefix.rstrip("/") or None, chunk_size=1000):
                found.extend(str(meta["path"]) for meta in page)
            return sorted(found)

        return self._call(f"listing {self.uri(prefix)}", keys)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]

            def delete(batch: list[str] = batch) -> None:
                obstore.delete(self._store, batch)

            self._call(f"deleting under {self.uri(prefix)}", delete)
        return len(keys)

    def sign(self, key: str, seconds: int) -> str:
        return self._call(
            f"signing {self.uri(key)}",
            lambda: obstore.sign(self._store, "GET", key, timedelta(seconds=seconds)),
        )
