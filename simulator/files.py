"""Images kept for ``response_format: "url"`` answers, served back at ``/_sim/files/<id>``.

Bounded by total bytes (oldest evicted first) so a long rehearsal asking for URLs cannot grow the
simulator without limit; a client that fetches an evicted URL gets a 404, as with expired signed
URLs in production.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict

DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024


class FileStore:
    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self._files: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def put(self, data: bytes, mime_type: str) -> str:
        """Store bytes; returns the id to put in the URL."""
        file_id = secrets.token_urlsafe(12)
        with self._lock:
            self._files[file_id] = (data, mime_type)
            self._size += len(data)
            while self._size > self.budget_bytes and len(self._files) > 1:
                _, (old, _) = self._files.popitem(last=False)
                self._size -= len(old)
        return file_id

    def get(self, file_id: str) -> tuple[bytes, str] | None:
        with self._lock:
            return self._files.get(file_id)
