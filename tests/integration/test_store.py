"""The same store tests on every backend: a local folder and an S3 bucket (moto server on loopback).

They prove the rules of docs/integrity.md hold whatever ``NANOBATCH_OUTPUT_DIR`` names: writes record
size and sha256 and set the content type, a claim's image has a key no other claim has, only the
winner publishes and a loser never touches the published object, take-over checks the bytes, hostile
keys stay inside the store, and purge/list/sign work.
"""

from __future__ import annotations

import hashlib
import io
import urllib.request
import uuid
from pathlib import Path

import pytest
from PIL import Image

from nanobatch.workers import storage
from nanobatch.workers.imagecheck import ImageFacts
from nanobatch.workers.storage import StorageError, Usage, safe_name
from nanobatch.workers.store import LocalStore, Store, open_store

pytestmark = pytest.mark.integration


def png(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def facts(width: int = 8, height: int = 6) -> ImageFacts:
    return ImageFacts("image/png", width, height)


def token() -> str:
    return str(uuid.uuid4())


TASK = str(uuid.uuid4())


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return open_store(str(tmp_path / "out"))
    env = request.getfixturevalue("s3_env")
    return open_store(env["NANOBATCH_OUTPUT_DIR"])


def test_a_write_records_size_and_sha256_and_reads_back(store: Store) -> None:
    data = png(40, 30)
    stored = store.put("b/x.png", data, "image/png")
    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.uri == store.uri("b/x.png") and store.key_of(stored.uri) == "b/x.png"
    assert store.read("b/x.png", 1 << 20) == data
    assert store.size("b/x.png") == len(data) and store.size("b/nothing.png") is None
    assert b"".join(store.chunks("b/x.png")) == data
    with pytest.raises(StorageError, match="larger than"):
        store.read("b/x.png", 10)
    with pytest.raises(FileNotFoundError):
        store.read("b/nothing.png", 100)


def test_a_large_image_streams_in_parts(store: Store) -> None:
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB: a multipart upload on object stores
    stored = store.put("big/x.png", data, "image/png")
    assert stored.size == len(data)
    assert storage.object_sha256(store, "big/x.png") == hashlib.sha256(data).hexdigest()


def test_a_conditional_create_never_replaces(store: Store) -> None:
    store.put("inputs/a.png", b"first", "image/png", create=True)
    with pytest.raises(FileExistsError):
        store.put("inputs/a.png", b"second", "image/png", create=True)
    assert store.read("inputs/a.png", 100) == b"first"


def test_copy_move_list_and_delete_prefix(store: Store) -> None:
    for name in ("a", "b", "c"):
        store.put(f"batch/{name}.png", name.encode(), "image/png")
    store.put("other/z.png", b"z", "image/png")
    store.copy("batch/a.png", "batch/sub/a2.png")
    store.move("batch/b.png", "batch/sub/b2.png")
    assert store.list("batch/") == ["batch/a.png", "batch/c.png", "batch/sub/a2.png", "batch/sub/b2.png"]
    with pytest.raises(FileNotFoundError):
        store.copy("batch/b.png", "batch/never.png")
    assert store.delete_prefix("batch/") == 4
    assert store.list("batch/") == [] and store.list("other/") == ["other/z.png"]
    store.delete("other/z.png")
    store.delete("other/z.png")  # absent is fine
    assert store.list("") == []


def test_a_signed_link_reads_the_object_without_credentials(store: Store) -> None:
    store.put("b/x.png", png(), "image/png")
    link = store.sign("b/x.png", 60)
    if store.is_local:
        assert link == store.uri("b/x.png")
        return
    assert link.startswith("http://127.0.0.1:") and "X-Amz-Signature=" in link
    with urllib.request.urlopen(link, timeout=10) as response:  # no credentials: the signature only
        assert response.read() == png()
        assert response.headers["Content-Type"] == "image/png"


@pytest.mark.parametrize("key", ["../../etc/x", "/etc/passwd", "..", ".hidden", "a/b\\c", "x\x00y", "ü ñ"])
def test_hostile_keys_are_published_inside_the_store(store: Store, key: str) -> None:
    staged = storage.stage(store, "batch", TASK, token(), png(), facts(), Usage())
    final = storage.publish(store, "batch", key, staged)
    found = store.key_of(final)
    assert found is not None and found.startswith(f"{safe_name('batch')}/") and found.count("/") == 1
    assert store.read(found, 1 << 20) == png()


def test_two_claims_stage_under_their_own_keys_and_only_the_winner_publishes(store: Store) -> None:
    winner, loser = token(), token()
    mine = storage.stage(store, "b", TASK, winner, png(4, 4), facts(4, 4), Usage(cost_usd=0.1))
    stale = storage.stage(store, "b", TASK, loser, png(5, 5), facts(5, 5), Usage(cost_usd=0.1))
    assert mine.key != stale.key and mine.uri != stale.uri
    assert storage.staged_tokens(store, "b", TASK) == sorted([winner, loser])
    assert storage.load_staged(store, "b", TASK, winner) == mine
    published = storage.publish(store, "b", "k", mine)
    storage.discard(store, stale)  # what a loser does: only its own staged image and facts go
    key = store.key_of(published)
    assert key is not None
    assert storage.object_sha256(store, key) == mine.sha256
    assert storage.staged_tokens(store, "b", TASK) == [winner]
    storage.clear_staging(store, "b", TASK)
    assert store.list(f"{safe_name('b')}/") == [key]


def test_taking_over_moves_the_image_to_the_new_claim(store: Store) -> None:
    old, new = token(), token()
    staged = storage.stage(store, "b", TASK, old, png(), facts(), Usage(cost_usd=0.1))
    taken = storage.take_over(store, "b", TASK, old, new)
    assert taken is not None and taken.token == new and taken.usage.cost_usd == 0.1
    assert store.size(staged.key) is None and store.read(taken.key, 1 << 20) == png()
    assert storage.staged_tokens(store, "b", TASK) == [new]
    assert storage.take_over(store, "b", TASK, old, token()) is None  # gone: nothing to take


def test_a_damaged_staged_image_is_not_taken_over(store: Store) -> None:
    old = token()
    staged = storage.stage(store, "b", TASK, old, png(), facts(), Usage())
    store.put(staged.key, png()[:-10], "image/png")
    assert storage.take_over(store, "b", TASK, old, token()) is None
    assert storage.staged_tokens(store, "b", TASK) == []


def test_reuse_copies_in_the_store_and_checks_the_copy(store: Store) -> None:
    first = storage.stage(store, "b", TASK, token(), png(), facts(), Usage())
    published = storage.publish(store, "b", "k", first)
    source = store.key_of(published)
    assert source is not None
    other_task = str(uuid.uuid4())
    copy = storage.stage_copy(store, "b2", other_task, token(), source, first)
    assert copy is not None and store.read(copy.key, 1 << 20) == png()
    store.put(source, b"changed", "image/png")
    assert storage.stage_copy(store, "b2", other_task, token(), source, first) is None


def test_unsupported_types_and_non_tokens_are_refused_before_anything_is_written(store: Store) -> None:
    with pytest.raises(StorageError, match="unsupported"):
        storage.stage(store, "b", TASK, token(), b"GIF89a", ImageFacts("image/gif", 1, 1), Usage())
    with pytest.raises(StorageError, match="claim token"):
        storage.stage(store, "b", TASK, "../../x", png(), facts(), Usage())
    assert store.list("") == []


def test_a_local_store_is_what_a_path_always_was(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "my images"))
    assert isinstance(store, LocalStore)
    staged = storage.stage(store, "b", TASK, token(), png(), facts(), Usage())
    assert staged.uri.startswith("file://") and "my%20images" in staged.uri
    assert store.key_of(staged.uri) == staged.key
    assert open_store(staged.uri.rsplit("/", 4)[0]).location == str((tmp_path / "my images").resolve())
