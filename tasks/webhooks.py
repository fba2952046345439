"""Signed webhook events (batch finished, deadline at risk, budget reached, failure rate high, pool
refused for long), delivered in the background with bounded retries; never in a worker's way.

Flow::

    emit(event)  -- any thread, O(1), never waits: a bounded in-process queue (full: dropped, counted)
       │  background thread "nanobatch-webhooks"
       ▼
    outbox       -- RedisOutbox (durable: survives a restart, shared by every process) or MemoryOutbox
       │  claim (leased), POST, then ack / retry later / give up
       ▼
    NANOBATCH_WEBHOOK_URL

Delivery is at least once: a process killed mid-POST leaves its claim leased in Redis, and the event
is posted again when the lease runs out. Receivers deduplicate on ``X-Nanobatch-Delivery`` (the
event id, the same on every attempt). Retries: 408, 429, 5xx and transport errors, with exponential
backoff and full jitter (``backoff_base`` x 2^n, at most ``backoff_cap``), ``max_attempts`` in all;
any other 4xx is final (the receiver refused the event, e.g. a bad signature).

Signature (docs/lanes.md, "Verifying a webhook")::

    X-Nanobatch-Timestamp: <unix seconds of this attempt>
    X-Nanobatch-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>

The timestamp is inside the signed material, so a captured request replayed later fails the
receiver's freshness check (:func:`verify_signature`, 5 minutes by default). The secret, and the
URL (a Slack incoming-webhook URL *is* a secret), are never logged: logs name the event, the
receiver's host and the status, and while the notifier runs a filter on the ``httpx`` logger
shows its URL as ``scheme://host/[REDACTED]`` in httpx's own request lines.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import httpx

logger = logging.getLogger("nanobatch.webhooks")

SIGNATURE_HEADER = "X-Nanobatch-Signature"
TIMESTAMP_HEADER = "X-Nanobatch-Timestamp"
EVENT_HEADER = "X-Nanobatch-Event"
DELIVERY_HEADER = "X-Nanobatch-Delivery"
DEFAULT_TOLERANCE = 300.0
USER_AGENT = "nanobatch-webhooks/1"
Format = Literal["json", "slack"]


class EventType(StrEnum):
    BATCH_FINISHED = "batch.finished"
    DEADLINE_AT_RISK = "batch.deadline_at_risk"
    BUDGET_REACHED = "batch.budget_reached"
    FAILURE_RATE_HIGH = "batch.failure_rate_high"
    POOL_REFUSED = "pool.refused"


@dataclass(frozen=True)
class WebhookEvent:
    """One event: ``{"id", "type", "created_at", "data"}`` on the wire.

    ``once`` (not sent) names the occurrence, so many workers noticing the same thing (a budget
    reached) deliver one event: the outbox keeps the first ``once`` it sees for a day.
    """

    type: EventType
    data: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    once: str | None = None

    def payload(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type.value, "created_at": self.created_at, "data": self.data}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> WebhookEvent:
        return cls(EventType(payload["type"]), dict(payload["data"]), payload["id"], payload["created_at"])


# --- the five events ----------------------------------------------------------------------------


def batch_finished(batch: str, counts: dict[str, int], spent_usd: float | None = None) -> WebhookEvent:
    """Every task of ``batch`` is terminal; ``counts`` by status (completed, failed, cancelled)."""
    data = {"batch": batch, "total": sum(counts.values()), "counts": dict(counts), "spent_usd": spent_usd}
    return WebhookEvent(EventType.BATCH_FINISHED, data, once=f"finished:{batch}")


def deadline_at_risk(batch: str, deadline: str, eta: str, remaining: int) -> WebhookEvent:
    """The batch's estimated end (``eta``, ISO 8601) falls after its ``deadline``."""
    data = {"batch": batch, "deadline": deadline, "eta": eta, "remaining": remaining}
    return WebhookEvent(EventType.DEADLINE_AT_RISK, data, once=f"deadline:{batch}:{deadline}")


def budget_reached(batch: str, budget_usd: float, spent_usd: float) -> WebhookEvent:
    """The batch spent its budget; its pending tasks wait (``budget_reached``)."""
    data = {"batch": batch, "budget_usd": budget_usd, "spent_usd": spent_usd}
    return WebhookEvent(EventType.BUDGET_REACHED, data, once=f"budget:{batch}:{budget_usd}")


def failure_rate_high(batch: str, failed: int, finished: int, threshold: float) -> WebhookEvent:
    """More than ``threshold`` of the batch's finished tasks failed."""
    rate = failed / finished if finished else 0.0
    data = {"batch": batch, "failed": failed, "finished": finished, "rate": round(rate, 4)}
    data["threshold"] = threshold
    return WebhookEvent(EventType.FAILURE_RATE_HIGH, data, once=f"failure_rate:{batch}")


def pool_refused(pool: str, refused_seconds: float, reason: str) -> WebhookEvent:
    """The quota pool has refused calls for ``refused_seconds`` (cooldown, daily quota, ...)."""
    data = {"pool": pool, "refused_seconds": round(refused_seconds, 1), "reason": reason}
    return WebhookEvent(EventType.POOL_REFUSED, data)


def slack_text(event: WebhookEvent) -> str:
    """One human line per event, for ``NANOBATCH_WEBHOOK_FORMAT=slack``."""
    d = event.data
    if event.type is EventType.BATCH_FINISHED:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(d["counts"].items()))
        spent = f", ${d['spent_usd']:.2f} spent" if d.get("spent_usd") is not None else ""
        return f":white_check_mark: nanobatch batch *{d['batch']}* finished: {counts}{spent}"
    if event.type is EventType.DEADLINE_AT_RISK:
        return (
            f":warning: nanobatch batch *{d['batch']}* may miss its deadline {d['deadline']} "
            f"(ETA {d['eta']}, {d['remaining']} tasks left)"
        )
    if event.type is EventType.BUDGET_REACHED:
        return (
            f":money_with_wings: nanobatch batch *{d['batch']}* reached its budget "
            f"(${d['spent_usd']:.2f} of ${d['budget_usd']:.2f}); its tasks wait"
        )
    if event.type is EventType.FAILURE_RATE_HIGH:
        return (
            f":x: nanobatch batch *{d['batch']}*: {d['failed']} of {d['finished']} tasks failed "
            f"({d['rate']:.0%}, threshold {d['threshold']:.0%})"
        )
    return (
        f":no_entry: nanobatch pool *{d['pool']}* has refused calls for {d['refused_seconds']:.0f} s "
        f"({d['reason']})"
    )


def render(event: WebhookEvent, fmt: Format) -> bytes:
    body = {"text": slack_text(event)} if fmt == "slack" else event.payload()
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


# --- signatures ---------------------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, ``"<timestamp>."`` + body)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """What a receiver runs: the signature matches the raw body and the timestamp is fresh."""
    if not timestamp or not signature:
        return False
    try:
        sent = float(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature.strip())


# --- configuration and delivery -----------------------------------------------------------------


@dataclass(frozen=True)
class WebhookConfig:
    url: str = field(repr=False)
    secret: str | None = field(default=None, repr=False)
    format: Format = "json"
    timeout: float = 10.0
    max_attempts: int = 8
    backoff_base: float = 2.0
    backoff_cap: float = 600.0
    queue_size: int = 1000
    lease_seconds: float = 60.0
    poll_seconds: float = 1.0

    @property
    def host(self) -> str:
        """What logs may say about the receiver."""
        return urlsplit(self.url).hostname or "?"


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform(0, min(cap, base * 2**(attempt - 1))), attempt counted from 1."""
    return (rng or random).uniform(0, min(cap, base * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class Attempt:
    outcome: Literal["delivered", "retry", "rejected"]
    detail: str
    retry_after: float | None = None


class WebhookSender:
    """One POST of one event: signed headers, classified outcome; the URL and secret stay inside."""

    def __init__(
        self, config: WebhookConfig, http: httpx.Client, clock: Callable[[], float] = time.time
    ) -> None:
        self.config, self.http, self.clock = config, http, clock

    def send(self, event: WebhookEvent) -> Attempt:
        body = render(event, self.config.format)
        try:
            headers, timeout = self.headers(event, body), self.config.timeout
            response = self.http.post(self.config.url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            return Attempt("retry", type(exc).__name__)
        status = response.status_code
        if 200 <= status < 300:
            return Attempt("delivered", str(status))
        if status in (408, 429) or status >= 500:
            return Attempt("retry", str(status), _retry_after(response.headers.get("retry-after")))
        return Attempt("rejected", str(status))

    def headers(self, event: WebhookEvent, body: bytes) -> dict[str, str]:
        timestamp = str(int(self.clock()))
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            EVENT_HEADER: event.type.value,
            DELIVERY_HEADER: event.id,
            TIMESTAMP_HEADER: timestamp,
        }
        if self.config.secret:
            headers[SIGNATURE_HEADER] = sign(self.config.secret, timestamp, body)
        return headers


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


# --- outboxes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    id: str
    event: WebhookEvent
    attempts: int  # attempts already made before this claim


class Outbox(Protocol):
    """Where events wait for delivery. ``claim`` leases one due event; ``ack`` ends it;
    ``retry`` makes it due again after ``delay`` seconds with its attempt count."""

    def push(self, event: WebhookEvent) -> bool: ...

    def claim(self, lease: float) -> Claimed | None: ...

    def ack(self, claimed: Claimed) -> None: ...

    def retry(self, claimed: Claimed, attempts: int, delay: float) -> None: ...

    def size(self) -> int: ...


def _record(event: WebhookEvent, attempts: int) -> str:
    return json.dumps({"event": event.payload(), "attempts": attempts}, separators=(",", ":"))


def _claimed(event_id: str, record: str | bytes) -> Claimed:
    data = json.loads(record)
    return Claimed(event_id, WebhookEvent.from_payload(data["event"]), int(data["attempts"]))


class MemoryOutbox:
    """In this process only (lost on restart); bounded, drops new events when full."""

    def __init__(self, limit: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.clock = limit, clock
        self._due: dict[str, tuple[float, str]] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def push(self, event: WebhookEvent) -> bool:
        with self._lock:
            if event.once is not None:
                if event.once in self._seen:
                    return True
                self._seen.add(event.once)
            if len(self._due) >= self.limit:
                return False
            self._due[event.id] = (self.clock(), _record(event, 0))
            return True

    def claim(self, lease: float) -> Claimed | None:
        now = self.clock()
        with self._lock:
            due = [(at, event_id) for event_id, (at, _) in self._due.items() if at <= now]
            if not due:
                return None
            _, event_id = min(due)
            record = self._due[event_id][1]
            self._due[event_id] = (now + lease, record)
        return _claimed(event_id, record)

    def ack(self, claimed: Claimed) -> None:
        with self._lock:
            self._due.pop(claimed.id, None)

    def retry(self, claimed: Claimed, attempts: int, delay: float) -> None:
        with self._lock:
            self._due[claimed.id] = (self.clock() + delay, _record(claimed.event, attempts))

    def size(self) -> int:
        with self._lock:
            return len(self._due)


#: KEYS: due (zset id -> due time, ms), items (hash id -> record). ARGV: lease ms. Times from Redis TIME.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
if #ids == 0 then return nil end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ids[1])
return {ids[1], redis.call('HGET', KEYS[2], ids[1])}
"""
#: KEYS: due, items, once key ('' when none). ARGV: id, record, limit, once ttl s.
_PUSH = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
if KEYS[3] ~= '' and not redis.call('SET', KEYS[3], '1', 'NX', 'EX', tonumber(ARGV[4])) then return 1 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
return 1
"""
#: KEYS: due, items. ARGV: id, record, delay ms.
_RETRY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
ONCE_TTL_SECONDS = 24 * 3600


class RedisOutbox:
    """Durable and shared: ``{prefix}:webhooks:due`` (zset) + ``{prefix}:webhooks:items`` (hash).

    A claim is a lease (the due time moved ``lease`` ahead), so an event whose deliverer died is
    due again once the lease passes; every time comes from Redis ``TIME``, not worker clocks.
    """

    def __init__(self, redis: Any, prefix: str = "nanobatch", limit: int = 10_000) -> None:
        self.redis, self.limit = redis, limit
        self.due_key, self.items_key = f"{prefix}:webhooks:due", f"{prefix}:webhooks:items"
        self.once_prefix = f"{prefix}:webhooks:once:"
        self._claim = redis.register_script(_CLAIM)
        self._push = redis.register_script(_PUSH)
        self._retry = redis.register_script(_RETRY)

    def push(self, event: WebhookEvent) -> bool:
        once = self.once_prefix + event.once if event.once else ""
        keys = [self.due_key, self.items_key, once]
        return bool(self._push(keys=keys, args=[event.id, _record(event, 0), self.limit, ONCE_TTL_SECONDS]))

    def claim(self, lease: float) -> Claimed | None:
        found = self._claim(keys=[self.due_key, self.items_key], args=[int(lease * 1000)])
        if not found or found[1] is None:
            if found:  # a due id without a record: clean it up
                self.redis.zrem(self.due_key, found[0])
            return None
        event_id = found[0].decode() if isinstance(found[0], bytes) else str(found[0])
        return _claimed(event_id, found[1])

    def ack(self, claimed: Claimed) -> None:
        pipe = self.redis.pipeline()
        pipe.zrem(self.due_key, claimed.id)
        pipe.hdel(self.items_key, claimed.id)
        pipe.execute()

    def retry(self, claimed: Claimed, attempts: int, delay: float) -> None:
        args = [claimed.id, _record(claimed.event, attempts), int(delay * 1000)]
        self._retry(keys=[self.due_key, self.items_key], args=args)

    def size(self) -> int:
        return int(self.redis.zcard(self.due_key))


# --- the notifier -------------------------------------------------------------------------------


class HideUrl(logging.Filter):
    """Rewrites the webhook URL to its host in ``httpx``'s own request log lines (``HTTP Request:
    POST <url>``): the path of a Slack-style URL is a credential."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        parts = urlsplit(url)
        self.shown = f"{parts.scheme}://{parts.netloc}/[REDACTED]"

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(self.url in str(arg) for arg in record.args):
            record.args = tuple(self.shown if self.url in str(arg) else arg for arg in record.args)
        return True


class WebhookNotifier:
    """``emit`` from anywhere; one daemon thread moves events to the outbox and delivers them."""

    def __init__(
        self,
        config: WebhookConfig,
        outbox: Outbox,
        http: httpx.Client,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.outbox = config, outbox
        self.sender = WebhookSender(config, http, clock)
        self.rng = rng or random.Random()
        self.dropped = 0
        self._queue: queue.Queue[WebhookEvent] = queue.Queue(maxsize=config.queue_size)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._url_filter = HideUrl(config.url)

    def emit(self, event: WebhookEvent) -> bool:
        """Queue ``event`` without waiting; ``False`` (and counted in ``dropped``) when the queue is full."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            logger.warning("webhook queue full: %s event %s dropped", event.type.value, event.id)
            return False
        self._wake.set()
        return True

    def start(self) -> WebhookNotifier:
        if self._thread is None:
            logging.getLogger("httpx").addFilter(self._url_filter)
            self._thread = threading.Thread(target=self._run, name="nanobatch-webhooks", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; events not yet delivered stay in the outbox (Redis: for the next start)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
            logging.getLogger("httpx").removeFilter(self._url_filter)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                busy = self._step()
            except Exception:
                logger.exception("webhook delivery loop failed; retrying shortly")
                busy = False
            if not busy:
                self._wake.wait(self.config.poll_seconds)
                self._wake.clear()

    def _step(self) -> bool:
        """Hand queued events to the outbox, deliver one due event; ``True`` if there was work."""
        moved = self._handoff()
        claimed = self.outbox.claim(self.config.lease_seconds)
        if claimed is not None:
            self._deliver(claimed)
        return moved or claimed is not None

    def _handoff(self) -> bool:
        moved = False
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return moved
            moved = True
            if not self.outbox.push(event):
                self.dropped += 1
                logger.warning("webhook outbox full: %s event %s dropped", event.type.value, event.id)

    def _deliver(self, claimed: Claimed) -> None:
        event, attempt = claimed.event, claimed.attempts + 1
        result = self.sender.send(event)
        where = f"{event.type.value} event {event.id} to {self.config.host}"
        if result.outcome == "delivered":
            logger.info("webhook %s delivered (attempt %d)", where, attempt)
            self.outbox.ack(claimed)
        elif result.outcome == "rejected":
            logger.warning("webhook %s refused with HTTP %s; not retried", where, result.detail)
            self.outbox.ack(claimed)
        elif attempt >= self.config.max_attempts:
            logger.warning("webhook %s failed %d times (last: %s); giving up", where, attempt, result.detail)
            self.outbox.ack(claimed)
        else:
            delay = backoff(attempt, self.config.backoff_base, self.config.backoff_cap, self.rng)
            if result.retry_after is not None:
                delay = min(max(delay, result.retry_after), self.config.backoff_cap)
            logger.info("webhook %s: attempt %d got %s; retry in %.1fs", where, attempt, result.detail, delay)
            self.outbox.retry(claimed, attempt, delay)
