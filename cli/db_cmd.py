"""``nanobatch db upgrade``: apply Alembic migrations to NANOBATCH_DATABASE_URL."""

from __future__ import annotations

import typer

from nanobatch.cli.context import console, load_settings
from nanobatch.models.db import Database

db_app = typer.Typer(help="Database schema management", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade_command(revision: str = typer.Argument("head", help="Target revision")) -> None:
    """Migrate the schema to REVISION (idempotent; run on every deploy)."""
    settings = load_settings()
    db = Database(settings.database_url)
    try:
        db.upgrade(revision)
    finally:
        db.dispose()
    console.print(f"database at {revision}: {db.engine.url.render_as_string(hide_password=True)}")
