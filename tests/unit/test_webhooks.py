"""Webhook events, signatures, backoff, the in-memory outbox and the lane settings (no network)."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import ValidationError

from nanobatch.tasks.lane_settings import LaneSettings
from nanobatch.tasks.webhooks import (
    EventType,
    MemoryOutbox,
    WebhookConfig,
    WebhookEvent,
    WebhookNotifier,
    backoff,
    batch_finished,
    budget_reached,
    deadline_at_risk,
    failure_rate_high,
    pool_refused,
    render,
    sign,
    slack_text,
    verify_signature,
)

SECRET = "whsec-test-0123456789"
BODY = b'{"id":"e1","type":"batch.finished"}'


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, "1700000000", BODY) == f"sha256={expected}"


def test_verification_accepts_the_genuine_and_refuses_tampering_and_replay() -> None:
    signature = sign(SECRET, "1700000000", BODY)
    assert verify_signature(SECRET, BODY, "1700000000", signature, now=1_700_000_100)
    assert not verify_signature(SECRET, BODY + b" ", "1700000000", signature, now=1_700_000_100)
    assert not verify_signature("other", BODY, "1700000000", signature, now=1_700_000_100)
    assert not verify_signature(
        SECRET, BODY, "1700000001", signature, now=1_700_000_100
    )  # timestamp is signed
    assert not verify_signature(SECRET, BODY, "1700000000", signature, now=1_700_000_000 + 301)  # replay
    assert not verify_signature(SECRET, BODY, None, signature)
    assert not verify_signature(SECRET, BODY, "soon", signature)


def test_every_event_has_the_envelope_and_a_slack_line() -> None:
    events = [
        batch_finished("night", {"completed": 98, "failed": 2}, 3.8),
        deadline_at_risk("night", "2026-01-02T06:00:00+00:00", "2026-01-02T07:10:00+00:00", 420),
        budget_reached("night", 50.0, 50.02),
        failure_rate_high("night", 30, 100, 0.2),
        pool_refused("gemini/gemini-3-pro-image", 1260.0, "daily quota"),
    ]
    assert [e.type for e in events] == list(EventType)
    for event in events:
        payload = json.loads(render(event, "json"))
        assert set(payload) == {"id", "type", "created_at", "data"} and payload["type"] == event.type.value
        assert WebhookEvent.from_payload(payload).data == event.data
        slack = json.loads(render(event, "slack"))
        assert set(slack) == {"text"} and slack["text"] == slack_text(event)
    assert "98 completed" in slack_text(events[0]) and "$3.80" in slack_text(events[0])
    assert events[3].data["rate"] == 0.3 and "30%" in slack_text(events[3])
    assert "1260 s" in slack_text(events[4])


def test_backoff_is_bounded_full_jitter() -> None:
    rng = random.Random(1)
    assert all(0 <= backoff(1, 2.0, 600, rng) <= 2.0 for _ in range(100))
    assert all(0 <= backoff(20, 2.0, 600, rng) <= 600 for _ in range(100))
    assert max(backoff(4, 2.0, 600, rng) for _ in range(200)) > 8.0


def test_memory_outbox_leases_retries_and_acks() -> None:
    now = [100.0]
    outbox = MemoryOutbox(limit=2, clock=lambda: now[0])
    first, second = batch_finished("a", {"completed": 1}), batch_finished("b", {"completed": 1})
    assert outbox.push(first) and outbox.push(second) and not outbox.push(pool_refused("p", 1, "x"))
    assert outbox.push(batch_finished("a", {"completed": 1}))  # same occurrence: accepted, not queued
    claimed = outbox.claim(lease=30)
    assert claimed is not None and claimed.attempts == 0
    other = outbox.claim(lease=30)
    assert other is not None and {claimed.event.id, other.event.id} == {first.id, second.id}
    assert outbox.claim(lease=30) is None  # both leased
    outbox.retry(claimed, attempts=1, delay=5)
    outbox.ack(other)
    now[0] += 5
    again = outbox.claim(lease=30)
    assert again is not None and again.event.id == claimed.event.id and again.attempts == 1
    assert outbox.size() == 1


def test_emit_never_waits_when_the_queue_is_full() -> None:
    config = WebhookConfig(url="http://127.0.0.1:9/hook", secret=SECRET, queue_size=1)
    notifier = WebhookNotifier(config, MemoryOutbox(), http=None)  # type: ignore[arg-type]
    assert notifier.emit(pool_refused("p", 1, "x"))
    assert not notifier.emit(pool_refused("p", 2, "x"))
    assert notifier.dropped == 1


def test_lane_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOBATCH_WEBHOOK_URL", "https://hooks.example/T0/B0/abcsecretpath")
    monkeypatch.setenv("NANOBATCH_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("NANOBATCH_WEBHOOK_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("NANOBATCH_BATCH_INLINE_LIMIT_BYTES", "1000")
    monkeypatch.setenv("NANOBATCH_SERVICE_TIER", "flex")
    settings = LaneSettings()
    config = settings.webhook_config()
    assert config is not None and config.max_attempts == 3 and config.secret == SECRET
    assert settings.batch_inline_limit_bytes == 1000 and settings.service_tier == "flex"
    assert "abcsecretpath" not in repr(settings) and SECRET not in repr(settings)
    assert "abcsecretpath" not in repr(config) and SECRET not in repr(config)


def test_json_webhooks_need_a_secret_and_slack_ones_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOBATCH_WEBHOOK_URL", "https://hooks.example/x")
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
        LaneSettings()
    monkeypatch.setenv("NANOBATCH_WEBHOOK_FORMAT", "slack")
    assert LaneSettings().webhook_config() is not None
    monkeypatch.delenv("NANOBATCH_WEBHOOK_URL")
    assert LaneSettings().webhook_config() is None


def test_upload_chunks_must_be_granular(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOBATCH_BATCH_UPLOAD_CHUNK_BYTES", str(300 * 1024))
    with pytest.raises(ValidationError, match="multiple"):
        LaneSettings()
