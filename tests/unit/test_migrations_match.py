"""The migrations build what ``models/tables.py`` declares where Alembic's comparison cannot look:
the predicates of the partial indexes the dispatcher's queries must repeat to use them.

A migration is frozen text; ``models/tables.py`` derives ``QUEUED_FRESH``/``QUEUED_LATER`` from
``CELERY_LANES``. If the two drift, the queries stop matching their index (a scan per refill) or a
batch-lane row lands in the Celery queue; this test makes the drift fail here instead.
"""

from __future__ import annotations

import re

from sqlalchemy import create_engine, text

from nanobatch.models.tables import IN_FLIGHT, QUEUED_FRESH, QUEUED_LATER, STAGED_RESULT
from nanobatch.workers.storage import STAGING_DIR


def _normalised(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip().lower()


def test_queue_index_predicates_match_the_tables(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    with engine.connect() as connection:
        rows: dict[str, str] = {
            name: sql
            for name, sql in connection.execute(
                text(
                    "SELECT name, sql FROM sqlite_master "
                    "WHERE type = 'index' AND name LIKE 'ix_generation_tasks_%'"
                )
            )
        }
    engine.dispose()
    expected = {
        "ix_generation_tasks_queue_fresh": QUEUED_FRESH,
        "ix_generation_tasks_queue_later": QUEUED_LATER,
        "ix_generation_tasks_in_flight": IN_FLIGHT,
        "ix_generation_tasks_staged_result": STAGED_RESULT,
    }
    for name, predicate in expected.items():
        assert name in rows, f"{name} missing after upgrade"
        assert _normalised(rows[name]).endswith("where " + _normalised(predicate)), (name, rows[name])


def test_the_staged_result_predicate_names_the_staging_folder() -> None:
    # models/ cannot import workers/: the folder's name is written twice, and checked equal here
    assert f"'%/{STAGING_DIR}/%'" in STAGED_RESULT
