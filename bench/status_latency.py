"""Status at 1M rows (issue 13 item 5): main's GROUP BY beside the trigger-kept counts, one command.

    python -m bench.status_latency                      # 1,000,000 rows
    python -m bench.status_latency --rows 100000 --before-src /path/to/main/checkout

Two private PostgreSQL databases, one per design, filled the same way:
- **before**: schema at revision 0003 (no counts, main's indexes); status computed by main's queries,
  reproduced below (``before_summary``: GROUP BY status with the cost sum, recent completions, budget
  waiters, and the DISTINCT models the alerts read);
- **after**: schema at head (migration 0004's triggers and indexes); ``models.queries.batch_summaries``
  and ``models_by_batch`` as ``nanobatch status BATCH`` calls them.

Each database gets ``--rows`` tasks in one batch through the producer's own insert (COPY; timed:
submit rows/s), then 60 % of them completed and 5 % failed by bulk UPDATEs (timed), a second
50-row batch, ANALYZE; then the status queries are timed in-process (median of ``--repeat`` runs
on a warm cache; after: with the submit's count log unfolded, then folded as the sweeper does),
and ``nanobatch status BATCH --json`` end to end in a subprocess (after; before too when
``--before-src`` names a checkout of main). A claim + complete loop on one thread
(``--transitions`` tasks) shows what the triggers cost the worker's per-task writes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from bench.harness import PG_ADMIN_URL, REPO, _admin, print_table, require_loopback, write_results
from nanobatch.models import counts, queries, transitions
from nanobatch.models.base import utcnow
from nanobatch.models.db import Database
from nanobatch.models.status import TaskStatus
from nanobatch.models.tables import Batch, GenerationTask, new_id
from nanobatch.tasks import producer
from nanobatch.tasks.intake import TaskSpec

MODEL = "gemini-nano-banana-2.1"


def before_summary(session: Session, name: str) -> dict[str, Any]:
    """What main computes for ``status BATCH`` (models/queries.py ``_summary`` + ``models_by_batch``)."""
    batch = session.scalars(select(Batch).where(Batch.name == name)).one()
    counts = {s.value: 0 for s in TaskStatus}
    cost = 0.0
    rows = session.execute(
        select(GenerationTask.status, func.count(), func.coalesce(func.sum(GenerationTask.cost_usd), 0.0))
        .where(GenerationTask.batch_id == batch.id)
        .group_by(GenerationTask.status)
    )
    for status, n, spent in rows:
        counts[status] = int(n)
        cost += float(spent or 0.0)
    now = utcnow()
    session.scalar(
        select(func.count()).where(
            GenerationTask.batch_id == batch.id,
            GenerationTask.status == "completed",
            GenerationTask.finished_at >= now - queries.THROUGHPUT_WINDOW,
        )
    )
    session.scalar(
        select(func.count()).where(
            GenerationTask.batch_id == batch.id,
            GenerationTask.status == "pending",
            GenerationTask.error_code == "budget_reached",
        )
    )
    models = list(
        session.scalars(select(GenerationTask.model).where(GenerationTask.batch_id == batch.id).distinct())
    )
    return {"counts": counts, "cost": cost, "models": models}


def after_summary(session: Session, name: str) -> dict[str, Any]:
    (summary,) = queries.batch_summaries(session, name)
    models = queries.models_by_batch(session, [name]).get(name, [])
    return {"counts": summary.counts, "cost": summary.cost_usd, "models": models}


def specs(rows: int) -> Iterator[TaskSpec]:
    for i in range(rows):
        yield TaskSpec(
            line=i + 2,
            key=f"sku-{i:08d}",
            prompt=f"A studio photo of product {i}",
            model=MODEL,
            image_size=None,
            aspect_ratio="1:1",
            output_format="png",
            input_images=(),
            content_hash=f"{i:064x}",
            extra={},
        )


def fill(db: Database, rows: int) -> dict[str, float]:
    """One big batch through the producer's insert, then bulk transitions; returns timings."""
    timings: dict[str, float] = {}
    with db.session() as s:
        big = new_id()
        s.add(Batch(id=big, name="big", model=MODEL))
        s.flush()
        started = time.perf_counter()
        producer._insert_tasks(s, big, specs(rows), None, dispatched=True)
    timings["submit_rows_per_s"] = rows / (time.perf_counter() - started)
    started = time.perf_counter()
    with db.transaction() as c:
        c.execute(
            text(
                "UPDATE generation_tasks SET status = CASE WHEN right(key, 2)::int < 60 THEN 'completed' "
                "ELSE 'failed' END, cost_usd = CASE WHEN right(key, 2)::int < 60 THEN 0.039 END, "
                "finished_at = now() - (right(key, 6)::int || ' seconds')::interval "
                "WHERE right(key, 2)::int < 65"
            )
        )
    timings["bulk_update_s"] = time.perf_counter() - started
    with db.session() as s:
        small = new_id()
        s.add(Batch(id=small, name="urgent", model=MODEL))
        s.flush()
        producer._insert_tasks(s, small, specs(50), None, dispatched=True)
    with db.autocommit() as c:
        c.execute(text("VACUUM ANALYZE"))
    return timings


def median_ms(call: Callable[[], Any], repeat: int) -> float:
    call()  # warm the cache and the statement cache
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def transitions_per_s(db: Database, n: int) -> float:
    """claim + complete of ``n`` tasks of the small batch on one thread (the worker's hot writes)."""
    with db.session() as s:  # top the small batch up to ``n`` pending tasks
        batch_id = s.scalar(select(Batch.id).where(Batch.name == "urgent")) or ""
        producer._insert_tasks(s, batch_id, specs(n), None, dispatched=True)
        ids = list(s.scalars(select(GenerationTask.id).where(GenerationTask.batch_id == batch_id)))
    outcome = transitions.Outcome("file:///x.png", "0" * 64, "image/png", 1, 1, 10, cost_usd=0.039)
    started = time.perf_counter()
    for task_id in ids:
        with db.autocommit() as c:
            row = transitions.claim(c, task_id, worker="bench", lease_seconds=60)
        if row is not None:
            with db.autocommit() as c:
                transitions.complete(c, task_id, row.claim_token, outcome)
    return len(ids) / (time.perf_counter() - started)


def end_to_end_ms(url: str, src: Path, repeat: int) -> float:
    """``nanobatch status big --json`` in a subprocess, median wall time (includes Python start-up)."""
    env = {**os.environ, "NANOBATCH_DATABASE_URL": url, "PYTHONPATH": str(src)}
    env.pop("NANOBATCH_REDIS_URL", None)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "nanobatch.cli", "status", "big", "--json"],
            env=env,
            check=True,
            capture_output=True,
            cwd=src,
        )
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def run_design(name: str, revision: str, args: argparse.Namespace) -> dict[str, Any]:
    db_name = f"nbbench_status_{name}_{uuid.uuid4().hex[:6]}"
    _admin(f'CREATE DATABASE "{db_name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}"
    db = Database(url)
    try:
        db.upgrade(revision)
        result: dict[str, Any] = fill(db, args.rows)
        summary = before_summary if name == "before" else after_summary

        def status_once() -> dict[str, Any]:
            with db.session() as s:
                return summary(s, "big")

        result["status_ms"] = median_ms(status_once, args.repeat)
        if name == "after":  # what the sweeper does every pass: fold the submit's log rows
            with db.session() as s:
                result["log_rows_folded"] = counts.compact(s)
            result["status_ms_folded"] = median_ms(status_once, args.repeat)
        result["counts"] = status_once()["counts"]
        src = REPO if name == "after" else args.before_src
        if src is not None:
            result["status_cli_ms"] = end_to_end_ms(url, Path(src), max(3, args.repeat // 3))
        result["claim_complete_per_s"] = transitions_per_s(db, args.transitions)
        return result
    finally:
        db.dispose()
        _admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def sqlite_design(revision: str, rows: int) -> dict[str, Any]:
    """The embedded default: submit rows/s and status latency on SQLite (row triggers)."""
    with tempfile.TemporaryDirectory() as folder:
        db = Database(f"sqlite:///{folder}/bench.db")
        try:
            db.upgrade(revision)
            with db.session() as s:
                batch_id = new_id()
                s.add(Batch(id=batch_id, name="big", model=MODEL))
                s.flush()
                started = time.perf_counter()
                producer._insert_tasks(s, batch_id, specs(rows), None, dispatched=True)
            rate = rows / (time.perf_counter() - started)
            summary = before_summary if revision == "0003" else after_summary

            def status_once() -> dict[str, Any]:
                with db.session() as s:
                    return summary(s, "big")

            return {"submit_rows_per_s": rate, "status_ms": median_ms(status_once, 5)}
        finally:
            db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--transitions", type=int, default=2000)
    parser.add_argument(
        "--before-src", type=Path, help="a checkout of main, for `nanobatch status` end to end"
    )
    parser.add_argument("--name", default="status-latency")
    parser.add_argument("--sqlite-rows", type=int, default=200_000, help="rows for the SQLite pair (0: skip)")
    parser.add_argument("--sqlite-only", action="store_true", help="only the SQLite pair")
    args = parser.parse_args()
    require_loopback(PG_ADMIN_URL)
    lite = {rev: sqlite_design(rev, args.sqlite_rows) for rev in ("0003", "head")} if args.sqlite_rows else {}
    lite_rows = [
        (f"SQLite, {args.sqlite_rows:,} rows: {what}", lite["0003"][key], lite["head"][key])
        for what, key in (("submit insert (rows/s)", "submit_rows_per_s"), ("status BATCH (ms)", "status_ms"))
        if lite
    ]
    if args.sqlite_only:
        print_table("SQLite", ["measure", "before (GROUP BY)", "after (counts)"], lite_rows)
        write_results(args.name, {"sqlite_rows": args.sqlite_rows, "sqlite": lite})
        return
    results = {
        design: run_design(design, rev, args) for design, rev in (("before", "0003"), ("after", "head"))
    }
    assert results["before"]["counts"] == results["after"]["counts"], results
    before, after = results["before"], results["after"]
    rows = [
        ("status BATCH, in-process (ms, median)", before["status_ms"], after["status_ms"]),
        (
            "nanobatch status BATCH --json, end to end (ms)",
            before.get("status_cli_ms"),
            after["status_cli_ms"],
        ),
        ("submit insert (rows/s)", before["submit_rows_per_s"], after["submit_rows_per_s"]),
        ("bulk UPDATE of 65 % of rows (s)", before["bulk_update_s"], after["bulk_update_s"]),
        (
            "claim + complete, one thread (tasks/s)",
            before["claim_complete_per_s"],
            after["claim_complete_per_s"],
        ),
        *lite_rows,
    ]
    print_table(f"Status at {args.rows:,} rows", ["measure", "before (GROUP BY)", "after (counts)"], rows)
    write_results(args.name, {"rows": args.rows, "repeat": args.repeat, "results": results, "sqlite": lite})


if __name__ == "__main__":
    main()
