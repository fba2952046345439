"""Worker liveness: heartbeats in Redis, and the record of the last recovery sweep.

A lease alone (request timeout + inline wait + 30 s) leaves a dead worker's tasks stuck for minutes.
So every worker process writes ``{prefix}:liveness:worker:<name>`` every ``heartbeat_interval``
seconds with a ``heartbeat_ttl`` expiry, from a thread of its own (never a task thread). A
``processing`` row whose ``worker`` has no such key belongs to a process that died or stopped
(SIGKILL, OOM kill, SIGSTOP, a VM freeze): the sweeper returns it to ``pending`` within about
``heartbeat_ttl + sweep_interval`` instead of waiting for the lease.

Absence proves something only once Redis has held heartbeats for a whole TTL: after a Redis restart
or a FLUSHDB every key is gone, the live workers' too. ``{prefix}:liveness:since`` (set by the first
sweeper that finds it missing, without expiry) says since when; until it is ``heartbeat_ttl`` old
the sweeper relies on leases alone, which gives live workers time to beat again.

A reclaimed worker that wakes up again does no harm: every write it can still make is conditional on
its claim token (``models.transitions``), so its result is dropped. What it may cost: the call it had
in flight is paid and its result discarded, and the task is tried again (one attempt counted).

The sweeper records each pass in ``{prefix}:liveness:last-sweep`` (a hash, Redis clock), so
``status``, ``watch`` and the metrics can say when recovery last ran and warn when none ran for two
intervals. Nothing here knows Celery.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from nanobatch.tasks.estimate import human_duration
from nanobatch.tasks.settings import Settings

log = logging.getLogger("nanobatch.liveness")

#: Socket timeouts of the heartbeat client: a beat must fail fast and be retried at the next
#: interval, never hang on a dead connection for longer than the TTL.
FAST_TIMEOUT = 3.0


@dataclass(frozen=True)
class LivenessKeys:
    prefix: str

    def worker(self, name: str) -> str:
        return f"{self.prefix}:liveness:worker:{name}"

    @property
    def since(self) -> str:
        return f"{self.prefix}:liveness:since"

    @property
    def last_sweep(self) -> str:
        return f"{self.prefix}:liveness:last-sweep"


def fast_redis(url: str) -> Redis:
    """A client that fails within seconds (no retries): for heartbeats and read-only health views."""
    return Redis.from_url(
        url,
        socket_connect_timeout=FAST_TIMEOUT,
        socket_timeout=FAST_TIMEOUT,
        retry=Retry(NoBackoff(), 1),
    )


def redis_time(redis: Redis) -> float:
    """The Redis clock: one clock for every host that reads or writes liveness facts."""
    seconds, micros = redis.time()
    return int(seconds) + int(micros) / 1_000_000


# -- heartbeats -----------------------------------------------------------------------------------


class Heartbeat:
    """Writes this process's heartbeat every ``interval`` seconds, in a daemon thread, until stopped."""

    def __init__(self, redis: Redis, *, prefix: str, name: str, interval: float, ttl: float) -> None:
        self.redis = redis
        self.key = LivenessKeys(prefix).worker(name)
        self.name = name
        self.interval = interval
        self.ttl = ttl
        self.value = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def beat(self) -> bool:
        """One heartbeat; ``False`` (logged once per outage) when Redis cannot be reached."""
        try:
            self.redis.set(self.key, self.value, px=int(self.ttl * 1000))
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning("heartbeat of %s failed (%s); retrying every %gs", self.name, exc, self.interval)
            self._failing = True
            return False
        if self._failing:
            log.info("heartbeat of %s written again", self.name)
        self._failing = False
        return True

    def start(self) -> Heartbeat:
        """Beat once now (before this process claims anything), then keep beating in a thread."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="nanobatch-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self, *, forget: bool = True) -> None:
        """Stop beating; ``forget`` deletes the key, so the sweeper need not wait for it to expire
        (only right once this process holds no task any more: after a warm shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=FAST_TIMEOUT * 2)
        if forget:
            try:
                self.redis.delete(self.key)
            except (RedisError, OSError):
                log.debug("could not delete heartbeat %s; it expires by itself", self.key)


def silent_workers(redis: Redis, prefix: str, names: list[str], *, ttl: float) -> list[str] | None:
    """The names among ``names`` that have no live heartbeat.

    ``None`` when absence proves nothing yet: Redis has not held heartbeats for ``ttl`` seconds
    (first use, or after a restart or FLUSHDB); the first caller that finds the marker missing sets it.
    """
    keys = LivenessKeys(prefix)
    with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.get(keys.since)
        for name in names:
            pipe.exists(keys.worker(name))
        now_pair, since, *exists = pipe.execute()
    now = int(now_pair[0]) + int(now_pair[1]) / 1_000_000
    if since is None:
        if redis.set(keys.since, repr(now), nx=True):
            log.info("liveness: no heartbeat history in Redis (new or flushed); leases only for %gs", ttl)
        return None
    if now - float(since) < ttl:
        return None
    return [name for name, alive in zip(names, exists, strict=True) if not alive]


def alive_workers(redis: Redis, prefix: str) -> list[str]:
    """Names of the worker processes whose heartbeat is live."""
    head = len(LivenessKeys(prefix).worker(""))
    pattern = glob_escape(prefix) + ":liveness:worker:*"
    return sorted(_text(key)[head:] for key in redis.scan_iter(match=pattern, count=500))


# -- the last sweep -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepRecord:
    """What the last sweep did, and when (Redis clock, epoch seconds)."""

    at: float
    worker: str
    interval: float
    took: float
    reclaimed: int
    reclaimed_silent: int
    dispatched: int


def record_sweep(redis: Redis, prefix: str, record: SweepRecord) -> None:
    mapping: dict[str | bytes, str] = {k: str(v) for k, v in asdict(record).items()}
    redis.hset(LivenessKeys(prefix).last_sweep, mapping=mapping)  # type: ignore[arg-type]


def last_sweep(redis: Redis, prefix: str) -> SweepRecord | None:
    raw = {_text(k): _text(v) for k, v in redis.hgetall(LivenessKeys(prefix).last_sweep).items()}
    try:
        return SweepRecord(
            at=float(raw["at"]),
            worker=raw["worker"],
            interval=float(raw["interval"]),
            took=float(raw["took"]),
            reclaimed=int(raw["reclaimed"]),
            reclaimed_silent=int(raw["reclaimed_silent"]),
            dispatched=int(raw["dispatched"]),
        )
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class RecoveryHealth:
    """Whether recovery runs: the last sweep, its age, and how many workers heartbeat."""

    now: float
    interval: float  # the sweep interval this reader expects (the sweeper's own when recorded)
    last: SweepRecord | None
    workers_alive: int

    @property
    def age(self) -> float | None:
        return None if self.last is None else max(0.0, self.now - self.last.at)

    @property
    def expected_interval(self) -> float:
        return self.last.interval if self.last is not None else self.interval

    @property
    def overdue(self) -> bool:
        """No sweep for two intervals: nothing reclaims dead workers' tasks or re-publishes lost ones."""
        age = self.age
        return age is None or age > 2 * self.expected_interval

    def describe(self) -> str:
        workers = f"{self.workers_alive} worker{'s' if self.workers_alive != 1 else ''} alive"
        if self.last is None:
            return f"no recovery sweep has run yet; {workers} (every `nanobatch worker` sweeps)"
        last = self.last
        if self.overdue:
            return (
                f"no recovery sweep for {human_duration(self.age)} (more than two "
                f"{self.expected_interval:g}s intervals; the last by {last.worker}); {workers}"
            )
        done = f"reclaimed {last.reclaimed}, dispatched {last.dispatched}"
        return f"last sweep {human_duration(self.age)} ago by {last.worker} ({done}); {workers}"


def recovery_health(redis: Redis, prefix: str, *, interval: float) -> RecoveryHealth:
    return RecoveryHealth(
        now=redis_time(redis),
        interval=interval,
        last=last_sweep(redis, prefix),
        workers_alive=len(alive_workers(redis, prefix)),
    )


def recovery_health_for(settings: Settings) -> RecoveryHealth | None:
    """For the CLI: ``None`` in embedded mode (the sweeper and its Redis live inside the worker);
    a Redis error propagates (the caller says it cannot tell)."""
    if settings.embedded:
        return None
    client = fast_redis(settings.broker_url)
    try:
        return recovery_health(client, settings.limiter_prefix, interval=settings.sweep_interval)
    finally:
        client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis SCAN/KEYS pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
