"""What every CLI command needs: settings, a console, and a runtime built the same way each time.

The CLI is the only layer (with the Celery app) that reads the environment; it builds one
:class:`Settings` and hands values inward.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.orm import Session

from nanobatch.models.db import Database
from nanobatch.models.tables import Batch
from nanobatch.tasks import operations
from nanobatch.tasks.celeryapp.runtime import connect
from nanobatch.tasks.runtime import Runtime
from nanobatch.tasks.settings import Settings
from nanobatch.workers.store import Store, StoreConfigError, open_store

# Piped output (CI logs, `| tee`) gets a wide console so tables are not squeezed to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def load_settings(**overrides: object) -> Settings:
    """Settings from env/TOML, or a clear message and exit code 2 when they are invalid."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            name = "NANOBATCH_" + "_".join(str(part) for part in error["loc"][:1]).upper()
            where = ".".join(str(part) for part in error["loc"][1:])
            err_console.print(
                f"[red]configuration error:[/red] {name}{'.' + where if where else ''}: {error['msg']} "
                f"(got {error.get('input')!r})",
                highlight=False,
            )
        raise typer.Exit(2) from None
    except ValueError as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def image_store(settings: Settings, *, check: bool = False) -> Store:
    """The image store ``NANOBATCH_OUTPUT_DIR`` names; exit 2 with one line when it is unusable
    (unknown scheme, missing bucket, refused credentials, unreachable endpoint: ``check`` contacts it)."""
    try:
        store = open_store(settings.output_dir)
        if check:
            store.check()
    except StoreConfigError as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    return store


def runtime_for(settings: Settings) -> Runtime:
    """A runtime on ``settings``, with the Celery app pointed at the same broker."""
    return connect(settings, migrate=False)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per upstream call is noise at info level (and URLs are not ours to print).
    logging.getLogger("httpx").setLevel(logging.WARNING)


@contextmanager
def database(settings: Settings) -> Iterator[Database]:
    """The settings' database, migrated (like ``status``: a fresh SQLite file answers "no batch")."""
    db = Database(settings.database_url)
    try:
        db.upgrade()
        yield db
    finally:
        db.dispose()


@contextmanager
def runtime(settings: Settings) -> Iterator[Runtime]:
    """A full runtime (database + Redis + Celery producer) for the actions that publish messages."""
    rt = runtime_for(settings)
    try:
        rt.db.upgrade()
        yield rt
    finally:
        rt.close()


def require_batch(session: Session, name: str) -> Batch:
    """The batch called ``name``, or exit 1 with a clear message."""
    try:
        return operations.require_batch(session, name)
    except operations.OperationError as exc:
        raise fail(str(exc), 1) from None
