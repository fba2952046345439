"""Hostile loopback servers for the integrity tests: an upstream that answers exactly the bad thing a
test needs (a truncated image, a huge answer, a byte every half second, an echoed key), and a TCP proxy
in front of Redis or PostgreSQL that a test can cut to simulate an outage.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import select
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

#: ``respond(n, handler, body)``: answer the ``n``-th request (1-based) whose body was ``body``.
Respond = Callable[[int, BaseHTTPRequestHandler, bytes], None]


def png_bytes(
    width: int, height: int, *, noise: bool = False, colour: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    """A real PNG; ``noise`` makes it large (greyscale noise barely compresses)."""
    if noise:
        image = Image.frombytes("L", (width, height), os.urandom(width * height))
        level = 0
    else:
        image = Image.new("RGB", (width, height), colour)
        level = 6
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=level)
    return buffer.getvalue()


def gemini_answer(
    image: bytes, *, mime: str = "image/png", model_version: str = "gemini-3-pro-image"
) -> bytes:
    """A Gemini ``generateContent`` 200 body carrying ``image``."""
    body = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"inlineData": {"mimeType": mime, "data": base64.b64encode(image).decode()}}],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1290, "totalTokenCount": 1295},
        "modelVersion": model_version,
        "responseId": "resp-1",
    }
    return json.dumps(body).encode()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


class Upstream:
    """A loopback HTTP server; every POST/GET is answered by ``respond`` (counted in ``calls``)."""

    def __init__(self, respond: Respond) -> None:
        self.calls = 0
        self.requests: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self.release = threading.Event()  # for handlers that hold an answer until the test says so
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with upstream._lock:
                    upstream.calls += 1
                    number = upstream.calls
                    upstream.requests.append(dict(self.headers.items()))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                    respond(number, self, body)

            do_POST = _serve
            do_GET = _serve

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class TcpProxy:
    """``127.0.0.1:port`` → ``target``; :meth:`cut` closes every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()  # down: connection refused, as far as the client can tell
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, server}
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                if not self._up.is_set():
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                with self._lock:
                    self._sockets.discard(sock)
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until :meth:`restore`."""
        self._up.clear()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()
