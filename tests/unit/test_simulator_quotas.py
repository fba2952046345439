"""Quota window arithmetic with an injected clock: what is admitted, and how long the wait is."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.quotas import (
    CONCURRENCY,
    PACIFIC,
    RPD,
    RPM,
    TPM,
    QuotaBook,
    QuotaLimits,
    QuotaViolation,
    SlidingWindow,
    Ticket,
    next_pacific_midnight,
    pacific_day_start,
)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _epoch(text: str, tz: ZoneInfo = PACIFIC) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def test_sliding_window_waits_until_the_oldest_event_leaves() -> None:
    window = SlidingWindow(limit=2)
    window.add(100.0, 1)
    window.add(130.5, 1)
    assert window.wait_for(140.0, 1) == pytest.approx(20.0)  # first event leaves at 160
    assert window.wait_for(160.0, 1) == 0.0


def test_token_window_frees_enough_cost_not_just_one_event() -> None:
    window = SlidingWindow(limit=1000)
    window.add(0.0, 400)
    window.add(10.0, 400)
    window.add(20.0, 100)
    # 900 used; a 600-token request needs 500 freed: the first two events, i.e. until t=70
    assert window.wait_for(30.0, 600) == pytest.approx(40.0)
    assert window.wait_for(30.0, 500) == pytest.approx(30.0)  # 400 freed is enough: until t=60
    assert window.wait_for(30.0, 100) == 0.0


def test_rpm_third_request_is_refused_with_the_time_until_the_window_frees() -> None:
    clock = FakeClock(1000.0)
    book = QuotaBook(QuotaLimits(rpm=2), clock=clock)
    assert isinstance(book.admit("m", 10), Ticket)
    clock.now = 1010.25
    assert isinstance(book.admit("m", 10), Ticket)
    clock.now = 1033.5
    refused = book.admit("m", 10)
    assert isinstance(refused, QuotaViolation)
    assert refused.kind is RPM and refused.limit == 2
    assert refused.retry_after == pytest.approx(26.5)


def test_refused_requests_consume_nothing() -> None:
    clock = FakeClock(0.0)
    book = QuotaBook(QuotaLimits(rpm=1), clock=clock)
    book.admit("m", 1)
    for _ in range(5):
        assert isinstance(book.admit("m", 1), QuotaViolation)
    clock.now = 60.0
    assert isinstance(book.admit("m", 1), Ticket)


def test_limits_are_per_model() -> None:
    book = QuotaBook(QuotaLimits(rpm=1), clock=FakeClock(0.0))
    assert isinstance(book.admit("a", 1), Ticket)
    assert isinstance(book.admit("b", 1), Ticket)
    assert isinstance(book.admit("a", 1), QuotaViolation)


def test_tpm_counts_prompt_plus_output_tokens() -> None:
    clock = FakeClock(0.0)
    book = QuotaBook(QuotaLimits(tpm=3000), clock=clock)
    assert isinstance(book.admit("m", 1290 + 10), Ticket)
    assert isinstance(book.admit("m", 1290 + 10), Ticket)
    clock.now = 12.0
    refused = book.admit("m", 1300)
    assert isinstance(refused, QuotaViolation) and refused.kind is TPM
    assert refused.retry_after == pytest.approx(48.0)
    assert "PerMinute" in refused.kind.quota_id


def test_concurrency_counts_until_release() -> None:
    book = QuotaBook(QuotaLimits(concurrency=1), clock=FakeClock(0.0), concurrency_retry=0.5)
    ticket = book.admit("m", 1)
    assert isinstance(ticket, Ticket)
    refused = book.admit("m", 1)
    assert isinstance(refused, QuotaViolation) and refused.kind is CONCURRENCY
    assert refused.retry_after == 0.5
    book.release(ticket)
    assert isinstance(book.admit("m", 1), Ticket)


def test_reset_forgets_windows_but_keeps_in_flight_slots() -> None:
    book = QuotaBook(QuotaLimits(rpm=1, concurrency=1), clock=FakeClock(0.0))
    ticket = book.admit("m", 1)
    assert isinstance(ticket, Ticket)
    book.reset()
    assert isinstance(book.admit("m", 1), QuotaViolation)  # still one in flight
    book.release(ticket)
    assert isinstance(book.admit("m", 1), Ticket)


def test_pacific_day_start_and_next_midnight() -> None:
    at = _epoch("2026-07-14T23:59:30")
    assert pacific_day_start(at) == _epoch("2026-07-14T00:00:00")
    assert next_pacific_midnight(at) == pytest.approx(at + 30)


def test_midnight_is_pacific_not_utc() -> None:
    at = _epoch("2026-07-15T01:00:00", ZoneInfo("UTC"))  # 18:00 the day before in Los Angeles (PDT)
    assert next_pacific_midnight(at) == _epoch("2026-07-15T00:00:00")
    assert next_pacific_midnight(at) - at == pytest.approx(6 * 3600)


def test_next_midnight_across_a_dst_change_is_23_hours_away() -> None:
    at = _epoch("2026-03-08T00:00:00")  # spring forward at 02:00 that day
    assert next_pacific_midnight(at) - at == pytest.approx(23 * 3600)


def test_rpd_refuses_until_pacific_midnight_then_resets() -> None:
    clock = FakeClock(_epoch("2026-11-20T23:00:00"))
    book = QuotaBook(QuotaLimits(rpd=2), clock=clock)
    book.admit("m", 1)
    book.admit("m", 1)
    refused = book.admit("m", 1)
    assert isinstance(refused, QuotaViolation) and refused.kind is RPD
    assert refused.retry_after == pytest.approx(3600)
    assert "PerDay" in refused.kind.quota_id
    clock.now = _epoch("2026-11-21T00:00:01")
    assert isinstance(book.admit("m", 1), Ticket)


def test_daily_limit_is_reported_before_the_minute_limit() -> None:
    clock = FakeClock(_epoch("2026-11-20T12:00:00"))
    book = QuotaBook(QuotaLimits(rpm=1, rpd=1), clock=clock)
    book.admit("m", 1)
    refused = book.admit("m", 1)
    assert isinstance(refused, QuotaViolation) and refused.kind is RPD


def test_a_model_with_its_own_limits_is_judged_by_them_and_the_others_by_the_defaults() -> None:
    now = [1_800_000_000.0]
    book = QuotaBook(
        QuotaLimits(rpm=100), clock=lambda: now[0], per_model={"tight": QuotaLimits(rpm=100, rpd=1)}
    )
    assert isinstance(book.admit("tight", 1), Ticket)
    refused = book.admit("tight", 1)
    assert isinstance(refused, QuotaViolation) and refused.kind.name == "rpd"
    assert all(isinstance(book.admit("roomy", 1), Ticket) for _ in range(5))
    assert (book.remaining_requests("tight"), book.remaining_requests("roomy")) == (99, 95)


@pytest.mark.parametrize(
    "bad", [{"m": {"rpx": 1}}, {"m": {"rpd": 0}}, {"m": {"rpd": True}}, {"": {"rpd": 1}}]
)
def test_model_limits_refuse_unknown_names_and_non_positive_values(bad: dict[str, dict[str, int]]) -> None:
    with pytest.raises(ValueError, match="model_limits"):
        SimulatorConfig(model_limits=bad)
