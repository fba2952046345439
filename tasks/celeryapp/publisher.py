"""Publishing task ids to Celery, pipelined, and remembering which ids have a live message.

Submit publishes through kombu's producer batch (one Redis pipeline per 1,000 messages), which is
what makes a 100k submit take seconds rather than minutes.

Which ids have a live message is tracked in two Redis sorted sets, so the sweeper can re-publish
exactly the due ``pending`` rows whose message is gone:

- ``queued``: id → publish time. A message waiting in the broker queue may wait long behind a
  backlog, so it counts as live for ``redispatch_after`` seconds.
- ``held``: id → ETA + grace. A delayed (countdown) message lives in the memory of the worker that
  received it; if that worker dies, the message is gone although Redis still lists it as unacked
  for an hour. So on receipt the worker moves the id here, live only until shortly after its ETA.

Both entries are removed when the task starts. After Redis loses its data both sets are gone with
the queue, and everything pending is published again. Duplicates are harmless: the database claim
lets only one copy run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from celery import Celery
from kombu import Producer, Queue
from kombu.common import maybe_declare
from kombu.utils.uuid import uuid
from redis import Redis

from nanobatch.tasks.celeryapp.app import GENERATE_TASK
from nanobatch.tasks.liveness import glob_escape

PUBLISH_BATCH = 1000
#: A received delayed message is live until this long after its ETA (threads may all be busy).
HELD_GRACE_SECONDS = 60.0
#: A worker's marks of received messages expire after this long without a new one (a worker that
#: stopped cleanly: Celery returned its unstarted messages to the queue).
RECEIVED_TTL_SECONDS = 6 * 3600


class Dispatcher:
    def __init__(self, app: Celery, redis: Redis, *, prefix: str, queue: str) -> None:
        self.app = app
        self.redis = redis
        self.prefix = prefix
        self.queued_key = f"{prefix}:queued"
        self.held_key = f"{prefix}:held"
        self.queue = queue
        #: Tops up the window from the database (``tasks.dispatch.fill``), installed by the runtime.
        self.filler: Callable[[], int] | None = None
        self.publish_all = False

    def fill(self) -> int:
        """Top up every pool's window (docs/architecture.md, "Dispatch")."""
        return self.filler() if self.filler is not None else 0

    def publish(self, task_ids: Sequence[str], *, countdown: float | None = None) -> int:
        """Publish one message per id (argument = the id only); returns how many were sent.

        Messages are built by Celery's own protocol code (``amqp.as_task_v2``) and published through
        kombu's producer batch (one Redis pipeline per 1,000). ``send_task`` would route, re-declare
        the queue and ``saferepr`` the arguments for every message, which costs three times as much
        and buys nothing for a fixed task with a fixed queue.
        """
        if not task_ids:
            return 0
        now = time.time()
        queue = Queue(self.queue)
        with self.app.producer_or_acquire() as producer:
            maybe_declare(queue, producer.channel)
            for start in range(0, len(task_ids), PUBLISH_BATCH):
                chunk = task_ids[start : start + PUBLISH_BATCH]
                self.redis.zadd(self.queued_key, dict.fromkeys(chunk, now))
                with producer.batch(PUBLISH_BATCH):
                    for task_id in chunk:
                        self._publish_one(producer, task_id, countdown)
        return len(task_ids)

    def _publish_one(self, producer: Producer, task_id: str, countdown: float | None) -> None:
        message = self.app.amqp.as_task_v2(
            uuid(),
            GENERATE_TASK,
            args=(task_id,),
            countdown=countdown,
            argsrepr=repr((task_id,)),
            kwargsrepr="{}",
        )
        producer.publish(
            message.body,
            exchange="",
            routing_key=self.queue,
            headers=message.headers,
            serializer="json",
            declare=[],
            retry=True,
            **message.properties,
        )

    def received_delayed(self, task_id: str, eta: float) -> None:
        """A worker now holds the delayed message for ``task_id`` in memory until ``eta``."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.queued_key, task_id)
        pipe.zadd(self.held_key, {task_id: eta + HELD_GRACE_SECONDS})
        pipe.execute()

    def _received_key(self, worker: str) -> str:
        return f"{self.prefix}:received:{worker}"

    def received(self, task_id: str, worker: str) -> None:
        """``worker`` took the message for ``task_id`` from the broker (it may wait in the worker's
        prefetch before a thread starts it). If the worker dies first, the message is gone although
        ``queued`` still lists it: :meth:`forget_received` lets the sweeper see that at once instead
        of after ``redispatch_after``."""
        key = self._received_key(worker)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(key, {task_id: time.time()})
        pipe.expire(key, RECEIVED_TTL_SECONDS)
        pipe.execute()

    def consumed(self, task_id: str, worker: str | None = None) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.queued_key, task_id)
        pipe.zrem(self.held_key, task_id)
        if worker is not None:
            pipe.zrem(self._received_key(worker), task_id)
        pipe.execute()

    def receivers(self) -> list[str]:
        """Workers that have taken messages they have not started (or died holding them)."""
        head = len(self._received_key(""))
        pattern = glob_escape(self.prefix) + ":received:*"
        return sorted(
            (key.decode() if isinstance(key, bytes) else str(key))[head:]
            for key in self.redis.scan_iter(match=pattern, count=500)
        )

    def forget_received(self, workers: Sequence[str]) -> int:
        """The messages these (dead) workers took are gone: drop their ids from ``queued`` and
        ``held`` so :meth:`without_live_message` reports them, and forget the workers' marks.
        Returns how many ids were forgotten."""
        forgotten = 0
        for worker in workers:
            key = self._received_key(worker)
            ids = self.redis.zrange(key, 0, -1)
            pipe = self.redis.pipeline(transaction=False)
            if ids:
                pipe.zrem(self.queued_key, *ids)
                pipe.zrem(self.held_key, *ids)
            pipe.delete(key)
            pipe.execute()
            forgotten += len(ids)
        return forgotten

    def without_live_message(self, task_ids: Sequence[str], *, stale_after: float) -> list[str]:
        """The ids among ``task_ids`` with neither a queued message younger than ``stale_after``
        seconds nor a held delayed message that is not yet overdue."""
        if not task_ids:
            return []
        ids = list(task_ids)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zmscore(self.queued_key, ids)
        pipe.zmscore(self.held_key, ids)
        queued, held = pipe.execute()
        now = time.time()
        return [
            tid
            for tid, published, until in zip(ids, queued, held, strict=True)
            if (published is None or published < now - stale_after) and (until is None or until < now)
        ]

    def queued_count(self) -> int:
        return int(self.redis.zcard(self.queued_key))
