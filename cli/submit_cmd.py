"""``nanobatch submit FILE``: validate, report every bad row, write the batch, enqueue it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nanobatch.cli.context import console, err_console, fail, image_store, load_settings, runtime_for
from nanobatch.models.catalog import Catalog, CatalogError, load_catalog
from nanobatch.tasks.estimate import estimate, human_duration
from nanobatch.tasks.intake import IntakeError, IntakeOptions, IntakeResult
from nanobatch.tasks.planner import Plan
from nanobatch.tasks.producer import BatchOptions, SubmitError, SubmitReport, submit
from nanobatch.tasks.runtime import redis_for
from nanobatch.tasks.settings import Settings
from nanobatch.tasks.submission import (
    SubmitChoices,
    batch_options,
    intake_options,
    plan_inputs,
    preview_plan,
    read_source,
    with_plan,
)
from nanobatch.workers.limiter import PoolLimits, RateLimiter

MAX_ERRORS_SHOWN = 50
MAX_URLS_SHOWN = 20


def submit_command(
    file: Path = typer.Argument(
        ..., help="Products as .csv or .jsonl (columns: key, prompt or --template fields, …)"
    ),
    batch: str | None = typer.Option(None, "--batch", help="Batch name (default: the file's stem)"),
    model: str | None = typer.Option(None, "--model", help="Default model for rows without one"),
    size: str | None = typer.Option(None, "--size", help="Default image size: 1K, 2K, 4K, 512 (per model)"),
    aspect: str | None = typer.Option(None, "--aspect", help="Default aspect ratio, e.g. 1:1 or 16:9"),
    template: str | None = typer.Option(
        None, "--template", help='Prompt template, e.g. "Studio photo of {title}"'
    ),
    output_format: str = typer.Option("png", "--format", help="png or jpeg"),
    images_dir: Path | None = typer.Option(
        None, "--images-dir", help="Input images must lie inside this folder"
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate and estimate cost and ETA; write nothing"
    ),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Write the good rows, print the rejects"),
    budget_usd: float | None = typer.Option(
        None, "--budget-usd", help="Stop paid calls once spent reaches this"
    ),
    reuse: bool = typer.Option(
        False, "--reuse", help="Complete identical requests from earlier results, unpaid"
    ),
    at: str | None = typer.Option(None, "--at", help="Start at HH:MM (next occurrence, NANOBATCH_TIMEZONE)"),
    window: str | None = typer.Option(None, "--window", help="Only run inside HH:MM-HH:MM each day"),
    allow_retired_model: bool = typer.Option(
        False, "--allow-retired-model", help="Submit even a model past its shutdown date (catalog)"
    ),
    key: str | None = typer.Option(
        None,
        "--key",
        help="The key column, as written in the header (default: the first of key, sku, SKU, "
        "Variant SKU, id, Handle)",
    ),
    preset: str | None = typer.Option(
        None, "--preset", help="Read a shop export: shopify, woocommerce or merchant (README 'Shop exports')"
    ),
    per: str = typer.Option("variant", "--per", help="With --preset: one image per variant or per product"),
    update: bool = typer.Option(
        False,
        "--update",
        help="Re-submit into an existing batch: rows whose content changed go back to pending "
        "(the previous image stays until the new one is stored)",
    ),
    lane: str = typer.Option(
        "standard",
        "--lane",
        help="standard, flex (half price, slower), priority (dearer, faster), batch (Batch API, half "
        "price, within 24 h) or auto (the cheapest mix that meets --deadline)",
    ),
    deadline: str | None = typer.Option(
        None, "--deadline", help="Finish by HH:MM (NANOBATCH_TIMEZONE) or an ISO 8601 time; with --lane auto"
    ),
    priority: int | None = typer.Option(
        None, "--priority", help="Dispatch order: higher first (default 0; `nanobatch priority` changes it)"
    ),
    weight: int | None = typer.Option(
        None, "--weight", help="Share of the window among batches of equal priority, 1-100 (default 1)"
    ),
) -> None:
    """Validate a product file and enqueue one image task per row."""
    settings = load_settings()
    if not dry_run:  # input images are uploaded to the store: a bad store is one line, exit 2
        image_store(settings, check=True)
    catalog = _catalog(settings)
    choices = SubmitChoices(
        model=model,
        size=size,
        aspect_ratio=aspect,
        template=template,
        output_format=output_format,
        images_dir=images_dir,
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
    try:
        options_for_batch = batch_options(batch or file.stem, choices, settings)
    except SubmitError as exc:
        raise fail(str(exc), 2) from None
    try:
        options = intake_options(choices, catalog, settings, dry_run=dry_run)
        intake = read_source(file, catalog, options)
    except IntakeError as exc:
        raise fail(str(exc), 2) from None
    _print_errors(intake)
    _print_intake(intake)
    lane_plan = _lane_plan(intake, options, options_for_batch, catalog, settings)
    if dry_run:
        _print_dry_run(intake)
        _print_estimate(intake, settings)
        _print_plan(lane_plan, options_for_batch)
        raise typer.Exit(1 if intake.error_count else 0)
    if intake.error_count and not skip_invalid:
        raise fail(
            f"{intake.error_count} invalid row(s); nothing was written (use --skip-invalid to write the rest)"
        )
    if lane_plan is not None and options_for_batch.lane == "auto":
        options_for_batch = with_plan(options_for_batch, lane_plan)
    try:
        report = _write(settings, intake, options_for_batch, options, str(file), skip_invalid, update)
    except IntakeError as exc:  # the file changed between the validating and the writing pass
        raise fail(str(exc), 2) from None
    _print_report(report, settings)


def _catalog(settings: Settings) -> Catalog:
    try:
        return load_catalog(settings.catalog_file)
    except (OSError, CatalogError, ValueError) as exc:
        raise fail(f"cannot read the model catalog: {exc}", 2) from None


def _write(
    settings: Settings,
    intake: IntakeResult,
    batch: BatchOptions,
    options: IntakeOptions,
    source: str,
    skip: bool,
    update: bool = False,
) -> SubmitReport:
    runtime = runtime_for(settings)
    runtime.db.upgrade()
    dispatcher = None if settings.embedded else runtime.dispatcher
    columns = [TextColumn("writing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    try:
        with Progress(*columns, console=err_console, transient=True) as progress:
            bar = progress.add_task("rows", total=intake.valid)
            return submit(
                runtime.db,
                dispatcher,
                intake,
                batch,
                intake_options=options,
                source=source,
                skip_invalid=skip,
                progress=lambda n: progress.advance(bar, n),
                update=update,
            )
    except SubmitError as exc:
        raise fail(str(exc), 2) from None
    finally:
        runtime.close()


def _print_errors(intake: IntakeResult) -> None:
    for error in intake.errors[:MAX_ERRORS_SHOWN]:
        err_console.print(f"[red]✗[/red] {error}", markup=True, highlight=False)
    if intake.error_count > MAX_ERRORS_SHOWN:
        err_console.print(f"… and {intake.error_count - MAX_ERRORS_SHOWN} more invalid rows")


def _print_intake(intake: IntakeResult) -> None:
    """How the file was read: the key column (and delimiter, rows a preset ignored)."""
    facts = [f"key column: {intake.key_column}"]
    if intake.delimiter and intake.delimiter != ",":
        facts.append("delimiter: " + ("tab" if intake.delimiter == "\t" else repr(intake.delimiter)))
    if intake.ignored:
        facts.append(f"{intake.ignored:,} row(s) without a product to make ignored")
    err_console.print("; ".join(facts), highlight=False, markup=False)


def _print_dry_run(intake: IntakeResult) -> None:
    """The first rendered prompts and the rows per input-image URL (plain lines: easy to grep)."""

    def line(text: str) -> None:
        console.print(text, soft_wrap=True, highlight=False, markup=False)

    line(f"first {len(intake.samples)} prompt(s):")
    for key, prompt in intake.samples:
        line(f"  {key}: {prompt}")
    if intake.url_rows:
        line(f"input images by URL: {len(intake.url_rows):,} distinct (each fetched once), rows per URL:")
        for url, rows in intake.url_rows.most_common(MAX_URLS_SHOWN):
            line(f"  {rows:>6,}  {url}")
        if len(intake.url_rows) > MAX_URLS_SHOWN:
            line(f"  … and {len(intake.url_rows) - MAX_URLS_SHOWN:,} more")


def _live_limits(settings: Settings, pools: set[str]) -> dict[str, PoolLimits]:
    """The limits workers will apply: live ones from Redis where set, else the NANOBATCH_LIMITS seeds."""
    limits = dict(settings.limits)
    if settings.embedded:
        return limits
    limiter = RateLimiter(redis_for(settings), prefix=settings.limiter_prefix)
    for pool in pools:
        live = limiter.get_limits(pool)
        if live.configured():
            limits[pool] = live
    return limits


def _print_estimate(intake: IntakeResult, settings: Settings) -> None:
    tasks = intake.tasks
    result = estimate(
        tasks,
        load_catalog(settings.catalog_file),
        _live_limits(settings, {task.model for task in tasks}),
        worker_concurrency=settings.concurrency,
        latency_seconds=settings.expected_latency,
    )
    table = Table(title="dry run: nothing written")
    for column in ("pool", "tasks", "est. cost (USD)", "rate /min", "bottleneck", "ETA"):
        table.add_column(column)
    for pool in result.pools:
        table.add_row(
            pool.pool,
            str(pool.tasks),
            f"{pool.cost_usd:.2f}",
            f"{pool.per_minute:.1f}",
            pool.bottleneck,
            human_duration(pool.eta_seconds),
        )
    console.print(table)
    console.print(
        f"{result.tasks} task(s), {intake.error_count} invalid row(s); "
        f"estimated cost ${result.cost_usd:.2f}; "
        f"ETA {human_duration(result.eta_seconds)} (concurrency {settings.concurrency}, "
        f"~{settings.expected_latency:.0f}s per call, NANOBATCH_EXPECTED_LATENCY)"
    )


def _print_report(report: SubmitReport, settings: Settings) -> None:
    console.print(
        f"batch [bold]{report.batch}[/bold]: {report.new} new, {report.existing} already present"
        + (f", {report.updated} changed (back to pending)" if report.updated else "")
        + (f", {report.error_count} rejected" if report.error_count else "")
    )
    if settings.embedded:
        console.print(
            "embedded mode (no NANOBATCH_REDIS_URL): `nanobatch worker` will dispatch the pending rows"
        )
    elif report.new and not report.dispatched:
        console.print(
            "the batch is scheduled: the dispatcher sends its rows when its start time or window opens "
            "and the dispatch window has room"
        )


def _lane_plan(
    intake: IntakeResult, options: IntakeOptions, batch: BatchOptions, catalog: Catalog, settings: Settings
) -> Plan | None:
    """The deadline planner's mix for ``--lane auto`` (from the pool's live limits), the chosen lane's
    cost and finish for the other non-standard lanes; ``None`` for standard."""
    if batch.lane == "standard":
        return None
    limits = _live_limits(settings, {options.model}).get(options.model)
    inputs = plan_inputs(
        intake.valid,
        options.model,
        options.image_size,
        catalog,
        settings,
        deadline=batch.deadline,
        limits=limits,
    )
    return preview_plan(batch, inputs)


def _print_plan(lane_plan: Plan | None, batch: BatchOptions) -> None:
    """``--lane auto``: tasks, cost and expected finish per lane, beside standard-only."""
    if lane_plan is None:
        return
    table = Table(title=f"lane plan (--lane {batch.lane})")
    for column in ("lane", "tasks", "cost (USD)", "expected finish (UTC)"):
        table.add_column(column)
    for share in lane_plan.shares:
        table.add_row(share.lane, str(share.tasks), f"{share.cost_usd:.2f}", f"{share.finish:%Y-%m-%d %H:%M}")
    base = lane_plan.standard_only
    table.add_row("standard only", str(base.tasks), f"{base.cost_usd:.2f}", f"{base.finish:%Y-%m-%d %H:%M}")
    console.print(table)
    deadline = f"{batch.deadline:%Y-%m-%d %H:%M} UTC" if batch.deadline else "none"
    ratio = lane_plan.cost_usd / base.cost_usd if base.cost_usd else 1.0
    verdict = "meets it" if lane_plan.feasible else "CANNOT meet it"
    console.print(
        f"deadline {deadline}: the plan {verdict}; cost ${lane_plan.cost_usd:.2f} "
        f"({ratio:.0%} of standard-only ${base.cost_usd:.2f})"
    )
    for note in lane_plan.notes:
        console.print(f"note: {note}")
