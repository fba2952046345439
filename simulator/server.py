"""The HTTP side: a threading HTTP/1.1 server on loopback, run in a background thread or blocking.

Clients under test pool keep-alive connections (httpx) and hold 100+ slow requests open at once,
so the server speaks HTTP/1.1 with an exact Content-Length on every answer, gives each connection
its own daemon thread, and has a deep listen backlog. It also does what a normal server never
does, on purpose: *hold* a request without answering until the client gives up (timeout fault),
*cut* a response after its headers promised more bytes (drop fault), *stream* a body too large to
build (oversized fault) and *trickle* one a byte at a time (trickle fault). Streams and trickles stop
as soon as the client hangs up (counted in ``stats()["abandoned"]``) or the simulator stops, and a
trickle sends the rest at once after its limit, so no fault ties up a server thread for long.

Stopping wakes every simulated wait, shuts every open connection and joins the serving thread,
so a test fixture's teardown is quick and leaves no thread writing to a dead socket.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import select
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from nanobatch.simulator.app import SimulatorApp
from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.google_errors import google_error
from nanobatch.simulator.protocol import Drop, Hold, HttpRequest, Outcome, Reply, Stream, Trickle

logger = logging.getLogger("nanobatch.simulator")

MAX_BODY_BYTES = 256 * 1024 * 1024
IDLE_KEEPALIVE_SECONDS = 300
POLL_SECONDS = 0.05


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: SimulatorApp) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse-DNS lookup of the host name (slow on some hosts)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nanobatch-simulator/1"
    sys_version = ""
    timeout = IDLE_KEEPALIVE_SECONDS
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            self._send(google_error(413 if "large" in str(exc) else 400, str(exc)))
            return
        url = urlsplit(self.path)
        request = HttpRequest(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            base_url=f"http://{self.headers.get('Host') or self._own_host()}",
        )
        self.server.app.handle(request, self._send)

    def _own_host(self) -> str:
        return f"{self.server.server_name}:{self.server.server_port}"

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ValueError("Content-Length is not a number") from None
        if length > MAX_BODY_BYTES:
            raise ValueError(f"request body too large ({length} bytes, at most {MAX_BODY_BYTES})")
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise ValueError(f"request body too large (more than {MAX_BODY_BYTES} bytes)")
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _send(self, outcome: Outcome) -> None:
        if isinstance(outcome, Reply):
            self._write(outcome)
        elif isinstance(outcome, Hold):
            self._hold(outcome.seconds)
        elif isinstance(outcome, Drop):
            self._drop(outcome.reply)
        elif isinstance(outcome, Stream):
            self._stream(outcome)
        else:
            self._trickle(outcome)

    def _head(self, status: int, content_type: str, length: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _write(self, reply: Reply, *, cut: bool = False) -> None:
        self._head(reply.status, reply.content_type, len(reply.body), reply.headers)
        if self.command == "HEAD":
            return
        self.wfile.write(reply.body[: len(reply.body) // 2] if cut else reply.body)

    def _stream(self, stream: Stream) -> None:
        """Write the body as its chunks are produced; stop when the client leaves or the simulator stops."""
        self._head(stream.status, stream.content_type, stream.length, stream.headers)
        try:
            for chunk in stream.chunks:
                if self.server.app.stopping.is_set():
                    raise ConnectionAbortedError("the simulator is stopping")
                self.wfile.write(chunk)
        except OSError:
            self._abandon(stream.label)

    def _trickle(self, trickle: Trickle) -> None:
        """Headers at once, then one body byte per interval until the limit, then the rest at once.

        Between bytes the socket is watched, so a client that hangs up ends the trickle at once.
        """
        body = trickle.reply.body
        self._head(trickle.reply.status, trickle.reply.content_type, len(body), trickle.reply.headers)
        deadline = time.monotonic() + trickle.limit
        sent = 0
        try:
            while sent < len(body) and time.monotonic() < deadline:
                self.wfile.write(body[sent : sent + 1])
                sent += 1
                if sent < len(body) and self._gone_after(trickle.interval, deadline):
                    raise ConnectionAbortedError("the client left or the simulator is stopping")
            self.wfile.write(body[sent:])
        except OSError:
            self._abandon(trickle.label)

    def _gone_after(self, interval: float, deadline: float) -> bool:
        """Wait ``interval`` (never past ``deadline``); ``True`` if the client left or we are stopping."""
        pause = min(interval, max(0.0, deadline - time.monotonic()))
        return self._client_gone(pause) or self.server.app.stopping.is_set()

    def _abandon(self, label: str) -> None:
        """A streamed answer ended early: the connection cannot carry another request; count it."""
        self.close_connection = True
        self.server.app.abandoned(label)

    def _drop(self, reply: Reply) -> None:
        """Promise the whole body in Content-Length, send half of it, then cut the connection."""
        self.close_connection = True
        self._write(reply, cut=True)
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)

    def _hold(self, seconds: float) -> None:
        """Answer nothing until the client hangs up, ``seconds`` pass or the simulator stops."""
        self.close_connection = True
        deadline = time.monotonic() + seconds
        stopping = self.server.app.stopping
        while not stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._client_gone(min(remaining, 0.1)):
                return

    def _client_gone(self, wait: float) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], wait)
            if not readable:
                return False
            if self.connection.recv(1, socket.MSG_PEEK):
                self.server.app.stopping.wait(wait)  # the client sent more; keep ignoring it
                return False
            return True
        except OSError:
            return True


class RunningSimulator:
    """A simulator serving in a background daemon thread; use as a context manager or call stop()."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread
        self.app = server.app
        host, port = server.server_name, server.server_port
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self._stopped = False

    @property
    def config(self) -> SimulatorConfig:
        return self.app.config

    def stats(self) -> dict[str, Any]:
        """The same dict ``GET /_sim/stats`` returns."""
        return self.app.stats.snapshot()

    def requests(self, limit: int = 50) -> list[dict[str, Any]]:
        """The last ``limit`` request summaries, oldest first (``GET /_sim/requests?limit=N``)."""
        return self.app.stats.recent(limit)

    def reset(self) -> None:
        self.app.reset()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops or ``timeout`` passes; ``True`` while it is still serving."""
        self._thread.join(timeout)
        return self._thread.is_alive()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.app.stopping.set()
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.app.close()

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_simulator(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_remote: bool = False,
    clock: Callable[[], float] = time.time,
) -> RunningSimulator:
    """Bind ``host:port`` (0 picks a free port) and serve in a daemon thread; returns at once.

    ``clock`` drives the quota windows (tests run them faster than real time; latency is not affected).
    """
    if not allow_remote and not is_loopback(host):
        raise ValueError(
            f"the simulator listens on loopback only (got host {host!r}); "
            "pass allow_remote=True to expose it deliberately"
        )
    server = _Server((host, port), SimulatorApp(config, clock=clock))
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": POLL_SECONDS},
        name=f"nanobatch-simulator-{server.server_port}",
        daemon=True,
    )
    thread.start()
    return RunningSimulator(server, thread)


def serve(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8089,
    *,
    on_ready: Callable[[RunningSimulator], None] | None = None,
    allow_remote: bool = False,
) -> None:
    """Serve until Ctrl-C. ``on_ready`` runs once the port is bound (e.g. to print the URL)."""
    simulator = start_simulator(config, host, port, allow_remote=allow_remote)
    try:
        if on_ready is not None:
            on_ready(simulator)
        while simulator.wait(timeout=0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop()
