"""Fault drawing (seeded, exact rates) and deterministic safety blocks."""

from __future__ import annotations

import pytest

from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.faults import Fault, FaultPlan
from nanobatch.simulator.safety import find_block


def _sequence(plan: FaultPlan, count: int = 200) -> list[str | None]:
    return [fault.label if (fault := plan.draw_fault()) else None for _ in range(count)]


def test_same_seed_same_faults_different_seed_different_faults() -> None:
    config = SimulatorConfig(fail_rates={500: 0.2, 503: 0.2}, drop_rate=0.1, seed=42)
    first, again = _sequence(FaultPlan(config)), _sequence(FaultPlan(config))
    other = _sequence(FaultPlan(SimulatorConfig(fail_rates={500: 0.2, 503: 0.2}, drop_rate=0.1, seed=43)))
    assert first == again
    assert first != other


def test_reseed_replays_the_sequence() -> None:
    plan = FaultPlan(SimulatorConfig(fail_rates={503: 0.5}, seed=1))
    first = _sequence(plan, 50)
    plan.dice.reseed()
    assert _sequence(plan, 50) == first


def test_rate_one_always_and_rate_zero_never() -> None:
    assert set(_sequence(FaultPlan(SimulatorConfig(timeout_rate=1.0)))) == {"timeout"}
    assert set(_sequence(FaultPlan(SimulatorConfig()))) == {None}


def test_rates_are_roughly_honoured() -> None:
    plan = FaultPlan(SimulatorConfig(fail_rates={500: 0.1, 503: 0.3}, drop_rate=0.1, seed=3))
    drawn = _sequence(plan, 10_000)
    assert 0.07 < drawn.count("500") / 10_000 < 0.13
    assert 0.26 < drawn.count("503") / 10_000 < 0.34
    assert 0.07 < drawn.count("drop") / 10_000 < 0.13


def test_fault_labels() -> None:
    assert Fault("status", 503).label == "503"
    assert Fault("drop").label == "drop"
    assert Fault("echo_key").label == "echo_key"


@pytest.mark.parametrize("kind", ["truncated", "oversized", "trickle", "echo_key", "larger_image"])
def test_each_hostile_mode_is_drawn_at_its_rate(kind: str) -> None:
    assert set(_sequence(FaultPlan(SimulatorConfig(**{f"{kind}_rate": 1.0})))) == {kind}
    drawn = _sequence(FaultPlan(SimulatorConfig(**{f"{kind}_rate": 0.25}, seed=9)), 10_000)
    assert 0.22 < drawn.count(kind) / 10_000 < 0.28


def test_hostile_modes_leave_the_old_sequence_alone() -> None:
    """Drawn after the others: a seeded run keeps every old fault where it was; only some of its
    fault-free requests turn hostile (and with the hostile rates at 0, nothing changes)."""
    old = SimulatorConfig(fail_rates={503: 0.2}, drop_rate=0.1, seed=21)
    hostile = SimulatorConfig(fail_rates={503: 0.2}, drop_rate=0.1, seed=21, truncated_rate=0.3)
    before, after = _sequence(FaultPlan(old), 2_000), _sequence(FaultPlan(hostile), 2_000)
    changed = [(b, a) for b, a in zip(before, after, strict=True) if a != b]
    assert changed and all(b is None and a == "truncated" for b, a in changed)
    zero = SimulatorConfig(fail_rates={503: 0.2}, drop_rate=0.1, seed=21, echo_key_rate=0.0)
    assert _sequence(FaultPlan(zero), 2_000) == before


def test_latency_is_scaled_and_within_bounds() -> None:
    plan = FaultPlan(SimulatorConfig(latency=(8.0, 20.0), time_scale=0.01, seed=5))
    draws = [plan.draw_latency() for _ in range(100)]
    assert all(0.08 <= d <= 0.2 for d in draws)
    assert FaultPlan(SimulatorConfig(latency=(0, 0))).draw_latency() == 0.0


def test_block_shape_follows_word_position() -> None:
    words = ("gore", "knife", "bomb")
    assert find_block("Some GORE here", words).shape == "prompt"  # type: ignore[union-attr]
    assert find_block("a knife.", words).shape == "image"  # type: ignore[union-attr]
    assert find_block("bomb", words).reason == "SAFETY"  # type: ignore[union-attr]
    assert find_block("knife", words).reason == "IMAGE_SAFETY"  # type: ignore[union-attr]


def test_blocks_match_whole_words_only() -> None:
    assert find_block("a cat on a mat", ("at",)) is None
    assert find_block("nothing here", ("gore",)) is None
