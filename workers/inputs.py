"""Reading an input (reference) image where the worker sends it upstream, re-checked there.

Submit checks every input image (inside the allowed folder, size, an image), but the worker reads it
minutes or days later: by then a symlink may have been planted to a file outside the folder, or a
512 MB file swapped in. So the worker checks again, at the moment it reads:

* the path recorded at submit (already resolved then) must still resolve to itself — no symlink in
  any component — and lie inside the allowed root recorded at submit (``input_root``);
* the file is opened with ``O_NOFOLLOW`` (a symlink swapped in after the check is refused too), must be
  a regular file and at most ``max_bytes`` (read bounded: a huge file is never loaded);
* its SHA-256 must equal the one recorded at submit (``input_sha256``): it is the same file content
  that was validated and that the row's ``content_hash`` was computed from;
* it is decoded in full (PNG/JPEG/WebP, at most ``max_pixels``), like every generated image.

Rows submitted before these facts were recorded have no root or digest; the other checks still run.

With an object store (docs/storage.md) the row records the input's URI (``s3://…/inputs/<sha256>.png``,
uploaded once at submit): it is read from the store, bounded, and must have the recorded SHA-256 (its
name is its content) and decode in full; there is no path to re-resolve.
Any failure raises :class:`InputRejected` (a ``ValueError``), which fails the task as
``invalid_task`` with the message.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from nanobatch.workers.imagecheck import ImageRejected, check_image
from nanobatch.workers.providers.base import InputImage
from nanobatch.workers.store import StorageError, Store, StoreUnavailable, is_object_url


class InputRejected(ValueError):
    """An input image may not be sent upstream (the message names the file and the reason)."""


def read_input_image(
    path: str,
    *,
    root: str | None,
    sha256: str | None,
    max_bytes: int,
    max_pixels: int,
    decode_slot: Callable[[], AbstractContextManager[object]] | None = None,
    store: Store | None = None,
) -> InputImage:
    """The checked bytes and real type of one input image, or :class:`InputRejected`
    (:class:`StoreUnavailable` when the store holding it does not answer: transient)."""
    if is_object_url(path):
        data = _read_stored(path, store, max_bytes)
        return _checked(path, data, sha256, max_pixels, decode_slot)
    recorded = Path(path)
    try:
        resolved = recorded.resolve(strict=True)
    except FileNotFoundError:
        raise InputRejected(f"input image {path}: no such file (moved or deleted after submit)") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise InputRejected(f"input image {path}: cannot be resolved: {exc}") from exc
    if resolved != recorded:
        raise InputRejected(
            f"input image {path}: now leads to {resolved} (a symlink was planted after submit)"
        )
    if root is not None and Path(root) not in resolved.parents:
        raise InputRejected(f"input image {path}: outside the folder {root} allowed at submit")
    data = _read_bounded(path, max_bytes)
    return _checked(path, data, sha256, max_pixels, decode_slot)


def _checked(
    path: str,
    data: bytes,
    sha256: str | None,
    max_pixels: int,
    decode_slot: Callable[[], AbstractContextManager[object]] | None,
) -> InputImage:
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise InputRejected(f"input image {path}: its content changed after submit")
    try:
        facts = check_image(data, max_pixels=max_pixels, decode_slot=decode_slot)
    except ImageRejected as exc:
        raise InputRejected(f"input image {path}: {exc}") from exc
    return InputImage(data=data, mime_type=facts.mime_type)


def _read_stored(uri: str, store: Store | None, max_bytes: int) -> bytes:
    key = store.key_of(uri) if store is not None else None
    if store is None or key is None:
        raise InputRejected(f"input image {uri}: not in this worker's image store (NANOBATCH_OUTPUT_DIR)")
    try:
        return store.read(key, max_bytes)
    except FileNotFoundError:
        raise InputRejected(f"input image {uri}: no such object (deleted after submit)") from None
    except StoreUnavailable:
        raise
    except StorageError as exc:
        raise InputRejected(f"input image {uri}: {exc}") from None


def _read_bounded(path: str, max_bytes: int) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)  # no FIFO hangs
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputRejected(f"input image {path}: cannot be opened: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputRejected(f"input image {path}: not a regular file")
        if info.st_size > max_bytes:
            raise InputRejected(
                f"input image {path}: {info.st_size:,} bytes, more than the {max_bytes:,} allowed "
                "(NANOBATCH_MAX_INPUT_IMAGE_BYTES)"
            )
        data = handle.read(max_bytes + 1)  # the file may grow after fstat
    if len(data) > max_bytes:
        raise InputRejected(f"input image {path}: more than the {max_bytes:,} bytes allowed")
    return data
