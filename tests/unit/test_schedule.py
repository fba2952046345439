"""Batch windows and start times with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nanobatch.models.schedule import inside_window, next_occurrence, outside_window, parse_window


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, 23, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(("hour", "inside"), [(0, False), (1, True), (5, True), (6, False), (12, False)])
def test_plain_window(hour: int, inside: bool) -> None:
    assert inside_window(at(hour), "01:00", "06:00", "UTC") is inside


@pytest.mark.parametrize(("hour", "inside"), [(21, False), (22, True), (23, True), (3, True), (4, False)])
def test_window_across_midnight(hour: int, inside: bool) -> None:
    assert inside_window(at(hour), "22:00", "04:00", "UTC") is inside


def test_window_uses_the_batch_time_zone() -> None:
    # 09:30 UTC is 01:30 in Los Angeles in November (PST, UTC-8).
    assert inside_window(at(9, 30), "01:00", "06:00", "America/Los_Angeles")
    assert outside_window(at(9, 30), "01:00", "06:00", "UTC")
    assert not outside_window(at(9, 30), None, None, "UTC")


def test_next_occurrence_today_or_tomorrow() -> None:
    assert next_occurrence("01:00", "UTC", now=at(0, 30)) == at(1)
    assert next_occurrence("01:00", "UTC", now=at(2)) == datetime(2026, 11, 24, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["1-6", "01:00", "25:00-03:00", "01:00-01:00", "aa:bb-cc:dd"])
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_window(text)
