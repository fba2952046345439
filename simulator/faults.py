"""Everything random about a simulated request: its latency and the fault it suffers, if any.

One seeded generator behind a lock per simulator, so a run with ``seed`` set replays the same
sequence of faults for the same sequence of requests (handy when a benchmark finds a bug), and two
simulators in one process never share a sequence. A single uniform draw picks the fault from the
cumulative rates, so configured rates add up exactly (``500=0.1`` plus ``drop 0.1`` fails 20 %).
The hostile modes (truncated, oversized, trickle, echo_key, larger_image) join the same draw after
the others, so a run that leaves them at 0 replays exactly the sequence it did before they existed.

Service tiers (``serviceTier`` on the request): a flex request that drew no fault draws once more
from ``flex_fail_rates`` (capacity 429/503, counted as ``flex_429`` / ``flex_503``), and its latency
is multiplied by ``flex_latency_factor``; priority multiplies by ``priority_latency_factor``.
Standard requests (and requests without a tier) draw exactly as before.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Literal, cast

from nanobatch.simulator.config import SimulatorConfig

FaultKind = Literal[
    "status", "timeout", "drop", "truncated", "oversized", "trickle", "echo_key", "larger_image", "flex"
]


@dataclass(frozen=True)
class Fault:
    """A fault to inject: an error status, a held request that never answers, a cut response, or one
    of the hostile answers (see ``SimulatorConfig``)."""

    kind: FaultKind
    status: int | None = None

    @property
    def label(self) -> str:
        """The key this fault is counted under in ``stats()["faults"]``."""
        if self.kind == "flex":
            return f"flex_{self.status}"
        return str(self.status) if self.kind == "status" else self.kind

    @property
    def error_status(self) -> int | None:
        """The HTTP status this fault answers with, for the status-like kinds."""
        return self.status if self.kind in ("status", "flex") else None


class Dice:
    """A thread-safe, optionally seeded random source."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def random(self) -> float:
        with self._lock:
            return self._random.random()

    def uniform(self, low: float, high: float) -> float:
        with self._lock:
            return self._random.uniform(low, high)

    def reseed(self) -> None:
        with self._lock:
            self._random.seed(self.seed)


class FaultPlan:
    """Draws latency, faults and empty answers according to a :class:`SimulatorConfig`."""

    def __init__(self, config: SimulatorConfig, dice: Dice | None = None) -> None:
        self.config = config
        self.dice = dice or Dice(config.seed)
        self._table = _cumulative(config)
        self._flex_table = _flex_cumulative(config)

    def draw_fault(self, tier: str = "standard") -> Fault | None:
        fault = self._draw(self._table)
        if fault is None and tier == "flex":
            return self._draw(self._flex_table)
        return fault

    def _draw(self, table: list[tuple[float, Fault]]) -> Fault | None:
        if not table:
            return None
        roll = self.dice.random()
        for bound, fault in table:
            if roll < bound:
                return fault
        return None

    def draw_latency(self, tier: str = "standard") -> float:
        """Seconds to wait before answering, already multiplied by the time scale and the tier factor."""
        low, high = self.config.latency
        if high <= 0 or self.config.time_scale <= 0:
            return 0.0
        return self.dice.uniform(low, high) * self.config.time_scale * self.config.latency_factor(tier)

    def draw(self, rate: float) -> bool:
        """``True`` with probability ``rate`` (no draw at all when the rate is 0)."""
        return rate > 0 and self.dice.random() < rate

    def draw_no_image(self) -> bool:
        rate = self.config.no_image_rate
        return rate > 0 and self.dice.random() < rate


def _flex_cumulative(config: SimulatorConfig) -> list[tuple[float, Fault]]:
    table: list[tuple[float, Fault]] = []
    bound = 0.0
    for status, rate in sorted(config.flex_fail_rates.items()):
        if rate > 0:
            bound += rate
            table.append((bound, Fault("flex", status)))
    return table


def _cumulative(config: SimulatorConfig) -> list[tuple[float, Fault]]:
    faults = [(rate, Fault("status", status)) for status, rate in sorted(config.fail_rates.items())]
    faults += [(config.timeout_rate, Fault("timeout")), (config.drop_rate, Fault("drop"))]
    faults += [(rate, Fault(cast(FaultKind, kind))) for kind, rate in config.hostile_rates.items()]
    table: list[tuple[float, Fault]] = []
    bound = 0.0
    for rate, fault in faults:
        if rate > 0:
            bound += rate
            table.append((bound, fault))
    return table
