"""Lanes from submit to the database (SQLite, migrated): the producer's lane per row, what it
publishes, the deadline option, the batch-job transitions and the per-lane spend and events."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from nanobatch.models import queue, transitions
from nanobatch.models.base import utcnow
from nanobatch.models.catalog import load_catalog
from nanobatch.models.db import Database
from nanobatch.models.queries import batch_summaries
from nanobatch.models.schedule import parse_deadline
from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.tasks.batch_lane import budget_room
from nanobatch.tasks.events import Thresholds, batch_events
from nanobatch.tasks.intake import IntakeOptions, read_rows
from nanobatch.tasks.producer import BatchOptions, submit

MODEL = "gemini-3-pro-image"


class Recorder:
    """A dispatcher in the publish-everything mode, so the producer's own lane filter is what is seen
    (the window's filter is the queue's partial indexes: ``queue.pools_with_fresh_rows`` below)."""

    publish_all = True

    def __init__(self) -> None:
        self.published: list[str] = []

    def fill(self) -> int:
        return 0

    def publish(self, task_ids: Sequence[str], *, countdown: float | None = None) -> int:
        self.published += list(task_ids)
        return len(task_ids)


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url)
    yield database
    database.dispose()


def put(db: Database, batch: BatchOptions, rows: int = 10) -> Recorder:
    catalog = load_catalog()
    options = IntakeOptions(model=MODEL)
    intake = read_rows(
        ({"key": f"k{i:02d}", "prompt": f"mug {i}"} for i in range(rows)),
        catalog,
        options,
        base_dir=Path.cwd(),
    )
    recorder = Recorder()
    submit(db, recorder, intake, batch, intake_options=options)
    return recorder


def lanes(db: Database) -> dict[str, str]:
    with db.session() as session:
        return {key: lane for key, lane in session.execute(select(GenerationTask.key, GenerationTask.lane))}


def test_auto_rows_follow_the_plans_shares_and_only_celery_lanes_are_published(db: Database) -> None:
    recorder = put(
        db, BatchOptions(name="n", lane="auto", lanes=(("batch", 6), ("flex", 3), ("standard", 1)))
    )
    by_key = lanes(db)
    assert [by_key[f"k{i:02d}"] for i in range(10)] == ["batch"] * 6 + ["flex"] * 3 + ["standard"]
    with db.session() as session:
        published_lanes = {session.get(GenerationTask, task_id).lane for task_id in recorder.published}  # type: ignore[union-attr]
    assert len(recorder.published) == 4 and published_lanes == {"flex", "standard"}


def test_a_batch_lane_batch_publishes_nothing_and_the_sweeper_skips_it(db: Database) -> None:
    recorder = put(db, BatchOptions(name="n", lane="batch"))
    assert recorder.published == [] and set(lanes(db).values()) == {"batch"}
    with db.session() as session:
        assert queue.pools_with_fresh_rows(session) == []  # the dispatcher sees nothing to send


def test_batch_job_claim_release_and_next_lane(db: Database) -> None:
    put(db, BatchOptions(name="n", lane="batch"))
    with db.session() as session:
        (group,) = transitions.due_batch_lane_groups(session, now=utcnow())
        assert group.n == 10
        ids = transitions.claim_for_batch_job(
            session, batch_id=group.batch_id, model=MODEL, job_id="job-1", limit=4
        )
    assert len(ids) == 4
    with db.session() as session:
        assert transitions.job_task_ids(session, "job-1", only_held=True) == ids
        # A claimed row is not claimable by a Celery message either.
        assert transitions.claim(session, ids[0], worker="w", lease_seconds=60) is None
        moved = transitions.release_job_tasks(
            session,
            "job-1",
            lane="flex",
            max_attempts=5,
            count_attempt=True,
            code="batch_job_ended",
            message="expired",
        )
    assert moved == 4
    with db.session() as session:
        rows = session.scalars(select(GenerationTask).where(GenerationTask.id.in_(ids))).all()
        assert {(r.status, r.lane, r.attempts, r.claim_token) for r in rows} == {("pending", "flex", 1, None)}
        # Now a Celery lane: waiting for the dispatcher's window.
        assert set(ids) <= set(queue.fresh_rows(session, MODEL, group.batch_id, 100))


def test_move_lane_moves_at_most_the_limit(db: Database) -> None:
    put(db, BatchOptions(name="n", lane="batch"))
    with db.session() as session:
        (group,) = transitions.due_batch_lane_groups(session, now=utcnow())
        assert transitions.move_lane(session, group.batch_id, from_lane="batch", to_lane="flex", limit=3) == 3
    assert sorted(lanes(db).values()).count("flex") == 3


def test_status_shows_spend_per_lane_and_the_standard_equivalent(db: Database) -> None:
    put(db, BatchOptions(name="n", lane="auto", lanes=(("batch", 5), ("standard", 5))))
    with db.session() as session:
        session.execute(
            update(GenerationTask)
            .where(GenerationTask.lane == "batch")
            .values(status="completed", cost_usd=0.067, standard_cost_usd=0.134)
        )
        session.execute(
            update(GenerationTask)
            .where(GenerationTask.lane == "standard")
            .values(status="completed", cost_usd=0.134, standard_cost_usd=0.134)
        )
    with db.session() as session:
        (summary,) = batch_summaries(session, "n")
    shape = summary.as_json()
    assert shape["lane"] == "auto" and shape["standard_cost_usd"] == pytest.approx(1.34)
    assert shape["by_lane"]["batch"] == {
        "tasks": 5,
        "completed": 5,
        "cost_usd": pytest.approx(0.335),
        "standard_cost_usd": pytest.approx(0.67),
    }
    assert summary.lane_mix == "auto: batch 5, standard 5"


def test_events_batch_finished_failure_rate_and_deadline(db: Database) -> None:
    deadline = utcnow() + timedelta(minutes=5)
    put(db, BatchOptions(name="done", lane="standard"))
    put(db, BatchOptions(name="late", lane="standard", deadline=deadline), rows=10)
    now = utcnow()
    with db.session() as session:
        done_ids = (
            select(GenerationTask.id).join(GenerationTask.batch).where(GenerationTask.batch.has(name="done"))
        )
        session.execute(
            update(GenerationTask)
            .where(GenerationTask.id.in_(done_ids))
            .values(status="failed", finished_at=now)
        )
        late_ids = select(GenerationTask.id).where(
            GenerationTask.batch.has(name="late"), GenerationTask.key == "k00"
        )
        session.execute(
            update(GenerationTask)
            .where(GenerationTask.id.in_(late_ids))
            .values(status="completed", finished_at=now)
        )
        # One of ten done in an hour: nine more hours at that pace, the deadline is in five minutes.
        session.execute(update(Batch).where(Batch.name == "late").values(created_at=now - timedelta(hours=1)))
    with db.session() as session:
        events = batch_events(session, now + timedelta(seconds=1), Thresholds(0.2, 5, 0.0))
    kinds = {(e.type.value, e.data["batch"]) for e in events}
    assert ("batch.finished", "done") in kinds and ("batch.failure_rate_high", "done") in kinds
    assert ("batch.deadline_at_risk", "late") in kinds and ("batch.finished", "late") not in kinds


def test_parse_deadline() -> None:
    now = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)
    assert parse_deadline("06:00", "UTC", now=now) == datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    assert parse_deadline("2026-11-30T06:00", "Europe/Berlin", now=now) == datetime(
        2026, 11, 30, 5, 0, tzinfo=UTC
    )
    assert parse_deadline("2026-11-30T06:00+00:00", "Europe/Berlin", now=now) == datetime(
        2026, 11, 30, 6, 0, tzinfo=UTC
    )
    for bad, why in (("2026-11-28T06:00", "past"), ("tomorrow", "HH:MM or an ISO")):
        with pytest.raises(ValueError, match=why):
            parse_deadline(bad, "UTC", now=now)


def test_a_budget_bounds_the_batch_lanes_jobs(db: Database) -> None:
    put(db, BatchOptions(name="n", lane="batch", budget_usd=1.0))
    rt = SimpleNamespace(db=db, catalog=load_catalog())
    with db.session() as session:
        (group,) = transitions.due_batch_lane_groups(session, now=utcnow())
    # 3 Pro's dearest batch price is 4K's $0.12: $1.00 affords 8 tasks.
    assert budget_room(rt, group.batch_id, MODEL) == 8  # type: ignore[arg-type]
    with db.session() as session:
        transitions.claim_for_batch_job(session, batch_id=group.batch_id, model=MODEL, job_id="j", limit=5)
    assert budget_room(rt, group.batch_id, MODEL) == 3  # type: ignore[arg-type]
