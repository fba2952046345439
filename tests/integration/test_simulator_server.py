"""The server itself: keep-alive, 100+ concurrent slow requests, control endpoints, isolation, stop."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.server import start_simulator
from nanobatch.simulator.testing import SimulatorFactory, wait_until
from tests.conftest import free_port

pytestmark = pytest.mark.integration

PRO = "/v1beta/models/gemini-3-pro-image:generateContent"
BODY = {"contents": [{"parts": [{"text": "a lamp"}]}]}


@pytest.fixture
def simulator() -> Iterator[SimulatorFactory]:
    with SimulatorFactory(latency=(0, 0)) as factory:
        yield factory


def test_keep_alive_serves_several_requests_on_one_connection(simulator: SimulatorFactory) -> None:
    sim = simulator()
    conn = http.client.HTTPConnection(sim.url.removeprefix("http://"), timeout=10)
    conn.connect()
    first_socket = conn.sock
    for _ in range(3):
        conn.request("POST", PRO, body=json.dumps(BODY), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        assert int(response.headers["Content-Length"]) == len(response.read())
        assert conn.sock is first_socket
    conn.close()


def test_chunked_request_bodies_are_read(simulator: SimulatorFactory) -> None:
    sim = simulator()
    chunks = iter([json.dumps(BODY).encode()[:10], json.dumps(BODY).encode()[10:]])
    response = httpx.post(sim.url + PRO, content=chunks)  # an iterator is sent chunked
    assert response.status_code == 200


def test_more_than_a_hundred_slow_requests_are_in_flight_at_once(simulator: SimulatorFactory) -> None:
    sim = simulator(latency=(60, 60))
    count = 120
    results: list[object] = []
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=count + 10))

    def call() -> None:
        try:
            results.append(client.post(sim.url + PRO, json=BODY).status_code)
        except httpx.HTTPError as exc:
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(count)]
    for thread in threads:
        thread.start()
    wait_until(
        lambda: sim.stats()["current_concurrency"] == count,
        timeout=30,
        message=f"{count} requests in flight together",
    )
    assert sim.stats()["peak_concurrency"] == count
    sim.stop()  # wakes every simulated wait
    for thread in threads:
        thread.join(timeout=10)
    client.close()
    assert len(results) == count


def test_stats_requests_and_reset_endpoints(simulator: SimulatorFactory) -> None:
    sim = simulator(api_key="secret-key")
    httpx.post(sim.url + PRO, json=BODY, headers={"x-goog-api-key": "secret-key"})
    httpx.post(sim.url + PRO, json=BODY)
    stats = httpx.get(sim.url + "/_sim/stats").json()
    assert stats == sim.stats()
    assert stats["requests"] == 2 and stats["by_route"] == {"gemini.generateContent": 2}
    assert stats["by_status"] == {"200": 1, "403": 1}
    assert stats["images_served"] == 1
    recent = httpx.get(sim.url + "/_sim/requests", params={"limit": 1}).json()["requests"]
    assert len(recent) == 1 and (recent[0]["status"], recent[0]["outcome"]) == (403, "auth")
    assert "secret-key" not in json.dumps(httpx.get(sim.url + "/_sim/requests").json())
    assert httpx.post(sim.url + "/_sim/reset").status_code == 200
    after = sim.stats()
    assert (after["requests"], after["by_status"], after["images_served"]) == (0, {}, 0)
    assert httpx.get(sim.url + "/_sim/requests").json()["requests"] == []


def test_prompt_previews_are_cut_to_80_characters(simulator: SimulatorFactory) -> None:
    sim = simulator()
    httpx.post(sim.url + PRO, json={"contents": [{"parts": [{"text": "x" * 500}]}]})
    assert sim.requests(1)[0]["prompt"] == "x" * 80


def test_unknown_routes_are_404_and_counted(simulator: SimulatorFactory) -> None:
    sim = simulator()
    response = httpx.get(sim.url + "/v1/v1/images/generations")
    assert response.status_code == 404 and response.json()["error"]["status"] == "NOT_FOUND"
    assert httpx.get(sim.url + PRO).status_code == 405
    assert sim.stats()["by_route"] == {"unknown": 2}


def test_two_simulators_share_no_counters(simulator: SimulatorFactory) -> None:
    first, second = simulator(rpm=1), simulator(rpm=1)
    assert httpx.post(first.url + PRO, json=BODY).status_code == 200
    assert httpx.post(second.url + PRO, json=BODY).status_code == 200
    assert first.stats()["requests"] == second.stats()["requests"] == 1


def test_a_chosen_port_and_stop(simulator: SimulatorFactory) -> None:
    port = free_port()
    with start_simulator(SimulatorConfig(latency=(0, 0)), port=port) as sim:
        assert sim.url == f"http://127.0.0.1:{port}"
        assert httpx.post(sim.url + PRO, json=BODY).status_code == 200
    sim.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.post(sim.url + PRO, json=BODY, timeout=2)


def test_only_loopback_unless_asked() -> None:
    with pytest.raises(ValueError, match="loopback"):
        start_simulator(SimulatorConfig(), host="0.0.0.0")
