"""The drop folder on a real stack: files become batches (or rejections with every error listed), files
still being written wait, and a crash between submit and move is harmless."""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.tasks.celeryapp.app import INBOX_TASK
from nanobatch.tasks.inbox import process_inbox
from tests.integration.conftest import Stack, write_csv

pytestmark = pytest.mark.integration

#: Files are dated by their modification time: noon UTC on 2026-03-01 names batches "<stem>-20260301".
DROPPED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def dropped(path: Path, when: float = DROPPED) -> Path:
    os.utime(path, (when, when))
    return path


def tasks_per_batch(s: Stack) -> dict[str, int]:
    with s.runtime.db.session() as session:
        rows = session.execute(select(Batch.name, func.count()).join(GenerationTask).group_by(Batch.name))
        return dict(rows.all())


def batch_names(s: Stack) -> set[str]:
    with s.runtime.db.session() as session:
        return set(session.scalars(select(Batch.name)))


def inbox_stack(simulator, stack, tmp_path: Path) -> tuple[Stack, Path]:  # type: ignore[no-untyped-def]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return stack(simulator(), NANOBATCH_INBOX_DIR=str(inbox), NANOBATCH_TIMEZONE="UTC"), inbox


def test_settled_files_become_batches_and_invalid_ones_are_rejected(simulator, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given an inbox with a good CSV, a good JSONL, a CSV with two bad rows, a file still being written,
    # a file of another type and a CSV in a subfolder
    s, inbox = inbox_stack(simulator, stack, tmp_path)
    s.start_worker()
    dropped(write_csv(inbox / "products.csv", "key,prompt", "A,red mug", "B,blue mug", "C,green mug"))
    jsonl = inbox / "extra.jsonl"
    jsonl.write_text(
        '{"key": "X", "prompt": "a plate"}\n{"key": "Y", "prompt": "a bowl", "aspect_ratio": "16:9"}\n'
    )
    dropped(jsonl)
    dropped(write_csv(inbox / "broken.csv", "key,prompt", "A,mug", "A,cup", "B,   ", "C,bowl"))
    write_csv(inbox / "fresh.csv", "key,prompt", "F,fork")  # modified just now: still being copied
    (inbox / "notes.txt").write_text("not a product file")
    dropped(inbox / "notes.txt")
    (inbox / "sub").mkdir()
    dropped(write_csv(inbox / "sub" / "nested.csv", "key,prompt", "N,knife"))

    # When the inbox job runs
    counts = process_inbox(s.runtime)

    # Then the settled good files are batches named <stem>-<date>, and their tasks run to completion
    assert counts == {
        "submitted": 2,
        "rejected": 1,
        "waiting": 1,
        "errors": 0,
        "new_tasks": 5,
        "existing_tasks": 0,
    }
    assert tasks_per_batch(s) == {"products-20260301": 3, "extra-20260301": 2}
    assert s.wait_terminal("products-20260301").counts["completed"] == 3
    assert s.wait_terminal("extra-20260301").counts["completed"] == 2
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["extra.jsonl", "products.csv"]
    # And the invalid file wrote nothing and lies in rejected/ beside a list of every problem
    assert "broken-20260301" not in batch_names(s)
    assert sorted(p.name for p in (inbox / "rejected").iterdir()) == ["broken.csv", "broken.csv.errors.txt"]
    report = (inbox / "rejected" / "broken.csv.errors.txt").read_text()
    problems = [line for line in report.splitlines() if line.startswith("line ")]
    assert len(problems) == 2
    assert problems[0].startswith("line 3: key: duplicate key 'A'") and problems[1].startswith(
        "line 4: prompt:"
    )
    # And everything else is untouched
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["fresh.csv", "notes.txt"]
    assert (inbox / "sub" / "nested.csv").is_file()


def test_a_rerun_after_a_crash_between_submit_and_move_adds_nothing(simulator, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given a file the inbox job submitted (no worker runs, so its messages stay queued)
    s, inbox = inbox_stack(simulator, stack, tmp_path)
    dropped(write_csv(inbox / "nightly.csv", "key,prompt", "A,red mug", "B,blue mug", "C,green mug"))
    assert process_inbox(s.runtime)["new_tasks"] == 3
    queue = s.env["NANOBATCH_QUEUE"]
    assert s.runtime.redis.llen(queue) == 3
    # When the job crashed before moving it (the file is back in the inbox, same content and date)
    shutil.copy2(inbox / "done" / "nightly.csv", inbox / "nightly.csv")
    counts = process_inbox(s.runtime)
    # Then the second run finds every row already present: no task and no message twice
    assert (counts["submitted"], counts["new_tasks"], counts["existing_tasks"]) == (1, 0, 3)
    assert tasks_per_batch(s) == {"nightly-20260301": 3}
    assert s.runtime.redis.llen(queue) == 3
    # And neither copy of the file was overwritten
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["nightly.1.csv", "nightly.csv"]


def test_a_file_that_cannot_be_read_is_rejected_with_the_reason(simulator, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s, inbox = inbox_stack(simulator, stack, tmp_path)
    dropped(write_csv(inbox / "nokey.csv", "name,prompt", "A,mug"))
    (inbox / "empty.jsonl").write_text("")
    dropped(inbox / "empty.jsonl")
    counts = process_inbox(s.runtime)
    assert (counts["rejected"], counts["submitted"]) == (2, 0)
    assert "no 'key' column" in (inbox / "rejected" / "nokey.csv.errors.txt").read_text()
    assert "no rows" in (inbox / "rejected" / "empty.jsonl.errors.txt").read_text()
    assert batch_names(s) == set()


def test_a_missing_inbox_is_not_an_error(simulator, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator(), NANOBATCH_INBOX_DIR=str(tmp_path / "nowhere"))
    assert set(process_inbox(s.runtime).values()) == {0}


# -- needs the nanobatch.inbox task in tasks/celeryapp/definitions.py ----------------------------------------


def test_the_beat_task_runs_the_inbox_on_a_worker(simulator, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given a worker (it consumes the control queue) and a settled file in the inbox
    s, inbox = inbox_stack(simulator, stack, tmp_path)
    s.start_worker()
    dropped(write_csv(inbox / "beat.csv", "key,prompt", "A,red mug"))
    # When beat sends nanobatch.inbox (routed to the control queue by the app's task_routes)
    s.runtime.app.send_task(INBOX_TASK)
    # Then the file is submitted and moved by the worker, and its task completes
    deadline = time.monotonic() + 60
    while not (inbox / "done" / "beat.csv").exists():
        assert time.monotonic() < deadline, "the worker never processed the inbox\n" + s.worker_logs()
        time.sleep(0.2)
    assert s.wait_terminal("beat-20260301").counts["completed"] == 1
