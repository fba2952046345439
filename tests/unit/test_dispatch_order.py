"""Weighted round robin order of the dispatcher (pure logic; the window itself is tested against
real services in tests/integration/test_dispatch_window.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from nanobatch.tasks.dispatch import Candidate, weighted_order

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def batch(name: str, weight: int = 1) -> Candidate:
    return Candidate(name, 0, weight, T0)


def test_equal_weights_take_one_slot_each_per_round() -> None:
    assert weighted_order([batch("big"), batch("small")]) == ["big", "small"]


def test_a_heavier_batch_gets_its_weight_in_every_round_interleaved() -> None:
    order = weighted_order([batch("a", 3), batch("b"), batch("c", 2)])
    assert order == ["a", "b", "c", "a", "c", "a"]
    assert order.count("a") == 3 and order.count("c") == 2 and order.count("b") == 1
