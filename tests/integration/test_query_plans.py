"""What status and the sweeper ask PostgreSQL never reads the whole task table.

A table of many rows (ANALYZE'd, shaped like a big backlog half done beside a small batch) gets the
real calls — ``batch_summaries``, the metrics, the alerts' queries, every sweeper query — with a
cursor hook recording each statement; each one is then EXPLAINed with its own parameters, and no plan
may hold a Seq Scan on ``generation_tasks``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select, text

from nanobatch.models import counts, queries, transitions
from nanobatch.models.base import utcnow
from nanobatch.models.db import Database
from nanobatch.models.status import ErrorCode
from nanobatch.models.tables import Batch
from nanobatch.tasks import metrics

pytestmark = pytest.mark.integration

ROWS = 200_000

_FILL = """
INSERT INTO batches (id, name, status, model, aspect_ratio, output_format, reuse, spent_usd, reserved_usd,
                     created_at)
VALUES ('big', 'big', 'open', 'm', '1:1', 'png', false, 0, 0, now() - interval '3 days'),
       ('urgent', 'urgent', 'open', 'm', '1:1', 'png', false, 0, 0, now());
INSERT INTO generation_tasks (id, batch_id, key, prompt, input_images, model, aspect_ratio, output_format,
                              status, attempts, rate_waits, created_at, finished_at, dispatched_at,
                              started_at, worker, lease_expires_at, cost_usd, error_code)
SELECT md5(i::text), 'big', 'k' || i, 'p', '[]', 'm', '1:1', 'png',
       CASE WHEN i % 100 < 60 THEN 'completed' WHEN i % 100 < 90 THEN 'pending'
            WHEN i % 100 < 91 THEN 'processing' ELSE 'failed' END,
       0, 0, now() - interval '3 days',
       CASE WHEN i % 100 < 60 THEN now() - (i || ' seconds')::interval END,
       now() - interval '2 days',
       CASE WHEN i % 100 = 90 THEN now() - interval '1 minute' END,
       CASE WHEN i % 100 = 90 THEN 'w' || (i % 7) END,
       CASE WHEN i % 100 = 90 THEN now() + interval '5 minutes' END,
       CASE WHEN i % 100 < 60 THEN 0.039 END,
       CASE WHEN i % 1000 = 61 THEN 'budget_reached' WHEN i % 100 >= 91 THEN 'blocked' END
FROM generate_series(1, :rows) AS i;
INSERT INTO generation_tasks (id, batch_id, key, prompt, input_images, model, aspect_ratio, output_format,
                              status, attempts, rate_waits, created_at)
SELECT md5('u' || i), 'urgent', 'u' || i, 'p', '[]', 'm', '1:1', 'png', 'pending', 0, 0, now()
FROM generate_series(1, 50) AS i;
"""


@pytest.fixture
def big_db(pg_url: str) -> Iterator[Database]:
    db = Database(pg_url)
    with db.transaction() as c:
        for statement in _FILL.split(";\n"):
            if statement.strip():
                c.execute(text(statement), {"rows": ROWS})
    with db.autocommit() as c:
        c.execute(text("ANALYZE"))
    yield db
    db.dispose()


def recorded(db: Database, call: Any) -> list[tuple[str, Any]]:
    """The statements (with their parameters) ``call`` sends, run in a transaction rolled back."""
    seen: list[tuple[str, Any]] = []

    def hook(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "generation_tasks" in statement and not statement.lstrip().upper().startswith("EXPLAIN"):
            seen.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", hook)
    try:
        session = db._sessions()
        try:
            call(session)
        finally:
            session.rollback()
            session.close()
    finally:
        event.remove(db.engine, "before_cursor_execute", hook)
    return seen


def plan(db: Database, statement: str, parameters: Any) -> str:
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("EXPLAIN " + statement, parameters)
        text_plan = "\n".join(row[0] for row in cursor.fetchall())
        raw.rollback()
        return text_plan
    finally:
        raw.close()


def status_calls(s: Any) -> None:
    queries.batch_summaries(s)
    queries.batch_summaries(s, "big")
    queries.models_by_batch(s, ["big", "urgent"])
    queries.pending_with_code(s, ["big", "urgent"], ErrorCode.UNCLASSIFIED_429)
    metrics.batch_metrics(s, utcnow())
    counts.tallies(s, ["big"])


def sweeper_calls(s: Any) -> None:
    now = utcnow()
    transitions.reclaim_expired(s, max_attempts=3, now=now)
    holders = transitions.processing_holders(s, claimed_before=now)
    assert holders, "the fixture has processing rows"
    transitions.reclaim_from_workers(s, holders[:2], claimed_before=now, max_attempts=3, now=now)
    transitions.cancel_batch(s, "urgent")
    transitions.retry_failed(s, "big", error_code=ErrorCode.BLOCKED)
    transitions.staged_results(s, finished_before=now, limit=500)
    counts.compact(s)


@pytest.mark.parametrize("calls", [status_calls, sweeper_calls], ids=["status", "sweeper"])
def test_no_plan_scans_the_task_table(big_db: Database, calls: Any) -> None:
    statements = recorded(big_db, calls)
    assert len(statements) >= 5
    scans = []
    for statement, parameters in statements:
        text_plan = plan(big_db, statement, parameters)
        if "Seq Scan on generation_tasks" in text_plan:
            scans.append(f"{statement}\n{text_plan}")
    assert not scans, "\n\n".join(scans)


def test_fixture_is_as_big_as_claimed(big_db: Database) -> None:
    with big_db.session() as s:
        tally = counts.tally(s, s.scalar(select(Batch.id).where(Batch.name == "big")) or "")
    assert sum(tally.counts.values()) == ROWS


_SQLITE_FILL = """
INSERT INTO batches (id, name, status, model, aspect_ratio, output_format, reuse, spent_usd, reserved_usd,
                     created_at)
VALUES ('big', 'big', 'open', 'm', '1:1', 'png', 0, 0, 0, '2026-01-01'),
       ('urgent', 'urgent', 'open', 'm', '1:1', 'png', 0, 0, 0, '2026-01-02');
WITH RECURSIVE series(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM series WHERE i < 20000)
INSERT INTO generation_tasks (id, batch_id, key, prompt, input_images, model, aspect_ratio, output_format,
                              status, attempts, rate_waits, created_at, finished_at, cost_usd, error_code)
SELECT 't' || i, CASE WHEN i <= 50 THEN 'urgent' ELSE 'big' END, 'k' || i, 'p', '[]', 'm', '1:1', 'png',
       CASE WHEN i % 100 < 60 THEN 'completed' WHEN i % 100 < 90 THEN 'pending' ELSE 'failed' END,
       0, 0, '2026-01-01', CASE WHEN i % 100 < 60 THEN '2026-01-01' END,
       CASE WHEN i % 100 < 60 THEN 0.039 END,
       CASE WHEN i % 1000 = 61 THEN 'budget_reached' WHEN i % 100 >= 90 THEN 'blocked' END
FROM series
"""


def test_sqlite_status_reads_indexes_only(sqlite_url: str) -> None:
    """The embedded default: SQLite never scans the tasks for status, and finds budget and 429 waiters
    through the small partial index (without ANALYZE its planner prefers the index with the most
    equalities, hence ``status`` in that index)."""
    db = Database(sqlite_url)
    try:
        with db.transaction() as c:
            for statement in _SQLITE_FILL.split(";\n"):
                c.execute(text(statement))
        statements = recorded(db, status_calls)
        assert len(statements) >= 5
        raw = db.engine.raw_connection()
        try:
            for statement, parameters in statements:
                cursor = raw.cursor()
                cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
                steps = " / ".join(str(row[-1]) for row in cursor.fetchall())
                assert "SCAN generation_tasks" not in steps, (statement, steps)
                if "error_code =" in statement:
                    assert "ix_generation_tasks_pending_code" in steps, (statement, steps)
        finally:
            raw.close()
    finally:
        db.dispose()
