"""Chaos: a batch survives SIGKILLed workers, a wiped Redis and a restarted PostgreSQL (DESIGN §11).

The scenario lives in :mod:`tests.chaos.scenario` (shared with ``python bench/chaos.py --tasks
1000``, the long run); this test runs the CI size — 150 tasks, a few minutes on a 2-core machine —
or ``NANOBATCH_CHAOS_TASKS`` tasks. It asserts what the design promises: every task terminal, none
lost, none stored twice, and the pipeline back within two minutes of every fault. Two shorter runs
prove liveness without beat: a SIGKILLed worker plus a FLUSHDBed broker, and a paused worker. The
figures are printed as tables (and written to ``test-artifacts/chaos*.txt``) whether the tests pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.scenario import NO_BEAT_PLAN, PAUSED_PLAN, ChaosPlan, ChaosReport, ChaosRun
from tests.chaos.services import PrivatePostgres, PrivateRedis

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
PLAN = ChaosPlan(tasks=int(os.environ.get("NANOBATCH_CHAOS_TASKS", "150")))


@pytest.mark.timeout(PLAN.finish_deadline + 2 * PLAN.recovery_bound)
def test_no_task_is_lost_or_stored_twice_through_kills_wipes_and_restarts(
    private_redis: PrivateRedis,
    private_postgres: PrivatePostgres,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a hostile upstream (30 % 429, 5 % 5xx, 1 % timeouts) and three workers, no beat
    # When the harness kills workers three times, wipes Redis and restarts PostgreSQL mid-batch
    report = ChaosRun(PLAN, private_redis, private_postgres, tmp_path, log=lambda _: None).run()
    # Then every task ended, none was lost, none stored twice, and every fault was recovered from
    assert_guarantees(report, PLAN, "chaos.txt", capsys)


@pytest.mark.timeout(NO_BEAT_PLAN.finish_deadline + 2 * NO_BEAT_PLAN.recovery_bound)
def test_without_beat_a_killed_worker_and_a_flushed_broker_are_recovered(
    private_redis: PrivateRedis,
    private_postgres: PrivatePostgres,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given two workers and no beat, leases of 300 s
    # When one worker is SIGKILLed mid-batch and the broker's Redis database is flushed
    report = ChaosRun(NO_BEAT_PLAN, private_redis, private_postgres, tmp_path, log=lambda _: None).run()
    # Then the survivor takes the dead worker's tasks within 60 s (heartbeat) and finishes everything
    assert_guarantees(report, NO_BEAT_PLAN, "chaos-no-beat.txt", capsys)
    (fault,) = report.faults
    assert fault.affected > 0 and fault.released is not None and fault.released <= 60, report.table()


@pytest.mark.timeout(PAUSED_PLAN.finish_deadline + 2 * PAUSED_PLAN.recovery_bound)
def test_a_paused_worker_that_wakes_up_changes_nothing(
    private_redis: PrivateRedis,
    private_postgres: PrivatePostgres,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given two workers, one SIGSTOPped mid-call until the other completed the tasks it held
    report = ChaosRun(PAUSED_PLAN, private_redis, private_postgres, tmp_path, log=lambda _: None).run()
    # Then, once SIGCONTed, it overwrote no file and completed nothing a second time
    assert_guarantees(report, PAUSED_PLAN, "chaos-paused.txt", capsys)
    (fault,) = report.faults
    assert fault.affected > 0 and not report.changed_after_wake, report.table()


def assert_guarantees(
    report: ChaosReport, plan: ChaosPlan, artifact: str, capsys: pytest.CaptureFixture[str]
) -> None:
    table = report.table()
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / artifact).write_text(table + "\n", encoding="utf-8")
    with capsys.disabled():
        print("\n" + table)
    assert report.aborted is None, table
    assert report.rows == plan.tasks and report.lost == 0, table
    assert report.stored_twice == 0 and not report.sha_mismatches, table
    assert not report.completed_without_file, table
    assert len(report.faults) == len(plan.faults), table
    assert report.problems() == [], table
