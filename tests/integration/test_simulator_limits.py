"""Quotas over HTTP: Google-shaped 429s for rpm, tpm, rpd and concurrency."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nanobatch.simulator.testing import SimulatorFactory, wait_until

pytestmark = pytest.mark.integration

PRO = "/v1beta/models/gemini-3-pro-image:generateContent"
FLASH = "/v1beta/models/gemini-2.5-flash-image:generateContent"
BODY = {"contents": [{"parts": [{"text": "a lamp"}]}], "generationConfig": {"responseModalities": ["IMAGE"]}}
WHOLE_SECONDS = re.compile(r"^\d+s$")
PRECISE = re.compile(r"Please retry in (\d+(?:\.\d{3,9})?)s\.$")


@pytest.fixture
def simulator() -> Iterator[SimulatorFactory]:
    with SimulatorFactory(latency=(0, 0)) as factory:
        yield factory


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def details(response: httpx.Response) -> dict[str, Any]:
    """The 429's details by short type name (QuotaFailure, RetryInfo, Help)."""
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    return {detail["@type"].rsplit(".", 1)[-1]: detail for detail in error["details"]}


def test_rpm_third_request_is_429_per_minute_with_truncated_delay(
    http: httpx.Client, simulator: SimulatorFactory
) -> None:
    sim = simulator(rpm=2)
    assert [http.post(sim.url + PRO, json=BODY).status_code for _ in range(2)] == [200, 200]
    limited = http.post(sim.url + PRO, json=BODY)
    assert limited.status_code == 429
    assert "retry-after" not in limited.headers
    found = details(limited)
    violation = found["QuotaFailure"]["violations"][0]
    assert "PerMinute" in violation["quotaId"]
    assert violation["quotaValue"] == "2"
    assert violation["quotaDimensions"] == {"model": "gemini-3-pro-image", "location": "global"}
    delay = found["RetryInfo"]["retryDelay"]
    assert WHOLE_SECONDS.match(delay)
    precise = PRECISE.search(limited.json()["error"]["message"])
    assert precise is not None and 0 < float(precise[1]) <= 60
    assert int(delay[:-1]) == int(float(precise[1]))  # whole seconds of the precise figure, truncated
    stats = sim.stats()
    assert (stats["rate_limited"], stats["by_status"]) == (1, {"200": 2, "429": 1})


def test_limits_are_per_model(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator(rpm=1)
    assert http.post(sim.url + PRO, json=BODY).status_code == 200
    assert http.post(sim.url + FLASH, json=BODY).status_code == 200
    assert http.post(sim.url + PRO, json=BODY).status_code == 429


def test_tpm_counts_output_tokens(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator(tpm=2500)  # one flash image costs 1290 output tokens plus the prompt
    assert http.post(sim.url + FLASH, json=BODY).status_code == 200
    limited = http.post(sim.url + FLASH, json=BODY)
    violation = details(limited)["QuotaFailure"]["violations"][0]
    assert "InputTokens" in violation["quotaId"] and "PerMinute" in violation["quotaId"]


def test_rpd_is_per_day_with_a_short_delay(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator(rpd=1)
    assert http.post(sim.url + PRO, json=BODY).status_code == 200
    limited = http.post(sim.url + PRO, json=BODY)
    found = details(limited)
    assert found["QuotaFailure"]["violations"][0]["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel"
    assert found["RetryInfo"]["retryDelay"] == "40s"  # like upstream: not the time to midnight
    assert http.post(sim.url + PRO, json=BODY).status_code == 429  # still refused: the quota is spent


def test_concurrency_limit_counts_requests_in_flight(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator(concurrency=1, latency=(60, 60))
    outcome: list[object] = []

    def slow_request() -> None:
        try:
            outcome.append(httpx.post(sim.url + PRO, json=BODY, timeout=30).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    first = threading.Thread(target=slow_request)
    first.start()
    wait_until(lambda: sim.stats()["current_concurrency"] == 1, message="the first request in flight")
    limited = http.post(sim.url + PRO, json=BODY)
    assert limited.status_code == 429
    violation = details(limited)["QuotaFailure"]["violations"][0]
    assert violation["quotaId"] == "ConcurrentRequestsPerProjectPerModel"
    sim.stop()  # wakes the first request's simulated latency
    first.join(timeout=10)
    assert not first.is_alive() and outcome


def test_concurrency_slots_are_released_after_each_answer(
    http: httpx.Client, simulator: SimulatorFactory
) -> None:
    sim = simulator(concurrency=1, fail_rates={503: 0.3}, drop_rate=0.2, seed=4)
    for _ in range(10):
        with contextlib.suppress(httpx.RemoteProtocolError):  # a drop must release its slot too
            assert http.post(sim.url + PRO, json=BODY).status_code in (200, 503)
    assert sim.stats()["rate_limited"] == 0


def test_rejected_requests_do_not_consume_quota(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator(rpm=1, api_key="k")
    for _ in range(3):
        assert http.post(sim.url + PRO, json=BODY).status_code == 403
    assert http.post(sim.url + PRO, json=BODY, headers={"x-goog-api-key": "k"}).status_code == 200


def test_reset_frees_the_windows(http: httpx.Client, simulator: SimulatorFactory) -> None:
    sim = simulator(rpm=1)
    http.post(sim.url + PRO, json=BODY)
    assert http.post(sim.url + PRO, json=BODY).status_code == 429
    assert http.post(sim.url + "/_sim/reset").status_code == 200
    assert http.post(sim.url + PRO, json=BODY).status_code == 200
