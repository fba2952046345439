"""Serving one task id: claim → admit → call → store → finish (DESIGN §2), each a named step.

The Celery task is a one-line wrapper around :func:`serve`, so this module can be read (and tested)
as the whole life of a task. Every exit path leaves the row in a defined state: completed, failed,
or pending with a reason (and a ``not_before`` when it must wait), to be published again by the
dispatcher's window (docs/architecture.md, "Dispatch"), which this module tops up after every task.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import Connection, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from nanobatch.models import queue, transitions
from nanobatch.models.base import utcnow
from nanobatch.models.catalog import CatalogError, ModelSpec
from nanobatch.models.lifecycle import BatchGate, lane_after_failure, why_batch_waits
from nanobatch.models.status import BatchStatus, ErrorCode, Lane, TaskStatus
from nanobatch.models.tables import GenerationTask
from nanobatch.tasks import events, publishing
from nanobatch.tasks.dispatch import fill_after_task
from nanobatch.tasks.runtime import Runtime
from nanobatch.workers import storage
from nanobatch.workers.errors import DailyQuotaExhausted, ProviderError, RateLimited
from nanobatch.workers.imagecheck import (
    DEFAULT_MAX_PIXELS,
    ExpectedSize,
    ImageFacts,
    ImageRejected,
    SizeCheck,
    check_image,
)
from nanobatch.workers.inputs import read_input_image
from nanobatch.workers.limiter import Admission
from nanobatch.workers.providers.base import ImageRequest, ImageResult
from nanobatch.workers.providers.body_gate import BodyGate
from nanobatch.workers.providers.http import call_deadline
from nanobatch.workers.redact import metric_label, redact
from nanobatch.workers.retry import (
    NO_WAITS,
    Action,
    Decision,
    WaitBounds,
    WaitsSoFar,
    decide,
    retry_or_give_up,
)
from nanobatch.workers.storage import StagedImage, StorageError, StoreUnavailable, Usage
from nanobatch.workers.store import Store

log = logging.getLogger("nanobatch.worker")
T = TypeVar("T")

#: Waits between tries of a final write while the database restarts (about half a minute in all).
DB_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
#: The database errors a write waits out (a restart, a dropped connection, an exhausted pool).
DB_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)
#: Longest wait between tries of recording a paid result (retried for ``result_write_deadline``).
RESULT_WRITE_MAX_DELAY = 10.0

#: Lanes sent as a ``serviceTier`` (standard is the service's default: no field, as before lanes).
TIERED_LANES = frozenset({Lane.FLEX.value, Lane.PRIORITY.value})

#: How long a task waits before looking at its batch budget again.
BUDGET_RECHECK_SECONDS = 300.0


class Result(StrEnum):
    """What one delivery of a message did (returned by the task; visible in Flower)."""

    COMPLETED = "completed"
    REUSED = "reused"
    RECOVERED = "recovered"  # completed from an image an earlier delivery paid for and staged
    FAILED = "failed"
    DEFERRED = "deferred"
    SKIPPED = "skipped"  # not claimable: done already, claimed by another copy, paused, not due


OPEN_BATCH = BatchGate(status=BatchStatus.OPEN.value)


@dataclass(frozen=True)
class Job:
    """An immutable snapshot of a claimed row plus the batch facts the worker needs."""

    id: str
    token: str
    batch_id: str
    batch_name: str
    key: str
    prompt: str
    model: str
    image_size: str | None
    aspect_ratio: str
    output_format: str
    input_images: tuple[str, ...]
    attempts: int
    error_code: str | None
    content_hash: str | None
    reuse: bool
    has_budget: bool = False
    #: Recorded at submit, re-checked when the input images are read (``workers.inputs``).
    input_root: str | None = None
    input_sha256: tuple[str, ...] = ()
    #: The claim only succeeds for an open batch past its start time; the window is checked after it.
    gate: BatchGate = OPEN_BATCH
    #: The upstream 429 waits this task already sat through (bounded: ``workers.retry.WaitBounds``).
    waits: WaitsSoFar = NO_WAITS
    #: The lane it runs in (``models.status.Lane``): its price and its ``serviceTier``.
    lane: str = Lane.STANDARD.value
    #: Its batch's ``--deadline`` (a task failing on flex moves to standard when it nears).
    deadline: datetime | None = None

    @property
    def holder(self) -> str:
        return f"{self.id}:{self.token}"


def serve(rt: Runtime, task_id: str, *, celery_task_id: str | None = None) -> Result:
    """Run one delivery of a ``generate`` message to a terminal or well-defined waiting state, then
    top up the window of its pool (a message left the broker)."""
    rt.dispatcher.consumed(task_id, rt.worker_name)
    job = claim(rt, task_id, celery_task_id)
    result = Result.SKIPPED if job is None else _serve(rt, job)
    if job is None:
        _drop_message(rt, task_id)
    rt.telemetry.count_outcome(result.value)
    fill_after_task(rt, job.model if job is not None else None)
    return result


def _drop_message(rt: Runtime, task_id: str) -> None:
    """A message that could not claim its row: if the row is still pending (its batch is paused or
    not due), it goes back to the queue, so the window does not count a message that is gone."""
    try:
        with rt.db.autocommit() as connection:
            queue.back_in_queue(connection, [task_id])
    except DB_UNAVAILABLE as exc:  # the sweeper finds it: in flight without a live message
        log.warning("could not return task %s to the queue (%s)", task_id, type(exc).__name__)


def _serve(rt: Runtime, job: Job) -> Result:
    if (why := why_batch_waits(job.gate)) is not None:
        return hand_back(rt, job, code=ErrorCode.OUTSIDE_WINDOW, message=why)
    try:
        return run_claimed(rt, job)
    except Exception as exc:  # a bug or an infrastructure fault: never leave the row processing
        log.exception("task %s crashed; returning it to pending", job.id)
        _requeue_after_crash(rt, job, exc)
        return Result.DEFERRED


def claim(rt: Runtime, task_id: str, celery_task_id: str | None) -> Job | None:
    with rt.db.autocommit() as connection:  # one statement: claims and reads the batch's facts
        row = transitions.claim(
            connection,
            task_id,
            worker=rt.worker_name,
            lease_seconds=rt.settings.effective_lease_seconds,
            celery_task_id=celery_task_id,
        )
    if row is None:
        return None
    return job_from_row(row)


def job_from_row(row: Any) -> Job:
    """A :class:`Job` from a claimed row (``transitions.CLAIMED_COLUMNS`` and its batch's facts)."""
    return Job(
        id=row.id,
        token=row.claim_token or "",
        batch_id=row.batch_id,
        batch_name=row.batch_name,
        key=row.key,
        prompt=row.prompt,
        model=row.model,
        image_size=row.image_size,
        aspect_ratio=row.aspect_ratio,
        output_format=row.output_format,
        input_images=tuple(row.input_images or ()),
        attempts=row.attempts,
        error_code=row.error_code,
        content_hash=row.content_hash,
        reuse=bool(row.batch_reuse),
        has_budget=row.batch_budget_usd is not None,
        input_root=row.input_root,
        input_sha256=tuple(row.input_sha256 or ()),
        gate=BatchGate(
            status=BatchStatus.OPEN.value,
            window_start=row.batch_window_start,
            window_end=row.batch_window_end,
            window_tz=row.batch_window_tz,
        ),
        waits=WaitsSoFar(
            upstream_waits=row.upstream_waits or 0,
            upstream_wait_seconds=row.upstream_wait_seconds or 0.0,
            day_parks=row.day_parks or 0,
        ),
        lane=row.lane or Lane.STANDARD.value,
        deadline=row.batch_deadline,
    )


def run_claimed(rt: Runtime, job: Job) -> Result:
    try:
        if (recovered := recover_staged(rt, job)) is not None:
            return recovered
        spec = rt.catalog.resolve(choose_model(job, rt.settings.fallback_models))
        request = build_request(job, spec, limits=ImageLimits.of(rt), store=rt.store)
    except StoreUnavailable as exc:  # before any paid call: wait the outage out, no attempt counted
        return wait_for_store(rt, job, exc)
    except (CatalogError, OSError, ValueError) as exc:  # ValueError: also a rejected input image
        return finish_failed(rt, job, ErrorCode.INVALID_TASK, str(exc))
    if job.reuse and (result := reuse_previous(rt, job)) is not None:
        return result
    prompt_tokens = spec.estimate_prompt_tokens(job.prompt, len(request.input_images))
    reserved = spec.cost_usd(job.image_size, prompt_tokens, lane=job.lane)
    if not _reserve_budget(rt, job, reserved):
        return defer(
            rt,
            job,
            BUDGET_RECHECK_SECONDS,
            count_attempt=False,
            code=ErrorCode.BUDGET_REACHED,
            message="batch budget reached; waiting for the budget to be raised",
        )
    try:
        return admit_call_store(rt, job, spec, request, prompt_tokens)
    finally:
        best_effort("budget release", _release_budget, rt, job, reserved)


def admit_call_store(
    rt: Runtime, job: Job, spec: ModelSpec, request: ImageRequest, prompt_tokens: int
) -> Result:
    pool = spec.name
    admission = admit(rt, pool, job, tokens=prompt_tokens + spec.output_tokens(job.image_size))
    if not admission.admitted:
        if admission.impossible:
            return finish_failed(
                rt,
                job,
                ErrorCode.LIMIT_TOO_SMALL,
                f"one request needs more tokens than pool {pool}'s tokens/minute limit",
            )
        return defer(
            rt,
            job,
            admission.wait_seconds,
            count_attempt=False,
            code=ErrorCode.RATE_WAIT,
            message=f"waiting for pool {pool}",
        )
    started = time.monotonic()
    try:
        with call_deadline(rt.settings.request_timeout):  # the whole call, a result link's fetch too
            result = rt.provider.generate(request)
        facts = result.facts or verify_output(rt, request, result.data)
    except ProviderError as error:
        return handle_error(rt, job, pool, error, admitted_at=admission.decided_at)
    except ImageRejected as exc:  # paid for, but not a true image of what was asked: the upstream's fault
        return retry_later(rt, job, ErrorCode.BAD_IMAGE, f"the upstream's image was rejected: {exc}")
    finally:
        # Bookkeeping after the call must never cost its result: a Redis blip here is logged, and the
        # limiter's leased slot frees itself when its lease runs out.
        best_effort("limiter release", rt.limiter.release, pool, job.holder)
        rt.telemetry.observe_latency(pool, time.monotonic() - started)
    rt.telemetry.record_success(pool)
    latency_ms = int((time.monotonic() - started) * 1000)
    return finish_completed(rt, job, spec, result, facts, latency_ms, prompt_tokens)


def best_effort(what: str, action: Callable[..., object], *args: object) -> None:
    """Run a bookkeeping step whose failure must not undo a paid result: log it and go on."""
    try:
        action(*args)
    except Exception as exc:
        log.warning("%s failed (%s: %s); carrying on", what, type(exc).__name__, exc)


def admit(rt: Runtime, pool: str, job: Job, *, tokens: int) -> Admission:
    """Wait inside the task (up to ``max_inline_wait``) for the pool to admit us.

    Returns the admission once admitted (its ``decided_at`` dates the call for the adaptive share),
    or the refusal whose wait is longer than the task should hold a worker thread (the task is then
    deferred). Sleeping here is the wait itself: every worker of the pool is paced by the same Redis
    limiter, so this is where smooth pacing happens.
    """
    deadline = time.monotonic() + rt.settings.max_inline_wait
    while True:
        admission = rt.limiter.acquire(
            pool,
            holder=job.holder,
            tokens=tokens,
            images=1,
            lease_seconds=rt.settings.effective_lease_seconds,
        )
        if admission.admitted or admission.wait_seconds > deadline - time.monotonic():
            return admission
        time.sleep(max(admission.wait_seconds, 0.001))


def handle_error(
    rt: Runtime, job: Job, pool: str, error: ProviderError, *, admitted_at: float | None = None
) -> Result:
    if isinstance(error, RateLimited):
        note_refusal(rt, pool, error)
    decision = decide(
        error,
        attempts_so_far=job.attempts,
        policy=rt.policy,
        waits=job.waits,
        bounds=wait_bounds(rt.settings),
    )
    if isinstance(error, DailyQuotaExhausted):  # the pool is out for the day, whatever this task does
        until = rt.limiter.park_until_reset(pool, reason="daily quota exhausted (429 PerDay)")
        if decision.action is Action.PARK_DAY:
            log.info("pool %s out of daily quota; parking %s until %.0f", pool, job.id, until)
            return defer(
                rt,
                job,
                max(0.0, until - time.time()),
                count_attempt=False,
                code=decision.code,
                message=decision.message,
                day_park=True,
            )
    elif isinstance(error, RateLimited):
        # The pool cools down for the wait the server asked. A 429 that names no wait cools it down
        # for the base wait only: this task's own backoff grows with its waits, but one task's growing
        # backoff must not stall every task of the pool.
        pool_wait = decision.delay
        if error.retry_after is None:
            pool_wait = min(pool_wait, rt.settings.rate_limit_wait)
        if job.lane != Lane.FLEX:  # flex is refused for lack of spare capacity: standard calls go on
            rt.limiter.cooldown(pool, pool_wait, reason=f"429 {','.join(error.quota_ids) or error.code}")
            # The limiter admitted this call, so its counters saw room: someone else spends the quota.
            adapt = functools.partial(rt.limiter.adapt_after_refusal, pool, admitted_at=admitted_at)
            best_effort("limiter share", adapt)
        if decision.action is Action.WAIT:
            log.info("pool %s rate limited; %s waits %.2fs (no attempt used)", pool, job.id, decision.delay)
            return defer(
                rt,
                job,
                decision.delay,
                count_attempt=False,
                code=decision.code,
                message=decision.message,
                upstream_wait=decision.delay,
            )
    if decision.action is Action.RETRY:
        log.warning("task %s transient error (%s); retry in %.1fs", job.id, decision.code, decision.delay)
    elif isinstance(error, RateLimited):
        log.warning("task %s stops waiting (%s): %s", job.id, decision.code, decision.message)
    return apply_decision(rt, job, decision)


def note_refusal(rt: Runtime, pool: str, error: RateLimited) -> None:
    """Count the 429 and keep the pool's "refused since"; warn once every call has been refused too long."""
    unclassified = error.code == ErrorCode.UNCLASSIFIED_429
    quota = metric_label(next(iter(error.quota_ids), ""), rt.settings.api_key_value)
    rt.telemetry.count_429(pool, quota or (error.code if unclassified else ""))
    since = rt.telemetry.record_refusal(pool, _clean(rt, error.message), unclassified=unclassified)
    refused = time.time() - since if since is not None else 0.0
    if since is not None:
        best_effort(
            "pool.refused event", events.pool_refused, rt, pool, refused, since, _clean(rt, error.message)
        )
    if refused > rt.settings.pool_refused_alert_seconds:
        log.warning(
            "pool %s: every call refused for %.0fs (NANOBATCH_POOL_REFUSED_ALERT_SECONDS=%g); last: %s",
            pool,
            refused,
            rt.settings.pool_refused_alert_seconds,
            _clean(rt, error.message),
        )


def wait_bounds(settings: Any) -> WaitBounds:
    """The per-task wait bounds of ``settings`` (``NANOBATCH_MAX_RATE_WAITS`` and friends)."""
    return WaitBounds(
        max_rate_waits=settings.max_rate_waits,
        max_rate_wait_seconds=settings.max_rate_wait_seconds,
        max_day_parks=settings.max_day_parks,
        rate_limit_wait=settings.rate_limit_wait,
        rate_limit_wait_max=settings.rate_limit_wait_max,
    )


def defer(
    rt: Runtime,
    job: Job,
    delay: float,
    *,
    count_attempt: bool,
    code: ErrorCode,
    message: str,
    upstream_wait: float | None = None,
    day_park: bool = False,
    lane: str | None = None,
) -> Result:
    """Back to pending with ``not_before`` = now + ``delay``; the dispatcher publishes it once due.

    No countdown message: one would sit in a worker's memory (lost with the worker until
    ``redispatch_after``; past the visibility timeout redelivered in a loop, celery#9849, kombu#337),
    and would escape pause, cancel and priority. The cost is latency: a due row waits for the next
    refill (a task ending, or ``dispatch_interval``).
    """
    rt.telemetry.count_retry(code)
    not_before = utcnow() + timedelta(seconds=delay) if delay > 0 else None
    write_with_retry(
        rt,
        lambda connection: transitions.requeue(
            connection,
            job.id,
            job.token,
            not_before=not_before,
            count_attempt=count_attempt,
            code=code,
            message=_clean(rt, message),
            upstream_wait=upstream_wait,
            day_park=day_park,
            lane=lane,
        ),
        single_statement=True,
    )
    return Result.DEFERRED


def hand_back(rt: Runtime, job: Job, *, code: ErrorCode, message: str) -> Result:
    """Back to pending with no message: the dispatcher publishes it when its batch may run again."""
    write_with_retry(
        rt,
        lambda connection: transitions.requeue(
            connection, job.id, job.token, not_before=None, count_attempt=False, code=code, message=message
        ),
        single_statement=True,
    )
    return Result.DEFERRED


def finish_failed(
    rt: Runtime, job: Job, code: ErrorCode, message: str, *, count_attempt: bool = True
) -> Result:
    write_with_retry(
        rt,
        lambda connection: transitions.fail(
            connection, job.id, job.token, code=code, message=_clean(rt, message), count_attempt=count_attempt
        ),
        single_statement=True,
    )
    log.warning("task %s (%s/%s) failed: %s", job.id, job.batch_name, job.key, code)
    return Result.FAILED


def finish_completed(
    rt: Runtime,
    job: Job,
    spec: ModelSpec,
    result: ImageResult,
    facts: ImageFacts,
    latency_ms: int,
    prompt_estimate: int,
) -> Result:
    """Stage the paid image under this claim's own name, then let the row decide (docs/integrity.md)."""
    prompt_tokens = result.prompt_tokens if result.prompt_tokens is not None else prompt_estimate
    usage = Usage(
        prompt_tokens=prompt_tokens,
        output_tokens=result.output_tokens,
        cost_usd=spec.cost_usd(job.image_size, prompt_tokens, lane=job.lane),
        latency_ms=latency_ms,
        model_used=result.model_version or spec.name,
    )
    try:
        staged = stage_with_retry(
            rt, lambda: storage.stage(rt.store, job.batch_name, job.id, job.token, result.data, facts, usage)
        )
    except StoreUnavailable as exc:
        log.error("task %s: the image store stayed unavailable; the paid image is lost (%s)", job.id, exc)
        return wait_for_store(rt, job, exc)
    except StorageError as exc:
        return handle_error_storage(rt, job, exc)
    return commit_staged(rt, job, staged, standard_cost=spec.cost_usd(job.image_size, prompt_tokens))


def stage_with_retry(rt: Runtime, write: Callable[[], StagedImage]) -> StagedImage:
    """Stage a paid image, retrying through a store outage with backoff (0.5 s doubling to 10 s) for
    up to ``result_write_deadline``: the image exists only in this worker's memory until it is
    staged, so giving up early would pay for it again. Each attempt is timed (metrics)."""
    deadline = time.monotonic() + rt.settings.result_write_deadline
    delay = DB_RETRY_DELAYS[0]
    while True:
        started = time.perf_counter()
        try:
            staged = write()
        except StoreUnavailable as exc:
            best_effort("storage metrics", rt.telemetry.storage_write, time.perf_counter() - started, False)
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            log.warning("image store unavailable (%s); staging again in %.1fs", exc, delay)
            time.sleep(min(delay, left))
            delay = min(delay * 2, RESULT_WRITE_MAX_DELAY)
            continue
        best_effort("storage metrics", rt.telemetry.storage_write, time.perf_counter() - started, True)
        return staged


STORE_WAIT_SECONDS = 15.0


def wait_for_store(rt: Runtime, job: Job, exc: StorageError) -> Result:
    """The store is down: the task waits (pending, no attempt counted) and is tried again later.
    Said in the log like the staging path's outage: the operator sees why nothing completes."""
    log.warning(
        "image store unavailable (%s); task %s waits %.0fs, no attempt counted",
        _clean(rt, str(exc)),
        job.id,
        STORE_WAIT_SECONDS,
    )
    return defer(
        rt,
        job,
        STORE_WAIT_SECONDS,
        count_attempt=False,
        code=ErrorCode.STORAGE_UNAVAILABLE,
        message=_clean(rt, str(exc)),
    )


def commit_staged(
    rt: Runtime, job: Job, staged: StagedImage, *, standard_cost: float | None = None
) -> Result:
    """Record a staged image as the row's result if this claim still owns the row, then publish it.

    The conditional UPDATE (claim token) decides; it is retried through a database outage for up to
    ``result_write_deadline``. Only the winner publishes the file under the key's name; a loser removes
    only its own staged file; a worker that gives up leaves it staged for the row's next delivery.
    """
    outcome = transitions.Outcome(
        result_uri=staged.uri,
        result_sha256=staged.sha256,
        mime_type=staged.mime_type,
        width=staged.width,
        height=staged.height,
        bytes=staged.bytes,
        prompt_tokens=staged.usage.prompt_tokens,
        output_tokens=staged.usage.output_tokens,
        cost_usd=staged.usage.cost_usd,
        latency_ms=staged.usage.latency_ms,
        model_used=staged.usage.model_used,
        standard_cost_usd=standard_cost,
    )
    won = write_result(rt, lambda connection: transitions.complete(connection, job.id, job.token, outcome))
    if won is None:
        log.error(
            "task %s: could not record its paid result for %.0fs (database unavailable); the image stays "
            "staged at %s and the task's next delivery records it without paying again",
            job.id,
            rt.settings.result_write_deadline,
            staged.uri,
        )
        return Result.DEFERRED
    if not won and not _recorded_already(rt, job, staged):
        log.warning("task %s lost its claim before its result was recorded; result not used", job.id)
        return Result.SKIPPED
    publish(rt, job, staged)
    return Result.COMPLETED


def _recorded_already(rt: Runtime, job: Job, staged: StagedImage) -> bool:
    """After a lost claim: was it ours after all (a commit whose reply was lost)? If not, remove our
    staged file when the row is finished, or leave it for the row's current or next owner to take over.
    """
    try:
        state = write_with_retry(
            rt, lambda connection: transitions.result_state(connection, job.id), single_statement=True
        )
    except DB_UNAVAILABLE:
        return False  # keep the file: whoever owns the row next finds it
    if state is not None and state.status == TaskStatus.COMPLETED and state.result_uri == staged.uri:
        return True
    if state is None or TaskStatus(state.status).is_terminal:
        with contextlib.suppress(StorageError):  # a store outage: the file stays, harmless
            storage.discard(rt.store, staged)
    return False


def publish(rt: Runtime, job: Job, staged: StagedImage) -> None:
    """Give a recorded result its name (``<batch>/<key>.<ext>``) and point the row at it.

    Until this succeeds the row points at the staged file, which stays in place: the row always
    names an existing file whose sha256 it records.
    """
    recorded = transitions.StagedResult(job.id, job.batch_name, job.key, staged.uri, staged.mime_type)
    try:
        publishing.publish_recorded(rt, recorded, run_write=_write_one_statement)
    except (StorageError, *DB_UNAVAILABLE) as exc:
        log.warning(
            "task %s: result kept at %s (%s); the sweeper publishes it later", job.id, staged.uri, exc
        )


def _write_one_statement(rt: Runtime, write: Callable[[Connection], bool]) -> bool:
    return write_with_retry(rt, write, single_statement=True)


def recover_staged(rt: Runtime, job: Job) -> Result | None:
    """Record an image an earlier delivery of this row paid for but could not record (no second call)."""
    for token in storage.staged_tokens(rt.store, job.batch_name, job.id):
        if token == job.token:
            continue
        staged = storage.take_over(rt.store, job.batch_name, job.id, token, job.token)
        if staged is None:
            continue
        log.info("task %s: recording the image claim %s paid for (staged at %s)", job.id, token, staged.uri)
        result = commit_staged(rt, job, staged)
        return Result.RECOVERED if result is Result.COMPLETED else result
    return None


def write_result(rt: Runtime, write: Callable[[Connection], T]) -> T | None:
    """Run the write that records a paid result, retrying through a database outage for up to
    ``result_write_deadline`` seconds; ``None`` when the database stayed unavailable that long.

    The write is conditional on the claim token, so a retry after a lost reply changes nothing.
    """
    deadline = time.monotonic() + rt.settings.result_write_deadline
    delay = DB_RETRY_DELAYS[0]
    while True:
        try:
            with rt.db.transaction() as connection:
                return write(connection)
        except DB_UNAVAILABLE as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            log.warning(
                "database unavailable (%s); recording the result again in %.1fs", type(exc).__name__, delay
            )
            time.sleep(min(delay, left))
            delay = min(delay * 2, RESULT_WRITE_MAX_DELAY)


def write_with_retry(rt: Runtime, write: Callable[[Connection], T], *, single_statement: bool = False) -> T:
    """Run one short write transaction, retrying through a database restart (a few seconds).

    The result of a paid call must not be lost to a database blip: without this, the row would stay
    ``processing`` until its lease expired and the sweeper had the image generated (and paid) again.
    ``single_statement`` says ``write`` runs exactly one statement, so it may run in autocommit mode
    (no ``BEGIN``/``COMMIT`` round trips); the writes here are conditional on the claim token, so a
    retry after a lost reply finds the row already moved and changes nothing.
    """
    begin = rt.db.autocommit if single_statement else rt.db.transaction
    for delay in DB_RETRY_DELAYS:
        try:
            with begin() as connection:
                return write(connection)
        except DB_UNAVAILABLE:
            log.warning("database unavailable; retrying the write in %.1fs", delay)
            time.sleep(delay)
    with begin() as connection:  # the last try: its error propagates
        return write(connection)


def handle_error_storage(rt: Runtime, job: Job, exc: StorageError) -> Result:
    """Garbage bytes are the upstream's fault (retry); a disk problem is ours (retry too, bounded)."""
    return retry_later(rt, job, ErrorCode.STORAGE, str(exc))


def retry_later(rt: Runtime, job: Job, code: ErrorCode, message: str) -> Result:
    """An error worth another try: back off, or fail when the attempt cap is reached."""
    decision = retry_or_give_up(code, message, attempts_so_far=job.attempts, policy=rt.policy)
    return apply_decision(rt, job, decision)


def apply_decision(rt: Runtime, job: Job, decision: Decision) -> Result:
    """Carry out a retry-or-fail decision (the rate-limit actions need the pool: see handle_error).

    A retry may change lane (``models.lifecycle.lane_after_failure``: flex → standard when the
    deadline nears); the new lane is written with the requeue."""
    if decision.action is Action.FAIL:
        return finish_failed(rt, job, decision.code, decision.message, count_attempt=decision.count_attempt)
    used = job.attempts + (1 if decision.count_attempt else 0)
    lane = lane_after_failure(job.lane, attempts_used=used, deadline=job.deadline)
    return defer(
        rt,
        job,
        decision.delay,
        count_attempt=decision.count_attempt,
        code=decision.code,
        message=decision.message,
        lane=lane if lane != job.lane else None,
    )


def reuse_previous(rt: Runtime, job: Job) -> Result | None:
    """Complete from an identical earlier result (same content hash) without a paid call.

    The earlier image is used only if it still is what its row recorded (same sha256) and a complete
    image; it is staged (a server-side copy when it is in this store) and committed like a generated
    one. An earlier result this host cannot read (another host's local folder) is not reused.
    """
    with rt.db.session() as session:
        prior = session.scalars(
            select(GenerationTask)
            .where(
                GenerationTask.content_hash == job.content_hash,
                GenerationTask.status == transitions.COMPLETED,
                GenerationTask.id != job.id,
                GenerationTask.result_uri.is_not(None),
            )
            .limit(1)
        ).first()
    if prior is None or prior.result_uri is None or prior.result_sha256 is None:
        return None
    store = rt.store
    source_key = store.key_of(prior.result_uri)
    if source_key is None:
        log.info("task %s: earlier result %s is not in this store; not reused", job.id, prior.result_uri)
        return None
    limits = ImageLimits.of(rt)
    try:
        data = store.read(source_key, rt.settings.max_response_bytes)
        if hashlib.sha256(data).hexdigest() != prior.result_sha256:
            log.warning(
                "task %s: earlier result %s changed in the store; not reused", job.id, prior.result_uri
            )
            return None
        facts = check_image(data, max_pixels=limits.max_pixels, decode_slot=limits.slot)
        del data  # checked: the copy below is server-side
        usage = Usage(
            prompt_tokens=0, output_tokens=0, cost_usd=0.0, latency_ms=0, model_used=prior.model_used
        )
        model = StagedImage(
            key="",
            uri="",
            token=job.token,
            sha256=prior.result_sha256,
            mime_type=facts.mime_type,
            width=facts.width,
            height=facts.height,
            bytes=int(prior.bytes or 0) or (store.size(source_key) or 0),
            usage=usage,
        )
        staged = storage.stage_copy(store, job.batch_name, job.id, job.token, source_key, model)
    except (OSError, ImageRejected, StorageError):
        return None
    if staged is None:
        return None
    result = commit_staged(rt, job, staged)
    return Result.REUSED if result is Result.COMPLETED else result


def choose_model(job: Job, fallback_chain: list[str]) -> str:
    """The task's own model, or — after repeated upstream outages — the next one in the fallback chain."""
    outages = job.attempts if job.error_code in {ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT} else 0
    if not fallback_chain or outages < 2:
        return job.model
    return fallback_chain[min(outages - 2, len(fallback_chain) - 1)]


@dataclass(frozen=True)
class ImageLimits:
    """The image bounds of this worker (settings), and its decode slots."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    size_check: SizeCheck = "exact"
    max_input_bytes: int = 20 << 20
    gate: BodyGate | None = None  # decodes take one of its slots

    @classmethod
    def of(cls, rt: Runtime) -> ImageLimits:
        settings = rt.settings
        return cls(
            max_pixels=settings.max_image_pixels,
            size_check=settings.image_size_check,
            max_input_bytes=settings.max_input_image_bytes,
            gate=rt.gate,
        )

    def slot(self) -> AbstractContextManager[object]:
        """A decode slot (an unsized body's slot), or nothing when there is no gate."""
        return self.gate.hold(None) if self.gate is not None else nullcontext()


def build_request(
    job: Job, spec: ModelSpec, *, limits: ImageLimits | None = None, store: Store | None = None
) -> ImageRequest:
    """The provider request, with its input images re-checked and read, and the check its answer's
    image must pass (decoded in full, the catalog's size within the model's tolerance)."""
    limits = limits or ImageLimits()
    width, height = spec.dimensions(job.image_size, job.aspect_ratio)
    digests: tuple[str | None, ...] = job.input_sha256 or (None,) * len(job.input_images)
    inputs = tuple(
        read_input_image(
            path,
            root=job.input_root,
            sha256=digest,
            max_bytes=limits.max_input_bytes,
            max_pixels=limits.max_pixels,
            decode_slot=limits.slot,
            store=store,
        )
        for path, digest in zip(job.input_images, digests, strict=True)
    )
    return ImageRequest(
        model=spec.wire_id,
        prompt=job.prompt,
        aspect_ratio=job.aspect_ratio,
        image_size=spec.size_key(job.image_size) if spec.supports_image_size else None,
        output_format="jpeg" if job.output_format in {"jpeg", "jpg"} else "png",
        input_images=inputs,
        width=width,
        height=height,
        service_tier=job.lane if job.lane in TIERED_LANES else None,
        check=output_check(job, spec, limits),
    )


def output_check(job: Job, spec: ModelSpec, limits: ImageLimits) -> Callable[[bytes], ImageFacts]:
    """The check an answer's image must pass: decoded in full, the catalog's size for the job's size
    and ratio within the model's tolerance (the Batch API lane runs it on each result too)."""
    width, height = spec.dimensions(job.image_size, job.aspect_ratio)
    expected = ExpectedSize(width, height, tolerance=spec.size_tolerance, mode=limits.size_check)
    return functools.partial(
        check_image, max_pixels=limits.max_pixels, expected=expected, decode_slot=limits.slot
    )


def verify_output(rt: Runtime, request: ImageRequest, data: bytes) -> ImageFacts:
    """The check for a provider that ran none itself (every provider built by the runtime does)."""
    if request.check is None:
        limits = ImageLimits.of(rt)
        return check_image(data, max_pixels=limits.max_pixels, decode_slot=limits.slot)
    return request.check(data)


def _reserve_budget(rt: Runtime, job: Job, amount: float) -> bool:
    if not job.has_budget:
        return True  # no row lock on the batch for every task of an unbudgeted batch
    with rt.db.autocommit() as connection:  # one statement
        return transitions.reserve_budget(connection, job.batch_id, amount)


def _release_budget(rt: Runtime, job: Job, amount: float) -> None:
    if not job.has_budget:
        return
    write_with_retry(  # one statement
        rt,
        lambda connection: transitions.release_budget(connection, job.batch_id, amount),
        single_statement=True,
    )


def _requeue_after_crash(rt: Runtime, job: Job, exc: Exception) -> None:
    message = f"internal error: {type(exc).__name__}: {exc}"
    try:
        retry_later(rt, job, ErrorCode.INTERNAL, message)
    except Exception:  # the database itself is down: the lease expires and the sweeper recovers it
        log.exception("could not record the crash of task %s; its lease will expire", job.id)


def _clean(rt: Runtime, message: str) -> str:
    return redact(message, rt.settings.api_key_value)
