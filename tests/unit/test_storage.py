"""Image storage: hostile keys stay inside the output dir, names never collide, writes are atomic."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from nanobatch.workers.storage import StorageError, safe_name, store_image


def png(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("key", ["../../etc/x", "/etc/passwd", "..", ".hidden", "a/b\\c", "x\x00y", "ü ñ"])
def test_hostile_keys_are_written_inside_the_output_dir(tmp_path: Path, key: str) -> None:
    stored = store_image(tmp_path / "out", "batch", key, png())
    assert (tmp_path / "out").resolve() in stored.path.parents
    assert stored.path.parent.name == "batch"
    assert stored.path.read_bytes() == png()


def test_keys_that_sanitise_alike_do_not_collide() -> None:
    names = {safe_name(k) for k in ["a/b", "a_b", "a:b", "a b", "a\\b"]}
    assert len(names) == 5
    assert safe_name("SKU-001") == "SKU-001"  # clean keys keep their readable name


def test_store_records_facts_read_from_the_bytes(tmp_path: Path) -> None:
    stored = store_image(tmp_path, "b", "k", png(1344, 768))
    assert (stored.mime_type, stored.width, stored.height) == ("image/png", 1344, 768)
    assert stored.path.suffix == ".png" and stored.bytes == stored.path.stat().st_size
    assert len(stored.sha256) == 64


def test_rewriting_replaces_the_file_and_leaves_no_temporaries(tmp_path: Path) -> None:
    store_image(tmp_path, "b", "k", png(4, 4))
    stored = store_image(tmp_path, "b", "k", png(5, 5))
    assert stored.width == 5
    assert sorted(p.name for p in stored.path.parent.iterdir()) == ["k.png"]


def test_garbage_bytes_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not an image"):
        store_image(tmp_path, "b", "k", b"<html>error</html>")
    assert not any(tmp_path.rglob("*"))
