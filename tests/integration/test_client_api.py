"""The Python API against a real stack: PostgreSQL, Redis, a Celery worker process and the simulator.

Also the promise of one import root: an application folder with its own ``tasks.py`` and
``models.py`` (Celery's and invoke's default names) can import and run nanobatch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nanobatch import Client, SubmitRejected
from nanobatch.api import BatchError
from nanobatch.models.status import ErrorCode
from tests.integration.conftest import Stack, write_csv

pytestmark = pytest.mark.integration


def client_for(s: Stack) -> Client:
    return Client(s.settings)


def test_submit_rows_then_wait_then_export(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a running worker and rows built by an application
    s = stack(simulator())
    s.start_worker()
    rows = [{"key": f"sku-{i}", "title": f"mug {i}"} for i in range(5)]
    with client_for(s) as client:
        # When it submits them with a template, waits, and exports
        result = client.submit(rows, batch="spring", template="Studio photo of {title}")
        final = client.wait("spring", timeout=90)
        written = client.export("spring", tmp_path / "spring.csv")
        again = client.submit(rows, batch="spring", template="Studio photo of {title}")
    # Then every row became one completed image, and a re-submit creates nothing twice
    assert (result.batch, result.new, result.already_present, result.rejected) == ("spring", 5, 0, ())
    assert final["counts"]["completed"] == 5, final
    assert written == 5
    assert (again.new, again.already_present) == (0, 5)
    exported = (tmp_path / "spring.csv").read_text().splitlines()
    assert len(exported) == 6 and all(Path(line.split(",")[2]).is_file() for line in exported[1:])


def test_status_is_the_cli_status_json(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    with client_for(s) as client:
        client.submit(write_csv(tmp_path / "p.csv", "key,prompt", "a,red mug", "b,blue mug"), batch="b1")
        from_api = client.status("b1")
    from_cli = json.loads(s.cli("status", "b1", "--json", check=True).stdout)
    assert from_api == from_cli


def test_invalid_rows_raise_one_exception_with_every_problem(simulator, stack) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    rows = [{"key": "ok", "prompt": "fine"}, {"key": "", "prompt": "no key"}, {"key": "x", "model": "nope"}]
    with client_for(s) as client, pytest.raises(SubmitRejected) as caught:
        client.submit(rows, batch="bad")
    lines = sorted({problem.line for problem in caught.value.problems})
    assert lines == [2, 3], caught.value.problems
    assert "nothing was written" in str(caught.value)
    with client_for(s) as client, pytest.raises(BatchError):
        client.status("bad")  # nothing was written: not even the batch


def test_skip_invalid_writes_the_good_rows_and_returns_the_rejects(simulator, stack) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    rows = [{"key": "ok", "prompt": "fine"}, {"key": "bad", "prompt": "p", "aspect_ratio": "7:3"}]
    with client_for(s) as client:
        result = client.submit(rows, batch="partial", skip_invalid=True)
    assert result.new == 1
    assert [(p.line, p.field) for p in result.rejected] == [(2, "aspect_ratio")]


def test_input_level_problems_are_submit_rejected_not_tracebacks(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    with client_for(s) as client:
        for call in (
            lambda: client.submit(tmp_path / "missing.csv"),
            lambda: client.submit([{"key": "a", "prompt": "p"}], batch="w", window="25:00-26:00"),
            lambda: client.submit([{"key": "a", "prompt": "p"}], batch="m", model="no-such-model"),
            lambda: client.submit([], batch="empty"),
        ):
            with pytest.raises(SubmitRejected):
                call()


def test_retry_with_an_unknown_reason_lists_the_valid_codes(simulator, stack) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    with client_for(s) as client:
        client.submit([{"key": "a", "prompt": "p"}], batch="r")
        with pytest.raises(ValueError, match=r"valid codes: .*unavailable"):
            client.retry("r", reason="no-such-code")
        assert client.retry("r", reason=ErrorCode.UNAVAILABLE).moved == 0
        with pytest.raises(BatchError):
            client.cancel("no-such-batch")
        assert client.cancel("r").moved == 1


def test_cli_retry_with_an_unknown_reason_is_a_clear_error(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "a,red mug"), "r2")
    result = s.cli("retry", "r2", "--reason", "flaky")
    assert result.returncode == 2
    assert "unknown error code 'flaky'" in result.stderr and "unavailable" in result.stderr
    assert "Traceback" not in result.stderr


APP_SCRIPT = """
from nanobatch import Client

with Client() as client:
    result = client.submit([{"key": "sku-1", "prompt": "a red mug"}], batch="from-app")
    final = client.wait("from-app", timeout=90)
print(result.new, final["counts"]["completed"])
"""


def test_an_app_folder_with_its_own_tasks_and_models_modules(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given an application folder holding its own tasks.py and models.py
    app_dir = tmp_path / "shop-app"
    app_dir.mkdir()
    (app_dir / "tasks.py").write_text("raise SystemExit('the application tasks.py was imported')\n")
    (app_dir / "models.py").write_text("raise SystemExit('the application models.py was imported')\n")
    (app_dir / "submit_tonight.py").write_text(textwrap.dedent(APP_SCRIPT))
    s = stack(simulator())
    env = {**os.environ, **s.env, "PYTHONPATH": ""}  # the installed package, not this checkout
    # When a worker and the application's script both run from that folder
    queues = f"{s.env['NANOBATCH_QUEUE']},{s.env['NANOBATCH_QUEUE']}.control"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "nanobatch.tasks",
            "worker",
            "-P",
            "threads",
            "-c",
            "2",
            "-Q",
            queues,
            "--without-mingle",
            "--without-gossip",
            "-l",
            "warning",
        ],
        cwd=app_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    s.workers.append(worker)
    script = [sys.executable, "submit_tonight.py"]
    done = subprocess.run(script, cwd=app_dir, env=env, capture_output=True, text=True, timeout=150)
    # Then nanobatch's own modules were used and the batch completed
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["1", "1"]
    assert worker.poll() is None, "the worker exited"
