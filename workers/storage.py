"""Where generated images go, and how one claim's image becomes *the* result of its row.

Layout under the output directory::

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

**Commit protocol** (docs/integrity.md, items 1 and 4): files are written to a temporary name in the
same directory, fsynced and renamed, so a crash never leaves a half-written file under a real name.

1. :func:`stage` writes the image under its claim's own name (the claim token is unique per claim),
   so no two workers ever write the same file and a stale worker cannot replace anything.
2. The row's conditional ``UPDATE … WHERE claim_token = …`` decides which claim's file is the result;
   the row first records the staged file (which exists), then
3. only the winner :func:`publish`\\ es it: a hard link (a copy where links are not supported) renamed
   to ``<key>.<ext>``, then the row is pointed there and the staging folder is removed. A loser removes
   only its own staged file (:func:`discard`), never the published one.
4. A staged image whose row was never updated (the database stayed down past
   ``NANOBATCH_RESULT_WRITE_DEADLINE``) stays on disk; the row's next delivery finds it
   (:func:`staged_tokens`), takes it over (:func:`take_over`, an atomic rename to its own claim's name)
   and records it instead of paying for the image again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from nanobatch.workers.imagecheck import ImageFacts

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 120
_HASH_HEX = 16
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
STAGING_DIR = ".staged"
#: Claim tokens are uuid4 strings; anything else in a staging folder is not ours to read.
_TOKEN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HASH_CHUNK = 1 << 20


class StorageError(Exception):
    """The image could not be stored (unsafe path, unsupported type, disk error)."""


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
    """One claim's image on disk under its claim-specific name, with the facts the row records."""

    path: Path
    token: str
    sha256: str
    mime_type: str
    width: int
    height: int
    bytes: int
    usage: Usage = field(default_factory=Usage)

    @property
    def uri(self) -> str:
        return uri_for(self.path)

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(f"{self.token}.json")


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


def _inside(root: Path, path: Path) -> Path:
    if root not in path.parents:
        raise StorageError(f"refusing to write outside {root}: {path}")
    return path


def target_path(output_dir: Path, batch: str, key: str, mime_type: str) -> Path:
    """The published result's path: ``<output>/<safe batch>/<safe key>.<ext>``."""
    root = output_dir.resolve()
    return _inside(root, (root / safe_name(batch) / f"{safe_name(key)}.{extension_for(mime_type)}").resolve())


def staging_dir(output_dir: Path, batch: str, task_id: str) -> Path:
    """The folder holding the claims' staged images of one task."""
    root = output_dir.resolve()
    name = task_id if _TOKEN.match(task_id) else safe_name(task_id)  # task ids are uuids
    return _inside(root, (root / safe_name(batch) / STAGING_DIR / name).resolve())


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


def stage(
    output_dir: Path, batch: str, task_id: str, token: str, data: bytes, facts: ImageFacts, usage: Usage
) -> StagedImage:
    """Write a verified image under its claim's own name (facts first, so an image is never unexplained)."""
    if not _TOKEN.match(token):
        raise StorageError(f"not a claim token: {token!r}")
    folder = staging_dir(output_dir, batch, task_id)
    staged = StagedImage(
        path=folder / f"{token}.{extension_for(facts.mime_type)}",
        token=token,
        sha256=hashlib.sha256(data).hexdigest(),
        mime_type=facts.mime_type,
        width=facts.width,
        height=facts.height,
        bytes=len(data),
        usage=usage,
    )
    try:
        write_atomic(staged.sidecar, json.dumps(_facts_of(staged)).encode("utf-8"))
        write_atomic(staged.path, data)
    except OSError as exc:
        raise StorageError(f"could not write {staged.path}: {exc}") from exc
    return staged


def staged_tokens(output_dir: Path, batch: str, task_id: str) -> list[str]:
    """Claim tokens with a staged image of this task (usually none: one ``listdir`` that fails)."""
    try:
        names = os.listdir(staging_dir(output_dir, batch, task_id))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n.removesuffix(".json") for n in names if n.endswith(".json") and _TOKEN.match(n[:-5]))


def load_staged(output_dir: Path, batch: str, task_id: str, token: str) -> StagedImage | None:
    """The staged image of claim ``token``, or ``None`` when its facts are missing or unreadable."""
    folder = staging_dir(output_dir, batch, task_id)
    try:
        raw: dict[str, Any] = json.loads((folder / f"{token}.json").read_text(encoding="utf-8"))
        return StagedImage(
            path=folder / f"{token}.{extension_for(str(raw['mime_type']))}",
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
    output_dir: Path, batch: str, task_id: str, old_token: str, new_token: str
) -> StagedImage | None:
    """Move another claim's staged image to ``new_token``'s name; ``None`` if it is gone or not intact.

    The rename is the hand-over: if the old claim's worker removes its file at the same moment, exactly
    one of the two wins, and a file this claim took over is never removed by anyone else.
    """
    old = load_staged(output_dir, batch, task_id, old_token)
    if old is None or not _TOKEN.match(new_token):
        return None
    new = replace(old, token=new_token, path=old.path.with_name(f"{new_token}{old.path.suffix}"))
    write_atomic(new.sidecar, json.dumps(_facts_of(new)).encode("utf-8"))
    try:
        os.rename(old.path, new.path)
    except FileNotFoundError:
        new.sidecar.unlink(missing_ok=True)
        return None
    old.sidecar.unlink(missing_ok=True)
    if file_sha256(new.path) != new.sha256:
        discard(new)
        return None
    return new


def publish(output_dir: Path, batch: str, key: str, staged: StagedImage) -> Path:
    """Give the recorded staged image its published name; only the row's winning claim calls this."""
    final = target_path(output_dir, batch, key, staged.mime_type)
    tmp = final.with_name(f".{final.name}.{staged.token}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(staged.path, tmp)
        except OSError:  # no hard links on this file system: copy
            shutil.copyfile(staged.path, tmp)
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"could not publish {final}: {exc}") from exc
    return final


def discard(staged: StagedImage) -> None:
    """Remove one claim's staged image and facts (and the task's staging folder when it is empty)."""
    staged.path.unlink(missing_ok=True)
    staged.sidecar.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: another claim's file is still there
        staged.path.parent.rmdir()


def clear_staging(output_dir: Path, batch: str, task_id: str) -> None:
    """Remove every claim's staged image of a task whose result is published."""
    shutil.rmtree(staging_dir(output_dir, batch, task_id), ignore_errors=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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


def _facts_of(staged: StagedImage) -> dict[str, Any]:
    facts = asdict(staged)
    facts.pop("path")
    facts.pop("token")
    return facts
