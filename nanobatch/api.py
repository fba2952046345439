"""The Python API: what the ``nanobatch`` command does, for applications (Django, Flask, a cron job).

::

    from nanobatch import Client

    with Client() as client:                       # settings from the environment, like the CLI
        result = client.submit("products.csv", batch="spring", template="Studio photo of {title}")
        client.wait("spring", timeout=3600)        # until nothing is pending or processing
        client.export("spring", "spring.csv")

Every method takes the same path as its CLI command (:mod:`nanobatch.tasks.submission`,
:mod:`nanobatch.tasks.producer`, :mod:`nanobatch.tasks.operations`), so a row is validated by one
set of rules. Invalid input raises :class:`SubmitRejected` with every row problem in it; an action on
a batch that does not exist (or is in the wrong state) raises :class:`BatchError`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from nanobatch.models.catalog import Catalog, CatalogError, load_catalog
from nanobatch.models.queries import BatchSummary, batch_summaries
from nanobatch.models.status import ErrorCode, TaskStatus, parse_error_code
from nanobatch.tasks import operations
from nanobatch.tasks.export import atomic_text_file, export_batch
from nanobatch.tasks.intake import IntakeError, RowError
from nanobatch.tasks.operations import ActionResult, OperationError
from nanobatch.tasks.producer import SubmitError, submit
from nanobatch.tasks.runtime import Runtime
from nanobatch.tasks.settings import Settings
from nanobatch.tasks.submission import (
    SubmitChoices,
    batch_options,
    intake_options,
    plan_for,
    plan_inputs,
    read_source,
    with_plan,
)

__all__ = ["ActionResult", "BatchError", "Client", "RowProblem", "SubmitRejected", "SubmitResult"]


#: One rejected row: ``line`` (in the file, or the 1-based position in a list of rows), ``field``,
#: ``reason``. The intake's own type, so the CLI and the API report rows identically.
RowProblem = RowError


@dataclass(frozen=True)
class SubmitResult:
    """What :meth:`Client.submit` wrote: ``new`` rows, ``already_present`` ones (a re-submit of the
    same keys creates nothing twice), and the rows ``rejected`` (only with ``skip_invalid=True``)."""

    batch: str
    new: int
    already_present: int
    dispatched: int
    rejected: tuple[RowProblem, ...] = ()
    key_column: str | None = None  # the column the keys came from (``key=``, or the one chosen)
    updated: int = 0  # rows replaced by ``update=True`` (their content changed)
    ignored: int = 0  # rows a preset skipped (image-only rows; parents or variants per ``per``)


class SubmitRejected(ValueError):
    """The input was refused and nothing was written. ``problems`` lists every bad row; for a problem
    with the input as a whole (no such file, an unknown model, a bad window) it is empty."""

    def __init__(self, message: str, problems: Iterable[RowProblem] = ()) -> None:
        self.problems = tuple(problems)
        details = "".join(f"\n  {problem}" for problem in self.problems[:20])
        more = f"\n  … and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(message + details + more)


class BatchError(LookupError):
    """No batch of that name, or it is in a state the action does not apply to."""


class Client:
    """A connection to one nanobatch installation (its database, Redis and broker).

    ``Client()`` reads the same ``NANOBATCH_*`` environment (and ``nanobatch.toml``) as the CLI;
    ``Client(settings)`` or ``Client(database_url=…, redis_url=…)`` overrides it. Use it as a context
    manager, or call :meth:`close`, to release its connections.
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = settings or Settings(**overrides)
        self._runtime: Runtime | None = None
        self._catalog: Catalog | None = None

    # -- resources -----------------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        """Database, Redis and the Celery publisher, built on first use (schema upgraded once)."""
        if self._runtime is None:
            from nanobatch.tasks.celeryapp.runtime import connect  # builds the Celery app: on demand

            self._runtime = connect(self.settings)
        return self._runtime

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            try:
                self._catalog = load_catalog(self.settings.catalog_file)
            except (OSError, CatalogError, ValueError) as exc:
                raise SubmitRejected(f"cannot read the model catalog: {exc}") from None
        return self._catalog

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- submitting ----------------------------------------------------------------------------

    def submit(
        self,
        source: str | Path | Iterable[Mapping[str, Any]],
        *,
        batch: str | None = None,
        template: str | None = None,
        model: str | None = None,
        size: str | None = None,
        aspect_ratio: str | None = None,
        output_format: str = "png",
        images_dir: str | Path | None = None,
        budget_usd: float | None = None,
        reuse: bool = False,
        at: str | None = None,
        window: str | None = None,
        skip_invalid: bool = False,
        allow_retired_model: bool = False,
        key: str | None = None,
        preset: str | None = None,
        per: Literal["product", "variant"] = "variant",
        update: bool = False,
        lane: str = "standard",
        deadline: str | None = None,
        priority: int | None = None,
        weight: int | None = None,
    ) -> SubmitResult:
        """Validate ``source`` (a .csv/.jsonl path, or rows as mappings) and enqueue one task per row.

        ``batch`` defaults to the file's stem (required for rows). Raises :class:`SubmitRejected`
        when any row is invalid (unless ``skip_invalid``: the good rows are written and the bad ones
        come back in :attr:`SubmitResult.rejected`) or the input as a whole is unusable — a model
        past its catalog shutdown date included, unless ``allow_retired_model``.

        ``key`` names the key column (default: the first of key, sku, SKU, Variant SKU, id, Handle;
        the choice comes back in :attr:`SubmitResult.key_column`); ``preset`` reads a shop export
        (``shopify``, ``woocommerce``, ``merchant``) with one image ``per`` variant or product;
        ``update`` replaces rows of an existing batch whose content changed (README, "Changing and
        regenerating"). ``lane`` is ``standard``, ``flex``, ``priority``, ``batch`` or ``auto`` (the
        cheapest mix that meets ``deadline``: ISO 8601 or ``HH:MM``; README, "Lanes"). ``priority``
        (higher first) and ``weight`` (share among equal priorities) order dispatch (README,
        "Priorities").
        """
        choices = SubmitChoices(
            model=model,
            size=size,
            aspect_ratio=aspect_ratio,
            template=template,
            output_format=output_format,
            images_dir=Path(images_dir) if images_dir is not None else None,
            budget_usd=budget_usd,
            reuse=reuse,
            at=at,
            window=window,
            allow_retired_model=allow_retired_model,
            key=key,
            preset=preset,
            per=per,
            update=update,
            lane=lane,
            deadline=deadline,
            priority=priority,
            weight=weight,
        )
        name = batch or (Path(source).stem if isinstance(source, str | Path) else "")
        try:
            options = intake_options(choices, self.catalog, self.settings)
            intake = read_source(source, self.catalog, options)
            problems = tuple(intake.errors)
            if intake.error_count and not skip_invalid:
                raise SubmitRejected(f"{intake.error_count} invalid row(s); nothing was written", problems)
            rt = self.runtime
            options_for_batch = batch_options(name, choices, self.settings)
            inputs = plan_inputs(
                intake.valid,
                options.model,
                options.image_size,
                self.catalog,
                self.settings,
                deadline=options_for_batch.deadline,
                limits=self.settings.limits.get(options.model),
            )
            if (lane_plan := plan_for(options_for_batch, inputs)) is not None:
                options_for_batch = with_plan(options_for_batch, lane_plan)
            report = submit(
                rt.db,
                None if self.settings.embedded else rt.dispatcher,
                intake,
                options_for_batch,
                intake_options=options,
                source=str(source) if isinstance(source, str | Path) else "python",
                skip_invalid=skip_invalid,
                update=update,
            )
        except (IntakeError, SubmitError) as exc:
            raise SubmitRejected(str(exc)) from None
        return SubmitResult(
            report.batch,
            report.new,
            report.existing,
            report.dispatched,
            problems,
            key_column=intake.key_column,
            updated=report.updated,
            ignored=intake.ignored,
        )

    # -- watching ------------------------------------------------------------------------------

    def status(self, batch: str) -> dict[str, Any]:
        """The batch's progress: the same dict as ``nanobatch status BATCH --json``."""
        return self._summary(batch).as_json()

    def _summary(self, batch: str) -> BatchSummary:
        with self.runtime.db.session() as session:
            summaries = batch_summaries(session, batch)
        if not summaries:
            raise BatchError(f"no batch named {batch!r}")
        return summaries[0]

    def wait(self, batch: str, *, timeout: float | None = None, poll: float = 2.0) -> dict[str, Any]:
        """Block until the batch has settled (nothing pending or processing, every completed image at
        its key's name: ``BatchSummary.settled``); returns its final status.

        Raises ``TimeoutError`` (with the last status in its message) after ``timeout`` seconds.
        A paused batch is waited for like any other: resume it, or pass a timeout.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            summary = self._summary(batch)
            status = summary.as_json()
            counts = status["counts"]
            if summary.settled:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"batch {batch!r} still running after {timeout} s: {counts}")
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    # -- operating -----------------------------------------------------------------------------

    def retry(self, batch: str, *, reason: str | ErrorCode | None = None) -> ActionResult:
        """failed → pending with a fresh attempt budget (only failures with error code ``reason``)."""
        code = parse_error_code(reason) if isinstance(reason, str) else reason
        return self._act(lambda rt: operations.retry_batch(rt, batch, reason=code))

    def regenerate(
        self,
        batch: str,
        *,
        keys: Iterable[str] | None = None,
        status: Literal["completed", "failed"] | None = None,
    ) -> ActionResult:
        """completed|failed → pending for a new image of the same content (only ``keys``, only
        ``status``, if given). The previous image stays until the new one is stored."""
        chosen = TaskStatus(status) if status is not None else None
        wanted = list(keys) if keys is not None else None
        return self._act(lambda rt: operations.regenerate_batch(rt, batch, keys=wanted, status=chosen))

    def cancel(self, batch: str) -> ActionResult:
        """Cancel every pending or processing task of the batch."""
        return self._act(lambda rt: operations.cancel_batch(rt, batch))

    def pause(self, batch: str) -> ActionResult:
        return self._act(lambda rt: operations.pause_batch(rt, batch))

    def resume(self, batch: str) -> ActionResult:
        return self._act(lambda rt: operations.resume_batch(rt, batch))

    def priority(self, batch: str, priority: int, *, weight: int | None = None) -> ActionResult:
        """Change the dispatch priority (and weight) of an open or paused batch; rows not yet
        dispatched follow it at once."""
        return self._act(lambda rt: operations.set_priority(rt, batch, priority, weight=weight))

    def export(self, batch: str, path: str | Path, *, format: Literal["csv", "jsonl"] = "csv") -> int:
        """Write every task of the batch to ``path`` (atomically); returns the number of rows."""
        with self.runtime.db.session() as session:
            found = self._batch(session, batch)
            with atomic_text_file(Path(path)) as out:
                return export_batch(session, found.id, format, out)

    def _batch(self, session: Any, name: str) -> Any:
        try:
            return operations.require_batch(session, name)
        except OperationError as exc:
            raise BatchError(str(exc)) from None

    def _act(self, action: Any) -> ActionResult:
        try:
            result: ActionResult = action(self.runtime)
        except OperationError as exc:
            raise BatchError(str(exc)) from None
        return result
