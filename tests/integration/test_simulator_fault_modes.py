"""Injected faults over HTTP: error statuses, held requests, dropped connections."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from nanobatch.simulator.testing import SimulatorFactory, wait_until

pytestmark = pytest.mark.integration

PRO = "/v1beta/models/gemini-3-pro-image:generateContent"
GENERATIONS = "/v1/images/generations"
BODY = {"contents": [{"parts": [{"text": "a lamp"}]}]}
OPENAI_BODY = {"model": "gpt-image-1", "prompt": "a lamp"}


@pytest.fixture
def simulator() -> Iterator[SimulatorFactory]:
    with SimulatorFactory(latency=(0, 0)) as factory:
        yield factory


@pytest.mark.parametrize(
    ("status", "google_status"),
    [
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
        (429, "RESOURCE_EXHAUSTED"),
    ],
)
def test_error_statuses_have_google_bodies(
    simulator: SimulatorFactory, status: int, google_status: str
) -> None:
    sim = simulator(fail_rates={status: 1.0})
    response = httpx.post(sim.url + PRO, json=BODY)
    assert response.status_code == status
    assert response.json()["error"]["status"] == google_status
    assert sim.stats()["faults"] == {str(status): 1}


def test_bad_gateway_is_an_html_page(simulator: SimulatorFactory) -> None:
    sim = simulator(fail_rates={502: 1.0})
    gemini = httpx.post(sim.url + PRO, json=BODY)
    for response in (gemini, httpx.post(sim.url + GENERATIONS, json=OPENAI_BODY)):
        assert response.status_code == 502
        assert response.headers["content-type"].startswith("text/html")


def test_openai_faults_are_openai_shaped(simulator: SimulatorFactory) -> None:
    sim = simulator(fail_rates={503: 1.0})
    response = httpx.post(sim.url + GENERATIONS, json=OPENAI_BODY)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"


@pytest.mark.parametrize("path", [PRO, GENERATIONS])
def test_drop_cuts_the_body_after_the_headers(simulator: SimulatorFactory, path: str) -> None:
    sim = simulator(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(sim.url + path, json=BODY if path == PRO else OPENAI_BODY)
    stats = sim.stats()
    assert stats["faults"] == {"drop": 1} and stats["by_status"] == {"drop": 1}
    assert stats["images_served"] == 0


def test_timeout_holds_until_the_client_gives_up(simulator: SimulatorFactory) -> None:
    sim = simulator(timeout_rate=1.0, time_scale=0.01)  # holds at most 6 s; the client leaves first
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(sim.url + PRO, json=BODY, timeout=httpx.Timeout(5, read=0.3))
    assert sim.stats()["faults"] == {"timeout": 1}
    wait_until(lambda: sim.stats()["current_concurrency"] == 0, message="the held request to be released")


def test_fault_requests_still_count_and_the_next_one_is_served(simulator: SimulatorFactory) -> None:
    sim = simulator(fail_rates={503: 0.5}, seed=11)
    statuses = [httpx.post(sim.url + PRO, json=BODY).status_code for _ in range(20)]
    assert set(statuses) == {200, 503}
    stats = sim.stats()
    assert stats["by_status"] == {"200": statuses.count(200), "503": statuses.count(503)}
    sim.reset()
    assert [httpx.post(sim.url + PRO, json=BODY).status_code for _ in range(20)] == statuses  # seed replays
