"""Image storage: hostile keys stay inside the output dir, names are injective, claims never share a file."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path

import pytest
from PIL import Image

from nanobatch.workers import storage
from nanobatch.workers.imagecheck import ImageFacts
from nanobatch.workers.storage import Usage, safe_name


def png(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def facts(width: int = 8, height: int = 6) -> ImageFacts:
    return ImageFacts("image/png", width, height)


def token() -> str:
    return str(uuid.uuid4())


TASK = str(uuid.uuid4())


def test_names_are_injective_even_when_a_key_looks_like_a_sanitised_one() -> None:
    # the review's pair: "a/b" sanitises to "a_b", and its old name "a_b-c14cddc033" is a valid key too
    keys = ["a/b", "a_b", "a:b", "a b", "a\\b", "a_b-c14cddc033", "SKU-1", "sku-1"]
    assert len({safe_name(k) for k in keys}) == len(keys)
    assert len({safe_name(k).lower() for k in keys}) == len(keys)  # case-insensitive file systems too
    digest = hashlib.sha256(b"SKU-001").hexdigest()[:16]
    assert safe_name("SKU-001") == f"SKU-001-{digest}"  # readable part kept, hash always appended


def test_a_staged_image_records_its_facts_beside_it(tmp_path: Path) -> None:
    usage = Usage(prompt_tokens=3, output_tokens=1290, cost_usd=0.039, latency_ms=12, model_used="m")
    tok = token()
    staged = storage.stage(tmp_path, "b", TASK, tok, png(1344, 768), facts(1344, 768), usage)
    folder = tmp_path.resolve() / safe_name("b") / ".staged" / TASK
    assert (folder / f"{tok}.png").is_file() and (folder / f"{tok}.json").is_file()
    assert staged.uri == (folder / f"{tok}.png").as_uri()
    assert storage.staged_tokens(tmp_path, "b", TASK) == [tok]
    assert storage.load_staged(tmp_path, "b", TASK, tok) == staged
    assert staged.sha256 == hashlib.sha256(png(1344, 768)).hexdigest()


def test_publishing_links_the_bytes_and_clearing_leaves_only_the_result(tmp_path: Path) -> None:
    staged = storage.stage(tmp_path, "b", TASK, token(), png(), facts(), Usage())
    storage.stage(tmp_path, "b", TASK, token(), png(3, 3), facts(3, 3), Usage())
    final = Path(storage.local_path(storage.publish(tmp_path, "b", "k", staged)) or "")
    storage.clear_staging(tmp_path, "b", TASK)
    assert storage.file_sha256(final) == staged.sha256
    assert final.stat().st_nlink == 2 or final.stat().st_nlink == 1  # a hard link where supported
    batch_dir = tmp_path / safe_name("b")
    assert sorted(p.name for p in batch_dir.iterdir()) == [".staged", final.name]
    assert not any((batch_dir / ".staged").iterdir())


def test_an_unknown_storage_scheme_is_a_configuration_error() -> None:
    from nanobatch.workers.store import StoreConfigError, open_store

    with pytest.raises(StoreConfigError, match=r"unknown storage scheme 'ftp://'"):
        open_store("ftp://host/x")
    with pytest.raises(StoreConfigError, match="no bucket"):
        open_store("s3:///prefix")


def test_checking_a_local_store_creates_nothing_and_refuses_a_file(tmp_path: Path) -> None:
    from nanobatch.workers.store import StoreConfigError, open_store

    open_store(str(tmp_path / "new" / "images")).check()
    assert not (tmp_path / "new").exists()  # a refused submit must leave no output folder behind
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreConfigError, match="not a directory"):
        open_store(str(tmp_path / "file" / "images")).check()
