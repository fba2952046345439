"""A worker paused mid-transaction must not stall everyone else on its row locks.

Found by the chaos suite's paused-worker case (CI, 1 run of several): the worker was SIGSTOPped
between a write and its commit, the surviving worker's dispatcher waited on those rows, and nothing
was dispatched until the paused one woke up 120 s later. Real PostgreSQL; the "paused process" is
a connection that holds a row lock and sends nothing more, which is what the server sees.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from nanobatch.models.db import Database
from nanobatch.tasks.settings import Settings


def test_a_paused_writers_row_lock_is_freed_by_the_idle_transaction_limit(pg_url: str) -> None:
    # Given a worker's database handle with a 1 s limit, holding a row lock in an open transaction
    worker = Database(pg_url, pool_size=1, idle_transaction_limit=1.0)
    other = create_engine(pg_url)
    with other.begin() as setup:
        setup.execute(text("CREATE TABLE paused_probe (id int PRIMARY KEY, v int)"))
        setup.execute(text("INSERT INTO paused_probe VALUES (1, 0)"))
    holder = worker.engine.connect()
    holder.begin()
    holder.execute(text("UPDATE paused_probe SET v = 1 WHERE id = 1"))
    try:
        # When another worker updates the same row (bounded by a lock timeout: never a hang)
        with other.begin() as connection:
            connection.execute(text("SET LOCAL lock_timeout = '15s'"))
            connection.execute(text("UPDATE paused_probe SET v = 2 WHERE id = 1"))
        # Then it got the row: the server ended the idle transaction and rolled its write back
        with other.connect() as connection:
            assert connection.execute(text("SELECT v FROM paused_probe")).scalar_one() == 2
        # And the paused writer finds its connection gone when it wakes up
        with pytest.raises(DBAPIError):
            holder.execute(text("SELECT 1"))
    finally:
        holder.invalidate()
        holder.close()
        worker.dispose()
        other.dispose()


def test_workers_get_the_limit_by_default_and_zero_turns_it_off() -> None:
    assert Settings().db_idle_transaction_limit == 60.0
    assert Settings(db_idle_transaction_limit=0).db_idle_transaction_limit == 0
