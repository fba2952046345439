"""Pure logic of liveness and recovery: when a worker restarts, when a sweep is overdue, the settings."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from nanobatch.cli.worker_cmd import RESTART_DELAYS, STABLE_AFTER, WorkerRun, WorkerRunner, keep_running
from nanobatch.tasks.celeryapp.app import beat_schedule
from nanobatch.tasks.liveness import RecoveryHealth, SweepRecord
from nanobatch.tasks.settings import Settings

LOG = logging.getLogger("test")


class ScriptedRunner(WorkerRunner):
    """Plays back how each run ends; records the pauses asked for."""

    def __init__(self, runs: list[WorkerRun], stop_during_pause: int | None = None) -> None:
        self.runs = list(runs)
        self.pauses: list[float] = []
        self.stop_during_pause = stop_during_pause

    def run(self) -> WorkerRun:
        return self.runs.pop(0)

    def pause(self, seconds: float) -> bool:
        self.pauses.append(seconds)
        return len(self.pauses) == self.stop_during_pause


def failed(after: float = 5.0) -> WorkerRun:
    return WorkerRun(exitcode=1, shutdown_requested=False, duration=after)


def test_a_worker_that_fails_is_restarted_with_growing_pauses_until_it_stops_cleanly() -> None:
    runner = ScriptedRunner([*(failed() for _ in range(8)), WorkerRun(0, True, 30.0)])
    assert keep_running(runner, log=LOG) == 0
    assert runner.pauses == [*RESTART_DELAYS, RESTART_DELAYS[-1], RESTART_DELAYS[-1]]
    assert not runner.runs


def test_a_long_healthy_run_starts_the_backoff_over() -> None:
    runner = ScriptedRunner([failed(), failed(), failed(STABLE_AFTER + 1), WorkerRun(0, True, 1.0)])
    keep_running(runner, log=LOG)
    assert runner.pauses == [RESTART_DELAYS[0], RESTART_DELAYS[1], RESTART_DELAYS[0]]


def test_a_requested_shutdown_is_never_restarted_whatever_the_exit_code() -> None:
    cold = ScriptedRunner([WorkerRun(exitcode=1, shutdown_requested=True, duration=3.0)])
    assert keep_running(cold, log=LOG) == 1
    assert cold.pauses == []
    during_pause = ScriptedRunner([failed(), failed()], stop_during_pause=1)
    assert keep_running(during_pause, log=LOG) == 0
    assert during_pause.runs == [failed()]


def record(at: float, interval: float = 10.0) -> SweepRecord:
    return SweepRecord(
        at=at, worker="h:1:x", interval=interval, took=0.1, reclaimed=2, reclaimed_silent=1, dispatched=3
    )


def test_a_sweep_is_overdue_after_two_of_the_sweepers_intervals() -> None:
    fresh = RecoveryHealth(now=1000.0, interval=10.0, last=record(985.0), workers_alive=2)
    assert (fresh.age, fresh.overdue) == (15.0, False)
    assert fresh.describe() == "last sweep 15s ago by h:1:x (reclaimed 2, dispatched 3); 2 workers alive"
    late = RecoveryHealth(now=1000.0, interval=10.0, last=record(979.0), workers_alive=1)
    assert late.overdue and late.describe().startswith("no recovery sweep for 21s (more than two 10s")
    # the interval the sweeper recorded wins over the reader's own setting
    assert not RecoveryHealth(now=1000.0, interval=10.0, last=record(950.0, 30.0), workers_alive=0).overdue
    never = RecoveryHealth(now=1000.0, interval=10.0, last=None, workers_alive=0)
    assert never.overdue and never.age is None and "no recovery sweep has run yet" in never.describe()


def test_beat_schedules_no_sweep_any_more() -> None:
    assert beat_schedule(Settings(inbox_dir=None)) == {}
    assert set(beat_schedule(Settings(inbox_dir="/tmp/inbox"))) == {"inbox"}  # type: ignore[arg-type]


def test_a_heartbeat_ttl_shorter_than_two_intervals_is_refused() -> None:
    assert Settings().heartbeat_ttl >= 2 * Settings().heartbeat_interval
    with pytest.raises(ValidationError, match="heartbeat_ttl"):
        Settings(heartbeat_interval=5, heartbeat_ttl=9)
