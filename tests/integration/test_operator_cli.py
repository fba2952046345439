"""Operator commands on a real stack: PostgreSQL, Redis, Celery worker processes and the simulator.

Each test drives the ``nanobatch`` command as a subprocess, the way an operator would, and checks
the effect in the database, on disk and at the upstream (the simulator's request counter).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.workers.storage import safe_name
from tests.integration.conftest import DEFAULT_MODEL, Stack, write_csv

pytestmark = pytest.mark.integration


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def tasks_of(s: Stack, batch: str) -> dict[str, GenerationTask]:
    with s.runtime.db.session() as session:
        rows = session.scalars(select(GenerationTask).join(Batch).where(Batch.name == batch))
        return {t.key: t for t in rows}


def batch_status(s: Stack, batch: str) -> str:
    with s.runtime.db.session() as session:
        return session.scalars(select(Batch.status).where(Batch.name == batch)).one()


def drained(s: Stack) -> Callable[[], bool]:
    """True once the worker has consumed every published message (claimed or dropped)."""
    return lambda: s.runtime.dispatcher.queued_count() == 0


def test_watch_groups_failures_by_reason_and_retry_runs_them_again(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a finished batch where two prompts hit the upstream's safety filter
    sim = simulator(block_words=("forbidden",))
    s = stack(sim)
    s.start_worker()
    rows = ("A,red mug", "B,forbidden mug", "C,blue cup", "D,forbidden cup")
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", *rows), "blocky")
    s.wait_terminal("blocky")
    # When the operator looks at it
    once = s.cli("watch", "blocky", "--once", check=True).stdout
    # Then the view shows the outcome and the reason with its count
    assert "4/4 done" in once and "completed 2" in once and "failed 2" in once, once
    assert re.search(r"\bblocked\s+2\b", once.split("Failed by reason", 1)[-1]), once
    # And a full watch ends at once with exit 1, because tasks failed
    assert s.cli("watch", "blocky", "--interval", "0.1").returncode == 1

    # When retrying another reason, nothing moves; retrying "blocked" sends exactly those two again
    calls = sim.stats()["requests"]
    assert (
        "0 failed tasks with reason 'unavailable'"
        in s.cli("retry", "blocky", "--reason", "unavailable", check=True).stdout
    )
    before = tasks_of(s, "blocky")
    out = s.cli("retry", "blocky", "--reason", "blocked", check=True).stdout
    assert "2 failed tasks with reason 'blocked' moved back to pending" in out, out
    # Then the upstream sees them again and, still blocked, they fail again for the same reason
    wait_for(lambda: sim.stats()["requests"] == calls + 2, "the two retried tasks to reach the upstream")
    s.wait_terminal("blocky")
    after = tasks_of(s, "blocky")
    for key in ("B", "D"):
        assert (after[key].status, after[key].error_code, after[key].attempts) == ("failed", "blocked", 1)
        assert after[key].finished_at > before[key].finished_at
    assert after["A"].finished_at == before["A"].finished_at  # completed tasks are left alone
    assert sim.stats()["requests"] == calls + 2


def test_after_an_outage_retry_completes_the_failed_tasks(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given an upstream that answers 503 to everything and one attempt per task
    sick = simulator(fail_rates={503: 1.0})
    s = stack(sick, NANOBATCH_MAX_ATTEMPTS="1")
    worker = s.start_worker()
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "A,mug", "B,cup", "C,plate"), "outage")
    assert s.wait_terminal("outage").counts["failed"] == 3
    assert re.search(r"unavailable\s+3\b", s.cli("watch", "outage", "--once", check=True).stdout)
    # When the upstream is healthy again (a worker pointed at a healthy simulator) and we retry
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    healthy = simulator()
    s.start_worker(NANOBATCH_PROVIDER_BASE_URL=healthy.url)
    out = s.cli("retry", "outage", check=True).stdout
    assert "3 failed tasks moved back to pending" in out, out
    # Then a live watch follows the batch until every task completed, and exits 0
    watched = s.cli("watch", "outage", "--interval", "0.2")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert s.summary("outage").counts["completed"] == 3 and "3/3 done" in watched.stdout
    # And each task took exactly one call to the healthy upstream
    assert healthy.stats()["requests"] == 3
    assert all(t.attempts == 0 and t.error_code is None for t in tasks_of(s, "outage").values())


def test_a_paused_batch_is_not_processed_until_resumed(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a batch whose messages are queued while no worker runs, and the batch paused
    sim = simulator()
    s = stack(sim)
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", *(f"K{i},mug {i}" for i in range(5))), "later")
    assert "paused" in s.cli("pause", "later", check=True).stdout
    assert "already paused" in s.cli("pause", "later", check=True).stdout  # repeating is harmless
    # When a worker consumes every message
    s.start_worker()
    wait_for(drained(s), "the worker to consume the queued messages")
    # Then none reached the upstream: all were dropped at claim and the rows still wait
    assert sim.stats()["requests"] == 0
    assert s.summary("later").counts["pending"] == 5 and batch_status(s, "later") == "paused"
    # When resumed, the dropped rows are dispatched again and complete
    out = s.cli("resume", "later", check=True).stdout
    assert "resumed; 5 tasks dispatched" in out, out
    assert s.wait_terminal("later").counts["completed"] == 5
    assert sim.stats()["requests"] == 5 and batch_status(s, "later") == "open"
    assert "already open" in s.cli("resume", "later", check=True).stdout


def test_resume_does_not_duplicate_messages_that_are_still_queued(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a paused batch whose messages were never consumed (no worker yet)
    s = stack(simulator())
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "A,mug", "B,cup"), "queued")
    s.cli("pause", "queued", check=True)
    broker_queue = s.env["NANOBATCH_QUEUE"]
    assert s.runtime.redis.llen(broker_queue) == 2
    # When resumed, its live messages are enough: nothing is published twice
    assert "resumed; 0 tasks dispatched" in s.cli("resume", "queued", check=True).stdout
    assert s.runtime.redis.llen(broker_queue) == 2
    # And those messages now run the tasks
    s.start_worker()
    assert s.wait_terminal("queued").counts["completed"] == 2


def test_cancel_stops_a_batch_and_its_queued_messages_do_nothing(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given four queued tasks and no worker yet
    sim = simulator()
    s = stack(sim)
    rows = ("A,mug", "B,cup", "C,plate", "D,bowl")
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", *rows), "doomed")
    # When the batch is cancelled
    assert "4 tasks cancelled in batch doomed" in s.cli("cancel", "doomed", check=True).stdout
    s.start_worker()
    wait_for(drained(s), "the worker to consume the queued messages")
    # Then no call was made and the batch ended cancelled (watch exits 1: not everything completed)
    assert sim.stats()["requests"] == 0
    assert s.summary("doomed").counts["cancelled"] == 4 and batch_status(s, "doomed") == "cancelled"
    assert s.cli("watch", "doomed").returncode == 1
    # And a cancelled batch cannot be paused, resumed or retried; cancelling again changes nothing
    assert "0 tasks cancelled" in s.cli("cancel", "doomed", check=True).stdout
    for command in ("pause", "resume", "retry"):
        result = s.cli(command, "doomed")
        assert result.returncode == 1 and "cancelled" in result.stderr, (command, result.stderr)


@pytest.mark.parametrize("command", ["watch", "retry", "cancel", "pause", "resume", "export", "report"])
def test_an_unknown_batch_is_a_clear_error(simulator, stack, command: str) -> None:  # type: ignore[no-untyped-def]
    result = stack(simulator()).cli(command, "nope")
    assert result.returncode == 1
    assert "no batch named 'nope'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_export_has_each_task_with_image_facts_and_product_columns(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a finished batch with product columns, where one prompt was blocked
    s = stack(simulator(block_words=("forbidden",)))
    s.start_worker()
    rows = ('SKU-1,red mug,"Mug, red",9.99', "SKU-2,forbidden mug,Bad mug,1.00", "SKU-3,blue cup,Cup,4.50")
    path = write_csv(tmp_path / "p.csv", "key,prompt,title,price", *rows)
    s.submit_file(path, "catalog")
    s.wait_terminal("catalog")
    # When exported as CSV to stdout
    result = s.cli("export", "catalog", "--format", "csv", check=True)
    exported = {r["key"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    # Then each completed row points at the real file, with its hash, size and cost, and the product data
    assert sorted(exported) == ["SKU-1", "SKU-2", "SKU-3"] and "exported 3 tasks" in result.stderr
    stored = tasks_of(s, "catalog")
    for key, title in {"SKU-1": "Mug, red", "SKU-3": "Cup"}.items():
        row = exported[key]
        data = Path(row["path"]).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and int(row["bytes"]) == len(data)
        assert (row["status"], row["width"], row["height"], row["mime_type"]) == (
            "completed",
            "1024",
            "1024",
            "image/png",
        )
        assert (row["model"], row["aspect_ratio"], row["title"]) == (DEFAULT_MODEL, "1:1", title)
        assert float(row["cost_usd"]) == stored[key].cost_usd and stored[key].cost_usd >= 0.0336
    blocked = exported["SKU-2"]
    assert (blocked["status"], blocked["error_code"], blocked["path"]) == ("failed", "blocked", "")
    assert blocked["price"] == "1.00"
    # When exported as JSONL to a file
    out = tmp_path / "exports" / "catalog.jsonl"
    s.cli("export", "catalog", "--format", "jsonl", "--output", str(out), check=True)
    objects = {o["key"]: o for o in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    # Then it holds the same facts with native types, and no temporary file is left behind
    assert objects["SKU-1"]["width"] == 1024 and objects["SKU-1"]["sha256"] == exported["SKU-1"]["sha256"]
    assert objects["SKU-2"]["path"] is None and objects["SKU-3"]["price"] == "4.50"
    assert [p.name for p in out.parent.iterdir()] == ["catalog.jsonl"]


def test_report_writes_the_gallery_next_to_the_images(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator(block_words=("forbidden",)))
    s.start_worker()
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "A,mug", "B,forbidden mug"), "gallery")
    s.wait_terminal("gallery")
    out = s.cli("report", "gallery", check=True).stdout
    page = (s.output_dir / safe_name("gallery") / "report.html").read_text(encoding="utf-8")
    assert "1 of 1 images" in out
    assert page.count('<img src="data:image/jpeg;base64,') == 1 and "blocked" in page
