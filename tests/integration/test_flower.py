"""``nanobatch flower`` against a real worker: Flower sees our workers and tasks, demands credentials,
and never learns a prompt or the API key (task arguments are a task id only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from nanobatch.models.tables import Batch, GenerationTask
from tests.conftest import free_port
from tests.integration.conftest import REPO, Stack, write_csv

pytestmark = pytest.mark.integration

CREDENTIALS = ("ops", "flower-test-password")
FAKE_KEY = "AIzaFAKE-nanobatch-flower-test-key-0123456789"
#: Runs the command function itself, so this test does not depend on how cli/main registers it.
RUNNER = "import typer; from cli.flower_cmd import flower_command; typer.run(flower_command)"


class Flower:
    """A Flower process on a free loopback port; credentials passed through the environment only."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, "--port", str(self.port), "--address", "127.0.0.1", *args],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, *, auth: tuple[str, str] | None = CREDENTIALS) -> httpx.Response:
        return httpx.get(self.base + path, auth=auth, timeout=15)

    def poll(self, path: str, until: Callable[[Any], bool], timeout: float = 60.0) -> Any:
        """GET ``path`` (JSON) until ``until(body)`` holds; fail with the last body and Flower's log."""
        deadline = time.monotonic() + timeout
        body: Any = None
        while True:
            try:
                response = self.get(path)
                if response.status_code == 200:
                    body = response.json()
                    if until(body):
                        return body
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{path} never satisfied the condition; last: {body}\n{self.log.read_text()}"
                )
            time.sleep(0.25)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[Callable[..., Flower]]:
    started: list[Flower] = []

    def start(s: Stack, *args: str, **env: str) -> Flower:
        started.append(Flower({**s.env, **env}, tmp_path / f"flower{len(started)}.log", *args))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


def task_ids(s: Stack, batch: str) -> set[str]:
    with s.runtime.db.session() as session:
        return set(session.scalars(select(GenerationTask.id).join(Batch).where(Batch.name == batch)))


def ours(tasks: dict[str, dict[str, Any]], ids: set[str]) -> dict[str, dict[str, Any]]:
    """Flower's tasks that carry one of ``ids`` (the shared Redis may carry other tests' events too)."""
    return {uuid: t for uuid, t in tasks.items() if any(i in str(t.get("args")) for i in ids)}


def test_flower_shows_our_worker_and_tasks_with_ids_only(simulator, stack, flower, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given a worker whose environment holds an API key, and Flower with basic auth
    s = stack(simulator())
    s.start_worker(concurrency=2, NANOBATCH_API_KEY=FAKE_KEY)
    ui = flower(s, NANOBATCH_FLOWER_BASIC_AUTH=":".join(CREDENTIALS))
    # When Flower has found our worker (control broadcast) …
    node = f"w0-{os.getpid()}@"
    workers = ui.poll("/api/workers?refresh=1", lambda body: any(name.startswith(node) for name in body))
    # … and a batch runs
    s.submit_file(write_csv(tmp_path / "f.csv", "key,prompt", "A,secret red mug", "B,secret blue mug"), "fl")
    s.wait_terminal("fl")
    ids = task_ids(s, "fl")
    tasks = ui.poll("/api/tasks", lambda body: _all_succeeded(ours(body, ids), ids))
    # Then each of our tasks is nanobatch.generate with exactly the task id as its only argument
    seen = ours(tasks, ids)
    assert sorted(t["name"] for t in seen.values()) == ["nanobatch.generate"] * 2
    assert sorted(t["args"] for t in seen.values()) == sorted(repr((i,)) for i in ids)
    assert all(t["kwargs"] == "{}" and t["state"] == "SUCCESS" for t in seen.values())
    assert all(t["worker"].startswith(node) for t in seen.values())
    # And neither the API key nor a prompt appears anywhere Flower shows tasks or workers
    everything = json.dumps(tasks) + json.dumps(workers) + ui.get("/api/tasks").text
    assert FAKE_KEY not in everything
    assert "secret red mug" not in everything
    assert node in json.dumps(workers)


def _all_succeeded(seen: dict[str, dict[str, Any]], ids: set[str]) -> bool:
    return {t["args"] for t in seen.values() if t.get("state") == "SUCCESS"} == {repr((i,)) for i in ids}


def test_flower_refuses_requests_without_the_right_credentials(simulator, stack, flower) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    ui = flower(s, NANOBATCH_FLOWER_BASIC_AUTH=":".join(CREDENTIALS))
    ui.poll("/api/workers", lambda body: isinstance(body, dict))  # up, and the right credentials work
    assert ui.get("/api/tasks", auth=None).status_code == 401
    assert ui.get("/api/workers", auth=None).status_code == 401
    assert ui.get("/api/tasks", auth=(CREDENTIALS[0], "wrong")).status_code == 401
    assert ui.get("/", auth=None).status_code == 401
    # and the password is not on Flower's command line (ps shows argv to every user)
    assert CREDENTIALS[1] not in Path(f"/proc/{ui.proc.pid}/cmdline").read_bytes().decode(errors="replace")


def test_flower_refuses_to_start_without_valid_credentials(stack, simulator) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    env = {
        k: v
        for k, v in {**os.environ, **s.env}.items()
        if k not in {"NANOBATCH_FLOWER_BASIC_AUTH", "FLOWER_BASIC_AUTH"}
    }
    refused = subprocess.run(
        [sys.executable, "-c", RUNNER, "--port", str(free_port())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "NANOBATCH_FLOWER_BASIC_AUTH" in refused.stderr and "--no-auth" in refused.stderr
    malformed = subprocess.run(
        [sys.executable, "-c", RUNNER, "--port", str(free_port())],
        cwd=REPO,
        env={**env, "NANOBATCH_FLOWER_BASIC_AUTH": "just-a-password"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert malformed.returncode == 2 and "user:password" in malformed.stderr


def test_no_auth_is_explicit_and_really_open(simulator, stack, flower) -> None:  # type: ignore[no-untyped-def]
    # Given a stale FLOWER_BASIC_AUTH in the environment, --no-auth still means no authentication
    s = stack(simulator())
    ui = flower(s, "--no-auth", FLOWER_BASIC_AUTH="stale:credentials")
    deadline = time.monotonic() + 60
    while _status(ui, "/") is None and ui.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.25)
    assert _status(ui, "/") == 200, ui.log.read_text()
    # while Flower itself keeps its API closed unless FLOWER_UNAUTHENTICATED_API=true is also set
    assert _status(ui, "/api/workers") == 401


def _status(ui: Flower, path: str) -> int | None:
    try:
        return ui.get(path, auth=None).status_code
    except httpx.HTTPError:
        return None
