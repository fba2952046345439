"""The Batch API lane: pending batch-lane tasks → upstream jobs → results through the worker's own
finishing path (docs/lanes.md, "Batch API lane").

Runs inside the sweep pass, under its cluster-wide lock, on any worker (``tasks/sweep.py``):

1. **re-plan** — an ``auto`` batch whose Batch API turnaround no longer fits before its deadline
   moves its still-waiting batch-lane tasks to flex / standard / priority (``tasks/planner.py``);
2. **poll** — every open job (``batch_jobs.finished_at IS NULL``) is read once per
   ``batch_poll_interval``; a ``SUCCEEDED`` job's results are streamed (inline, or line by line from
   its responses file) and each goes through ``tasks/serve.py``'s pieces: the image check, stage →
   conditional complete (the job's id is its tasks' claim token) → publish; an error through
   ``workers.retry.decide`` like a standard call's (a retry moves to the next lane). A job that
   ``FAILED``, ``EXPIRED`` or was ``CANCELLED`` hands its unanswered tasks to the next lane
   (``models.lifecycle.lane_after_failure``): nothing lost, and nothing paid twice, since only
   answered keys are finished and the rest were never answered;
3. **build** — due pending batch-lane tasks of runnable batches are claimed in groups (one batch and
   model, up to ``batch_job_max_requests``) *before* the remote create, each request built by the
   worker's ``build_request`` and streamed to a spooled JSONL: small jobs go inline, others through
   the Files API's resumable upload. The job row exists (state ``creating``, display name = its id)
   before the create, so a crash in between is found and the remote job adopted, not created twice.

A cancelled batch's open jobs are cancelled upstream; a paused batch submits no new job (its open
jobs are still collected: their results are paid for).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update

from nanobatch.models import transitions
from nanobatch.models.base import utcnow
from nanobatch.models.catalog import CatalogError
from nanobatch.models.lifecycle import batches_outside_window, lane_after_failure
from nanobatch.models.status import BatchStatus, ErrorCode, Lane, TaskStatus
from nanobatch.models.tables import Batch, BatchJob, GenerationTask, new_id
from nanobatch.tasks import serve
from nanobatch.tasks.planner import batch_lane_too_late, replan
from nanobatch.tasks.runtime import Runtime, provider_config
from nanobatch.tasks.submission import plan_inputs
from nanobatch.workers.errors import ProviderError
from nanobatch.workers.imagecheck import ImageRejected
from nanobatch.workers.providers.base import ImageResult
from nanobatch.workers.providers.gemini import build_body
from nanobatch.workers.providers.gemini_batch import BatchJob as RemoteJob
from nanobatch.workers.providers.gemini_batch import BatchState, GeminiBatchClient
from nanobatch.workers.retry import decide

log = logging.getLogger("nanobatch.batch_lane")

CREATING = "creating"
#: Jobs up to this many requests go inline (their answers come back inside one JSON document, so a
#: large inline job would hold every image in memory at once); larger ones through a file.
INLINE_MAX_REQUESTS = 16
#: A ``creating`` job older than this is looked for upstream (adopted) or released.
CREATE_GRACE = timedelta(minutes=10)
#: Longest a poller holds one job (ingesting it); a dead poller's job is taken again after it.
JOB_LOCK_SECONDS = 1800
#: Calls a pool must have made before its measured latency replaces NANOBATCH_EXPECTED_LATENCY.
MIN_OBSERVED_CALLS = 20
#: Results between two refreshes of the job's lock while ingesting.
KEEPALIVE_EVERY = 200
#: Rows read at a time while building a job's requests.
READ_CHUNK = 200
#: The Batch API's own failure states: the job's unanswered tasks go to the next lane.
ENDED_UNFINISHED = frozenset({BatchState.FAILED, BatchState.EXPIRED, BatchState.CANCELLED})


@dataclass
class LaneReport:
    jobs_created: int = 0
    jobs_finished: int = 0
    released: int = 0
    replanned: int = 0


def batch_client(rt: Runtime) -> GeminiBatchClient | None:
    """A Batch API client on the worker's HTTP client, or ``None`` when the provider has no Batch API."""
    if rt.settings.provider != "gemini":
        return None
    return GeminiBatchClient(
        provider_config(rt.settings),
        rt.http,
        inline_limit_bytes=rt.settings.batch_inline_limit_bytes,
        chunk_bytes=rt.settings.batch_upload_chunk_bytes,
    )


def run(rt: Runtime, *, now: datetime | None = None) -> LaneReport:
    """One pass of the lane (the sweep calls it under its lock). Quiet when there is no batch work."""
    now = now or utcnow()
    report = LaneReport()
    report.replanned = replan_deadlines(rt, now)
    client = batch_client(rt)
    if client is None:
        return report
    poll_jobs(rt, client, now, report)
    build_jobs(rt, client, now, report)
    return report


# --- re-planning ---------------------------------------------------------------------------------


def replan_deadlines(rt: Runtime, now: datetime) -> int:
    """Move waiting batch-lane tasks of ``auto`` batches to synchronous lanes once the Batch API's
    turnaround no longer fits before the deadline; returns how many moved."""
    with rt.db.session() as session:
        rows = session.execute(
            select(Batch.id, Batch.model, Batch.image_size, Batch.deadline)
            .where(
                Batch.lane == Lane.AUTO.value,
                Batch.deadline.is_not(None),
                Batch.status == BatchStatus.OPEN.value,
                Batch.id.in_(
                    select(GenerationTask.batch_id).where(
                        GenerationTask.status == TaskStatus.PENDING.value,
                        GenerationTask.lane == Lane.BATCH.value,
                    )
                ),
            )
            .limit(100)
        ).all()
    moved = 0
    for batch_id, model, size, deadline in rows:
        if deadline is not None:
            moved += _replan_one(rt, batch_id, model, size, deadline, now)
    return moved


def _replan_one(
    rt: Runtime, batch_id: str, model: str, size: str | None, deadline: datetime, now: datetime
) -> int:
    with rt.db.session() as session:
        waiting = session.scalar(
            select(func.count()).where(
                GenerationTask.batch_id == batch_id,
                GenerationTask.status == TaskStatus.PENDING.value,
                GenerationTask.lane == Lane.BATCH.value,
            )
        )
    try:
        pool = rt.catalog.canonical(model)
        inputs = plan_inputs(
            int(waiting or 0),
            model,
            size,
            rt.catalog,
            rt.settings,
            deadline=deadline,
            limits=rt.limiter.get_limits(pool),
            now=now,
            observed_latency=observed_latency(rt, pool),
        )
    except CatalogError:
        return 0
    if not batch_lane_too_late(inputs):
        return 0
    moved = 0
    with rt.db.session() as session:
        for share in replan(inputs).shares:
            moved += transitions.move_lane(
                session, batch_id, from_lane=Lane.BATCH.value, to_lane=share.lane, limit=share.tasks
            )
    log.info("batch %s: %d task(s) left the Batch API lane to meet the deadline", batch_id, moved)
    return moved


def observed_latency(rt: Runtime, pool: str) -> float | None:
    """The pool's mean call latency as the workers measured it (telemetry), once there are enough
    calls to go by (:data:`MIN_OBSERVED_CALLS`); ``None`` otherwise."""
    try:
        histogram = rt.telemetry.snapshot().latency.get(pool)
    except Exception:  # telemetry is bookkeeping: the settings' figure will do
        return None
    if histogram is None or histogram.count < MIN_OBSERVED_CALLS:
        return None
    return histogram.sum / histogram.count


# --- polling -------------------------------------------------------------------------------------


def poll_jobs(rt: Runtime, client: GeminiBatchClient, now: datetime, report: LaneReport) -> None:
    """Read every open job that was not read within ``batch_poll_interval`` and act on its state.

    A succeeded job is ingested by a thread of its own (:func:`start_ingestion`): a 100k-task job
    takes about an hour, and the sweep pass (recovery, dispatch) must not wait for it."""
    due = now - timedelta(seconds=rt.settings.batch_poll_interval)
    with rt.db.session() as session:
        jobs = session.scalars(
            select(BatchJob)
            .where(BatchJob.finished_at.is_(None))
            .where((BatchJob.polled_at.is_(None)) | (BatchJob.polled_at <= due))
            .order_by(BatchJob.created_at)
            .limit(100)
        ).all()
        session.expunge_all()
    for job in jobs:
        # One poller (and one ingestion) per job cluster-wide; the lock outlives the sweep's.
        lock = rt.redis.lock(
            f"{rt.settings.limiter_prefix}:batch-job:{job.id}",
            timeout=JOB_LOCK_SECONDS,
            thread_local=False,  # acquired here, refreshed and released by the ingestion thread
        )
        if not lock.acquire(blocking=False):
            continue
        handed_off = False
        try:
            handed_off = poll_one(rt, client, job, now, report, lock=lock)
        except (ProviderError, httpx.HTTPError) as exc:
            log.warning("batch job %s (%s): could not poll it: %s", job.id, job.name, exc)
        finally:
            if not handed_off:
                serve.best_effort("releasing a batch job's lock", lock.release)


def poll_one(
    rt: Runtime,
    client: GeminiBatchClient,
    job: BatchJob,
    now: datetime,
    report: LaneReport,
    *,
    lock: Any = None,
) -> bool:
    """Act on one job's state; ``True`` when its ingestion went to a thread (which owns ``lock``)."""
    if job.name is None:
        if job.created_at < now - CREATE_GRACE:
            _adopt_or_release(rt, client, job, report)
        return False
    if _batch_status(rt, job.batch_id) == BatchStatus.CANCELLED:
        serve.best_effort("cancelling a batch job", client.cancel, job.name)
        _close(rt, job, "BATCH_STATE_CANCELLED", error="the batch was cancelled")
        report.jobs_finished += 1
        return False
    remote = client.get(job.name)
    _record_state(rt, job, remote, now)
    if remote.state is BatchState.SUCCEEDED:
        return start_ingestion(rt, client, job, remote, lock)
    if remote.state in ENDED_UNFINISHED:
        why = f"its Batch API job {remote.state.value.removeprefix('BATCH_STATE_').lower()}"
        report.released += _release(rt, job, why=why + (f": {remote.error}" if remote.error else ""))
        _finish_job(rt, client, job, remote)
        report.jobs_finished += 1
    return False


def start_ingestion(
    rt: Runtime, client: GeminiBatchClient, job: BatchJob, remote: RemoteJob, lock: Any
) -> bool:
    """Ingest a succeeded job on a daemon thread that holds (and refreshes) the job's lock."""
    thread = threading.Thread(
        target=ingest_succeeded,
        args=(rt, client, job, remote, lock),
        name=f"nanobatch-ingest-{job.id[:8]}",
        daemon=True,
    )
    thread.start()
    return True


def ingest_succeeded(
    rt: Runtime, client: GeminiBatchClient, job: BatchJob, remote: RemoteJob, lock: Any
) -> None:
    """Every answer through the worker's path, the unanswered tasks to the next lane, then close the
    job and delete it upstream. A crash half-way leaves the job open: the next poll (after the lock's
    TTL) resumes it, skipping the tasks already finished."""
    keepalive = lock.reacquire if lock is not None else None
    try:
        completed = ingest(rt, client, job, remote, keepalive=keepalive)
        released = _release(rt, job, why="the job ended without an answer for it", count_attempt=False)
        _finish_job(rt, client, job, remote)
        log.info("batch job %s: %d completed, %d to the next lane", job.id, completed, released)
    except Exception:
        log.exception("batch job %s: ingestion stopped; the next poll resumes it", job.id)
    finally:
        if lock is not None:
            serve.best_effort("releasing a batch job's lock", lock.release)


def _finish_job(rt: Runtime, client: GeminiBatchClient, job: BatchJob, remote: RemoteJob) -> None:
    """Close the job row and delete the job and its files upstream (best effort)."""
    _close(rt, job, remote.state.value, error=remote.error)
    if job.name:
        serve.best_effort("deleting a finished batch job", client.delete, job.name)
    if remote.responses_file:
        serve.best_effort("deleting a responses file", client.delete_file, remote.responses_file)
    if job.input_file:
        serve.best_effort("deleting an input file", client.delete_file, job.input_file)


def ingest(
    rt: Runtime,
    client: GeminiBatchClient,
    job: BatchJob,
    remote: RemoteJob,
    *,
    keepalive: Callable[[], object] | None = None,
) -> int:
    """Finish each answered task of a succeeded job through the worker's own path; returns how many
    completed. Results stream one at a time; a key no task of the job still waits for is skipped
    (so an ingestion cut short is resumed by the next poll). ``keepalive`` (the job lock's refresh)
    runs every :data:`KEEPALIVE_EVERY` results: a 100k-task job takes longer than the lock's TTL."""
    with rt.db.session() as session:
        keys = transitions.job_task_ids(session, job.id)
    turnaround_ms = int((utcnow() - job.created_at).total_seconds() * 1000)
    completed = 0
    for number, (key, outcome) in enumerate(client.results(remote, keys=keys), start=1):
        if keepalive is not None and number % KEEPALIVE_EVERY == 0:
            serve.best_effort("extending a batch job's lock", keepalive)
        with rt.db.autocommit() as connection:
            rows = transitions.job_task_rows(connection, job.id, [key])
        if not rows:
            continue
        result = settle(rt, serve.job_from_row(rows[0]), outcome, turnaround_ms)
        completed += result in (serve.Result.COMPLETED, serve.Result.RECOVERED)
    return completed


def settle(
    rt: Runtime, job: serve.Job, outcome: ImageResult | ProviderError, latency_ms: int
) -> serve.Result:
    """One answer of a job, finished exactly like a standard call's (``tasks/serve.py``)."""
    if isinstance(outcome, ProviderError):
        decision = decide(
            outcome,
            attempts_so_far=job.attempts,
            policy=rt.policy,
            waits=job.waits,
            bounds=serve.wait_bounds(rt.settings),
        )
        return serve.apply_decision(rt, job, decision)  # a retry goes to the next lane
    try:
        spec = rt.catalog.resolve(job.model)
        facts = serve.output_check(job, spec, serve.ImageLimits.of(rt))(outcome.data)
    except CatalogError as exc:
        return serve.finish_failed(rt, job, ErrorCode.INVALID_TASK, str(exc))
    except ImageRejected as exc:
        return serve.retry_later(rt, job, ErrorCode.BAD_IMAGE, f"the upstream's image was rejected: {exc}")
    estimate = spec.estimate_prompt_tokens(job.prompt, len(job.input_images))
    return serve.finish_completed(rt, job, spec, outcome, facts, latency_ms, estimate)


def _release(rt: Runtime, job: BatchJob, *, why: str, count_attempt: bool = True) -> int:
    """Hand the tasks ``job`` still holds to the next lane (pending; the sweep dispatches them)."""
    with rt.db.session() as session:
        deadline = session.scalar(select(Batch.deadline).where(Batch.id == job.batch_id))
        return transitions.release_job_tasks(
            session,
            job.id,
            lane=lane_after_failure(Lane.BATCH.value, attempts_used=0, deadline=deadline),
            max_attempts=rt.settings.max_attempts,
            count_attempt=count_attempt,
            code=ErrorCode.BATCH_JOB_ENDED.value,
            message=f"{why}; moved to the next lane",
        )


def _adopt_or_release(rt: Runtime, client: GeminiBatchClient, job: BatchJob, report: LaneReport) -> None:
    """A job row left ``creating`` (a crash between the remote create and recording it): adopt the
    upstream job that carries its id as display name, else give its tasks back to the batch lane."""
    for remote in client.list():
        if remote.display_name == job.id:
            with rt.db.session() as session:
                session.execute(update(BatchJob).where(BatchJob.id == job.id).values(name=remote.name))
            log.info("batch job %s: adopted upstream job %s", job.id, remote.name)
            return
    with rt.db.session() as session:
        report.released += transitions.release_job_tasks(
            session,
            job.id,
            lane=Lane.BATCH.value,
            max_attempts=rt.settings.max_attempts,
            count_attempt=False,
            code=ErrorCode.BATCH_JOB_ENDED.value,
            message="its Batch API job was never created",
        )
    _close(rt, job, "not_created", error="never created upstream")


def _batch_status(rt: Runtime, batch_id: str) -> str | None:
    with rt.db.session() as session:
        return session.scalar(select(Batch.status).where(Batch.id == batch_id))


def _record_state(rt: Runtime, job: BatchJob, remote: RemoteJob, now: datetime) -> None:
    stats = remote.stats
    with rt.db.session() as session:
        session.execute(
            update(BatchJob)
            .where(BatchJob.id == job.id)
            .values(
                state=remote.state.value,
                succeeded=stats.succeeded or 0,
                failed=stats.failed or 0,
                responses_file=remote.responses_file,
                updated_at=now,
                polled_at=now,
            )
        )


def _close(rt: Runtime, job: BatchJob, state: str, *, error: str | None = None) -> None:
    with rt.db.session() as session:
        session.execute(
            update(BatchJob)
            .where(BatchJob.id == job.id)
            .values(state=state, error=error, finished_at=utcnow(), updated_at=utcnow())
        )


# --- building ------------------------------------------------------------------------------------


def build_jobs(rt: Runtime, client: GeminiBatchClient, now: datetime, report: LaneReport) -> None:
    """Group due pending batch-lane tasks of runnable batches into upstream jobs."""
    with rt.db.session() as session:
        held = batches_outside_window(session, now)
        groups = transitions.due_batch_lane_groups(session, now=now, exclude_batches=held)
    for group in groups:
        batch_id, model, waiting = group.batch_id, group.model, int(group.n)
        while waiting > 0:
            room = budget_room(rt, batch_id, model)
            if room == 0:
                log.info("batch %s: budget reached; no new Batch API job", batch_id)
                break
            sent = build_one(rt, client, batch_id, model, now, limit=room)
            if sent == 0:
                break
            report.jobs_created += 1
            waiting -= sent


def budget_room(rt: Runtime, batch_id: str, model: str) -> int | None:
    """How many more tasks a budgeted batch can afford in the Batch API lane (at the model's dearest
    batch price, so a job never outgrows the budget); ``None`` without a budget. Spend is recorded
    when each answer is ingested."""
    with rt.db.session() as session:
        row = session.execute(
            select(Batch.budget_usd, Batch.spent_usd, Batch.reserved_usd).where(Batch.id == batch_id)
        ).one_or_none()
    if row is None or row.budget_usd is None:
        return None
    try:
        spec = rt.catalog.resolve(model)
    except CatalogError:
        return None
    price = max(
        spec.cost_usd(None if size == "default" else size, lane=Lane.BATCH) for size in spec.size_specs
    )
    with rt.db.session() as session:  # what jobs still out will cost
        held = session.scalar(
            select(func.count()).where(
                GenerationTask.batch_id == batch_id,
                GenerationTask.status == TaskStatus.PROCESSING.value,
                GenerationTask.lane == Lane.BATCH.value,
            )
        )
    left = row.budget_usd - row.spent_usd - row.reserved_usd - int(held or 0) * price
    return max(0, int(left // price)) if price > 0 else None


def build_one(
    rt: Runtime,
    client: GeminiBatchClient,
    batch_id: str,
    model: str,
    now: datetime,
    *,
    limit: int | None = None,
) -> int:
    """Claim up to ``batch_job_max_requests`` tasks for a new job and create it upstream; returns how
    many tasks were claimed (0: none were left)."""
    most = rt.settings.batch_job_max_requests
    job_id, ids = _claim_job(rt, batch_id, model, now, limit=min(most, limit or most))
    if not ids:
        return 0
    skipped: list[tuple[serve.Job, str]] = []
    try:
        remote, source, input_file = _create_remote(rt, client, model, job_id, ids, skipped)
    except (ProviderError, httpx.HTTPError, CatalogError) as exc:
        log.warning("batch job %s: the Batch API refused it (%s); its tasks go to the next lane", job_id, exc)
        _fail_skipped(rt, skipped)
        stub = BatchJob(id=job_id, batch_id=batch_id)
        _release(rt, stub, why=f"the Batch API refused the job: {exc}")
        _close(rt, stub, "not_created", error=str(exc)[:2000])
        return len(ids)
    sent = len(ids) - _fail_skipped(rt, skipped)
    with rt.db.session() as session:
        session.execute(
            update(BatchJob)
            .where(BatchJob.id == job_id)
            .values(
                name=remote.name,
                state=remote.state.value,
                source=source,
                input_file=input_file,
                request_count=sent,
                updated_at=utcnow(),
            )
        )
    log.info("batch job %s: %s created with %d request(s) (%s)", job_id, remote.name, sent, source)
    return len(ids)


def _claim_job(rt: Runtime, batch_id: str, model: str, now: datetime, *, limit: int) -> tuple[str, list[str]]:
    """A new job's id and the tasks it claimed; its row (state ``creating``) commits with the claim."""
    job_id = new_id()
    with rt.db.session() as session:
        ids = transitions.claim_for_batch_job(
            session, batch_id=batch_id, model=model, job_id=job_id, limit=limit, now=now
        )
        if ids:
            row = BatchJob(
                id=job_id,
                batch_id=batch_id,
                model=model,
                lane=Lane.BATCH.value,
                state=CREATING,
                created_at=now,
            )
            session.add(row)
    return job_id, ids


def _create_remote(
    rt: Runtime,
    client: GeminiBatchClient,
    model: str,
    job_id: str,
    ids: Sequence[str],
    skipped: list[tuple[serve.Job, str]],
) -> tuple[RemoteJob, str, str | None]:
    """Create the upstream job: inline when small, else through an uploaded JSONL; returns the job,
    ``inline``/``file`` and the input file's name."""
    wire_id = rt.catalog.resolve(model).wire_id
    requests = _requests(rt, job_id, ids, skipped)
    if len(ids) <= INLINE_MAX_REQUESTS:
        return client.submit(wire_id, requests, display_name=job_id), "inline", None
    uploaded = client.upload_jsonl(requests, display_name=job_id)
    return client.create_from_file(wire_id, uploaded.name, display_name=job_id), "file", uploaded.name


def _requests(
    rt: Runtime, job_id: str, ids: Sequence[str], skipped: list[tuple[serve.Job, str]]
) -> Iterator[tuple[str, dict]]:
    """``(task id, generateContent body)`` per task, in id order, built like a standard call's
    (input images re-checked); a task that cannot be built is noted in ``skipped``, not sent."""
    limits = serve.ImageLimits.of(rt)
    modalities = rt.settings.api_version != "v1"
    for start in range(0, len(ids), READ_CHUNK):
        with rt.db.autocommit() as connection:
            rows = sorted(
                transitions.job_task_rows(connection, job_id, ids[start : start + READ_CHUNK]),
                key=lambda r: r.id,
            )
        for row in rows:
            job = serve.job_from_row(row)
            try:
                request = serve.build_request(job, rt.catalog.resolve(job.model), limits=limits)
            except (CatalogError, OSError, ValueError) as exc:
                skipped.append((job, str(exc)))
                continue
            yield job.id, build_body(request, modalities=modalities)


def _fail_skipped(rt: Runtime, skipped: list[tuple[serve.Job, str]]) -> int:
    """Tasks that could not be built fail (as a standard claim would) and leave the job's key list;
    returns how many."""
    for job, message in skipped:
        serve.finish_failed(rt, job, ErrorCode.INVALID_TASK, message)
    if skipped:
        with rt.db.session() as session:
            session.execute(
                update(GenerationTask)
                .where(GenerationTask.id.in_([job.id for job, _ in skipped]))
                .values(batch_job_id=None)
            )
    count = len(skipped)
    skipped.clear()
    return count
