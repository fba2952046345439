"""``nanobatch flower``: Flower (workers, queues, task rates) on the nanobatch Celery app, with basic auth.

Flower shows every task's arguments; ours are task ids only (never a prompt or key), but the UI can
also revoke tasks and shut workers down, so it refuses to start without credentials unless
``--no-auth`` says so explicitly. The credentials reach Flower through its own environment variable
``FLOWER_BASIC_AUTH`` set inside this process, never through a command line that ``ps`` would show.
"""

from __future__ import annotations

import os

import typer

from nanobatch.cli.context import err_console, fail, load_settings
from nanobatch.tasks.celeryapp import app as celery_app
from nanobatch.tasks.celeryapp.app import configure_app

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def flower_command(
    port: int = typer.Option(5555, "--port", help="TCP port of the web UI and /api"),
    address: str = typer.Option("127.0.0.1", "--address", help="Interface to listen on (0.0.0.0: all)"),
    no_auth: bool = typer.Option(False, "--no-auth", help="Run WITHOUT authentication (not recommended)"),
    url_prefix: str | None = typer.Option(None, "--url-prefix", help="Serve under /PREFIX (behind a proxy)"),
) -> None:
    """Run Flower on the nanobatch Celery app; credentials from NANOBATCH_FLOWER_BASIC_AUTH=user:password."""
    settings = load_settings()
    if settings.embedded:
        raise fail("flower needs NANOBATCH_REDIS_URL (the embedded broker lives inside one process)", 2)
    credentials = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
    _apply_auth(credentials, no_auth, address)
    configure_app(celery_app, settings)
    argv = ["flower", f"--port={port}", f"--address={address}"]
    if url_prefix:
        argv.append(f"--url_prefix={url_prefix}")
    celery_app.start(argv)


def _apply_auth(credentials: str, no_auth: bool, address: str) -> None:
    """Hand the credentials to Flower via its environment (or, with ``--no-auth``, make sure it has none)."""
    if no_auth:
        os.environ.pop("FLOWER_BASIC_AUTH", None)
        where = "" if address in LOOPBACK else f" and listening on {address}"
        err_console.print(f"[yellow]warning:[/yellow] Flower runs WITHOUT authentication{where}")
        return
    if not credentials:
        raise fail(
            "set NANOBATCH_FLOWER_BASIC_AUTH=user:password (Flower can revoke tasks and stop workers), "
            "or pass --no-auth to run without authentication",
            2,
        )
    problem = credentials_problem(credentials)
    if problem:
        raise fail(f"NANOBATCH_FLOWER_BASIC_AUTH {problem}", 2)
    os.environ["FLOWER_BASIC_AUTH"] = credentials


def credentials_problem(credentials: str) -> str | None:
    """Why ``credentials`` is not Flower's ``user:password[,user2:password2]`` format, or ``None``."""
    for pair in credentials.split(","):
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            return (
                'must be "user:password" (several pairs separated by commas); the password may not hold ","'
            )
    return None
