"""The API key never leaves the worker's environment: not into logs, rows, exports, Redis or Flower.

One full run with a recognisable fake key: a good upstream that demands the key and fails 30 % of
calls with 5xx, an upstream for which the key is wrong (400 API_KEY_INVALID), and a rude relay that
echoes the key it received back inside its 503 error message (so the key really reaches our error
handling). Then every place the key could end up is read back and searched for the key and for a
truncated fragment of it: every line of every worker log, every column of every row of every table,
``nanobatch export`` (CSV and JSONL), ``status`` (table and ``--json``), ``report``, ``limits show``,
every Celery message body and key still in Redis, Flower's task list, worker list and task pages,
and the simulator's own request log. Zero hits.

Each source is also checked for *having content* (the error path ran, messages are queued, Flower
saw the tasks), so an empty source cannot pass the search vacuously.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.simulator.server import RunningSimulator
from tests.conftest import free_port
from tests.integration.conftest import REPO, Stack, write_csv

pytestmark = pytest.mark.integration

KEY = "AIzaFAKEsecret0123456789abcdefghijk"
#: A truncated or re-encoded key is a leak too.
NEEDLES = (KEY, "FAKEsecret0123456789", base64.b64encode(KEY.encode()).decode()[:24])
OTHER_PROJECT_KEY = "AIzaTHEotherPROJECTkey0000000000000000"
FLOWER_AUTH = ("ops", "secrets-test-flower-password")


class EchoingRelay:
    """A rude upstream: answers 503 with the API key it received quoted in the error message.

    Real relays and proxies do this ("invalid key AIza… for project …"); it is what makes the
    redaction of stored and logged error messages observable.
    """

    def __init__(self) -> None:
        self.received: list[str] = []
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get("x-goog-api-key") or ""
                relay.received.append(key)
                body = json.dumps(
                    {
                        "error": {
                            "code": 503,
                            "status": "UNAVAILABLE",
                            "message": f"backend overloaded for key={key} (api key {key})",
                        }
                    }
                )
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def relay() -> Iterator[EchoingRelay]:
    server = EchoingRelay()
    yield server
    server.stop()


class FlowerUI:
    """``nanobatch flower`` on a free loopback port, with basic auth from the environment."""

    def __init__(self, s: Stack, log: Path) -> None:
        self.base = f"http://127.0.0.1:{free_port()}"
        env = {**os.environ, **s.env, "NANOBATCH_FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nanobatch.cli",
                "flower",
                "--port",
                self.base.rsplit(":", 1)[1],
                "--address",
                "127.0.0.1",
            ],
            cwd=REPO,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.log = log

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base + path, auth=FLOWER_AUTH, timeout=15)

    def wait_json(self, path: str, until: Any, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = self.get(path)
                if response.status_code == 200 and until(body := response.json()):
                    return body
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.25)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def flower_ui(tmp_path: Path) -> Iterator[list[FlowerUI]]:
    started: list[FlowerUI] = []
    yield started
    for ui in started:
        ui.stop()


def leaks(where: str, content: str) -> list[str]:
    return [f"{where}: {needle!r}" for needle in NEEDLES if needle in content]


def run_batch(s: Stack, tmp_path: Path, batch: str, n: int, **worker_env: str) -> None:
    """Run ``batch`` on a worker of its own (env overrides), to the end, then stop that worker."""
    worker = s.start_worker(3, **{"GEMINI_API_KEY": KEY, **worker_env})  # type: ignore[arg-type]
    s.submit_file(
        write_csv(
            tmp_path / f"{batch}.csv",
            "key,prompt",
            *(f"{batch}-{i},{batch} product photo {i}" for i in range(n)),
        ),
        batch,
    )
    s.wait_terminal(batch, timeout=120)
    worker.terminate()
    worker.wait(timeout=30)


def test_the_api_key_is_nowhere_but_in_the_workers_environment(
    simulator: Callable[..., RunningSimulator],
    stack: Callable[..., Stack],
    relay: EchoingRelay,
    flower_ui: list[FlowerUI],
    tmp_path: Path,
) -> None:
    # Given an upstream that requires KEY and fails 30 % of calls, one for which KEY is wrong, and a
    # relay that echoes KEY back; Flower watching; the workers get KEY through GEMINI_API_KEY only
    good = simulator(api_key=KEY, fail_rates={500: 0.15, 503: 0.15}, seed=11)
    wrong = simulator(api_key=OTHER_PROJECT_KEY)
    s = stack(good, NANOBATCH_MAX_ATTEMPTS="8")
    assert KEY not in json.dumps(s.env)
    ui = FlowerUI(s, tmp_path / "flower.log")
    flower_ui.append(ui)
    ui.wait_json("/api/workers", lambda body: isinstance(body, dict))

    # When three batches run: one completes through retries, one fails on the key, one on the relay
    run_batch(s, tmp_path, "good", 8)
    run_batch(s, tmp_path, "wrongkey", 3, NANOBATCH_PROVIDER_BASE_URL=wrong.url)
    run_batch(
        s,
        tmp_path,
        "echo",
        2,
        NANOBATCH_PROVIDER_BASE_URL=relay.url,
        NANOBATCH_MAX_ATTEMPTS="2",
        NANOBATCH_BACKOFF_BASE="0.01",
    )
    # and one more batch is queued with no worker running, so its Celery messages stay in Redis
    s.submit_file(write_csv(tmp_path / "queued.csv", "key,prompt", "Q1,mug", "Q2,cup", "Q3,plate"), "queued")

    # Then the run did exercise every path (nothing below can pass vacuously)
    assert s.summary("good").counts["completed"] == 8
    assert sum(good.stats()["by_status"].get(code, 0) for code in ("500", "503")) > 0
    assert s.summary("wrongkey").counts["failed"] == 3 and s.summary("echo").counts["failed"] == 2
    assert relay.received and set(relay.received) == {KEY}, "the relay must have been sent the key"
    found: list[str] = []

    # -- worker logs, every line
    logs = {p.name: p.read_text(errors="replace") for p in sorted(tmp_path.glob("worker*.log"))}
    assert len(logs) == 3 and all("nanobatch.generate" in text for text in logs.values())
    for name, content in logs.items():
        found += leaks(name, content)

    # -- the database: every column of every row of every table, as text
    dump = database_dump(s)
    assert "API key not valid" in dump and "[REDACTED]" in dump, "the error messages must have been stored"
    found += leaks("database", dump)

    # -- operator outputs
    exports = [("export", b, "--format", f) for b in ("good", "wrongkey", "echo") for f in ("csv", "jsonl")]
    views = [("status",), ("status", "--json"), ("status", "echo", "--json"), ("limits", "show", "--json")]
    for args in [*views, *exports]:
        result = s.cli(*args, check=True)
        found += leaks(f"nanobatch {' '.join(args)}", result.stdout + result.stderr)
    exported = s.cli("export", "wrongkey", "--format", "jsonl", check=True).stdout
    assert exported.count("\n") == 3 and "API key not valid" in exported
    report = tmp_path / "report.html"
    s.cli("report", "echo", "--output", str(report), check=True)
    found += leaks("nanobatch report", report.read_text(errors="replace"))

    # -- Redis: every key of the stack and every Celery message body still queued
    redis_text, bodies = redis_dump(s)
    assert len(bodies) >= 3, "the queued batch's messages must still be in Redis"
    queued_ids = {t.id for t in tasks_of(s, "queued")}
    assert {tuple(b["args"]) for b in bodies} >= {(i,) for i in queued_ids}
    assert all(len(b["args"]) == 1 and not b["kwargs"] for b in bodies), "messages carry a task id only"
    found += leaks("redis", redis_text)

    # -- Flower: the task list, the worker list and the task pages
    all_ids = {t.id for b in ("good", "wrongkey", "echo") for t in tasks_of(s, b)}
    tasks = ui.wait_json(
        "/api/tasks",
        lambda body: all_ids <= {a.strip("(),' ") for a in (t.get("args") or "" for t in body.values())},
    )
    found += leaks("flower /api/tasks", json.dumps(tasks))
    found += leaks("flower /api/workers", ui.get("/api/workers?refresh=1").text)
    found += leaks("flower /tasks", ui.get("/tasks").text)
    for uuid in [u for u, t in tasks.items() if (t.get("args") or "").strip("(),' ") in all_ids][:10]:
        page = ui.get(f"/task/{uuid}")
        assert page.status_code == 200
        found += leaks(f"flower /task/{uuid}", page.text)

    # -- what the upstream simulators logged about the requests
    found += leaks("simulator request log", json.dumps(good.requests(1000) + wrong.requests(1000)))

    assert found == [], "the API key leaked:\n" + "\n".join(found)


def tasks_of(s: Stack, batch: str) -> list[GenerationTask]:
    with s.runtime.db.session() as session:
        return list(session.scalars(select(GenerationTask).join(Batch).where(Batch.name == batch)))


def database_dump(s: Stack) -> str:
    with s.runtime.db.session() as session:
        tables = session.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).all()
        assert {"batches", "generation_tasks"} <= set(tables)
        return "\n".join(
            row for table in tables for row in session.scalars(text(f'SELECT t::text FROM "{table}" t'))
        )


def redis_dump(s: Stack) -> tuple[str, list[dict[str, Any]]]:
    """Every key under the stack's prefix as text, and the decoded bodies of queued Celery messages."""
    client = s.runtime.redis
    parts: list[str] = []
    bodies: list[dict[str, Any]] = []
    for raw_key in client.scan_iter(f"{s.env['NANOBATCH_LIMITER_PREFIX']}*", count=1000):
        key = _text(raw_key)
        kind = _text(client.type(raw_key))
        values = _values(client, raw_key, kind)
        parts += [key, *(v.decode(errors="replace") for v in values if v is not None)]
        if kind == "list" and key == s.env["NANOBATCH_QUEUE"]:
            for message in values:
                envelope = json.loads(message)
                args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
                bodies.append({"args": args, "kwargs": kwargs, "headers": envelope.get("headers", {})})
                parts.append(json.dumps(bodies[-1]))
    return "\n".join(parts), bodies


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _values(client: Any, key: bytes, kind: str) -> list[bytes]:
    if kind == "string":
        return [client.get(key)]
    if kind == "list":
        return list(client.lrange(key, 0, -1))
    if kind == "hash":
        return [b for kv in client.hgetall(key).items() for b in kv]
    if kind == "set":
        return list(client.smembers(key))
    if kind == "zset":
        return [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    if kind == "stream":
        return [json.dumps(entry, default=str).encode() for entry in client.xrange(key)]
    return []
