"""The dispatcher's queries are index ranges at scale: EXPLAIN on PostgreSQL, no Seq Scan on the tasks.

The statements are captured from the real functions of ``models/queue.py`` (a cursor hook), then
explained with their own parameters against 300,000 rows in the states a long backlog leaves behind
(mostly completed, a large undispatched queue, a window in flight, parked retries).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, text

from nanobatch.models import queue
from nanobatch.models.base import utcnow
from nanobatch.models.db import Database

pytestmark = pytest.mark.integration

ROWS = 300_000
POOL = "gemini-nano-banana-2.1"


@pytest.fixture
def big_db(pg_url: str) -> Iterator[Database]:
    db = Database(pg_url)
    with db.session() as session:
        for n, name in enumerate(("backfill", "urgent", "old")):
            session.execute(
                text(
                    "INSERT INTO batches (id, name, status, model, aspect_ratio, output_format, reuse, "
                    "spent_usd, reserved_usd, created_at, priority, weight) VALUES "
                    "(:id, :name, 'open', :pool, '1:1', 'png', false, 0, 0, now(), :n, 1)"
                ),
                {"id": f"00000000-0000-0000-0000-00000000000{n}", "name": name, "pool": POOL, "n": n},
            )
        # 60 % completed, 38 % waiting, a window in flight, parked retries; three batches.
        session.execute(
            text(
                f"""
                INSERT INTO generation_tasks (id, batch_id, key, prompt, input_images, model, aspect_ratio,
                    output_format, status, attempts, rate_waits, upstream_waits, upstream_wait_seconds,
                    day_parks, not_before, dispatched_at, created_at)
                SELECT gen_random_uuid()::text,
                       '00000000-0000-0000-0000-00000000000' || (i % 3),
                       'k' || i, 'p', '[]', '{POOL}', '1:1', 'png',
                       CASE WHEN i % 100 < 60 THEN 'completed' WHEN i % 5000 = 62 THEN 'processing'
                            ELSE 'pending' END,
                       0, 0, 0, 0, 0,
                       CASE WHEN i % 100 = 99 THEN now() + interval '1 hour'
                            WHEN i % 1000 = 98 THEN now() - interval '1 minute' END,
                       CASE WHEN i % 5000 = 61 THEN now() - interval '1 minute' END,
                       now()
                FROM generate_series(1, {ROWS}) AS i
                """
            )
        )
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE generation_tasks"))
        connection.execute(text("ANALYZE batches"))
    yield db
    db.dispose()


def captured(db: Database) -> tuple[list[tuple[str, Any]], Any]:
    statements: list[tuple[str, Any]] = []

    def hook(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        statements.append((statement, parameters))

    return statements, hook


def test_every_dispatcher_query_uses_an_index(big_db: Database) -> None:
    now = utcnow()
    statements, hook = captured(big_db)
    event.listen(big_db.engine, "before_cursor_execute", hook)
    try:
        with big_db.session() as session:
            pools = queue.pools_with_fresh_rows(session)
            batches = queue.batches_with_fresh_rows(session, POOL)
            assert pools == [POOL] and len(batches) == 3
            assert len(queue.fresh_rows(session, POOL, batches[0], 50)) == 50
            assert queue.due_later_rows(session, now, 1000)
            assert queue.in_flight_count(session, POOL) > 0
            assert queue.claimed_count(session, POOL) == ROWS // 5000
            assert queue.in_flight_older_than(session, now - timedelta(seconds=30), 5000)
    finally:
        event.remove(big_db.engine, "before_cursor_execute", hook)
    queries = [(sql, params) for sql, params in statements if "generation_tasks" in sql]
    assert len(queries) == 7
    raw = big_db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for sql, params in queries:
            cursor.execute("EXPLAIN " + sql, params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Seq Scan on generation_tasks" not in plan, f"{sql}\n{plan}"
            assert "Index" in plan, f"{sql}\n{plan}"
    finally:
        raw.close()
