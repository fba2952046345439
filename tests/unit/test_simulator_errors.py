"""Error bodies: Duration strings and the exact 429 shapes clients classify by."""

from __future__ import annotations

import json

import pytest

from nanobatch.simulator import google_errors, openai_errors
from nanobatch.simulator.quotas import RPD, RPM, TPM, QuotaViolation


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (26.5, "26.5s"),
        (0.412, "0.412s"),
        (3.0, "3s"),
        (59.9999, "60s"),
        (0.0001, "0.001s"),
        (0.0, "0.001s"),
        (12.05, "12.05s"),
        (86399.5, "86399.5s"),
    ],
)
def test_retry_delay_is_a_duration_with_fractional_seconds(seconds: float, text: str) -> None:
    assert google_errors.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (58.934310785, "58.934310785s"),
        (26.5, "26.500s"),
        (3.0, "3s"),
        (0.25, "0.250s"),
        (1.000001, "1.000001s"),
        (-1.0, "0s"),
    ],
)
def test_message_durations_use_protobufs_json_digits(seconds: float, text: str) -> None:
    assert google_errors.precise_duration(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [(58.934, "58s"), (0.999, "0s"), (3.0, "3s"), (-2.0, "0s")])
def test_retry_delay_is_whole_seconds_truncated(seconds: float, text: str) -> None:
    assert google_errors.whole_seconds(seconds) == text


def test_gemini_quota_body_has_quota_failure_and_retry_info() -> None:
    reply = google_errors.quota_exceeded(QuotaViolation(RPM, "gemini-3-pro-image", 300, 300, 26.5))
    error = json.loads(reply.body)["error"]
    assert (reply.status, error["code"], error["status"]) == (429, 429, "RESOURCE_EXHAUSTED")
    by_type = {detail["@type"].rsplit(".", 1)[-1]: detail for detail in error["details"]}
    violation = by_type["QuotaFailure"]["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel"
    assert violation["quotaDimensions"] == {"model": "gemini-3-pro-image", "location": "global"}
    assert violation["quotaValue"] == "300"
    assert by_type["RetryInfo"]["retryDelay"] == "26s"  # truncated, as upstream
    assert error["message"].endswith("Please retry in 26.500s.")  # the precise figure
    assert "retry-after" not in {k.lower() for k in reply.headers}


def test_per_day_429_advertises_a_short_delay_not_the_time_to_midnight() -> None:
    reply = google_errors.quota_exceeded(QuotaViolation(RPD, "gemini-3-pro-image", 1, 1, 30_000.25))
    error = json.loads(reply.body)["error"]
    by_type = {detail["@type"].rsplit(".", 1)[-1]: detail for detail in error["details"]}
    assert by_type["RetryInfo"]["retryDelay"] == "40s"
    assert "Please retry in 40.250s." in error["message"]
    assert by_type["QuotaFailure"]["violations"][0]["quotaId"] == RPD.quota_id  # the only day signal


def test_gemini_quota_ids_name_the_window() -> None:
    assert "PerDay" in RPD.quota_id and "PerMinute" in RPM.quota_id and "PerMinute" in TPM.quota_id


def test_gemini_invalid_key_carries_error_info() -> None:
    error = json.loads(google_errors.api_key_invalid().body)["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["reason"] == "API_KEY_INVALID"


def test_openai_rate_limit_has_retry_after_header_and_code() -> None:
    reply = openai_errors.rate_limited(QuotaViolation(RPM, "gpt-image-1", 2, 2, 0.4123))
    assert reply.status == 429
    assert reply.headers["retry-after"] == "0.413"
    assert reply.headers["retry-after-ms"] == "412"
    error = json.loads(reply.body)["error"]
    assert (error["type"], error["code"], error["param"]) == ("requests", "rate_limit_exceeded", None)


def test_bad_gateway_is_html_not_json() -> None:
    reply = google_errors.fault(502)
    assert reply.status == 502 and reply.content_type.startswith("text/html")
