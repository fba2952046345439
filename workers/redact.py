"""Remove secrets from any text we keep (error messages, logs, database rows, exports, metric labels).

Upstreams echo keys back in URLs (``?key=…``), error messages, quota ids and even ``modelVersion``, and
not always verbatim: lower-cased, percent-encoded, base64-encoded. :func:`redact` replaces the key we
hold in every one of those spellings (case-insensitively), and anything shaped like a Google or OpenAI
key, so even a key we do not know is not stored. It is applied to every upstream-echoed field once,
where provider answers leave the provider layer (``workers.providers.redacted``), and to metric
labels (:func:`metric_label`).
"""

from __future__ import annotations

import base64
import re
from functools import lru_cache
from urllib.parse import quote, quote_plus

_KEY_SHAPES = re.compile(
    r"AIza[0-9A-Za-z_\-]{20,}"  # Google API keys
    r"|sk-[0-9A-Za-z_\-]{16,}"  # OpenAI-style keys
    r"|(?<=key=)[^&\s\"']+"  # ?key=… query parameters
    r"|(?<=Bearer )[^\s\"']+",  # bearer tokens echoed in messages
    re.IGNORECASE,
)

REDACTED = "[REDACTED]"
#: A metric label is at most this long, of these characters (an upstream value must not explode the
#: number of series, nor carry anything odd into the exposition format).
MAX_LABEL = 100
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/\-\[\]]+")


@lru_cache(maxsize=16)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    """Every spelling of ``secret`` an upstream might echo: as is, percent-encoded (``quote``,
    ``quote_plus``), base64 (standard and URL-safe, with or without padding); case-insensitive."""
    raw = secret.encode("utf-8")
    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        base64.b64encode(raw).decode("ascii").rstrip("="),
        base64.urlsafe_b64encode(raw).decode("ascii").rstrip("="),
    }
    ordered = sorted(forms, key=len, reverse=True)
    return re.compile("|".join(re.escape(form) for form in ordered), re.IGNORECASE)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every given secret (in any spelling above) and every key-shaped token replaced."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = _secret_pattern(secret).sub(REDACTED, text)
    return _KEY_SHAPES.sub(REDACTED, text)


def metric_label(text: str, *secrets: str | None) -> str:
    """An upstream value made safe as a Prometheus label: redacted, a small alphabet, bounded length."""
    return _LABEL_UNSAFE.sub("_", redact(text, *secrets))[:MAX_LABEL]
