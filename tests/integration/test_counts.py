"""Trigger-kept per-batch counts equal a GROUP BY over the tasks, whatever wrote the rows.

On PostgreSQL and SQLite: a random mix of every transition (submit and ``--update`` through the
producer's own insert paths, claim, complete, fail, requeue, reclaim, cancel, retry, regenerate, raw
SQL, a batch delete), the same from threads at once, and the migration's backfill and downgrade.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import delete, func, inspect, select, text, update
from sqlalchemy.orm import Session

from nanobatch.models import counts, queries, transitions
from nanobatch.models.base import utcnow
from nanobatch.models.db import Database, alembic_config
from nanobatch.models.status import ErrorCode
from nanobatch.models.tables import Batch, GenerationTask, new_id
from nanobatch.tasks import producer
from nanobatch.tasks.intake import TaskSpec

pytestmark = pytest.mark.integration

MODELS = ("gemini-3-pro-image", "gemini-nano-banana-2.1", "dall-e-x")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    database = Database(url)
    yield database
    database.dispose()


def spec(key: str, model: str, prompt: str = "p") -> TaskSpec:
    return TaskSpec(
        line=1,
        key=key,
        prompt=prompt,
        model=model,
        image_size=None,
        aspect_ratio="1:1",
        output_format="png",
        input_images=(),
        content_hash=f"{prompt}-{model}",
        extra={},
    )


def submit(db: Database, name: str, n: int, rng: random.Random, *, update: bool = False) -> str:
    """Rows through the producer's insert (COPY on PostgreSQL, executemany on SQLite)."""
    with db.session() as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.name == name))
        if batch_id is None:
            batch_id = new_id()
            s.add(Batch(id=batch_id, name=name, model=MODELS[0]))
            s.flush()
        prompt = f"p{rng.randrange(3)}" if update else "p"
        specs = [spec(f"k{i}", rng.choice(MODELS), prompt) for i in range(n)]
        producer._insert_tasks(s, batch_id, specs, None, dispatched=rng.random() < 0.5, update=update)
    return batch_id


def truth(s: Session) -> dict[str, tuple[dict[str, int], float, set[str]]]:
    rows = s.execute(
        select(
            GenerationTask.batch_id,
            GenerationTask.model,
            GenerationTask.status,
            func.count(),
            func.coalesce(func.sum(GenerationTask.cost_usd), 0.0),
        ).group_by(GenerationTask.batch_id, GenerationTask.model, GenerationTask.status)
    )
    found: dict[str, tuple[dict[str, int], float, set[str]]] = {}
    for batch_id, model, status, n, cost in rows:
        by_status, total, models = found.get(batch_id, ({}, 0.0, set()))
        by_status[status] = by_status.get(status, 0) + int(n)
        models.add(model)
        found[batch_id] = (by_status, total + float(cost), models)
    return found


def assert_counts_true(db: Database) -> None:
    with db.session() as s:
        expected = truth(s)
        kept = counts.tallies(s)
    got = {
        batch_id: ({k: v for k, v in t.counts.items() if v}, t.cost_usd, t.models)
        for batch_id, t in kept.items()
        if any(t.counts.values())
    }
    assert set(got) == set(expected)
    for batch_id, (by_status, cost, models) in expected.items():
        assert got[batch_id][0] == by_status, batch_id
        assert got[batch_id][1] == pytest.approx(cost, abs=1e-9)
        assert got[batch_id][2] == models


def outcome(rng: random.Random) -> transitions.Outcome:
    cost = rng.choice((0.0, 0.039, 0.134, 0.24))
    return transitions.Outcome("file:///x.png", "0" * 64, "image/png", 1, 1, 10, cost_usd=cost)


def pick(db: Database, rng: random.Random, status: str) -> str | None:
    with db.session() as s:
        ids = list(s.scalars(select(GenerationTask.id).where(GenerationTask.status == status).limit(50)))
    return rng.choice(ids) if ids else None


def random_step(db: Database, rng: random.Random, names: list[str]) -> None:
    """One transition, chosen at random, through the code path that makes it in production."""
    op = rng.choice(
        ["claim_finish"] * 8
        + ["submit", "update", "reclaim", "cancel", "retry", "regenerate", "raw", "delete", "compact"]
    )
    name = rng.choice(names)
    with db.session() as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.name == name))
    if op == "submit" or batch_id is None:
        submit(db, name, rng.randrange(1, 40), rng)
    elif op == "update":
        submit(db, name, rng.randrange(1, 40), rng, update=True)
    elif op == "claim_finish":
        claim_and_finish(db, rng)
    elif op == "reclaim":
        with db.session() as s:
            transitions.reclaim_expired(s, max_attempts=2, now=utcnow() + timedelta(hours=1))
    elif op == "cancel":
        with db.session() as s:
            transitions.cancel_batch(s, batch_id)
    elif op == "retry":
        with db.session() as s:
            transitions.retry_failed(s, batch_id, error_code=rng.choice([None, ErrorCode.BLOCKED]))
    elif op == "regenerate":
        with db.session() as s:
            transitions.regenerate(s, batch_id)
    elif op == "raw":
        with db.transaction() as c:
            c.execute(
                text(
                    "UPDATE generation_tasks SET status = 'failed', cost_usd = 0.5"
                    " WHERE batch_id = :b AND key < 'k2'"
                ),
                {"b": batch_id},
            )
    elif op == "delete":
        with db.session() as s:
            s.execute(delete(Batch).where(Batch.id == batch_id))
    else:
        with db.session() as s:
            counts.compact(s)


def claim_and_finish(db: Database, rng: random.Random) -> None:
    task_id = pick(db, rng, "pending")
    if task_id is None:
        return
    with db.autocommit() as c:
        row = transitions.claim(c, task_id, worker="w", lease_seconds=rng.choice((-1, 60)))
    if row is None:
        return
    finish = rng.choice(("complete", "fail", "requeue", "leave"))
    with db.autocommit() as c:
        if finish == "complete":
            transitions.complete(c, task_id, row.claim_token, outcome(rng))
        elif finish == "fail":
            transitions.fail(c, task_id, row.claim_token, code=ErrorCode.BLOCKED.value, message="no")
        elif finish == "requeue":
            transitions.requeue(c, task_id, row.claim_token, not_before=None, count_attempt=True)


def test_counts_equal_a_group_by_after_random_transitions(db: Database) -> None:
    rng = random.Random(13)
    names = ["a", "b", "c"]
    for name in names:
        submit(db, name, 60, rng)
    assert_counts_true(db)
    for step in range(300):
        random_step(db, rng, names)
        if step % 25 == 0:
            assert_counts_true(db)
    assert_counts_true(db)
    with db.session() as s:
        counts.compact(s)
    assert_counts_true(db)


def test_counts_stay_exact_under_concurrent_transitions(db: Database) -> None:
    rng = random.Random(5)
    submit(db, "hot", 400, rng)
    errors: list[BaseException] = []
    start = threading.Barrier(9)

    def worker(seed: int) -> None:
        local = random.Random(seed)
        start.wait()
        try:
            for _ in range(60):
                claim_and_finish(db, local)
        except BaseException as exc:
            errors.append(exc)

    def operator() -> None:
        start.wait()
        try:
            for i in range(20):
                with db.session() as s:
                    batch_id = s.scalar(select(Batch.id).where(Batch.name == "hot"))
                    assert batch_id is not None
                    if i % 3 == 0:
                        transitions.retry_failed(s, batch_id)
                    elif i % 3 == 1:
                        transitions.reclaim_expired(s, max_attempts=3, now=utcnow() + timedelta(hours=1))
                    else:
                        counts.compact(s)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    threads.append(threading.Thread(target=operator))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert_counts_true(db)
    with db.session() as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.name == "hot"))
        assert batch_id is not None
        transitions.cancel_batch(s, batch_id)
    assert_counts_true(db)


def test_a_deleted_batch_leaves_no_counts(db: Database) -> None:
    rng = random.Random(1)
    doomed = submit(db, "doomed", 30, rng)
    submit(db, "kept", 10, rng)
    with db.session() as s:
        s.execute(update(GenerationTask).where(GenerationTask.batch_id == doomed).values(cost_usd=0.1))
        s.execute(delete(Batch).where(Batch.id == doomed))
    assert_counts_true(db)
    with db.session() as s:
        counts.compact(s)
        left = s.scalar(
            select(func.count()).select_from(counts._COUNTS).where(counts._COUNTS.c.batch_id == doomed)
        )
    assert left == 0
    assert_counts_true(db)


def test_migration_backfills_and_downgrade_removes(db: Database) -> None:
    rng = random.Random(2)
    command.downgrade(alembic_config(db.engine), "0005")
    assert "batch_counts" not in inspect(db.engine).get_table_names()
    batch_id = new_id()
    with db.session() as s:
        s.add(Batch(id=batch_id, name="old", model=MODELS[0]))
        s.flush()
        for i in range(25):
            status = rng.choice(("pending", "completed", "failed"))
            s.add(
                GenerationTask(
                    batch_id=batch_id,
                    key=f"k{i}",
                    prompt="p",
                    model=rng.choice(MODELS),
                    aspect_ratio="1:1",
                    status=status,
                    cost_usd=0.039 if status == "completed" else None,
                )
            )
    db.upgrade()
    assert_counts_true(db)
    submit(db, "new", 5, rng)
    assert_counts_true(db)


def test_status_reads_the_counts(db: Database) -> None:
    """What ``status BATCH`` and its alerts show comes from the counts and equals the tasks' truth."""
    rng = random.Random(3)
    batch_id = submit(db, "shown", 30, rng)
    for _ in range(20):
        claim_and_finish(db, rng)
    with db.session() as s:
        (summary,) = queries.batch_summaries(s, "shown")
        by_status, cost, models = truth(s)[batch_id]
        assert queries.models_by_batch(s, ["shown", "nope"]) == {"shown": sorted(models)}
        assert [x.name for x in queries.batch_summaries(s)] == ["shown"]
    assert {k: v for k, v in summary.counts.items() if v} == by_status
    assert summary.total == 30 and summary.cost_usd == pytest.approx(cost)
