"""``nanobatch demo``: the whole pipeline on a laptop with nothing but Python.

It starts the upstream simulator and an embedded worker in this process, submits the bundled sample
of 20 products (one of them an edit of a bundled photo), shows live progress, and ends with the
status table and where the images are. With ``NANOBATCH_REDIS_URL`` / ``NANOBATCH_DATABASE_URL`` set it
uses those instead of the embedded broker, limiter and SQLite file. It never calls a paid API.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nanobatch.cli.context import console, fail, load_settings, runtime_for, setup_logging
from nanobatch.cli.status_cmd import status_table
from nanobatch.models.queries import BatchSummary, batch_summaries
from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.server import start_simulator
from nanobatch.tasks.celeryapp.embedded import EmbeddedWorker
from nanobatch.tasks.gallery import default_report_path
from nanobatch.tasks.intake import IntakeError, IntakeOptions, read_file
from nanobatch.tasks.producer import BatchOptions, submit
from nanobatch.tasks.runtime import Runtime

SAMPLE_DIR = Path(__file__).with_name("sample")
SAMPLE_FILE = SAMPLE_DIR / "products.csv"
TEMPLATE = "Studio product photo of a {color} {title} made of {material}, on a clean white background"


def demo_command(
    time_scale: float = typer.Option(0.1, "--time-scale", help="Simulated latency 8-20 s times this"),
    concurrency: int = typer.Option(8, "--concurrency", "-c", help="Worker threads"),
    timeout: float = typer.Option(600.0, "--timeout", help="Give up after this many seconds"),
) -> None:
    """Run a 20-product sample batch end-to-end against the built-in simulator."""
    setup_logging("WARNING")
    sim_config = SimulatorConfig(latency=(8.0, 20.0), time_scale=time_scale, seed=7)
    with start_simulator(sim_config, port=0) as sim:
        settings = load_settings(
            provider="gemini",
            provider_base_url=sim.url,
            auth="x-goog-api-key",
            api_version="v1beta",
            concurrency=concurrency,
            api_key=None,
            sweep_interval=2.0,
        )
        console.print(
            f"simulator at {sim.url} (latency 8-20 s x {time_scale}); database {settings.database_url}; "
            f"broker {'embedded (in-process)' if settings.embedded else 'Redis'}"
        )
        runtime = runtime_for(settings)
        runtime.db.upgrade()
        try:
            with EmbeddedWorker(runtime, concurrency=concurrency, sweep_interval=1.0):
                name = _submit_sample(runtime)
                summary = _watch(runtime, name, timeout)
        finally:
            runtime.close()
        stats = sim.stats()
    console.print(status_table([summary]))
    console.print(
        f"images: {default_report_path(settings.output_dir, name).parent}  "
        f"(simulator served {stats.get('images_served', '?')} images, "
        f"{stats.get('rate_limited', 0)} rate-limited)"
    )
    if summary.counts["completed"] != summary.total:
        raise fail(f"{summary.total - summary.counts['completed']} task(s) did not complete", 1)


def _submit_sample(runtime: Runtime) -> str:
    name = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    options = IntakeOptions(model=runtime.settings.default_model, template=TEMPLATE)
    try:
        intake = read_file(SAMPLE_FILE, runtime.catalog, options)
    except IntakeError as exc:  # the bundled sample is broken: a packaging bug
        raise fail(f"bundled sample unreadable: {exc}") from None
    if intake.errors:
        raise fail(f"bundled sample invalid: {intake.errors[0]}")
    report = submit(
        runtime.db,
        runtime.dispatcher,
        intake,
        BatchOptions(name=name),
        intake_options=options,
        source=str(SAMPLE_FILE),
    )
    console.print(f"submitted batch [bold]{name}[/bold]: {report.new} tasks")
    return name


def _watch(runtime: Runtime, name: str, timeout: float) -> BatchSummary:
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    ]
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(name, total=None, detail="")
        while True:
            summary = _summary(runtime, name)
            done = summary.counts["completed"] + summary.counts["failed"] + summary.counts["cancelled"]
            detail = (
                f"failed {summary.counts['failed']}  ${summary.cost_usd:.3f}  {summary.per_minute:.0f}/min"
            )
            progress.update(bar, total=summary.total, completed=done, detail=detail)
            if summary.settled or time.monotonic() > deadline:
                return summary
            time.sleep(0.25)  # a display refresh interval, not synchronisation


def _summary(runtime: Runtime, name: str) -> BatchSummary:
    with runtime.db.session() as session:
        return batch_summaries(session, name)[0]
