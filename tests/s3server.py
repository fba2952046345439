"""An S3-compatible server on loopback for the storage tests: moto in server mode, in this process.

``s3_server`` (session) starts ``moto.server.ThreadedMotoServer`` on ``127.0.0.1:<free port>``; it
needs nothing installed beyond the dev extra (``moto[server]``), so ``.ci/run`` runs these tests like
any other. ``s3_env`` creates a fresh bucket per test and returns the standard AWS variables a worker
or the CLI reads (credentials are moto's dummies); ``s3_store`` is that bucket opened in this process.
Restarting the server (``S3Server.stop()`` / ``start()``) keeps its buckets: moto's state lives in
this process, so a store outage can be simulated and ended.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    port: int = field(default_factory=_free_port)
    _server: Any = None
    _connections: list[socket.socket] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        deadline = time.monotonic() + 20
        while True:
            try:
                self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
                self._server.start()
                self._track_connections(self._server._server)
                break
            except OSError:  # the port is still held by the previous run (TIME_WAIT)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self._wait(up=True)

    def _track_connections(self, server: Any) -> None:
        """Remember every accepted socket: a threaded werkzeug server goes on serving keep-alive
        connections after ``shutdown()``, so a client that reuses one would never see the outage."""
        accept = server.get_request

        def get_request() -> tuple[socket.socket, Any]:
            conn, address = accept()
            self._connections.append(conn)
            return conn, address

        server.get_request = get_request

    def stop(self) -> None:
        """The store goes away: no new connections, and the open ones are cut."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        for conn in self._connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                conn.shutdown(socket.SHUT_RDWR)
        self._connections.clear()
        self._wait(up=False)

    def _wait(self, *, up: bool) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    if up:
                        return
            except OSError:
                if not up:
                    return
            time.sleep(0.05)
        raise AssertionError(f"moto server did not {'start' if up else 'stop'} on port {self.port}")

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        urllib.request.urlopen(request, timeout=10).read()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] (dev extra) is needed for the S3 tests")
    server = S3Server()
    server.start()
    yield server
    server.stop()


def aws_env(server: S3Server) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": server.endpoint,
    }


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh bucket; the AWS variables are set in this process too. ``NANOBATCH_OUTPUT_DIR`` names it."""
    bucket = f"nb-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    env = aws_env(s3_server)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {**env, "NANOBATCH_OUTPUT_DIR": f"s3://{bucket}/images"}


@pytest.fixture
def s3_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second moto server, in its own process, that checks credentials (it knows none, so every
    key is refused: a stand-in for wrong credentials). Yields its endpoint."""
    import os
    import subprocess
    import sys

    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=log,
        stderr=log,
    )
    try:
        S3Server(port=port)._wait(up=True)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
