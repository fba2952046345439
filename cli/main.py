"""The ``nanobatch`` command. Names and flags here are a public interface: extend, never rename."""

from __future__ import annotations

import typer

from cli.db_cmd import db_app
from cli.demo_cmd import demo_command
from cli.limits_cmd import limits_app
from cli.simulator_cmd import simulator_command
from cli.status_cmd import status_command
from cli.submit_cmd import submit_command
from cli.worker_cmd import beat_command, sweep_command, worker_command

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
app.command("simulator")(simulator_command)
app.add_typer(db_app, name="db")
app.add_typer(limits_app, name="limits")


def main() -> None:
    app()
