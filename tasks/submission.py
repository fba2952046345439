"""From what a user asked for (CLI flags or Python arguments) to validated rows and batch options.

The CLI's ``submit`` and :meth:`nanobatch.Client.submit` both go through here and then through
:func:`nanobatch.tasks.producer.submit`, so a row is validated by one set of rules whichever door
it came in by. Nothing here prints or exits: problems are :class:`IntakeError` (the input as a
whole), :class:`RowError` values (single rows) or :class:`SubmitError` (the batch options).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from nanobatch.models.base import utcnow
from nanobatch.models.catalog import Catalog, CatalogError
from nanobatch.models.queue import MAX_WEIGHT
from nanobatch.models.schedule import next_occurrence, parse_deadline, parse_window
from nanobatch.models.status import Lane, parse_lane
from nanobatch.tasks.intake import IntakeError, IntakeOptions, IntakeResult, read_file, read_rows
from nanobatch.tasks.planner import Plan, PlanInputs, lane_sequence, plan, single_lane
from nanobatch.tasks.producer import BatchOptions, SubmitError
from nanobatch.tasks.settings import Settings
from nanobatch.workers.limiter import PoolLimits

#: A product file, or rows as mappings (column → value).
Source = str | Path | Iterable[Mapping[str, Any]]


@dataclass(frozen=True)
class SubmitChoices:
    """Everything a submitter may choose besides the rows; ``None`` means the settings' default."""

    model: str | None = None
    size: str | None = None
    aspect_ratio: str | None = None
    template: str | None = None
    output_format: str = "png"
    images_dir: Path | None = None
    budget_usd: float | None = None
    reuse: bool = False
    at: str | None = None
    window: str | None = None
    allow_retired_model: bool = False  # submit even a model past its catalog shutdown date
    key: str | None = (
        None  # the key column (--key); None: the first of key, sku, SKU, Variant SKU, id, Handle
    )
    preset: str | None = None  # shopify | woocommerce | merchant
    per: str = "variant"  # with a preset: one image per variant or per product
    update: bool = False  # replace rows whose content changed (submit --update)
    lane: str = "standard"  # standard | flex | priority | batch | auto (docs/lanes.md)
    deadline: str | None = None  # ISO 8601 or HH:MM in NANOBATCH_TIMEZONE; auto plans for it
    priority: int | None = None  # dispatch order: higher first (None: 0, or unchanged on re-submit)
    weight: int | None = None  # share among equal priorities (None: 1, or unchanged on re-submit)


def intake_options(
    choices: SubmitChoices, catalog: Catalog, settings: Settings, *, dry_run: bool = False
) -> IntakeOptions:
    """The per-row defaults and rules; :class:`IntakeError` for an unknown default model, or one the
    upstream has shut down (naming its replacement) unless ``allow_retired_model``.

    URL input images are stored under the output directory (``dry_run``: fetched and checked only).
    """
    name = choices.model or settings.default_model
    try:
        model = catalog.canonical(name)
    except CatalogError as exc:
        raise IntakeError(str(exc)) from None
    retired = None if choices.allow_retired_model else catalog.retirement(name)
    if retired:
        raise IntakeError(retired)
    return IntakeOptions(
        model=model,
        aspect_ratio=choices.aspect_ratio or settings.default_aspect_ratio,
        image_size=choices.size,
        output_format=choices.output_format.lower(),
        template=choices.template,
        images_dir=choices.images_dir,
        allow_retired_model=choices.allow_retired_model,
        key_column=choices.key,
        preset=choices.preset.lower() if choices.preset else None,
        per=choices.per.lower(),
        inputs_dir=settings.output_dir,
        allow_private_urls=settings.allow_private_urls,
        store_inputs=not dry_run,
        aspect_from_flag=choices.aspect_ratio is not None,
    )


def read_source(source: Source, catalog: Catalog, options: IntakeOptions) -> IntakeResult:
    """Validate a file (CSV/JSONL) or in-memory rows; relative image paths resolve against the
    file's folder, or the current directory for rows."""
    if isinstance(source, str | Path):
        return read_file(Path(source), catalog, options)
    return read_rows(source, catalog, options, base_dir=Path.cwd())


def batch_options(name: str, choices: SubmitChoices, settings: Settings) -> BatchOptions:
    """The batch's own options; :class:`SubmitError` for a bad budget, start time or window."""
    if not name or not name.strip():
        raise SubmitError("a batch needs a name")
    if choices.weight is not None and not 1 <= choices.weight <= MAX_WEIGHT:
        raise SubmitError(f"--weight must be between 1 and {MAX_WEIGHT}")
    try:
        scheduled: datetime | None = next_occurrence(choices.at, settings.timezone) if choices.at else None
        window = parse_window(choices.window) if choices.window else None
        lane = parse_lane(choices.lane)
        deadline = parse_deadline(choices.deadline, settings.timezone) if choices.deadline else None
    except ValueError as exc:
        raise SubmitError(str(exc)) from None
    return BatchOptions(
        lane=lane.value,
        deadline=deadline,
        name=name,
        budget_usd=choices.budget_usd,
        reuse=choices.reuse,
        scheduled_for=scheduled,
        window=window,
        window_tz=settings.timezone,
        priority=choices.priority,
        weight=choices.weight,
    )


def plan_inputs(
    tasks: int,
    model: str,
    size: str | None,
    catalog: Catalog,
    settings: Settings,
    *,
    deadline: datetime | None,
    limits: PoolLimits | None = None,
    now: datetime | None = None,
    rpd_left: int | None = None,
    observed_latency: float | None = None,
) -> PlanInputs:
    """What the deadline planner needs for ``tasks`` images of ``model``: lane prices from the
    catalog, latencies (``observed_latency`` when the workers measured one, else
    ``NANOBATCH_EXPECTED_LATENCY``, times the lane factors), the pool's live limits and the Batch API's
    expected turnaround."""
    spec = catalog.resolve(model)
    standard = observed_latency or settings.expected_latency
    limits = limits or PoolLimits()
    concurrency = min(settings.concurrency, limits.concurrency or settings.concurrency)
    lanes = tuple(lane.value for lane in (Lane.BATCH, Lane.FLEX, Lane.STANDARD, Lane.PRIORITY))
    return PlanInputs(
        tasks=tasks,
        now=now or utcnow(),
        deadline=deadline,
        prices={lane: spec.cost_usd(size, lane=lane) for lane in lanes},
        latency={
            Lane.STANDARD.value: standard,
            Lane.FLEX.value: standard * settings.flex_latency_factor,
            Lane.PRIORITY.value: standard * settings.priority_latency_factor,
        },
        concurrency=concurrency,
        rpm=limits.rpm,
        rpd_left=rpd_left if rpd_left is not None else limits.rpd,
        batch_turnaround=settings.batch_expected_turnaround,
        margin=settings.deadline_margin,
        lanes=lanes if spec.provider == "gemini" else (Lane.STANDARD.value,),
    )


def with_plan(options: BatchOptions, result: Plan) -> BatchOptions:
    """``options`` with the planner's lane shares (``--lane auto``)."""
    return replace(options, lanes=tuple(lane_sequence(result.shares)))


def plan_for(options: BatchOptions, inputs: PlanInputs) -> Plan | None:
    """The plan of an ``auto`` batch (``None`` for any other lane)."""
    return plan(inputs) if options.lane == Lane.AUTO else None


def preview_plan(options: BatchOptions, inputs: PlanInputs) -> Plan | None:
    """What ``submit --dry-run`` shows: the planner's mix for ``auto``, the chosen lane's cost and
    finish for ``flex``, ``priority`` and ``batch``; ``None`` for standard (the estimate says it)."""
    if options.lane == Lane.STANDARD:
        return None
    return plan_for(options, inputs) or single_lane(inputs, options.lane)
