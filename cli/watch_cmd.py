"""``nanobatch watch BATCH``: a live progress view that ends when every task is terminal.

Exit status tells a script how the batch ended: 0 when every task completed, 1 when any failed or
was cancelled, 130 on Ctrl-C. ``--once`` prints a single snapshot and exits 0 (the state is in the
output; ``status --json`` is the machine-readable form). The view reads the database, so it works
from any machine that can reach it; with Redis it also shows stalled pools (``tasks.alerts``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from nanobatch.cli.context import console, database, fail, load_settings
from nanobatch.cli.status_cmd import recovery_line
from nanobatch.models.catalog import Catalog
from nanobatch.models.db import Database
from nanobatch.models.queries import BatchSummary, batch_summaries, find_batch, models_by_batch
from nanobatch.models.status import TaskStatus
from nanobatch.tasks import alerts
from nanobatch.tasks.estimate import human_duration
from nanobatch.tasks.export import reason_counts
from nanobatch.tasks.settings import Settings

EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Snapshot:
    summary: BatchSummary
    failed: dict[str, int]  # error_code → failed tasks
    retrying: dict[str, int]  # error_code → pending tasks waiting out an error
    alerts: list[alerts.Alert] = field(default_factory=list)  # shutdowns, unrecognised 429s, stalled pools
    recovery: Text | None = None  # when the recovery sweep last ran (``status_cmd.recovery_line``)

    @property
    def finished(self) -> bool:
        return self.summary.settled

    @property
    def exit_code(self) -> int:
        counts = self.summary.counts
        return 1 if counts[TaskStatus.FAILED] or counts[TaskStatus.CANCELLED] else 0


def take_snapshot(
    db: Database, name: str, settings: Settings | None = None, catalog: Catalog | None = None
) -> Snapshot | None:
    """The batch now; with ``settings``, also its alerts (``catalog`` for model shutdowns)."""
    with db.session() as session:
        batch = find_batch(session, name)
        if batch is None:
            return None
        warnings = []
        if settings is not None:
            pools = models_by_batch(session, [name]).get(name, [])
            warnings = alerts.collect(session, settings, catalog, [name], pools=pools)
        snapshot = Snapshot(
            summary=batch_summaries(session, name)[0],
            failed=reason_counts(session, batch.id, TaskStatus.FAILED),
            retrying=reason_counts(session, batch.id, TaskStatus.PENDING),
            alerts=warnings,
        )
    if settings is None or snapshot.finished:
        return snapshot
    return replace(snapshot, recovery=recovery_line(settings))


def watch_command(
    batch: str = typer.Argument(..., help="Batch name"),
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between refreshes"),
    once: bool = typer.Option(False, "--once", help="Print one snapshot and exit 0"),
) -> None:
    """Follow a batch live: progress, rate, ETA, cost and failures by reason."""
    settings = load_settings()
    catalog = alerts.catalog_or_none(settings)
    with database(settings) as db:
        snapshot = take_snapshot(db, batch, settings, catalog)
        if snapshot is None:
            raise fail(f"no batch named {batch!r} (see `nanobatch status` for the list)", 1)
        if once:
            console.print(render(snapshot))
            return
        try:
            snapshot = _follow(db, batch, snapshot, interval, settings, catalog)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
    raise typer.Exit(snapshot.exit_code)


def _follow(
    db: Database, name: str, snapshot: Snapshot, interval: float, settings: Settings, catalog: Catalog | None
) -> Snapshot:
    """Refresh until the batch is finished; returns the final snapshot (which stays on screen)."""
    with Live(render(snapshot), console=console, auto_refresh=False) as live:
        while not snapshot.finished:
            time.sleep(interval)  # pacing the refresh, not synchronisation
            snapshot = take_snapshot(db, name, settings, catalog) or snapshot
            live.update(render(snapshot), refresh=True)
    return snapshot


def render(snapshot: Snapshot) -> RenderableType:
    """The whole view as one rich renderable (pure: easy to print once or to update live)."""
    s = snapshot.summary
    parts: list[RenderableType] = [_progress(s), _figures(s)]
    if snapshot.failed:
        parts.append(_reasons("Failed by reason", snapshot.failed, "red"))
    if snapshot.retrying:
        parts.append(_reasons("Retrying after", snapshot.retrying, "yellow"))
    for alert in snapshot.alerts:
        parts.append(Text.assemble((f"⚠ {alert.subject}: ", "bold yellow"), alert.text))
    if snapshot.recovery is not None:
        parts.append(snapshot.recovery)
    state = "finished" if snapshot.finished else s.status
    return Panel(Group(*parts), title=f"[bold]{s.name}[/bold] · {state}", title_align="left", expand=False)


def _progress(s: BatchSummary) -> RenderableType:
    terminal = s.total - s.remaining
    percent = terminal / s.total * 100 if s.total else 100.0
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(s.total, 1), completed=terminal if s.total else 1, width=40),
        Text(f"{terminal:,}/{s.total:,} done ({percent:.0f}%)"),
    )
    return bar


def _figures(s: BatchSummary) -> RenderableType:
    counts = s.counts
    budget = f" of ${s.budget_usd:,.2f}" if s.budget_usd is not None else ""
    grid = Table.grid(padding=(0, 2))
    grid.add_row(
        f"[green]completed {counts[TaskStatus.COMPLETED]:,}[/green]",
        f"[red]failed {counts[TaskStatus.FAILED]:,}[/red]",
        f"[yellow]cancelled {counts[TaskStatus.CANCELLED]:,}[/yellow]",
        f"[blue]processing {counts[TaskStatus.PROCESSING]:,}[/blue]",
        f"pending {counts[TaskStatus.PENDING]:,}",
    )
    grid.add_row(
        f"{s.per_minute:.1f}/min",
        f"ETA {human_duration(s.eta_seconds)}",
        f"cost ${s.cost_usd:,.3f}{budget}",
        f"standard ${s.standard_cost_usd:,.3f}",
        f"lane {s.lane_mix}",
    )
    return grid


def _reasons(title: str, counts: dict[str, int], colour: str) -> RenderableType:
    table = Table(title=title, title_justify="left", show_edge=False, box=None, padding=(0, 2))
    table.add_column("reason", style=colour)
    table.add_column("tasks", justify="right")
    for code, n in counts.items():
        table.add_row(code, f"{n:,}")
    return table
