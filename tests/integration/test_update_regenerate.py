"""Issue 15: a corrected file is re-submitted (``submit --update``) and a finished image regenerated
(``regenerate``), while the previous image survives until the new one lands.

Real PostgreSQL, Redis, Celery worker processes and the simulator. The simulator blocks prompts with
the word ``forbidden``, which is how a new call is made to fail.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import pytest
from sqlalchemy import select

from nanobatch import Client
from nanobatch.models.tables import Batch, GenerationTask
from tests.integration.conftest import Stack, write_csv

pytestmark = pytest.mark.integration


def tasks_of(s: Stack, batch: str) -> dict[str, GenerationTask]:
    with s.runtime.db.session() as session:
        rows = session.scalars(select(GenerationTask).join(Batch).where(Batch.name == batch))
        return {t.key: t for t in rows}


def file_sha(uri: str | None) -> str:
    return hashlib.sha256(Path((uri or "").removeprefix("file://")).read_bytes()).hexdigest()


def stop(proc) -> None:  # type: ignore[no-untyped-def]
    proc.terminate()
    proc.wait(timeout=30)


def test_update_replaces_changed_rows_and_the_old_image_survives_a_failed_new_call(  # type: ignore[no-untyped-def]
    simulator, stack, tmp_path: Path
) -> None:
    s = stack(simulator(block_words=("forbidden",)))
    worker = s.start_worker()
    path = write_csv(tmp_path / "p.csv", "key,prompt", "A,red mug", "B,blue cup")
    s.cli("submit", str(path), "--batch", "upd", check=True)
    assert s.wait_terminal("upd").counts["completed"] == 2
    before = tasks_of(s, "upd")
    old_uri, old_sha = before["A"].result_uri, before["A"].result_sha256
    assert file_sha(old_uri) == old_sha
    stop(worker)

    # Without --update a corrected prompt is not taken (the old behaviour, said plainly)
    write_csv(path, "key,prompt", "A,a forbidden red mug", "B,blue cup")
    plain = s.cli("submit", str(path), "--batch", "upd", check=True)
    assert "0 new, 2 already present" in plain.stdout
    assert tasks_of(s, "upd")["A"].prompt == "red mug"

    # With --update the changed row goes back to pending; the unchanged one is left alone
    updated = s.cli("submit", str(path), "--batch", "upd", "--update", check=True)
    assert "0 new, 1 already present, 1 changed (back to pending)" in updated.stdout
    now = tasks_of(s, "upd")
    assert (now["A"].status, now["A"].prompt, now["A"].attempts) == ("pending", "a forbidden red mug", 0)
    assert (now["B"].status, now["B"].finished_at) == ("completed", before["B"].finished_at)
    # ... and until a new image lands, the previous one is still recorded, on disk and exported
    assert (now["A"].result_uri, now["A"].result_sha256) == (old_uri, old_sha)
    exported = {r["key"]: r for r in csv.DictReader(io.StringIO(s.cli("export", "upd", check=True).stdout))}
    assert exported["A"]["sha256"] == old_sha and exported["A"]["prompt"] == "a forbidden red mug"
    assert exported["A"]["status"] == "pending" and Path(exported["A"]["path"]).is_file()

    # When the new call fails, the old image is still there and the row says why
    s.start_worker()
    assert s.wait_terminal("upd").counts == {
        "pending": 0,
        "processing": 0,
        "completed": 1,
        "failed": 1,
        "cancelled": 0,
    }
    failed = tasks_of(s, "upd")["A"]
    assert failed.status == "failed" and failed.error_code
    assert (failed.result_uri, failed.result_sha256) == (old_uri, old_sha) and file_sha(old_uri) == old_sha

    # A fixed prompt: the new image replaces the old one when it is stored
    write_csv(path, "key,prompt", "A,a green mug", "B,blue cup")
    s.cli("submit", str(path), "--batch", "upd", "--update", check=True)
    assert s.wait_terminal("upd").counts["completed"] == 2
    done = tasks_of(s, "upd")["A"]
    assert done.status == "completed" and done.result_sha256 != old_sha
    assert file_sha(done.result_uri) == done.result_sha256


def test_regenerate_makes_a_new_image_of_completed_or_failed_tasks(  # type: ignore[no-untyped-def]
    simulator, stack, tmp_path: Path
) -> None:
    s = stack(simulator(block_words=("forbidden",)))
    worker = s.start_worker()
    path = write_csv(tmp_path / "p.csv", "key,prompt", "A,red mug", "B,blue cup", "C,forbidden plate")
    s.cli("submit", str(path), "--batch", "regen", check=True)
    assert s.wait_terminal("regen").counts["failed"] == 1
    first = tasks_of(s, "regen")
    stop(worker)

    # retry only takes failed tasks; regenerate takes completed ones too (here: only key B)
    result = s.cli("regenerate", "regen", "--keys", "B,nope", check=True)
    assert "1 task of batch regen back to pending" in result.stdout
    assert "Not moved (1): nope" in result.stdout
    now = tasks_of(s, "regen")
    assert (now["A"].status, now["B"].status, now["C"].status) == ("completed", "pending", "failed")
    assert now["B"].result_sha256 == first["B"].result_sha256  # the old image until the new one lands

    # --status failed: only the failed one
    result = s.cli("regenerate", "regen", "--status", "failed", check=True)
    assert "1 task of batch regen back to pending" in result.stdout
    assert tasks_of(s, "regen")["C"].status == "pending"

    bad = s.cli("regenerate", "regen", "--status", "pending")
    assert bad.returncode == 2 and "choose completed or failed" in bad.stderr

    s.start_worker()
    summary = s.wait_terminal("regen")
    assert (summary.counts["completed"], summary.counts["failed"]) == (2, 1)
    after = tasks_of(s, "regen")
    assert after["B"].finished_at > first["B"].finished_at and after["B"].attempts == 0
    assert after["A"].finished_at == first["A"].finished_at

    # The Python API does the same: regenerate, and submit(update=True)
    with Client(s.settings) as client:
        moved = client.regenerate("regen", status="completed")
        assert moved.moved == 2
        assert s.wait_terminal("regen").counts["completed"] == 2
        write_csv(path, "key,prompt", "A,red mug", "B,blue cup", "C,a plate")
        resubmitted = client.submit(path, batch="regen", update=True)
    assert (resubmitted.new, resubmitted.updated, resubmitted.already_present) == (0, 1, 2)
    assert s.wait_terminal("regen").counts["completed"] == 3
