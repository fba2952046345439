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
from nanobatch.workers.storage import StorageError, Usage, safe_name


def png(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def facts(width: int = 8, height: int = 6) -> ImageFacts:
    return ImageFacts("image/png", width, height)


def token() -> str:
    return str(uuid.uuid4())


TASK = str(uuid.uuid4())


@pytest.mark.parametrize("key", ["../../etc/x", "/etc/passwd", "..", ".hidden", "a/b\\c", "x\x00y", "ü ñ"])
def test_hostile_keys_are_published_inside_the_output_dir(tmp_path: Path, key: str) -> None:
    out = tmp_path / "out"
    staged = storage.stage(out, "batch", TASK, token(), png(), facts(), Usage())
    final = storage.publish(out, "batch", key, staged)
    assert out.resolve() in final.parents and out.resolve() in staged.path.parents
    assert final.parent.name == safe_name("batch")
    assert final.read_bytes() == png()


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
    assert staged.path.name == f"{tok}.png" and staged.sidecar.is_file()
    assert storage.staged_tokens(tmp_path, "b", TASK) == [tok]
    assert storage.load_staged(tmp_path, "b", TASK, tok) == staged
    assert staged.sha256 == hashlib.sha256(png(1344, 768)).hexdigest()


def test_two_claims_never_write_the_same_file(tmp_path: Path) -> None:
    first = storage.stage(tmp_path, "b", TASK, token(), png(4, 4), facts(4, 4), Usage())
    second = storage.stage(tmp_path, "b", TASK, token(), png(5, 5), facts(5, 5), Usage())
    assert first.path != second.path
    assert first.path.read_bytes() == png(4, 4) and second.path.read_bytes() == png(5, 5)


def test_taking_over_moves_the_file_to_the_new_claim(tmp_path: Path) -> None:
    old, new = token(), token()
    staged = storage.stage(tmp_path, "b", TASK, old, png(), facts(), Usage(cost_usd=0.1))
    taken = storage.take_over(tmp_path, "b", TASK, old, new)
    assert taken is not None and taken.token == new and taken.usage.cost_usd == 0.1
    assert not staged.path.exists() and taken.path.read_bytes() == png()
    assert storage.staged_tokens(tmp_path, "b", TASK) == [new]
    assert storage.take_over(tmp_path, "b", TASK, old, token()) is None  # gone: nothing to take


def test_a_damaged_staged_file_is_not_taken_over(tmp_path: Path) -> None:
    old = token()
    staged = storage.stage(tmp_path, "b", TASK, old, png(), facts(), Usage())
    staged.path.write_bytes(png()[:-10])
    assert storage.take_over(tmp_path, "b", TASK, old, token()) is None
    assert storage.staged_tokens(tmp_path, "b", TASK) == []


def test_publishing_links_the_bytes_and_clearing_leaves_only_the_result(tmp_path: Path) -> None:
    staged = storage.stage(tmp_path, "b", TASK, token(), png(), facts(), Usage())
    other = storage.stage(tmp_path, "b", TASK, token(), png(3, 3), facts(3, 3), Usage())
    final = storage.publish(tmp_path, "b", "k", staged)
    storage.clear_staging(tmp_path, "b", TASK)
    assert storage.file_sha256(final) == staged.sha256
    assert not other.path.exists()
    batch_dir = tmp_path / safe_name("b")
    assert sorted(p.name for p in batch_dir.iterdir()) == [".staged", final.name]
    assert not any((batch_dir / ".staged").iterdir())


def test_unsupported_types_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="unsupported"):
        storage.stage(tmp_path, "b", TASK, token(), b"GIF89a", ImageFacts("image/gif", 1, 1), Usage())
    assert not any(tmp_path.rglob("*.gif"))


def test_only_claim_tokens_name_staged_files(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="claim token"):
        storage.stage(tmp_path, "b", TASK, "../../x", png(), facts(), Usage())
