"""Pacific-time arithmetic for the daily quota, and the microsecond units the Lua scripts use.

Gemini's requests-per-day quota resets at midnight America/Los_Angeles. Lua inside Redis has no time
zones, so Python computes the surrounding midnights (with ``zoneinfo``, correct across DST) from the
caller's approximate clock and passes them to the script, which picks the interval that contains the
Redis clock. Worker clocks may be skewed by seconds, never by a day, so four midnights are plenty.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

PACIFIC = ZoneInfo("America/Los_Angeles")
MICROS = 1_000_000


def pacific_midnight(day: date) -> float:
    """Epoch seconds of 00:00 Pacific on ``day`` (midnight always exists: DST switches at 02:00)."""
    return datetime(day.year, day.month, day.day, tzinfo=PACIFIC).timestamp()


def pacific_day(now: float) -> date:
    return datetime.fromtimestamp(now, PACIFIC).date()


def next_pacific_midnight(now: float) -> float:
    """Epoch seconds of the first Pacific midnight strictly after ``now``."""
    return pacific_midnight(pacific_day(now) + timedelta(days=1))


def pacific_midnights(now: float) -> list[float]:
    """Midnights starting yesterday, today, tomorrow and the day after (Pacific), ascending.

    Three consecutive Pacific days around ``now``: enough for the script to find the day containing
    the Redis clock even when the caller's clock is off by up to a day either way.
    """
    today = pacific_day(now)
    return [pacific_midnight(today + timedelta(days=offset)) for offset in (-1, 0, 1, 2)]


def to_micros(seconds: float) -> int:
    return round(seconds * MICROS)


def micros_arg(seconds: float | None) -> str:
    """A time for the scripts' ARGV: integer microseconds, or "" to use Redis TIME."""
    return "" if seconds is None else str(to_micros(seconds))


def from_micros(value: bytes | str | int) -> float:
    return int(float(value)) / MICROS


def wait_from_micros(value: bytes | str | int) -> float:
    """A wait from a script; negative means "never fits" and becomes ``math.inf``."""
    micros = int(float(value))
    return math.inf if micros < 0 else micros / MICROS
