"""The chaos run's verdict (tests/chaos/scenario.py: ``ChaosReport.problems``) as pure logic.

A fault after which no task was left to claim cannot be "resumed" from: the verdict must not call
that a failure (CI: "restart postgres at 44s: not resumed within 120s" with every row completed,
the last one by the call that was in flight during the restart), and must still call a real
stall one.
"""

from __future__ import annotations

from tests.chaos.scenario import ChaosPlan, ChaosReport, FaultRecord

PLAN = ChaosPlan(tasks=10, faults=(("restart postgres", 0.9),))


def report_with(fault: FaultRecord) -> ChaosReport:
    return ChaosReport(
        plan=PLAN,
        counts={"completed": 10},
        rows=10,
        faults=[fault],
        by_status={"200": 10, "429": 3, "503": 1},
    )


def test_a_fault_with_nothing_left_to_claim_is_not_a_missed_resume() -> None:
    fault = FaultRecord("restart postgres", 40.0, 9, 1, requeued=0.8, reclaimed=0.8, nothing_to_resume=True)
    assert report_with(fault).problems() == []
    assert " n/a " in report_with(fault).table()


def test_a_fault_after_which_nothing_completed_is_a_missed_resume() -> None:
    fault = FaultRecord("restart postgres", 40.0, 9, 1, requeued=0.8, reclaimed=0.8)
    assert report_with(fault).problems() == ["restart postgres at 40s: not resumed within 120s (no note)"]
