"""One storage layer for every image nanobatch writes or reads: results, staged claims, input images.

``NANOBATCH_OUTPUT_DIR`` names the store: a local folder (as before) or a URL, ``s3://bucket/prefix``,
``gs://bucket/prefix``, ``az://container/prefix``. :func:`open_store` turns it into a :class:`Store`;
everything that touches an image (the worker's commit protocol in :mod:`nanobatch.workers.storage`,
``--reuse``, input images, ``report``, ``export``, ``purge --images``) goes through that protocol,
so the same rules (claim-specific staging, injective names, decode verification) hold on every
backend. Credentials come only from each cloud's standard environment (``AWS_*``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_*``) and are never stored, logged or exported.
Choice of library (obstore) and its comparison with fsspec: docs/storage.md.
"""

from __future__ import annotations

from nanobatch.workers.store.base import (
    OBJECT_SCHEMES,
    StorageError,
    Store,
    StoreConfigError,
    StoredObject,
    StoreUnavailable,
    is_object_url,
)
from nanobatch.workers.store.local import LocalStore, file_path

__all__ = [
    "OBJECT_SCHEMES",
    "LocalStore",
    "StorageError",
    "Store",
    "StoreConfigError",
    "StoreUnavailable",
    "StoredObject",
    "is_object_url",
    "open_store",
]


def open_store(location: str) -> Store:
    """The store named by ``location`` (a folder or an object-store URL); :class:`StoreConfigError`
    for an unknown scheme or a malformed URL. Nothing is contacted here: :meth:`Store.check` does."""
    text = str(location).strip()
    if not text:
        raise StoreConfigError("NANOBATCH_OUTPUT_DIR is empty")
    if "://" in text and not text.lower().startswith("file://"):
        if not is_object_url(text):
            scheme = text.split("://", 1)[0]
            raise StoreConfigError(
                f"NANOBATCH_OUTPUT_DIR: unknown storage scheme {scheme + '://'!r} "
                f"(a local folder, or one of {', '.join(s + '://' for s in OBJECT_SCHEMES)})"
            )
        from nanobatch.workers.store.objects import ObjectStore  # obstore only where it is used

        return ObjectStore.from_url(text)
    return LocalStore(file_path(text) or text)
