"""Time windows and start times for overnight batches, as pure functions of an injected clock.

A batch with ``--window 01:00-06:00`` is dispatched only while the local time (in the batch's
time zone) is inside the window; a window may cross midnight (``22:00-04:00``). Work still pending
when the window closes simply waits: the sweeper does not dispatch it until the next opening.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo


def parse_hhmm(text: str) -> time:
    try:
        hour, minute = text.strip().split(":")
        return time(int(hour), int(minute))
    except ValueError:
        raise ValueError(f"expected HH:MM (24-hour), got {text!r}") from None


def parse_window(text: str) -> tuple[str, str]:
    """``"01:00-06:00"`` → ("01:00", "06:00"), validated."""
    try:
        start, end = text.split("-")
    except ValueError:
        raise ValueError(f"expected a window like 01:00-06:00, got {text!r}") from None
    a, b = parse_hhmm(start), parse_hhmm(end)
    if a == b:
        raise ValueError("a window must not start and end at the same time")
    return a.strftime("%H:%M"), b.strftime("%H:%M")


def inside_window(now: datetime, start: str, end: str, tz: str) -> bool:
    local = now.astimezone(ZoneInfo(tz)).time()
    a, b = parse_hhmm(start), parse_hhmm(end)
    if a < b:
        return a <= local < b
    return local >= a or local < b  # crosses midnight


def outside_window(now: datetime, start: str | None, end: str | None, tz: str) -> bool:
    if not start or not end:
        return False
    return not inside_window(now, start, end, tz)


def next_occurrence(at: str, tz: str, *, now: datetime | None = None) -> datetime:
    """The next time the local clock in ``tz`` shows ``at`` (today if still ahead, else tomorrow), in UTC."""
    now = now or datetime.now(UTC)
    zone = ZoneInfo(tz)
    local_now = now.astimezone(zone)
    target = datetime.combine(local_now.date(), parse_hhmm(at), tzinfo=zone)
    if target <= local_now:
        target = datetime.combine(local_now.date() + timedelta(days=1), parse_hhmm(at), tzinfo=zone)
    return target.astimezone(UTC)


def parse_deadline(text: str, tz: str, *, now: datetime | None = None) -> datetime:
    """``--deadline``: an ISO 8601 time (without an offset: in ``tz``) or ``HH:MM`` (its next
    occurrence in ``tz``), in UTC; a ``ValueError`` naming both forms otherwise, or for a past time."""
    now = now or datetime.now(UTC)
    text = text.strip()
    if len(text) <= 5 and ":" in text:
        return next_occurrence(text, tz, now=now)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--deadline expects HH:MM or an ISO 8601 time (2026-12-01T06:00), got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(tz))
    when = when.astimezone(UTC)
    if when <= now:
        raise ValueError(f"--deadline {text!r} is in the past")
    return when
