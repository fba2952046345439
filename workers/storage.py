"""Where generated images go, and how one claim's image becomes *the* result of its row.

Every function takes the :class:`~nanobatch.workers.store.Store` (a local folder or an object-store
bucket: :mod:`nanobatch.workers.store`); the protocol below holds on every backend. Layout under
the store's root::

    <batch>/<key>.<ext>                        the published result (what export and report point to)
    <batch>/.staged/<task id>/<token>.<ext>    one claim's image, before and while it is recorded
    <batch>/.staged/<task id>/<token>.json     its facts (sha256, type, size, usage), for a later delivery

**Names are injective.** Keys come from customers' spreadsheets, so they are hostile until proven
otherwise. :func:`safe_name` keeps a readable part (characters outside ``[A-Za-z0-9._-]`` become
``_``, no leading dots, at most 120 characters) and *always* appends ``-`` and the first 16 hex digits
(64 bits) of the SHA-256 of the exact key. Two different keys share a name only if their hashes
collide: about n²/2⁶⁵ for n keys, 3·10⁻¹⁰ for a 100k-row batch. Always, not only when sanitising
changed the key: otherwise key ``a_b-c14cddc033`` could equal the sanitised form of ``a/b``. The hash
is lowercase hex, so names also stay distinct on case-insensitive file systems. Batch folders are
named the same way. The final path is checked to lie inside the output directory.

**Commit protocol** (docs/integrity.md, items 1 and 4; docs/storage.md): a write is atomic on every
backend (locally a temporary name, fsync, rename; an object store's PUT or multipart upload is all or
nothing), so a crash never leaves a half-written image under a real name.

1. :func:`stage` writes the image under its claim's own name (the claim token is unique per claim),
   so no two workers ever write the same file and a stale worker cannot replace anything.
2. The row's conditional ``UPDATE … WHERE claim_token = …`` decides which claim's file is the result;
   the row first records the staged file (which exists), then
3. only the winner :func:`publish`\\ es it: a server-side copy (locally a hard link renamed into
   place) to ``<key>.<ext>``, then the row is pointed there and the staging folder is removed. A loser removes
   only its own staged file (:func:`discard`), never the published one.
4. A staged image whose row was never updated (the database stayed down past
   ``NANOBATCH_RESULT_WRITE_DEADLINE``) stays on disk; the row's next delivery finds it
   (:func:`staged_tokens`), takes it over (:func:`take_over`: locally an atomic rename to its own
   claim's name, on object stores a copy to its own name, verified, then the old one deleted) and
   records it instead of paying for the image again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nanobatch.workers.imagecheck import ImageFacts
from nanobatch.workers.store import LocalStore, Store, open_store
from nanobatch.workers.store.base import StorageError, StoreUnavailable
from nanobatch.workers.store.local import file_path, write_atomic

__all__ = [
    "STAGING_DIR",
    "StagedImage",
    "StorageError",
    "StoreUnavailable",
    "Usage",
    "as_store",
    "batch_prefix",
    "clear_staging",
    "discard",
    "extension_for",
    "load_staged",
    "local_path",
    "publish",
    "publish_key",
    "safe_name",
    "stage",
    "staged_tokens",
    "take_over",
    "target_key",
    "write_atomic",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 120
_HASH_HEX = 16
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
STAGING_DIR = ".staged"
#: Claim tokens are uuid4 strings; anything else in a staging folder is not ours to read.
_TOKEN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: A sidecar of facts is a few hundred bytes; anything larger is not one of ours.
_SIDECAR_MAX = 64 << 10


@dataclass(frozen=True)
class Usage:
    """What the paid call that produced an image reported (kept beside a staged image)."""

    prompt_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float = 0.0
    latency_ms: int | None = None
    model_used: str | None = None


@dataclass(frozen=True)
class StagedImage:
    """One claim's image in the store under its claim-specific key, with the facts the row records."""

    key: str
    uri: str
    token: str
    sha256: str
    mime_type: str
    width: int
    height: int
    bytes: int
    usage: Usage = field(default_factory=Usage)

    @property
    def sidecar(self) -> str:
        """The key of its facts (``<token>.json`` beside it)."""
        return self.key.rsplit("/", 1)[0] + f"/{self.token}.json"


def as_store(location: Store | Path | str) -> Store:
    """A store for a configured location (a :class:`Path` is a local folder)."""
    if isinstance(location, Path):
        return LocalStore(location)
    if isinstance(location, str):
        return open_store(location)
    return location


def safe_name(text: str) -> str:
    """A file-system-safe, injective name for an arbitrary key or batch name (see the module doc)."""
    readable = _UNSAFE.sub("_", text).strip("._-")[:_MAX_NAME] or "item"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    return f"{readable}-{digest}"


def extension_for(mime_type: str) -> str:
    try:
        return _EXTENSIONS[mime_type]
    except KeyError:
        raise StorageError(f"unsupported image type {mime_type!r}") from None


def batch_prefix(batch: str) -> str:
    """The key prefix of a batch's images: ``<safe batch>/``."""
    return f"{safe_name(batch)}/"


def target_key(batch: str, key: str, mime_type: str) -> str:
    """The published result's key: ``<safe batch>/<safe key>.<ext>``."""
    return f"{batch_prefix(batch)}{safe_name(key)}.{extension_for(mime_type)}"


def staging_prefix(batch: str, task_id: str) -> str:
    """The key prefix holding the claims' staged images of one task."""
    name = task_id if _TOKEN.match(task_id) else safe_name(task_id)  # task ids are uuids
    return f"{batch_prefix(batch)}{STAGING_DIR}/{name}/"


def stage(
    store: Store | Path, batch: str, task_id: str, token: str, data: bytes, facts: ImageFacts, usage: Usage
) -> StagedImage:
    """Write a verified image under its claim's own key (facts first, so an image is never unexplained).

    The write streams from the one verified buffer (never a second copy of the image), sets the
    content type, and records size and sha256. :class:`StoreUnavailable` on an outage (transient).
    """
    store = as_store(store)
    if not _TOKEN.match(token):
        raise StorageError(f"not a claim token: {token!r}")
    key = f"{staging_prefix(batch, task_id)}{token}.{extension_for(facts.mime_type)}"
    staged = StagedImage(
        key=key,
        uri=store.uri(key),
        token=token,
        sha256=hashlib.sha256(data).hexdigest(),
        mime_type=facts.mime_type,
        width=facts.width,
        height=facts.height,
        bytes=len(data),
        usage=usage,
    )
    _write_facts(store, staged)
    store.put(key, data, facts.mime_type)
    return staged


def stage_copy(
    store: Store | Path, batch: str, task_id: str, token: str, source_key: str, model: StagedImage
) -> StagedImage | None:
    """Stage an object already in the store (``--reuse``) by a server-side copy, then verify the copy
    (sha256) — what was checked is what this claim holds. ``None`` if the source is gone or changed."""
    store = as_store(store)
    key = f"{staging_prefix(batch, task_id)}{token}.{extension_for(model.mime_type)}"
    staged = replace(model, key=key, uri=store.uri(key), token=token)
    _write_facts(store, staged)
    try:
        store.copy(source_key, key)
    except FileNotFoundError:
        discard(store, staged)
        return None
    if object_sha256(store, key) != staged.sha256:
        discard(store, staged)
        return None
    return staged


def _write_facts(store: Store, staged: StagedImage) -> None:
    store.put(staged.sidecar, json.dumps(_facts_of(staged)).encode("utf-8"), "application/json")


def staged_tokens(store: Store | Path, batch: str, task_id: str) -> list[str]:
    """Claim tokens with a staged image of this task (usually none: one listing that finds nothing)."""
    store = as_store(store)
    names = [key.rsplit("/", 1)[-1] for key in store.list(staging_prefix(batch, task_id))]
    return sorted(n.removesuffix(".json") for n in names if n.endswith(".json") and _TOKEN.match(n[:-5]))


def load_staged(store: Store | Path, batch: str, task_id: str, token: str) -> StagedImage | None:
    """The staged image of claim ``token``, or ``None`` when its facts are missing or unreadable."""
    store = as_store(store)
    folder = staging_prefix(batch, task_id)
    try:
        raw: dict[str, Any] = json.loads(store.read(f"{folder}{token}.json", _SIDECAR_MAX))
        key = f"{folder}{token}.{extension_for(str(raw['mime_type']))}"
        return StagedImage(
            key=key,
            uri=store.uri(key),
            token=token,
            sha256=str(raw["sha256"]),
            mime_type=str(raw["mime_type"]),
            width=int(raw["width"]),
            height=int(raw["height"]),
            bytes=int(raw["bytes"]),
            usage=Usage(**raw.get("usage", {})),
        )
    except (OSError, ValueError, KeyError, TypeError, StorageError):
        return None


def take_over(
    store: Store | Path, batch: str, task_id: str, old_token: str, new_token: str
) -> StagedImage | None:
    """Move another claim's staged image to ``new_token``'s key; ``None`` if it is gone or not intact.

    Locally the rename is the hand-over: if the old claim's worker removes its file at the same
    moment, exactly one of the two wins. On an object store it is a copy (then the old key is
    deleted): once the copy exists it is this claim's, and nobody else removes it.
    """
    store = as_store(store)
    old = load_staged(store, batch, task_id, old_token)
    if old is None or not _TOKEN.match(new_token):
        return None
    new_key = old.key.rsplit("/", 1)[0] + f"/{new_token}." + old.key.rsplit(".", 1)[-1]
    new = replace(old, token=new_token, key=new_key, uri=store.uri(new_key))
    _write_facts(store, new)
    try:
        store.move(old.key, new.key)
    except FileNotFoundError:
        store.delete(new.sidecar)
        return None
    store.delete(old.sidecar)
    try:
        intact = object_sha256(store, new.key) == new.sha256
    except FileNotFoundError:
        intact = False
    if not intact:
        discard(store, new)
        return None
    return new


def publish(store: Store | Path, batch: str, key: str, staged: StagedImage) -> str:
    """Give the recorded staged image its published key; only the row's winning claim calls this.
    Returns the published URI."""
    return publish_key(store, batch, key, staged.key, staged.mime_type)


def publish_key(store: Store | Path, batch: str, key: str, staged_key: str, mime_type: str) -> str:
    """:func:`publish` from what a row records (the sweeper publishes a dead worker's recorded result
    knowing only its staged key and type). Returns the published URI."""
    store = as_store(store)
    final = target_key(batch, key, mime_type)
    try:
        store.copy(staged_key, final)
    except FileNotFoundError as exc:
        raise StorageError(f"could not publish {store.uri(final)}: staged image gone") from exc
    return store.uri(final)


def discard(store: Store | Path, staged: StagedImage) -> None:
    """Remove one claim's staged image and facts (never anything else)."""
    store = as_store(store)
    store.delete(staged.key)
    store.delete(staged.sidecar)


def clear_staging(store: Store | Path, batch: str, task_id: str) -> None:
    """Remove every claim's staged image of a task whose result is published."""
    as_store(store).delete_prefix(staging_prefix(batch, task_id))


def object_sha256(store: Store, key: str) -> str:
    """The SHA-256 of a stored object, read in pieces."""
    digest = hashlib.sha256()
    for chunk in store.chunks(key):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def uri_for(path: Path) -> str:
    """The URI recorded for a local file (percent-escaped: ``file:///data/my%20images/a.png``)."""
    return path.as_uri()


def local_path(uri: str | None) -> str | None:
    """The file-system path of a ``file://`` result URI; other URIs (object stores) pass unchanged.

    The one inverse of :func:`uri_for`: every reader of ``result_uri`` goes through here (or through
    :meth:`Store.key_of`), so an escaped character (a space in the output directory) reads back as itself.
    """
    return file_path(uri)


def _facts_of(staged: StagedImage) -> dict[str, Any]:
    facts = asdict(staged)
    for name in ("key", "uri", "token"):
        facts.pop(name)
    return facts
