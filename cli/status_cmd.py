"""``nanobatch status [BATCH] [--json]``: counts per status, cost, throughput, ETA."""

from __future__ import annotations

import json

import typer
from redis.exceptions import RedisError
from rich.table import Table
from rich.text import Text

from nanobatch.cli.context import console, err_console, fail, load_settings
from nanobatch.models.db import Database
from nanobatch.models.queries import BatchSummary, batch_summaries, models_by_batch
from nanobatch.tasks import alerts
from nanobatch.tasks.estimate import human_duration
from nanobatch.tasks.liveness import recovery_health_for
from nanobatch.tasks.settings import Settings


def status_command(
    batch: str | None = typer.Argument(None, help="Batch name (default: all batches)"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (stable shape)"),
) -> None:
    """Show progress of one batch or all batches."""
    settings = load_settings()
    db = Database(settings.database_url)
    try:
        db.upgrade()
        with db.session() as session:
            summaries = batch_summaries(session, batch)
            names = [s.name for s in summaries]
            pools = None if batch is None else models_by_batch(session, names).get(batch, [])
            warnings = alerts.collect(session, settings, alerts.catalog_or_none(settings), names, pools=pools)
    finally:
        db.dispose()
    if batch is not None and not summaries:
        raise fail(f"no batch named {batch!r}", 1)
    recovery = recovery_line(settings)
    if as_json:
        payload = summaries[0].as_json() if batch is not None else [s.as_json() for s in summaries]
        typer.echo(json.dumps(payload))
        for warning in warnings:  # stdout stays the documented JSON
            err_console.print(f"warning: {warning}", markup=False, highlight=False)
        if recovery is not None and recovery.style != RECOVERY_OK:  # a warning, kept off stdout
            err_console.print(recovery, soft_wrap=True)
        return
    console.print(status_table(summaries))
    for warning in warnings:
        console.print(Text.assemble((f"⚠ {warning.subject}: ", "yellow"), warning.text))
    if recovery is not None:
        console.print(recovery, soft_wrap=True)


RECOVERY_OK = "dim"
RECOVERY_WARN = "bold yellow"


def recovery_line(settings: Settings) -> Text | None:
    """When the recovery sweep last ran (from Redis), a warning when none ran for two intervals;
    ``None`` in embedded mode, where the one worker process sweeps for itself."""
    try:
        health = recovery_health_for(settings)
    except (RedisError, OSError) as exc:
        return Text(f"recovery: cannot read Redis to tell ({type(exc).__name__}: {exc})", style=RECOVERY_WARN)
    if health is None:
        return None
    if health.overdue:
        return Text(f"warning: {health.describe()}", style=RECOVERY_WARN)
    return Text(f"recovery: {health.describe()}", style=RECOVERY_OK)


def status_table(summaries: list[BatchSummary]) -> Table:
    table = Table(title="nanobatch status")
    for column in (
        "batch",
        "state",
        "pending",
        "processing",
        "completed",
        "failed",
        "cancelled",
        "cost (USD)",
        "per min",
        "ETA",
        "lane",
        "standard (USD)",
    ):
        table.add_column(column, justify="right" if column not in {"batch", "state"} else "left")
    for s in summaries:
        state = "budget reached" if s.budget_reached and s.remaining else s.status
        table.add_row(
            s.name,
            state,
            *(str(s.counts[k]) for k in ("pending", "processing", "completed", "failed", "cancelled")),
            f"{s.cost_usd:.3f}",
            f"{s.per_minute:.1f}",
            human_duration(s.eta_seconds),
            s.lane_mix,
            f"{s.standard_cost_usd:.3f}",
        )
    return table
