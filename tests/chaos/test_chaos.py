"""Chaos: a batch survives SIGKILLed workers, a wiped Redis and a restarted PostgreSQL (DESIGN §11).

The scenario lives in :mod:`tests.chaos.scenario` (shared with ``python bench/chaos.py --tasks
1000``, the long run); this test runs the CI size — 150 tasks, a few minutes on a 2-core machine —
or ``NANOBATCH_CHAOS_TASKS`` tasks. It asserts what the design promises: every task terminal, none
lost, none stored twice, and the pipeline back within two minutes of every fault. The figures are
printed as a table (and written to ``test-artifacts/chaos.txt``) whether the test passes or not.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.scenario import ChaosPlan, ChaosRun
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
    # Given a hostile upstream (30 % 429, 5 % 5xx, 1 % timeouts) and three workers, one with the sweeper
    # When the harness kills workers three times, wipes Redis and restarts PostgreSQL mid-batch
    report = ChaosRun(PLAN, private_redis, private_postgres, tmp_path, log=lambda _: None).run()
    table = report.table()
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "chaos.txt").write_text(table + "\n", encoding="utf-8")
    with capsys.disabled():
        print("\n" + table)
    # Then every task ended, none was lost, none stored twice, and every fault was recovered from
    assert report.aborted is None, table
    assert report.rows == PLAN.tasks and report.lost == 0, table
    assert report.stored_twice == 0 and not report.sha_mismatches, table
    assert not report.completed_without_file, table
    assert len(report.faults) == len(PLAN.faults), table
    assert report.problems() == [], table
