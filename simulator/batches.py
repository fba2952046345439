"""Batch API jobs: created from inline requests or an uploaded JSONL, run in a background thread.

A job's requests and results live in JSONL files on disk, read and written one line at a time, so
a 100k-request job costs the simulator a few lines of memory however large its images are. Each
request is answered by the same pipeline as ``generateContent`` (validation, safety words, no-image
draws, the same rendered images, thumbnails honoured); quotas and latency do not apply (the
Batch API has its own, far larger, quotas).

Timeline of a job, ``T = batch_turnaround x time_scale`` real seconds after creation::

    PENDING --(T/10)--> RUNNING --(requests answered)--> ... --(T)--> SUCCEEDED | FAILED | EXPIRED

A job's end is drawn when it is created (``batch_fail_rate``, ``batch_expire_rate``); a FAILED or
EXPIRED job answers nothing and has no output (a FAILED one carries an ``error``). Cancel is
instant and terminal (CANCELLED, no output); delete forgets the job and stops its thread, not the
responses file it produced (a separate File resource). Stopping the simulator stops every job.

The operation JSON (``batches/{id}``) follows the real service, which google-genai's
``_BatchJob_from_mldev`` reads: ``metadata`` (``@type`` GenerateContentBatch, ``model``,
``displayName``, ``state``, RFC 3339 times, ``batchStats`` with int64 counts as strings,
``output``) and, once done, ``done: true`` with ``response`` (the output again, ``@type``
GenerateContentBatchOutput) or ``error`` (an embedded ``google.rpc.Status``). Inline jobs put their
results in ``output.inlinedResponses.inlinedResponses[]`` in input order, each ``{"metadata",
"response" | "error"}``; file jobs in ``output.responsesFile`` (``files/...``), whose lines are
``{"key", "response" | "error"}``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.google_errors import rpc_status
from nanobatch.simulator.stats import Stats
from nanobatch.simulator.uploads import FileBook, StoredFile, Workspace, new_id, rfc3339

logger = logging.getLogger("nanobatch.simulator")

BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
BATCH_ID_LENGTH = 36
PENDING_SHARE = 0.1  # the share of the turnaround a job waits before it starts running
RESULTS_MIME = "application/jsonl"
FAILED_MESSAGE = "Batch job failed: an internal error occurred while processing the requests."

#: ``answer(model, version, request) -> ("response" | "error", JSON bytes)``: one request's outcome.
Answer = Callable[[str, str, object], tuple[str, bytes]]


class BatchState(StrEnum):
    PENDING = "BATCH_STATE_PENDING"
    RUNNING = "BATCH_STATE_RUNNING"
    SUCCEEDED = "BATCH_STATE_SUCCEEDED"
    FAILED = "BATCH_STATE_FAILED"
    CANCELLED = "BATCH_STATE_CANCELLED"
    EXPIRED = "BATCH_STATE_EXPIRED"

    @property
    def is_terminal(self) -> bool:
        return self not in (BatchState.PENDING, BatchState.RUNNING)


@dataclass(frozen=True)
class InlineArray:
    """A JSONL file spliced into a JSON document as the items of an array (``,`` between lines)."""

    path: Path

    @property
    def length(self) -> int:
        return max(0, self.path.stat().st_size - 1)  # every line ends in "\n"; the last one is dropped

    def chunks(self, block: int = 1 << 20) -> Iterator[bytes]:
        remaining = self.length
        with self.path.open("rb") as handle:
            while remaining > 0:
                data = handle.read(min(block, remaining))
                if not data:
                    return
                remaining -= len(data)
                yield data.replace(b"\n", b",")


@dataclass
class BatchJob:
    id: str
    model: str
    version: str
    display_name: str | None
    input_path: Path
    request_count: int
    inline: bool
    planned: BatchState
    created: float
    started: float  # time.monotonic() at creation
    input_file: str | None = None
    state: BatchState = BatchState.PENDING
    updated: float = 0.0
    ended: float | None = None
    succeeded: int = 0
    failed: int = 0
    output_path: Path | None = None
    responses_file: str | None = None
    error: dict[str, Any] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return f"batches/{self.id}"

    def stats(self) -> dict[str, str]:
        """``batchStats``: int64 counts, which proto JSON spells as strings."""
        done = self.succeeded + self.failed
        stats = {"requestCount": str(self.request_count)}
        if not self.state.is_terminal or done < self.request_count:
            stats["pendingRequestCount"] = str(self.request_count - done)
        if done:
            stats |= {
                "completedRequestCount": str(done),
                "successfulRequestCount": str(self.succeeded),
                "failedRequestCount": str(self.failed),
            }
        return stats

    def operation(self, *, inline_output: bool) -> list[bytes | InlineArray]:
        """The operation JSON in pieces; inline results stay on disk as :class:`InlineArray` pieces
        (twice: ``metadata.output`` and ``response``), left out when ``inline_output`` is false."""
        output = self._output(inline_output)
        metadata: dict[str, Any] = {"@type": BATCH_TYPE, "model": f"models/{self.model}"}
        if self.display_name:
            metadata["displayName"] = self.display_name
        if self.input_file:
            metadata["inputConfig"] = {"fileName": self.input_file}
        metadata |= {"createTime": rfc3339(self.created), "updateTime": rfc3339(self.updated or self.created)}
        if self.ended is not None:
            metadata["endTime"] = rfc3339(self.ended)
        metadata |= {"batchStats": self.stats(), "state": self.state.value, "name": self.name}
        body: dict[str, Any] = {"name": self.name, "metadata": metadata}
        if output is not None:
            metadata["output"] = output
        if self.state.is_terminal:
            body["done"] = True
        if output is not None:
            body["response"] = {"@type": OUTPUT_TYPE, **output}
        if self.error is not None:
            body["error"] = self.error
        return _splice(json.dumps(body, separators=(",", ":")).encode(), self.output_path)

    def _output(self, inline_output: bool) -> dict[str, Any] | None:
        if self.state is not BatchState.SUCCEEDED:
            return None
        if self.responses_file:
            return {"responsesFile": self.responses_file}
        if inline_output and self.output_path is not None:
            return {"inlinedResponses": {"inlinedResponses": _PLACEHOLDER}}
        return None


_PLACEHOLDER = "@@inlined-responses@@"


def _splice(document: bytes, results: Path | None) -> list[bytes | InlineArray]:
    """Replace each placeholder string in ``document`` by ``[`` + the results file + ``]``."""
    pieces = document.split(json.dumps(_PLACEHOLDER).encode())
    parts: list[bytes | InlineArray] = [pieces[0]]
    for piece in pieces[1:]:
        assert results is not None
        parts += [b"[", InlineArray(results), b"]", piece]
    return parts


class BatchBook:
    """Every batch job of one simulator, each running in its own daemon thread."""

    def __init__(
        self,
        config: SimulatorConfig,
        workspace: Workspace,
        files: FileBook,
        stats: Stats,
        answer: Answer,
        draw: Callable[[], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.workspace, self.files, self.stats = config, workspace, files, stats
        self.answer, self.draw, self.clock = answer, draw, clock
        self._jobs: dict[str, BatchJob] = {}
        self._lock = threading.Lock()

    # -- creating -------------------------------------------------------------------------------

    def create_inline(
        self, model: str, version: str, display_name: str | None, requests: list[dict[str, Any]]
    ) -> BatchJob:
        """A job over ``[{"request": ..., "metadata": ...}]``, written to disk before it starts."""
        path = self.workspace.new_file(".in")
        with path.open("wb") as handle:
            for item in requests:
                line = {"metadata": item.get("metadata"), "request": item.get("request")}
                handle.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        return self._start(model, version, display_name, path, len(requests), input_file=None)

    def create_from_file(
        self, model: str, version: str, display_name: str | None, source: StoredFile
    ) -> BatchJob:
        """A job over an uploaded JSONL of ``{"key", "request"}`` lines (blank lines skipped)."""
        path = self.workspace.new_file(".in")
        try:
            os.link(source.path, path)  # the job keeps its input even if the file is deleted
        except OSError:
            shutil.copyfile(source.path, path)
        with path.open("rb") as handle:
            count = sum(1 for line in handle if line.strip())
        return self._start(model, version, display_name, path, count, input_file=source.name)

    def _start(
        self,
        model: str,
        version: str,
        display_name: str | None,
        path: Path,
        count: int,
        input_file: str | None,
    ) -> BatchJob:
        now = self.clock()
        job = BatchJob(
            id=new_id(BATCH_ID_LENGTH),
            model=model,
            version=version,
            display_name=display_name,
            input_path=path,
            request_count=count,
            inline=input_file is None,
            planned=self._planned_end(),
            created=now,
            started=time.monotonic(),
            input_file=input_file,
            updated=now,
        )
        with self._lock:
            self._jobs[job.id] = job
        self.stats.batch_event("jobs_created")
        job.thread = threading.Thread(
            target=self._run, args=(job,), name=f"sim-batch-{job.id[:8]}", daemon=True
        )
        job.thread.start()
        return job

    def _planned_end(self) -> BatchState:
        fail, expire = self.config.batch_fail_rate, self.config.batch_expire_rate
        if fail <= 0 and expire <= 0:
            return BatchState.SUCCEEDED
        roll = self.draw()
        if roll < fail:
            return BatchState.FAILED
        return BatchState.EXPIRED if roll < fail + expire else BatchState.SUCCEEDED

    # -- running --------------------------------------------------------------------------------

    def _run(self, job: BatchJob) -> None:
        turnaround = self.config.batch_turnaround_seconds
        try:
            if not _wait_until(job, job.started + turnaround * PENDING_SHARE):
                return
            self._move(job, BatchState.RUNNING)
            if job.planned is BatchState.SUCCEEDED and not self._process(job):
                return
            if not _wait_until(job, job.started + turnaround):
                return
            self._finish(job)
        except Exception:
            logger.exception("simulated batch job %s failed (a bug)", job.name)
            job.error = rpc_status("INTERNAL", "Simulator internal error (a bug).")
            self._move(job, BatchState.FAILED)

    def _process(self, job: BatchJob) -> bool:
        """Answer every request into the output file; ``False`` when the job was stopped meanwhile."""
        job.output_path = self.workspace.new_file(".out")
        with job.input_path.open("rb") as source, job.output_path.open("wb") as sink:
            number = 0
            for raw in source:
                if not raw.strip():
                    continue
                if job.stop.is_set():
                    return False
                number += 1
                kind, line = self._answer_line(job, raw, number)
                sink.write(line)
                self._count(job, kind)
        return True

    def _answer_line(self, job: BatchJob, raw: bytes, number: int) -> tuple[str, bytes]:
        try:
            item = json.loads(raw)
        except ValueError:
            item = None
        if not isinstance(item, dict):
            error = rpc_status("INVALID_ARGUMENT", f"Line {number} of the input file is not a JSON object.")
            return "error", _result_line(job, {}, "error", json.dumps(error).encode())
        kind, body = self.answer(job.model, job.version, item.get("request"))
        return kind, _result_line(job, item, kind, body)

    def _count(self, job: BatchJob, kind: str) -> None:
        with self._lock:
            if kind == "response":
                job.succeeded += 1
            else:
                job.failed += 1
            job.updated = self.clock()

    def _finish(self, job: BatchJob) -> None:
        if job.planned is BatchState.SUCCEEDED and not job.inline and job.output_path is not None:
            display = f"{job.display_name or job.id}-responses"
            job.responses_file = self.files.register(job.output_path, display, RESULTS_MIME).name
            job.output_path = None  # the file now belongs to the Files API
        if job.planned is BatchState.FAILED:
            job.error = rpc_status("INTERNAL", FAILED_MESSAGE)
        self._move(job, job.planned)

    def _move(self, job: BatchJob, state: BatchState) -> None:
        with self._lock:
            if job.state.is_terminal:
                return
            job.state, job.updated = state, self.clock()
            if state.is_terminal:
                job.ended = job.updated
        if state.is_terminal:
            self.stats.batch_event(f"jobs_{state.name.lower()}")

    # -- reading and ending ---------------------------------------------------------------------

    def get(self, batch_id: str) -> BatchJob | None:
        with self._lock:
            return self._jobs.get(batch_id)

    def page(self, size: int, offset: int) -> tuple[list[BatchJob], int | None]:
        """Jobs newest first, ``size`` from ``offset``, and the next offset (``None`` at the end)."""
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda job: job.created, reverse=True)
        chosen = jobs[offset : offset + size]
        return chosen, (offset + size if offset + size < len(jobs) else None)

    def cancel(self, batch_id: str) -> BatchJob | None:
        job = self.get(batch_id)
        if job is not None:
            self._move(job, BatchState.CANCELLED)
            job.stop.set()
        return job

    def delete(self, batch_id: str) -> bool:
        with self._lock:
            job = self._jobs.pop(batch_id, None)
        if job is None:
            return False
        job.stop.set()
        self._join(job)
        job.input_path.unlink(missing_ok=True)
        if job.output_path is not None:
            job.output_path.unlink(missing_ok=True)
        return True

    def close(self) -> None:
        """Stop every job (the simulator is stopping)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.stop.set()
        for job in jobs:
            self._join(job)

    @staticmethod
    def _join(job: BatchJob) -> None:
        if job.thread is not None and job.thread is not threading.current_thread():
            job.thread.join(timeout=5)


def _wait_until(job: BatchJob, deadline: float) -> bool:
    """Wait for the monotonic ``deadline``; ``False`` if the job was stopped first."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        return not job.stop.wait(remaining)
    return not job.stop.is_set()


def _result_line(job: BatchJob, item: dict[str, Any], kind: str, body: bytes) -> bytes:
    """``{"metadata", kind}`` for inline jobs, ``{"key", kind}`` for file jobs; ``body`` is JSON."""
    if job.inline:
        metadata = item.get("metadata")
        head = b'{"metadata":' + json.dumps(metadata).encode() + b"," if metadata is not None else b"{"
    else:
        head = b'{"key":' + json.dumps(item.get("key")).encode() + b","
    return head + b'"' + kind.encode() + b'":' + body + b"}\n"
