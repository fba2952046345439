"""Scenario fixtures: a simulator, a private stack (PostgreSQL db, Redis prefix, queue, output dir),
and real Celery worker processes on it — so each integration test reads as given / when / then.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nanobatch.cli.context import runtime_for
from nanobatch.models.queries import BatchSummary, batch_summaries
from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.server import RunningSimulator, start_simulator
from nanobatch.tasks.intake import IntakeOptions, read_file
from nanobatch.tasks.producer import BatchOptions, SubmitReport, submit
from nanobatch.tasks.runtime import Runtime
from nanobatch.tasks.settings import Settings
from tests.s3server import s3_auth_server, s3_env, s3_server  # noqa: F401  (fixtures: the S3 tests)

REPO = Path(__file__).resolve().parents[2]
#: The model rows get when they name none (NANOBATCH_DEFAULT_MODEL's default).
DEFAULT_MODEL: str = Settings.model_fields["default_model"].default


@pytest.fixture
def simulator() -> Iterator[Callable[..., RunningSimulator]]:
    """``simulator(rpm=…, fail_rates=…)`` starts one on a free loopback port (zero latency by default)."""
    running: list[RunningSimulator] = []

    def start(**config: Any) -> RunningSimulator:
        config.setdefault("latency", (0.0, 0.0))
        config.setdefault("seed", 1)
        sim = start_simulator(SimulatorConfig(**config), port=0)
        running.append(sim)
        return sim

    yield start
    for sim in running:
        sim.stop()


def _importable(cwd: Path | None) -> dict[str, str]:
    """Outside the checkout, ``nanobatch`` must still import from it (PYTHONPATH first)."""
    if cwd is None:
        return {}
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}


@dataclass
class Stack:
    """One test's private world; ``env`` is what a worker process (or the CLI) gets."""

    env: dict[str, str]
    output_dir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _runtime: Runtime | None = None

    @property
    def settings(self) -> Settings:
        return Settings(
            **{
                k.removeprefix("NANOBATCH_").lower(): v
                for k, v in self.env.items()
                if k.startswith("NANOBATCH_") and k != "NANOBATCH_API_KEY"
            }
        )

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = runtime_for(self.settings)
        return self._runtime

    def start_worker(
        self,
        concurrency: int = 4,
        *,
        beat: bool = False,
        cli: bool = False,
        cwd: Path | None = None,
        **env: str,
    ) -> subprocess.Popen[bytes]:
        """A real ``celery worker`` process on this stack; it sweeps by itself (``beat=True`` embeds the
        scheduler too, which only sends the nightly inbox). ``cli=True`` runs ``nanobatch worker``
        instead (the product's command: it restarts its Celery worker after an unrecoverable error)."""
        queues = f"{self.env['NANOBATCH_QUEUE']},{self.env['NANOBATCH_QUEUE']}.control"
        number = len(self.workers)
        if cli:
            cmd = [sys.executable, "-m", "nanobatch.cli", "worker", "-c", str(concurrency), "-l", "info"]
            cmd += ["-n", f"w{number}-{os.getpid()}@%h", *(["--beat"] if beat else [])]
            return self._launch(cmd, number, env, cwd)
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "nanobatch.tasks",
            "worker",
            "-P",
            "threads",
            "-c",
            str(concurrency),
            "-Q",
            queues,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "info",
            "-n",
            f"w{number}-{os.getpid()}@%h",
        ]
        if beat:
            cmd += ["-B", "-s", str(self.output_dir.parent / f"beat-schedule-{number}")]
        return self._launch(cmd, number, env, cwd)

    def _launch(
        self, cmd: list[str], number: int, env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """``cwd``: another working directory (a stand-in for another host); the checkout stays importable."""
        log = (self.output_dir.parent / f"worker{number}.log").open("wb")
        env = {**os.environ, **self.env, **env, **_importable(cwd)}
        proc = subprocess.Popen(cmd, cwd=cwd or REPO, env=env, stdout=log, stderr=log)
        self.workers.append(proc)
        return proc

    def cli(
        self, *args: str, check: bool = False, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "nanobatch.cli", *args],
            cwd=cwd or REPO,
            env={**os.environ, **self.env, **_importable(cwd)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"nanobatch {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def submit_file(self, path: Path, batch: str, **options: Any) -> SubmitReport:
        rt = self.runtime
        intake_options = IntakeOptions(model=options.pop("model", DEFAULT_MODEL), **options)
        intake = read_file(path, rt.catalog, intake_options)
        assert not intake.errors, intake.errors
        return submit(rt.db, rt.dispatcher, intake, BatchOptions(name=batch), intake_options=intake_options)

    def summary(self, batch: str) -> BatchSummary:
        with self.runtime.db.session() as session:
            return batch_summaries(session, batch)[0]

    def wait_terminal(self, batch: str, timeout: float = 90.0) -> BatchSummary:
        """Poll until ``batch`` has settled (every task terminal, every image published); fail with
        the last counts on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            summary = self.summary(batch)
            if summary.settled and summary.total:
                return summary
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"batch {batch} not terminal after {timeout}s: {summary.counts}\n" + self.worker_logs()
                )
            time.sleep(0.2)

    def worker_logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in self.output_dir.parent.glob("worker*.log")
        )

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._runtime is not None:
            self._runtime.close()


@pytest.fixture
def stack(pg_url: str, redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """``stack(sim, **env)``: a private PostgreSQL database, Redis prefix, queue and output dir."""
    made: list[Stack] = []

    def make(sim: RunningSimulator, **env: str) -> Stack:
        output = tmp_path / "images"
        base = {
            "NANOBATCH_DATABASE_URL": pg_url,
            "NANOBATCH_REDIS_URL": redis_url,
            "NANOBATCH_LIMITER_PREFIX": key_prefix,
            "NANOBATCH_QUEUE": f"{key_prefix}:q",
            "NANOBATCH_OUTPUT_DIR": str(output),
            "NANOBATCH_PROVIDER_BASE_URL": sim.url,
            "NANOBATCH_REQUEST_TIMEOUT": "10",
            "NANOBATCH_BACKOFF_BASE": "0.05",
            "NANOBATCH_BACKOFF_CAP": "0.5",
            "NANOBATCH_SWEEP_INTERVAL": "1",
        }
        made.append(Stack(env={**base, **{k.upper(): str(v) for k, v in env.items()}}, output_dir=output))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def write_csv(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path
