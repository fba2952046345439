"""The :class:`Store` protocol and its errors, shared by the local and object-store backends."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

OBJECT_SCHEMES = ("s3", "gs", "az")
#: The clouds' standard variables the object-store client reads itself (docs/storage.md). nanobatch
#: never reads, stores or logs them; deployment files may set them (tests/unit/test_compose.py).
CLOUD_ENV = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_SERVICE_ACCOUNT",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_SAS_KEY",
        "AZURE_STORAGE_CONNECTION_STRING",
    }
)
#: Which of them are secrets (they reach only the services that write or read images).
CLOUD_SECRETS = frozenset(
    {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_KEY"}
)
#: Streaming writes and reads move at most this much at a time (and hash it on the way).
CHUNK = 5 << 20


class StorageError(Exception):
    """The image could not be stored or read (unsafe name, unsupported type, disk or store error)."""


class StoreUnavailable(StorageError):
    """The store did not answer (outage, network, 5xx after the client's own retries): transient."""


class StoreConfigError(StorageError):
    """The store cannot be used as configured (unknown scheme, missing bucket, refused credentials,
    unreachable endpoint): said once, at ``worker``/``submit`` start, as a one-line error."""


def is_object_url(text: str) -> bool:
    return text.split("://", 1)[0].lower() in OBJECT_SCHEMES if "://" in text else False


@dataclass(frozen=True)
class StoredObject:
    """What a write recorded: where it is, how big, its SHA-256."""

    uri: str
    size: int
    sha256: str


@runtime_checkable
class Store(Protocol):
    """Keys are ``/``-separated names relative to the store's root (``<batch>/<key>.png``); URIs are
    what rows record (``file:///…`` or ``s3://bucket/prefix/…``)."""

    @property
    def location(self) -> str:
        """The root as configured, for messages (never contains credentials)."""
        ...

    @property
    def is_local(self) -> bool: ...

    def uri(self, key: str) -> str: ...

    def key_of(self, uri: str) -> str | None:
        """The key of a URI inside this store, or ``None`` (another store, another host's folder)."""
        ...

    def check(self) -> None:
        """Contact the store once; :class:`StoreConfigError` with a one-line reason if unusable."""
        ...

    def put(self, key: str, data: bytes, content_type: str, *, create: bool = False) -> StoredObject:
        """Write ``data`` (streamed in :data:`CHUNK` pieces, never copied whole); ``create``: only if
        no object has the key (:class:`FileExistsError` otherwise)."""
        ...

    def read(self, key: str, max_bytes: int) -> bytes:
        """The object's bytes, at most ``max_bytes`` (:class:`StorageError` when larger);
        :class:`FileNotFoundError` when absent."""
        ...

    def size(self, key: str) -> int | None:
        """The object's size, or ``None`` when absent."""
        ...

    def chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes in pieces (hashing and serving without holding it whole)."""
        ...

    def copy(self, source: str, target: str) -> None:
        """Server-side copy (overwrites ``target``); :class:`FileNotFoundError` if ``source`` is gone."""
        ...

    def move(self, source: str, target: str) -> None:
        """Give ``source`` the name ``target``: locally a rename (one of two concurrent movers wins);
        on object stores a copy, then a delete (see storage.take_over)."""
        ...

    def delete(self, key: str) -> None:
        """Remove one object (absent is fine)."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a folder-like ``a/b/``), recursively, sorted."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix``; how many were removed."""
        ...

    def sign(self, key: str, seconds: int) -> str:
        """A URL that reads the object without credentials for ``seconds`` (https on object stores,
        the ``file://`` URI locally)."""
        ...
