"""Every status change is one conditional UPDATE: on PostgreSQL and on SQLite, racing claimers lose."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from nanobatch.models import transitions
from nanobatch.models.base import utcnow
from nanobatch.models.db import Database
from nanobatch.models.tables import Batch, GenerationTask, new_id
from nanobatch.tasks.dispatch import runnable_candidates

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Database:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    database = Database(url)
    yield database  # type: ignore[misc]
    database.dispose()


def add_batch(db: Database, n: int = 1, **batch_fields: object) -> tuple[str, list[str]]:
    batch_id = new_id()
    ids = [new_id() for _ in range(n)]
    with db.session() as s:
        s.add(Batch(id=batch_id, name=f"b-{batch_id[:8]}", model="gemini-2.5-flash-image", **batch_fields))
        s.flush()
        for i, tid in enumerate(ids):
            s.add(
                GenerationTask(
                    id=tid, batch_id=batch_id, key=f"k{i}", prompt="p", model="m", aspect_ratio="1:1"
                )
            )
    return batch_id, ids


def get(db: Database, task_id: str) -> GenerationTask:
    with db.session() as s:
        return s.get_one(GenerationTask, task_id)


def test_only_one_of_many_concurrent_claimers_wins(db: Database) -> None:
    _, (tid,) = add_batch(db)
    winners: list[str] = []
    start = threading.Barrier(8)

    def claimer(name: str) -> None:
        start.wait()
        with db.session() as s:
            if transitions.claim(s, tid, worker=name, lease_seconds=60):
                winners.append(name)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert get(db, tid).worker == winners[0]


def test_finishing_needs_the_claim_token(db: Database) -> None:
    _, (tid,) = add_batch(db)
    with db.session() as s:
        row = transitions.claim(s, tid, worker="w", lease_seconds=60)
    assert row is not None and row.claim_token
    outcome = transitions.Outcome("file:///x.png", "0" * 64, "image/png", 1, 1, 10, cost_usd=0.039)
    with db.session() as s:
        assert not transitions.complete(s, tid, "someone-else", outcome)
        assert transitions.complete(s, tid, row.claim_token, outcome)
        assert not transitions.complete(s, tid, row.claim_token, outcome)  # already completed
    assert get(db, tid).status == "completed"


def test_rate_waits_do_not_consume_attempts(db: Database) -> None:
    _, (tid,) = add_batch(db)
    for count_attempt in (False, False, True):
        with db.session() as s:
            row = transitions.claim(s, tid, worker="w", lease_seconds=60)
            assert row is not None
            transitions.requeue(s, tid, row.claim_token or "", not_before=None, count_attempt=count_attempt)
    task = get(db, tid)
    assert (task.status, task.attempts, task.rate_waits) == ("pending", 1, 2)


def test_a_parked_row_is_not_claimable_before_its_time(db: Database) -> None:
    _, (tid,) = add_batch(db)
    with db.session() as s:
        row = transitions.claim(s, tid, worker="w", lease_seconds=60)
        assert row is not None
        later = utcnow() + timedelta(hours=1)
        transitions.requeue(s, tid, row.claim_token or "", not_before=later, count_attempt=False)
    with db.session() as s:
        assert transitions.claim(s, tid, worker="w", lease_seconds=60) is None
        assert transitions.claim(s, tid, worker="w", lease_seconds=60, now=later + timedelta(seconds=1))


def test_expired_leases_are_reclaimed_and_eventually_failed(db: Database) -> None:
    _, (tid,) = add_batch(db)
    for round_ in range(3):
        with db.session() as s:
            assert transitions.claim(s, tid, worker="dead", lease_seconds=1)
        with db.session() as s:
            assert transitions.reclaim_expired(s, max_attempts=3, now=utcnow() + timedelta(seconds=5)) == 1
        assert get(db, tid).status == ("pending" if round_ < 2 else "failed")
    assert get(db, tid).error_code == "lease_expired"


def test_paused_and_scheduled_batches_are_not_claimable(db: Database) -> None:
    paused_batch, (paused,) = add_batch(db, status="paused")
    later_batch, (later,) = add_batch(db, scheduled_for=utcnow() + timedelta(hours=2))
    with db.session() as s:
        assert transitions.claim(s, paused, worker="w", lease_seconds=60) is None
        assert transitions.claim(s, later, worker="w", lease_seconds=60) is None
        assert runnable_candidates(s, [paused_batch, later_batch], utcnow()) == []  # nor dispatched


def test_retry_failed_gives_a_fresh_attempt_budget(db: Database) -> None:
    batch_id, ids = add_batch(db, 2)
    for tid, code in zip(ids, ["blocked", "unavailable"], strict=True):
        with db.session() as s:
            row = transitions.claim(s, tid, worker="w", lease_seconds=60)
            assert row is not None
            transitions.fail(s, tid, row.claim_token or "", code=code, message="x")
    with db.session() as s:
        assert transitions.retry_failed(s, batch_id, error_code="unavailable") == [ids[1]]
    assert (get(db, ids[1]).status, get(db, ids[1]).attempts) == ("pending", 0)
    assert get(db, ids[0]).status == "failed"


def test_budget_reservations_stop_at_the_budget(db: Database) -> None:
    batch_id, _ = add_batch(db, budget_usd=0.10)
    with db.session() as s:
        assert transitions.reserve_budget(s, batch_id, 0.06)
        assert not transitions.reserve_budget(s, batch_id, 0.06)
        transitions.release_budget(s, batch_id, 0.06)
        assert transitions.reserve_budget(s, batch_id, 0.06)


def test_a_claim_reads_its_batchs_facts_in_the_same_statement(db: Database) -> None:
    from sqlalchemy import event

    batch_id, (tid,) = add_batch(
        db, reuse=True, budget_usd=2.5, window_start="01:00", window_end="06:00", window_tz="Europe/Berlin"
    )
    _, (plain,) = add_batch(db)
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with db.autocommit() as connection:
        row = transitions.claim(connection, tid, worker="w", lease_seconds=60, celery_task_id="c1")
    assert row is not None and len(statements) == 1
    assert (row.id, row.batch_id, row.key, row.prompt, row.input_images) == (tid, batch_id, "k0", "p", [])
    assert (row.batch_name, bool(row.batch_reuse), row.batch_budget_usd) == (f"b-{batch_id[:8]}", True, 2.5)
    assert (row.batch_window_start, row.batch_window_end, row.batch_window_tz) == (
        "01:00",
        "06:00",
        "Europe/Berlin",
    )
    task = get(db, tid)  # committed by the statement itself
    assert (task.status, task.claim_token, task.worker, task.celery_task_id) == (
        "processing",
        row.claim_token,
        "w",
        "c1",
    )
    with db.transaction() as connection:
        other = transitions.claim(connection, plain, worker="w", lease_seconds=60)
    assert other is not None
    assert (bool(other.batch_reuse), other.batch_budget_usd, other.batch_window_start) == (False, None, None)


@pytest.mark.parametrize("kind", ["session", "transaction", "autocommit"])
def test_a_stale_token_changes_nothing_on_any_executor(db: Database, kind: str) -> None:
    _, (tid,) = add_batch(db)
    with db.session() as s:
        row = transitions.claim(s, tid, worker="w", lease_seconds=60)
    assert row is not None
    before = get(db, tid)
    stale = "not-the-token"
    outcome = transitions.Outcome("file:///x.png", "0" * 64, "image/png", 1, 1, 10, cost_usd=0.039)
    with getattr(db, kind)() as executor:
        assert not transitions.extend_lease(executor, tid, stale, lease_seconds=600)
        assert not transitions.complete(executor, tid, stale, outcome)
        assert not transitions.fail(executor, tid, stale, code="x", message="x")
        assert not transitions.requeue(executor, tid, stale, not_before=None, count_attempt=True)
    after = get(db, tid)
    assert (after.status, after.lease_expires_at, after.attempts, after.claim_token) == (
        before.status,
        before.lease_expires_at,
        before.attempts,
        before.claim_token,
    )
    with getattr(db, kind)() as executor:
        assert transitions.extend_lease(executor, tid, row.claim_token, lease_seconds=600)
        assert transitions.requeue(executor, tid, row.claim_token, not_before=None, count_attempt=False)
    task = get(db, tid)
    assert (task.status, task.rate_waits, task.attempts, task.claim_token) == ("pending", 1, 0, None)


def test_completion_adds_spend_only_to_budgeted_batches(db: Database) -> None:
    budgeted, (b1,) = add_batch(db, budget_usd=1.0)
    unbudgeted, (u1,) = add_batch(db)
    outcome = transitions.Outcome("file:///x.png", "0" * 64, "image/png", 1, 1, 10, cost_usd=0.25)
    for tid in (b1, u1):
        with db.transaction() as connection:
            row = transitions.claim(connection, tid, worker="w", lease_seconds=60)
            assert row is not None
            assert transitions.complete(connection, tid, row.claim_token, outcome)
    with db.session() as s:
        assert s.get_one(Batch, budgeted).spent_usd == pytest.approx(0.25)
        assert s.get_one(Batch, unbudgeted).spent_usd == 0.0
    task = get(db, b1)
    assert (task.status, task.cost_usd, task.result_uri, task.lease_expires_at) == (
        "completed",
        0.25,
        "file:///x.png",
        None,
    )


def test_a_transaction_that_raises_leaves_the_row_unclaimed(db: Database) -> None:
    _, (tid,) = add_batch(db)
    with pytest.raises(RuntimeError), db.transaction() as connection:
        assert transitions.claim(connection, tid, worker="w", lease_seconds=60) is not None
        raise RuntimeError("crash before commit")
    assert get(db, tid).status == "pending"


def test_the_worker_builds_its_job_from_the_claim(db: Database) -> None:
    from types import SimpleNamespace

    from nanobatch.models.lifecycle import BatchGate
    from nanobatch.tasks import serve

    batch_id, (tid,) = add_batch(db, budget_usd=3.0, window_start="22:00", window_end="04:00")
    _, (paused,) = add_batch(db, status="paused")
    rt = SimpleNamespace(db=db, worker_name="w1", settings=SimpleNamespace(effective_lease_seconds=60.0))
    job = serve.claim(rt, tid, "celery-1")  # type: ignore[arg-type]
    assert job is not None
    assert job == serve.Job(
        id=tid,
        token=get(db, tid).claim_token or "",
        batch_id=batch_id,
        batch_name=f"b-{batch_id[:8]}",
        key="k0",
        prompt="p",
        model="m",
        image_size=None,
        aspect_ratio="1:1",
        output_format="png",
        input_images=(),
        attempts=0,
        error_code=None,
        content_hash=None,
        reuse=False,
        has_budget=True,
        gate=BatchGate(status="open", window_start="22:00", window_end="04:00", window_tz=None),
    )
    assert job.token
    assert serve.claim(rt, tid, "celery-2") is None  # already processing
    assert serve.claim(rt, paused, "celery-3") is None
