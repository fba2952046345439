"""How long a 429 says to wait, read from every place real upstreams put it, as a lower bound.

Why a module of its own: both providers read the same kinds of hints, and getting them wrong in the
short direction makes a worker hammer a pool that just said "not yet". The rule everywhere is *never
wait less than the upstream asked*; where a hint is coarser than the truth it is rounded up.

Where the hints are, from real answers (fixtures in ``tests/fixtures/upstream/``):

* Gemini: ``RetryInfo.retryDelay`` is whole seconds, **truncated** (``"58s"``), while the message
  carries the precise figure (``"Please retry in 58.934310785s."``; sometimes ``ms``). The precise
  figure wins when present; a whole-second ``retryDelay`` alone is rounded up by one second
  (DESIGN §8; googleapis/js-genai and google-gemini/gemini-cli issue threads quote both forms).
* OpenAI: ``retry-after-ms`` / ``retry-after`` headers (what openai-python's client honours), the
  message (``"Please try again in 2.226s."``, ``"in 1m30s"``, ``"in 20ms"``,
  ``"try again after 51.84 seconds"``, Azure's ``"retry after 5 seconds"``), and the
  ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens`` headers in Go duration form
  (``"1s"``, ``"6m0s"``, ``"20ms"``) for whichever limit ``x-ratelimit-remaining-*`` says is spent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

#: One Go-style duration component: ``1h``, ``6m``, ``0s``, ``2.226s``, ``20ms``.
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_GO_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_WORD_UNITS = {
    "ms": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
}

#: Gemini's precise figure: "Please retry in 58.934310785s." / "retry in 513.6ms".
_GOOGLE_PRECISE = re.compile(r"\bretry in\s+(\d+(?:\.\d+)?)\s*(ms|s)\b", re.IGNORECASE)
#: "try again in 2.226s", "try again in 1m30s", "retry after 5 seconds", "try again after 51.84 seconds".
_PHRASE = r"(?:try again|retry)\s+(?:in|after)\s+(?:about\s+)?"
_MESSAGE_WORDS = re.compile(
    _PHRASE + r"(\d+(?:\.\d+)?)\s*(milliseconds?|ms|seconds?|secs?|minutes?|mins?|s)\b", re.IGNORECASE
)
_MESSAGE_GO = re.compile(_PHRASE + r"((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)\b", re.IGNORECASE)
_WHOLE_SECONDS = re.compile(r"^\s*\d+\s*s\s*$")

#: The headers OpenAI sends with every answer: reset time of each limit, and what is left of it.
RESET_HEADERS = {"x-ratelimit-reset-requests": "requests", "x-ratelimit-reset-tokens": "tokens"}


def parse_go_duration(text: object) -> float | None:
    """Seconds from a Go duration string (``"6m0s"``, ``"1h2m3.5s"``, ``"20ms"``, ``"1s"``); else ``None``."""
    if not isinstance(text, str) or not _GO_DURATION.fullmatch(text.strip()):
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _GO_PART.findall(text.strip()))


def google_message_delay(message: str) -> float | None:
    """The precise wait in a Gemini 429 message ("Please retry in 58.934310785s."), or ``None``."""
    match = _GOOGLE_PRECISE.search(message)
    if match is None:
        return None
    number, unit = match.groups()
    return float(number) * _UNIT_SECONDS[unit.lower()]


def google_retry_after(message: str, retry_delay: object) -> float | None:
    """Gemini's wait as a lower bound: the message's precise figure, else ``retryDelay`` rounded up.

    ``retry_delay`` is the ``RetryInfo.retryDelay`` string. Google truncates it to whole seconds
    (``"58s"`` for 58.93 s), so a whole-second value alone becomes ``+1 s``; a fractional one (as
    relays and the simulator send) is taken as it is. The result is never below either hint.
    """
    precise = google_message_delay(message)
    detail = _duration_seconds(retry_delay)
    whole = isinstance(retry_delay, str) and _WHOLE_SECONDS.match(retry_delay) is not None
    if detail is not None and precise is None and whole:
        detail += 1.0
    hints = [h for h in (precise, detail) if h is not None]
    return max(hints) if hints else None


def message_delay(message: str) -> float | None:
    """The wait an OpenAI-style message names ("try again in 2.226s", "in 1m30s", "after 51.84 seconds")."""
    found: list[float] = []
    for match in _MESSAGE_GO.finditer(message):
        seconds = parse_go_duration(match.group(1))
        if seconds is not None:
            found.append(seconds)
    for match in _MESSAGE_WORDS.finditer(message):
        number, unit = match.groups()
        found.append(float(number) * _WORD_UNITS[unit.lower()])
    return max(found) if found else None


def reset_headers_delay(headers: Mapping[str, str]) -> float | None:
    """Seconds until the spent limit resets, from ``x-ratelimit-reset-*`` (OpenAI, Go durations).

    Only the limits whose ``x-ratelimit-remaining-*`` is 0 count (a full reset of an unspent limit
    says nothing about this refusal); when no ``remaining`` header is sent, every reset counts.
    The longest one wins: the call needs all of its limits back.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    resets: list[float] = []
    for header, limit in RESET_HEADERS.items():
        seconds = parse_go_duration(lowered.get(header))
        if seconds is None:
            continue
        remaining = lowered.get(f"x-ratelimit-remaining-{limit}")
        if remaining is None or remaining.strip() in {"0", "0.0"}:
            resets.append(seconds)
    return max(resets) if resets else None


def lower_bound(*hints: float | None) -> float | None:
    """The longest of the finite hints given (``None`` when there is none)."""
    usable = [h for h in hints if h is not None and math.isfinite(h) and h >= 0]
    return max(usable) if usable else None


def _duration_seconds(text: object) -> float | None:
    """A protobuf Duration string ("26.5s", "58s", "0.412s") in seconds, else ``None``."""
    if not isinstance(text, str):
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*s?\s*", text)
    return float(match.group(1)) if match else None
