"""Private Redis and PostgreSQL servers that the chaos suite is allowed to kill, wipe and restart.

The shared services on 6379/5432 carry other engineers' tests, so chaos never touches them: each run
starts its own ``redis-server`` (no persistence, so killing it *is* a wipe) and its own PostgreSQL
cluster (``initdb`` into a temporary directory) on free loopback ports. Both are plain subprocesses
owned by this harness and stopped by pid. Free of pytest, so ``bench/chaos.py`` uses them as well.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import redis

START_DEADLINE = 60.0


class ServiceUnavailable(RuntimeError):
    """The binaries needed for a private server are not installed on this machine."""


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _poll(probe: Callable[[], object], what: str, deadline: float = START_DEADLINE) -> None:
    """Call ``probe`` until it returns truthy; raise with ``what`` once ``deadline`` seconds pass."""
    end = time.monotonic() + deadline
    while True:
        with contextlib.suppress(Exception):
            if probe():
                return
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {deadline:.0f}s waiting for {what}")
        time.sleep(0.05)


class PrivateRedis:
    """A ``redis-server`` on a free loopback port; :meth:`wipe` kills it and starts an empty one."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceUnavailable("redis-server is not installed")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.workdir / f"redis-{self.starts}.log"),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.starts += 1
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            _poll(lambda: self._alive() and client.ping(), f"redis-server on port {self.port}")
        finally:
            client.close()

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode} (port {self.port} taken?)")
        return True

    def kill(self) -> None:
        """SIGKILL, as a crashed host would: everything in memory is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def wipe(self) -> None:
        """Data loss: kill the server and start an empty one on the same port."""
        self.kill()
        self.start()

    def flush(self) -> None:
        """Data loss without a restart: FLUSHDB (clients stay connected to an empty database)."""
        client = redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.flushdb()
        finally:
            client.close()

    def stop(self) -> None:
        self.kill()


def _pg_bindir() -> Path:
    configured = os.environ.get("NANOBATCH_CHAOS_PG_BINDIR")
    candidates = [configured] if configured else sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise ServiceUnavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a free loopback port, restartable at will.

    As root, PostgreSQL refuses to run, so the cluster directory is handed to the ``postgres`` OS
    user and every server command runs through ``runuser``. The directory is made with ``mkdtemp``
    under the system temp dir (pytest's own tmp dirs are 0700 root, unreadable for ``postgres``).
    """

    def __init__(self, port: int | None = None) -> None:
        self.bindir = _pg_bindir()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise ServiceUnavailable("running as root, but there is no 'postgres' OS user") from None
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="nbchaos-pg-"))
        self.data = self.root / "data"
        if self._as_postgres:
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        result = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr[-2000:]}")

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )

    def init(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def _ctl(self, action: str, *extra: str) -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            *extra,
            action,
        )

    def start(self) -> None:
        self._ctl("start", "-o", self._options())
        _poll(self._accepts, f"PostgreSQL on port {self.port}")

    def restart(self) -> None:
        """A fast restart: every client connection is cut, the server comes back with the data."""
        self._ctl("restart", "-m", "fast", "-o", self._options())
        _poll(self._accepts, f"PostgreSQL on port {self.port} after the restart")

    def _accepts(self) -> bool:
        with psycopg.connect(self.admin_dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._ctl("stop", "-m", "immediate")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
