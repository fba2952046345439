"""Pacific midnights, computed in Python because Lua in Redis has no time zones."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import pytest

from nanobatch.workers.limiter import PACIFIC, next_pacific_midnight, pacific_midnights
from nanobatch.workers.limiter.clock import from_micros, micros_arg, to_micros, wait_from_micros


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc("2026-01-15T20:00"), utc("2026-01-16T08:00")),  # winter noon PST
        (utc("2026-07-04T16:30"), utc("2026-07-05T07:00")),  # summer, PDT
        (utc("2026-03-08T09:59"), utc("2026-03-09T07:00")),  # 01:59 PST, a minute before spring forward
        (utc("2026-03-08T10:00"), utc("2026-03-09T07:00")),  # 03:00 PDT, right after it
        (utc("2026-11-01T08:30"), utc("2026-11-02T08:00")),  # 01:30 PST, the repeated hour of fall back
        (utc("2026-11-01T07:59:59"), utc("2026-11-02T08:00")),  # still the same (25 h) day
        (utc("2026-01-16T08:00"), utc("2026-01-17T08:00")),  # exactly midnight counts as the new day
        (utc("2026-01-16T07:59:59.999999"), utc("2026-01-16T08:00")),
    ],
)
def test_next_pacific_midnight(now: float, expected: float) -> None:
    assert next_pacific_midnight(now) == expected


def test_dst_days_are_23_and_25_hours_long() -> None:
    spring = pacific_midnights(utc("2026-03-08T12:00"))
    fall = pacific_midnights(utc("2026-11-01T12:00"))

    assert spring[2] - spring[1] == 23 * 3600
    assert fall[2] - fall[1] == 25 * 3600


def test_the_midnights_bracket_now_with_a_day_either_side() -> None:
    now = utc("2026-05-20T03:00")  # 20:00 PDT on the 19th

    midnights = pacific_midnights(now)

    assert midnights == sorted(midnights) and len(midnights) == 4
    assert midnights[1] <= now < midnights[2]
    assert [datetime.fromtimestamp(m, PACIFIC).time().hour for m in midnights] == [0, 0, 0, 0]
    assert datetime.fromtimestamp(midnights[1], PACIFIC).date() == datetime(2026, 5, 19).date()
    assert [b - a for a, b in pairwise(midnights)] == [86400.0] * 3


def test_microsecond_arguments_round_trip() -> None:
    now = utc("2026-01-15T20:00:00.123456")

    assert micros_arg(None) == ""
    assert from_micros(micros_arg(now)) == pytest.approx(now, abs=1e-6)
    assert to_micros(2.5) == 2_500_000
    assert wait_from_micros("-1") == float("inf")
    assert wait_from_micros(b"2500000") == 2.5
