"""Remove secrets from any text we keep (error messages, logs, database rows).

Upstreams echo keys back in URLs (``?key=…``) and error messages; we redact both the exact key we
hold and anything shaped like a Google or OpenAI key, so even a key we do not know is not stored.
"""

from __future__ import annotations

import re

_KEY_SHAPES = re.compile(
    r"AIza[0-9A-Za-z_\-]{20,}"  # Google API keys
    r"|sk-[0-9A-Za-z_\-]{16,}"  # OpenAI-style keys
    r"|(?<=key=)[^&\s\"']+"  # ?key=… query parameters
    r"|(?<=Bearer )[^\s\"']+",  # bearer tokens echoed in messages
)

REDACTED = "[REDACTED]"


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every given secret and every key-shaped token replaced by ``[REDACTED]``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return _KEY_SHAPES.sub(REDACTED, text)
