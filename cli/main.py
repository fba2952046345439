"""The ``nanobatch`` command. Names and flags here are a public interface: extend, never rename."""

from __future__ import annotations

import typer

from nanobatch.cli.batch_cmd import (
    cancel_command,
    pause_command,
    priority_command,
    regenerate_command,
    resume_command,
    retry_command,
)
from nanobatch.cli.db_cmd import db_app
from nanobatch.cli.demo_cmd import demo_command
from nanobatch.cli.export_cmd import export_command
from nanobatch.cli.flower_cmd import flower_command
from nanobatch.cli.limits_cmd import limits_app
from nanobatch.cli.metrics_cmd import metrics_command
from nanobatch.cli.purge_cmd import purge_command
from nanobatch.cli.report_cmd import report_command
from nanobatch.cli.simulator_cmd import simulator_command
from nanobatch.cli.status_cmd import status_command
from nanobatch.cli.submit_cmd import submit_command
from nanobatch.cli.watch_cmd import watch_command
from nanobatch.cli.worker_cmd import beat_command, sweep_command, worker_command

app = typer.Typer(
    name="nanobatch",
    help="Bulk image generation with Gemini image models on Celery, Redis and SQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold an API key
)
app.command("submit")(submit_command)
app.command("worker")(worker_command)
app.command("beat")(beat_command)
app.command("sweep")(sweep_command)
app.command("status")(status_command)
app.command("demo")(demo_command)
app.command("watch")(watch_command)
app.command("retry")(retry_command)
app.command("regenerate")(regenerate_command)
app.command("cancel")(cancel_command)
app.command("pause")(pause_command)
app.command("resume")(resume_command)
app.command("priority")(priority_command)
app.command("export")(export_command)
app.command("report")(report_command)
app.command("flower")(flower_command)
app.command("metrics")(metrics_command)
app.command("simulator")(simulator_command)
app.command("purge")(purge_command)
app.add_typer(db_app, name="db")
app.add_typer(limits_app, name="limits")


def main() -> None:
    app()
