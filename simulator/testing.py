"""Helpers for tests that run against a simulator: a factory that stops what it started, and polling.

Tests synchronise by polling the simulator's counters with a deadline, never by sleeping a guessed
amount, so they are fast on a quick machine and still correct on a slow one. Deliberately free of
pytest, so any test suite (ours or a user's) can wrap it in a fixture of a few lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.server import RunningSimulator, start_simulator

T = TypeVar("T")


class SimulatorFactory:
    """``factory(rpm=2)`` starts a simulator with these settings over the defaults; exit stops all."""

    def __init__(self, **defaults: Any) -> None:
        self.defaults = defaults
        self.started: list[RunningSimulator] = []

    def __call__(self, **overrides: Any) -> RunningSimulator:
        simulator = start_simulator(SimulatorConfig(**{**self.defaults, **overrides}))
        self.started.append(simulator)
        return simulator

    def __enter__(self) -> SimulatorFactory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for simulator in self.started:
            simulator.stop()


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy (returned); ``AssertionError`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {message}")
        time.sleep(interval)
