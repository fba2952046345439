"""Webhook delivery to a real loopback receiver that checks signatures and fails on purpose."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis

from nanobatch.simulator.testing import wait_until
from nanobatch.tasks.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    MemoryOutbox,
    Outbox,
    RedisOutbox,
    WebhookConfig,
    WebhookNotifier,
    batch_finished,
    budget_reached,
    verify_signature,
)

pytestmark = pytest.mark.integration

SECRET = "whsec-integration-0123456789abcdef"
PATH_TOKEN = "T000/B000/pathsecretXYZ"


@dataclass
class Receiver:
    """Answers ``statuses`` in turn (then 200); records every request and whether it verified."""

    statuses: list[int]
    secret: str | None = SECRET
    seen: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def status_for(self, body: bytes, headers: dict[str, str]) -> int:
        verified = self.secret is None or verify_signature(
            self.secret, body, headers.get(TIMESTAMP_HEADER.lower()), headers.get(SIGNATURE_HEADER.lower())
        )
        with self.lock:
            status = self.statuses[len(self.seen)] if len(self.seen) < len(self.statuses) else 200
            self.seen.append(
                {"body": json.loads(body), "headers": headers, "verified": verified, "status": status}
            )
        return status if verified else 401

    def delivered(self) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.seen if s["status"] == 200 and s["verified"]]


@pytest.fixture
def receiver() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(statuses: list[int], secret: str | None = SECRET) -> Receiver:
        state = Receiver(statuses, secret)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = state.status_for(body, {k.lower(): v for k, v in self.headers.items()})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        state.url = f"http://127.0.0.1:{server.server_port}/{PATH_TOKEN}"
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def notifier(url: str, outbox: Outbox, http: httpx.Client, **config: Any) -> WebhookNotifier:
    settings: dict[str, Any] = {
        "secret": SECRET,
        "backoff_base": 0.02,
        "backoff_cap": 0.1,
        "poll_seconds": 0.02,
    }
    return WebhookNotifier(WebhookConfig(url=url, **{**settings, **config}), outbox, http).start()


def test_failed_deliveries_are_retried_until_the_receiver_takes_them(
    receiver: Any, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    hook = receiver([500, 503, 500])
    caplog.set_level(logging.DEBUG)
    sender = notifier(hook.url, MemoryOutbox(), http)
    event = batch_finished("night", {"completed": 98, "failed": 2}, 3.8)
    try:
        assert sender.emit(event)
        wait_until(hook.delivered, timeout=10, message="a delivered webhook")
    finally:
        sender.stop()
    assert [s["status"] for s in hook.seen] == [500, 503, 500, 200]
    assert all(s["verified"] for s in hook.seen)
    assert {s["headers"][DELIVERY_HEADER.lower()] for s in hook.seen} == {event.id}
    assert hook.seen[-1]["headers"][EVENT_HEADER.lower()] == "batch.finished"
    assert hook.seen[-1]["body"] == event.payload()
    assert sender.outbox.size() == 0
    assert SECRET not in caplog.text and PATH_TOKEN not in caplog.text and "127.0.0.1" in caplog.text


def test_delivery_gives_up_after_max_attempts_and_a_4xx_is_final(receiver: Any, http: httpx.Client) -> None:
    always_down = receiver([500] * 10)
    sender = notifier(always_down.url, MemoryOutbox(), http, max_attempts=3)
    try:
        sender.emit(batch_finished("a", {"completed": 1}))
        wait_until(
            lambda: len(always_down.seen) >= 3 and sender.outbox.size() == 0, timeout=10, message="give up"
        )
    finally:
        sender.stop()
    assert len(always_down.seen) == 3

    refusing = receiver([400])
    sender = notifier(refusing.url, MemoryOutbox(), http)
    try:
        sender.emit(batch_finished("b", {"completed": 1}))
        wait_until(lambda: refusing.seen and sender.outbox.size() == 0, timeout=10, message="refused once")
    finally:
        sender.stop()
    assert len(refusing.seen) == 1


def test_a_wrong_secret_is_refused_by_the_receiver(receiver: Any, http: httpx.Client) -> None:
    hook = receiver([], secret="the-receivers-secret")
    sender = notifier(hook.url, MemoryOutbox(), http)
    try:
        sender.emit(budget_reached("a", 10.0, 10.5))
        wait_until(lambda: hook.seen and sender.outbox.size() == 0, timeout=10, message="refused")
    finally:
        sender.stop()
    assert [s["verified"] for s in hook.seen] == [False]


def test_slack_format_posts_text(receiver: Any, http: httpx.Client) -> None:
    hook = receiver([])
    sender = notifier(hook.url, MemoryOutbox(), http, format="slack")
    try:
        sender.emit(budget_reached("night", 50.0, 50.02))
        wait_until(hook.delivered, timeout=10, message="slack message")
    finally:
        sender.stop()
    body = hook.seen[0]["body"]
    assert set(body) == {"text"} and "*night* reached its budget" in body["text"]


def test_events_survive_a_restart_in_redis(
    receiver: Any, http: httpx.Client, redis_url: str, key_prefix: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        hook = receiver([])
        down = "http://127.0.0.1:9/unreachable"  # nothing listens on the discard port
        first = notifier(down, RedisOutbox(client, key_prefix), http, max_attempts=50, backoff_cap=0.05)
        event = batch_finished("night", {"completed": 3})
        first.emit(event)
        first.emit(batch_finished("night", {"completed": 3}))  # the same occurrence from another worker
        wait_until(lambda: RedisOutbox(client, key_prefix).size() == 1, timeout=10, message="event in Redis")
        first.stop()

        second = notifier(hook.url, RedisOutbox(client, key_prefix), http)
        try:
            wait_until(hook.delivered, timeout=10, message="delivered after restart")
            wait_until(lambda: second.outbox.size() == 0, timeout=10, message="acked")
        finally:
            second.stop()
        assert [s["body"]["id"] for s in hook.seen] == [event.id]
    finally:
        client.close()


def test_a_claim_left_by_a_dead_process_is_delivered_after_its_lease(
    receiver: Any, http: httpx.Client, redis_url: str, key_prefix: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        outbox = RedisOutbox(client, key_prefix)
        event = batch_finished("night", {"completed": 1})
        outbox.push(event)
        assert outbox.claim(lease=0.3) is not None  # a worker claimed it, then died
        assert outbox.claim(lease=0.3) is None
        hook = receiver([])
        sender = notifier(hook.url, RedisOutbox(client, key_prefix), http)
        try:
            wait_until(hook.delivered, timeout=10, message="redelivered after the lease")
        finally:
            sender.stop()
        assert hook.seen[0]["body"]["id"] == event.id
    finally:
        client.close()
