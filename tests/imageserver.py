"""A loopback HTTP server for input-image URLs in tests: a distinct real image per path, plus the
hostile answers the URL fetcher must refuse (redirects to private hosts, bombs, huge or non-images).

Paths: ``/<anything>.jpg|.png|.webp`` → an image whose colour is derived from the path (so two
photos differ, and the simulator's log tells which one was sent); ``/redirect?to=URL`` → 302;
``/notimage.jpg`` → text; ``/bomb.png`` → a tiny PNG claiming 20000x20000 pixels; ``/huge.jpg`` →
more bytes than the fetcher allows; ``/gif.gif`` → a GIF (format not accepted); ``/missing.jpg`` → 404.
Every request is recorded (``hits``), so a test can prove a URL was fetched once.
"""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image


def image_bytes(path: str) -> tuple[bytes, str]:
    """The image served at ``path`` (deterministic): (bytes, content type)."""
    digest = hashlib.sha256(path.encode()).digest()
    color = (digest[0], digest[1], digest[2])
    fmt = "PNG" if path.endswith(".png") else "WEBP" if path.endswith(".webp") else "JPEG"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, fmt)
    return buffer.getvalue(), f"image/{fmt.lower()}"


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header that claims width x height pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


class ImageServer:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                server.hits[parts.path] += 1
                if parts.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parts.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, kind, status = b"", "image/jpeg", 200
                if parts.path == "/missing.jpg":
                    status, body, kind = 404, b"not found", "text/plain"
                elif parts.path == "/notimage.jpg":
                    body, kind = b"<html>this is a page, not a photo</html>", "text/html"
                elif parts.path == "/bomb.png":
                    body, kind = bomb_png(), "image/png"
                elif parts.path == "/huge.jpg":
                    body = b"\xff" * (21 * 1024 * 1024)
                elif parts.path.endswith(".gif"):
                    buffer = io.BytesIO()
                    Image.new("RGB", (8, 8)).save(buffer, "GIF")
                    body, kind = buffer.getvalue(), "image/gif"
                else:
                    body, kind = image_bytes(parts.path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sha256_of(path: str) -> str:
    return hashlib.sha256(image_bytes(path)[0]).hexdigest()
