"""The alerts `status` and `watch` show: models near shutdown, unrecognised 429 waits, stalled pools."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from nanobatch.models.base import utcnow
from nanobatch.models.catalog import load_catalog
from nanobatch.models.db import Database
from nanobatch.models.status import ErrorCode
from nanobatch.models.tables import Batch, GenerationTask, new_id
from nanobatch.tasks import alerts
from nanobatch.tasks.settings import Settings
from nanobatch.tasks.telemetry import PoolHealth


def add_batch(db: Database, name: str, rows: list[dict[str, object]]) -> None:
    batch_id = new_id()
    with db.session() as session:
        session.add(Batch(id=batch_id, name=name, model="gemini-nano-banana-2.1", created_at=utcnow()))
        session.flush()
        for i, values in enumerate(rows):
            fields: dict[str, object] = {
                "batch_id": batch_id,
                "key": f"k{i}",
                "prompt": "mug",
                "model": "gemini-nano-banana-2.1",
                "aspect_ratio": "1:1",
                "status": "pending",
            }
            fields.update(values)
            session.add(GenerationTask(**fields))


def test_model_alerts_name_the_batch_the_date_and_the_replacement() -> None:
    models = {"old": ["gemini-2.5-flash-image"], "new": ["gemini-nano-banana-2.1"], "odd": ["not-in-catalog"]}
    found = alerts.model_alerts(load_catalog(), models, on=date(2026, 9, 25))
    assert [a.subject for a in found] == ["batch old"]
    assert "shuts down on 2026-10-02 (in 7 days)" in found[0].text
    assert "use gemini-3.1-flash-image instead" in found[0].text  # not yet retired itself on that day


def test_pool_alerts_only_for_pools_refused_longer_than_the_bound() -> None:
    pools = {
        "stuck": PoolHealth("stuck", last_success=10.0, refused_since=100.0, last_refusal="429 slow down"),
        "fresh": PoolHealth("fresh", refused_since=1900.0),
        "fine": PoolHealth("fine", last_success=1990.0),
    }
    found = alerts.pool_alerts(pools, now=2000.0, after=1800.0)
    assert [str(a) for a in found] == [
        "pool stuck: every call refused for 31m 40s (NANOBATCH_POOL_REFUSED_ALERT_SECONDS=1800); "
        "last answer: 429 slow down"
    ]


def test_collect_reads_shutdowns_and_unrecognised_waits_from_the_database(
    sqlite_url: str, tmp_path: Path
) -> None:
    db = Database(sqlite_url)
    add_batch(
        db,
        "waiting",
        [
            {"error_code": ErrorCode.UNCLASSIFIED_429.value, "error_message": "unrecognised 429: busy"},
            {"error_code": ErrorCode.UNCLASSIFIED_429.value, "error_message": "unrecognised 429: busy"},
            {"status": "failed", "error_code": ErrorCode.UNCLASSIFIED_429.value},  # not waiting any more
            {"model": "gemini-2.5-flash-image"},
        ],
    )
    add_batch(db, "quiet", [{}])
    settings = Settings(_env_file=None, database_url=sqlite_url, redis_url=None)  # type: ignore[call-arg]
    with db.session() as session:
        found = alerts.collect(session, settings, load_catalog(), ["waiting", "quiet"])
    db.dispose()
    texts = [str(a) for a in found]
    assert any(
        t.startswith("batch waiting: model gemini-2.5-flash-image was shut down on 2026-10-02") for t in texts
    )
    waiting = "batch waiting: 2 task(s) waiting after an unrecognised 429 (unclassified_429): "
    assert waiting + "unrecognised 429: busy" in texts
    assert not any(t.startswith("batch quiet") for t in texts)
    assert not any(t.startswith("pool ") for t in texts)  # embedded mode: no shared pool health to read
