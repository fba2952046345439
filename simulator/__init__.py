"""A fake Gemini / OpenAI images upstream on loopback: real HTTP, real images, real quotas and faults.

Demos, tests and benchmarks run against it with no API key and no internet, and users rehearse a
large backfill for free. ``start_simulator(SimulatorConfig(...))`` runs one in a background thread;
``serve(...)`` (the ``nanobatch simulator`` command) runs one in the foreground.
"""

from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.server import RunningSimulator, serve, start_simulator

__all__ = ["RunningSimulator", "SimulatorConfig", "serve", "start_simulator"]
