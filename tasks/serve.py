"""Serving one task id: claim → admit → call → store → finish (DESIGN §2), each a named step.

The Celery task is a one-line wrapper around :func:`serve`, so this module can be read (and tested)
as the whole life of a task. Every exit path leaves the row in a defined state: completed, failed,
or pending with a reason and either a delayed message or a ``not_before`` for the sweeper.
"""

from __future__ import annotations

import logging
import math
import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, select
from sqlalchemy.exc import InterfaceError, OperationalError

from nanobatch.models import transitions
from nanobatch.models.base import utcnow
from nanobatch.models.catalog import CatalogError, ModelSpec
from nanobatch.models.lifecycle import BatchGate, dispatch, why_batch_waits
from nanobatch.models.status import BatchStatus, ErrorCode
from nanobatch.models.tables import GenerationTask
from nanobatch.tasks.runtime import Runtime
from nanobatch.workers.errors import ProviderError, RateLimited
from nanobatch.workers.providers.base import ImageRequest, ImageResult, InputImage
from nanobatch.workers.redact import redact
from nanobatch.workers.retry import Action, Decision, decide, retry_or_give_up
from nanobatch.workers.storage import StorageError, StoredImage, local_path, store_image

log = logging.getLogger("nanobatch.worker")
T = TypeVar("T")

#: Waits between tries of a final write while the database restarts (about half a minute in all).
DB_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)

#: How long a task waits before looking at its batch budget again.
BUDGET_RECHECK_SECONDS = 300.0


class Result(StrEnum):
    """What one delivery of a message did (returned by the task; visible in Flower)."""

    COMPLETED = "completed"
    REUSED = "reused"
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
    #: The claim only succeeds for an open batch past its start time; the window is checked after it.
    gate: BatchGate = OPEN_BATCH

    @property
    def holder(self) -> str:
        return f"{self.id}:{self.token}"


def serve(rt: Runtime, task_id: str, *, celery_task_id: str | None = None) -> Result:
    """Run one delivery of a ``generate`` message to a terminal or well-defined waiting state."""
    result = _serve(rt, task_id, celery_task_id)
    rt.telemetry.count_outcome(result.value)
    return result


def _serve(rt: Runtime, task_id: str, celery_task_id: str | None) -> Result:
    rt.dispatcher.consumed(task_id)
    job = claim(rt, task_id, celery_task_id)
    if job is None:
        return Result.SKIPPED
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
        gate=BatchGate(
            status=BatchStatus.OPEN.value,
            window_start=row.batch_window_start,
            window_end=row.batch_window_end,
            window_tz=row.batch_window_tz,
        ),
    )


def run_claimed(rt: Runtime, job: Job) -> Result:
    try:
        spec = rt.catalog.resolve(choose_model(job, rt.settings.fallback_models))
        request = build_request(job, spec)
    except (CatalogError, OSError, ValueError) as exc:
        return finish_failed(rt, job, ErrorCode.INVALID_TASK, str(exc))
    if job.reuse and (result := reuse_previous(rt, job)) is not None:
        return result
    prompt_tokens = spec.estimate_prompt_tokens(job.prompt, len(request.input_images))
    reserved = spec.cost_usd(job.image_size, prompt_tokens)
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
        _release_budget(rt, job, reserved)


def admit_call_store(
    rt: Runtime, job: Job, spec: ModelSpec, request: ImageRequest, prompt_tokens: int
) -> Result:
    pool = spec.name
    wait = admit(rt, pool, job, tokens=prompt_tokens + spec.output_tokens(job.image_size))
    if wait is not None:
        if math.isinf(wait):
            return finish_failed(
                rt,
                job,
                ErrorCode.LIMIT_TOO_SMALL,
                f"one request needs more tokens than pool {pool}'s tokens/minute limit",
            )
        return defer(
            rt, job, wait, count_attempt=False, code=ErrorCode.RATE_WAIT, message=f"waiting for pool {pool}"
        )
    started = time.monotonic()
    try:
        result = rt.provider.generate(request)
    except ProviderError as error:
        return handle_error(rt, job, pool, error)
    finally:
        rt.limiter.release(pool, job.holder)
        rt.telemetry.observe_latency(pool, time.monotonic() - started)
    latency_ms = int((time.monotonic() - started) * 1000)
    return finish_completed(rt, job, spec, result, latency_ms, prompt_tokens)


def admit(rt: Runtime, pool: str, job: Job, *, tokens: int) -> float | None:
    """Wait inside the task (up to ``max_inline_wait``) for the pool to admit us.

    Returns ``None`` once admitted, or the remaining wait in seconds when it is longer than the task
    should hold a worker thread (the task is then deferred). Sleeping here is the wait itself: every
    worker of the pool is paced by the same Redis limiter, so this is where smooth pacing happens.
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
        if admission.admitted:
            return None
        if admission.wait_seconds > deadline - time.monotonic():
            return admission.wait_seconds
        time.sleep(max(admission.wait_seconds, 0.001))


def handle_error(rt: Runtime, job: Job, pool: str, error: ProviderError) -> Result:
    if isinstance(error, RateLimited):
        rt.telemetry.count_429(pool, next(iter(error.quota_ids), ""))
    decision = decide(error, attempts_so_far=job.attempts, policy=rt.policy)
    if decision.action is Action.PARK_DAY:
        until = rt.limiter.park_until_reset(pool, reason="daily quota exhausted (429 PerDay)")
        log.info("pool %s out of daily quota; parking %s until %.0f", pool, job.id, until)
        return defer(
            rt,
            job,
            max(0.0, until - time.time()),
            count_attempt=False,
            code=decision.code,
            message=decision.message,
        )
    if decision.action is Action.WAIT:
        if isinstance(error, RateLimited):
            rt.limiter.cooldown(
                pool, decision.delay, reason=f"429 {','.join(error.quota_ids) or 'rate limited'}"
            )
        log.info("pool %s rate limited; %s waits %.2fs (no attempt used)", pool, job.id, decision.delay)
        return defer(
            rt, job, decision.delay, count_attempt=False, code=decision.code, message=decision.message
        )
    if decision.action is Action.RETRY:
        log.warning("task %s transient error (%s); retry in %.1fs", job.id, decision.code, decision.delay)
    return apply_decision(rt, job, decision)


def defer(
    rt: Runtime, job: Job, delay: float, *, count_attempt: bool, code: ErrorCode, message: str
) -> Result:
    """Back to pending: a delayed message for short waits, a parked row (``not_before``) for long ones.

    Long ETAs are never handed to Celery: an ETA message sits in worker memory and, past the
    broker's visibility timeout, is redelivered in a loop (celery#9849, kombu#337).
    """
    rt.telemetry.count_retry(code)
    short = delay <= rt.settings.max_countdown
    not_before = None if short else utcnow() + timedelta(seconds=delay)
    moved = write_with_retry(
        rt,
        lambda connection: transitions.requeue(
            connection,
            job.id,
            job.token,
            not_before=not_before,
            count_attempt=count_attempt,
            code=code,
            message=_clean(rt, message),
            redispatched=short,
        ),
        single_statement=True,
    )
    if moved and short:  # the requeue stamped the row: publish only
        dispatch(None, rt.dispatcher, [job.id], countdown=delay if delay > 0 else None)
    return Result.DEFERRED


def hand_back(rt: Runtime, job: Job, *, code: ErrorCode, message: str) -> Result:
    """Back to pending with no message: the sweeper dispatches it when its batch may run again."""
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
    rt: Runtime, job: Job, spec: ModelSpec, result: ImageResult, latency_ms: int, prompt_estimate: int
) -> Result:
    if not still_owned(rt, job):
        log.warning(
            "task %s lost its claim during the call (lease expired or cancelled); result dropped", job.id
        )
        return Result.SKIPPED
    try:
        stored = store_image(rt.output_dir, job.batch_name, job.key, result.data)
    except StorageError as exc:
        return handle_error_storage(rt, job, exc)
    prompt_tokens = result.prompt_tokens if result.prompt_tokens is not None else prompt_estimate
    record_completion(
        rt,
        job,
        stored,
        prompt_tokens=prompt_tokens,
        output_tokens=result.output_tokens,
        cost_usd=spec.cost_usd(job.image_size, prompt_tokens),
        latency_ms=latency_ms,
        model_used=result.model_version or spec.name,
    )
    return Result.COMPLETED


def still_owned(rt: Runtime, job: Job) -> bool:
    """Renew the claim right before writing the file, so a worker whose lease already expired (and
    whose task may be another worker's now) never overwrites that worker's image."""
    lease = rt.settings.effective_lease_seconds
    return write_with_retry(
        rt,
        lambda connection: transitions.extend_lease(connection, job.id, job.token, lease_seconds=lease),
        single_statement=True,
    )


def record_completion(rt: Runtime, job: Job, stored: StoredImage, **usage: Any) -> None:
    """processing → completed with the stored file's facts and the call's usage."""
    outcome = transitions.Outcome(
        result_uri=stored.uri,
        result_sha256=stored.sha256,
        mime_type=stored.mime_type,
        width=stored.width,
        height=stored.height,
        bytes=stored.bytes,
        **usage,
    )
    write_with_retry(rt, lambda connection: transitions.complete(connection, job.id, job.token, outcome))


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
        except (OperationalError, InterfaceError):
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
    """Carry out a retry-or-fail decision (the rate-limit actions need the pool: see handle_error)."""
    if decision.action is Action.FAIL:
        return finish_failed(rt, job, decision.code, decision.message, count_attempt=decision.count_attempt)
    return defer(
        rt,
        job,
        decision.delay,
        count_attempt=decision.count_attempt,
        code=decision.code,
        message=decision.message,
    )


def reuse_previous(rt: Runtime, job: Job) -> Result | None:
    """Complete from an identical earlier result (same content hash) without a paid call."""
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
    if prior is None or prior.result_uri is None:
        return None
    source = Path(local_path(prior.result_uri) or "")
    if not source.is_file():
        return None
    if not still_owned(rt, job):  # a paused worker woken up: the task is someone else's now
        return Result.SKIPPED
    stored = store_image(rt.output_dir, job.batch_name, job.key, source.read_bytes())
    record_completion(
        rt,
        job,
        stored,
        prompt_tokens=0,
        output_tokens=0,
        cost_usd=0.0,
        latency_ms=0,
        model_used=prior.model_used,
    )
    return Result.REUSED


def choose_model(job: Job, fallback_chain: list[str]) -> str:
    """The task's own model, or — after repeated upstream outages — the next one in the fallback chain."""
    outages = job.attempts if job.error_code in {ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT} else 0
    if not fallback_chain or outages < 2:
        return job.model
    return fallback_chain[min(outages - 2, len(fallback_chain) - 1)]


def build_request(job: Job, spec: ModelSpec) -> ImageRequest:
    width, height = spec.dimensions(job.image_size, job.aspect_ratio)
    return ImageRequest(
        model=spec.name,
        prompt=job.prompt,
        aspect_ratio=job.aspect_ratio,
        image_size=spec.size_key(job.image_size) if spec.supports_image_size else None,
        output_format="jpeg" if job.output_format in {"jpeg", "jpg"} else "png",
        input_images=tuple(_read_input(path) for path in job.input_images),
        width=width,
        height=height,
    )


def _read_input(path: str) -> InputImage:
    mime = mimetypes.guess_type(path)[0] or "image/png"
    return InputImage(data=Path(path).read_bytes(), mime_type=mime)


def _reserve_budget(rt: Runtime, job: Job, amount: float) -> bool:
    if not job.has_budget:
        return True  # no row lock on the batch for every task of an unbudgeted batch
    with rt.db.autocommit() as connection:  # one statement
        return transitions.reserve_budget(connection, job.batch_id, amount)


def _release_budget(rt: Runtime, job: Job, amount: float) -> None:
    if not job.has_budget:
        return
    with rt.db.autocommit() as connection:  # one statement
        transitions.release_budget(connection, job.batch_id, amount)


def _requeue_after_crash(rt: Runtime, job: Job, exc: Exception) -> None:
    message = f"internal error: {type(exc).__name__}: {exc}"
    try:
        retry_later(rt, job, ErrorCode.INTERNAL, message)
    except Exception:  # the database itself is down: the lease expires and the sweeper recovers it
        log.exception("could not record the crash of task %s; its lease will expire", job.id)


def _clean(rt: Runtime, message: str) -> str:
    return redact(message, rt.settings.api_key_value)
