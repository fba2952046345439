"""One simulator's state and its request pipeline, independent of the HTTP server that feeds it.

Every image request runs the same steps in the order the real services apply them:
auth -> validation -> quotas -> faults -> latency -> answer. A request refused before quotas
consumes no quota; an admitted one holds a concurrency slot until its answer starts going out (a
held request: until the client gives up). Counters are updated before the answer goes out, so a
client that holds a response already sees it in ``stats()``, and a client that calls again at once
never meets its own previous request still in flight. All state (counters, windows, random
sequence, file store) belongs to one :class:`SimulatorApp`, so two simulators in one process share
nothing.

Service tiers: a Gemini request's ``serviceTier`` (flex, priority, standard) scales its latency and,
for flex, adds capacity 429/503s (``simulator.faults``). Batch jobs and the Files API live in
``simulator.batches`` and ``simulator.uploads``; their routes in ``simulator.batch_routes``.

Timing of faults: 500/502/503 (and other injected statuses) and ``echo_key`` errors answer at
once, as overloaded front ends do; 504 answers after the full latency, as a deadline does; a
timeout holds the request without answering; a drop answers after the latency and cuts the body.
The other hostile modes shape a normal image answer after the latency: ``truncated`` halves the
image file, ``larger_image`` draws it larger than asked, ``oversized`` pads the body and streams it,
``trickle`` sends it a byte at a time. Answers that take long to send (held, streamed, trickled)
keep their concurrency slot until the last byte or the client's departure, as upstream would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable

from nanobatch.models.catalog import Catalog, load_catalog
from nanobatch.simulator import google_errors, hostile
from nanobatch.simulator.batch_routes import BatchRoutes
from nanobatch.simulator.batches import BatchBook
from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.faults import FaultPlan
from nanobatch.simulator.files import FileStore
from nanobatch.simulator.gemini_routes import PATH as GEMINI_PATH
from nanobatch.simulator.gemini_routes import GeminiDialect
from nanobatch.simulator.images import RenderedImage, Renderer
from nanobatch.simulator.openai_routes import PATHS as OPENAI_PATHS
from nanobatch.simulator.openai_routes import OpenAIDialect
from nanobatch.simulator.protocol import (
    Dialect,
    Drop,
    Hold,
    HttpRequest,
    ImageJob,
    Outcome,
    Rejected,
    Reply,
    Stream,
    Trickle,
)
from nanobatch.simulator.quotas import QuotaBook, QuotaLimits, QuotaViolation, Ticket
from nanobatch.simulator.safety import find_block
from nanobatch.simulator.stats import RequestRecord, Stats
from nanobatch.simulator.uploads import FileBook, Workspace

logger = logging.getLogger("nanobatch.simulator")

Send = Callable[[Outcome], None]
RECENT_DEFAULT = 50
NO_KEY_ECHO = "anonymous"  # what echo_key repeats when the client sent no key


class SimulatorApp:
    """Routes requests and runs the pipeline; ``send`` writes an outcome to the client."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        catalog: Catalog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.catalog = catalog or load_catalog()
        limits = QuotaLimits(rpm=config.rpm, rpd=config.rpd, tpm=config.tpm, concurrency=config.concurrency)
        per_model = {name: dataclasses.replace(limits, **o) for name, o in config.model_limits.items()}
        self.quotas = QuotaBook(
            limits, clock=clock, concurrency_retry=_concurrency_retry(config), per_model=per_model
        )
        self.faults = FaultPlan(config)
        self.stats = Stats()
        self.renderer = Renderer()
        self.files = FileStore()
        self.stopping = threading.Event()
        self.workspace = Workspace(config.batch_dir)
        self.uploads = FileBook(self.workspace, clock=clock)
        self.batches = BatchBook(
            config,
            self.workspace,
            self.uploads,
            self.stats,
            self.batch_answer,
            self.faults.dice.random,
            clock,
        )
        self.batch_routes = BatchRoutes(config, self.catalog, self.uploads, self.batches, self.stats)

    def handle(self, request: HttpRequest, send: Send) -> None:
        routed = self.batch_routes.handle(request)
        if routed is not None:
            send(routed)
            return
        dialect = self._dialect(request)
        if dialect is not None and request.method == "POST":
            self._generate(request, dialect, send)
        else:
            send(self._control(request, api_path=dialect is not None))

    def close(self) -> None:
        """Stop every batch job and remove the simulator's own temp files (after the server stopped)."""
        self.stopping.set()
        self.batches.close()
        self.workspace.close()

    def reset(self) -> None:
        """Zero counters and quota windows; replay the random sequence from the seed."""
        self.stats.reset()
        self.quotas.reset()
        self.faults.dice.reseed()

    def _dialect(self, request: HttpRequest) -> Dialect | None:
        match = GEMINI_PATH.match(request.path)
        if match:
            return GeminiDialect(self.catalog, self.config, match["version"], match["model"])
        endpoint = OPENAI_PATHS.get(request.path)
        if endpoint:
            return OpenAIDialect(self.catalog, self.config, self.files, endpoint, request.base_url)
        return None

    # -- the image pipeline -------------------------------------------------------------------

    def _generate(self, request: HttpRequest, dialect: Dialect, send: Send) -> None:
        record = RequestRecord(route=dialect.route, auth=dialect.auth_style(request))
        self.stats.begin()
        ticket: Ticket | None = None
        try:
            outcome, ticket = self._run(request, dialect, record)
            _settle(record, outcome)
            self.stats.finish(record)
            if isinstance(outcome, Hold | Stream | Trickle):
                send(outcome)  # a slow answer stays in flight until it ends or the client gives up
                return
        finally:
            self._release(ticket)
        send(outcome)

    def _release(self, ticket: Ticket | None) -> None:
        """End a request *before* its answer is written: a client that has read it may call again at
        once, and must not find its own previous request still holding a concurrency slot."""
        if ticket is not None:
            self.quotas.release(ticket)
        self.stats.end()

    def _run(
        self, request: HttpRequest, dialect: Dialect, record: RequestRecord
    ) -> tuple[Outcome, Ticket | None]:
        """The outcome, and the quota ticket to release once it is sent (a bug answers 500)."""
        ticket: Ticket | None = None
        try:
            admitted = self._admit(request, dialect, record)
            if not isinstance(admitted, tuple):
                return admitted, None
            job, ticket = admitted
            return self._serve(request, job, dialect, record), ticket
        except Exception:
            logger.exception("simulator failed on %s %s", request.method, request.path)
            record.outcome = "error"
            return google_errors.google_error(500, "Simulator internal error (a bug)."), ticket

    def _admit(
        self, request: HttpRequest, dialect: Dialect, record: RequestRecord
    ) -> Reply | tuple[ImageJob, Ticket]:
        try:
            dialect.authenticate(request)
            job = dialect.parse(request)
        except Rejected as rejected:
            record.outcome = rejected.outcome
            return rejected.reply
        record.describe(job)
        self.stats.received_inputs(len(job.input_mime_types))
        admitted = self.quotas.admit(job.model.name, job.quota_tokens)
        if isinstance(admitted, QuotaViolation):
            record.outcome = "rate_limited"
            return dialect.rate_limited(admitted)
        return job, admitted

    def _serve(self, request: HttpRequest, job: ImageJob, dialect: Dialect, record: RequestRecord) -> Outcome:
        fault = self.faults.draw_fault(job.service_tier)
        record.fault = fault.label if fault else None
        kind = fault.kind if fault else None
        if kind == "timeout":
            return Hold(self.config.hold_seconds)
        if kind == "echo_key":
            record.outcome = "fault"
            key = dialect.presented_key(request) or NO_KEY_ECHO
            return dialect.key_echo(job, key, self.config.echo_key_status)
        status = fault.error_status if fault is not None else None
        if status is not None and status != 504:
            return self._failure(dialect, record, status)
        if not self._wait(self.faults.draw_latency(job.service_tier)):
            return self._failure(dialect, record, 503)
        if status == 504:
            return self._failure(dialect, record, 504)
        answer = self._answer(job, dialect, record, kind)
        if kind == "drop":
            record.images = 0
        return self._deliver(answer, kind)

    def _deliver(self, answer: Reply | Stream, kind: str | None) -> Outcome:
        """How a finished answer goes out: whole, cut (drop) or a byte at a time (trickle)."""
        if isinstance(answer, Stream):
            return answer
        if kind == "drop":
            return Drop(answer)
        if kind == "trickle":
            return Trickle(answer, self.config.trickle_interval, self.config.trickle_limit)
        return answer

    def _answer(
        self, job: ImageJob, dialect: Dialect, record: RequestRecord, kind: str | None
    ) -> Reply | Stream:
        decision = find_block(job.prompt, self.config.block_words)
        if decision is not None:
            record.outcome = "blocked"
            return dialect.blocked(job, decision)
        if dialect.allows_no_image and self.faults.draw_no_image():
            record.outcome, record.fault = "no_image", "no_image"
            return dialect.no_image(job)
        images, (width, height) = self._render(job, kind)
        record.outcome, record.images = "image", len(images)
        reply = dialect.success(job, images, filler=hostile.PAD_MARK if kind == "oversized" else None)
        if self.config.thumbnails:
            real = {"X-Sim-Image-Width": str(width), "X-Sim-Image-Height": str(height)}
            reply = dataclasses.replace(reply, headers={**reply.headers, **real})
        return hostile.oversized(reply, self.config.oversize_bytes) if kind == "oversized" else reply

    def _render(self, job: ImageJob, kind: str | None) -> tuple[list[RenderedImage], tuple[int, int]]:
        """The images of an answer and their real size (larger than asked, for ``larger_image``)."""
        width, height = job.width, job.height
        if kind == "larger_image":
            width, height = hostile.enlarged(width, height, self.config.larger_image_factor)
        images = [
            self.renderer.render(
                job.prompt,
                width,
                height,
                fmt=job.fmt,
                label=job.label,
                thumbnail=self.config.thumbnails,
                variant=i,
            )
            for i in range(job.n)
        ]
        if kind == "truncated":
            images = [hostile.truncated(image) for image in images]
        return images, (width, height)

    def batch_answer(self, model: str, version: str, request: object) -> tuple[str, bytes]:
        """One request of a batch job: ``("response", GenerateContentResponse JSON)`` or
        ``("error", google.rpc.Status JSON)``, from the same steps as generateContent minus quotas,
        latency and transport faults; ``batch_request_fail_rate`` answers INTERNAL errors."""
        try:
            if self.faults.draw(self.config.batch_request_fail_rate):
                return self._batch_error(
                    google_errors.rpc_status("INTERNAL", google_errors.FAULT_MESSAGES[500])
                )
            dialect = GeminiDialect(self.catalog, self.config, version, model)
            try:
                job = dialect.parse_object(request)
            except Rejected as rejected:
                return self._batch_error(google_errors.embedded_status(rejected.reply))
            answer = self._answer(job, dialect, RequestRecord(route="gemini.batch"), None)
        except Exception:
            logger.exception("simulator failed on a batch request")
            return self._batch_error(
                google_errors.rpc_status("INTERNAL", "Simulator internal error (a bug).")
            )
        assert isinstance(answer, Reply)  # only the oversized fault streams, and batches draw none
        self.stats.batch_event("requests_answered")
        return "response", answer.body

    def _batch_error(self, status: dict[str, object]) -> tuple[str, bytes]:
        self.stats.batch_event("requests_answered")
        self.stats.batch_event("requests_failed")
        return "error", json.dumps(status, separators=(",", ":")).encode()

    @staticmethod
    def _failure(dialect: Dialect, record: RequestRecord, status: int) -> Reply:
        record.outcome = "fault"
        return dialect.failure(status)

    def abandoned(self, label: str) -> None:
        """The HTTP layer reports a streamed answer (``oversized``, ``trickle``) cut short by its client."""
        self.stats.abandoned(label)

    def _wait(self, seconds: float) -> bool:
        """Sleep the simulated latency; ``False`` when the simulator is stopping meanwhile."""
        return seconds <= 0 or not self.stopping.wait(seconds)

    # -- control endpoints --------------------------------------------------------------------

    def _control(self, request: HttpRequest, *, api_path: bool) -> Reply:
        method, path = request.method, request.path
        if method == "GET" and path == "/_sim/stats":
            return Reply.json(200, self.stats.snapshot())
        if method == "GET" and path == "/_sim/requests":
            return Reply.json(200, {"requests": self.stats.recent(_limit(request))})
        if method == "POST" and path == "/_sim/reset":
            self.reset()
            return Reply.json(200, {"reset": True})
        if method == "GET" and path.startswith("/_sim/files/"):
            return self._file(path.removeprefix("/_sim/files/"))
        return self._unknown(request, api_path=api_path)

    def _file(self, file_id: str) -> Reply:
        stored = self.files.get(file_id)
        if stored is None:
            return google_errors.google_error(404, f"file {file_id} is not stored (expired or never existed)")
        data, mime_type = stored
        return Reply(200, data, mime_type)

    def _unknown(self, request: HttpRequest, *, api_path: bool) -> Reply:
        status = 405 if api_path else 404
        record = RequestRecord(route="unknown", status=status, outcome="not_found")
        self.stats.begin()
        self.stats.finish(record)
        self.stats.end()
        message = f"{request.method} {request.path} is not served by the nanobatch simulator"
        return google_errors.google_error(
            status, message, status="NOT_FOUND" if status == 404 else "METHOD_NOT_ALLOWED"
        )


def _settle(record: RequestRecord, outcome: Outcome) -> None:
    """Record the status an answer goes out with; held and cut answers have none (see ``stats``)."""
    if isinstance(outcome, Reply | Stream):
        record.status = outcome.status
    elif isinstance(outcome, Trickle):
        record.status = outcome.reply.status
    else:
        record.outcome = "timeout" if isinstance(outcome, Hold) else "drop"


def _limit(request: HttpRequest) -> int:
    try:
        return max(1, min(int(request.query_value("limit") or RECENT_DEFAULT), 1000))
    except ValueError:
        return RECENT_DEFAULT


def _concurrency_retry(config: SimulatorConfig) -> float:
    """A concurrency 429's retry hint: the shortest simulated latency (a slot frees by then)."""
    return max(0.1, min(config.latency[0] * config.time_scale, 60.0))
