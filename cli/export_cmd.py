"""``nanobatch export BATCH --format csv|jsonl [--output FILE]``: one row per task, for a shop catalog.

Rows stream from the database to the output, so a 100k-row batch never sits in memory. To a file,
the export is written under a temporary name and renamed at the end: an interrupted export never
leaves a truncated file that looks complete. Progress and the row count go to stderr, so stdout
carries nothing but the data.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TextIO

import typer

from nanobatch.cli.context import database, err_console, load_settings, require_batch
from nanobatch.tasks.export import atomic_text_file, export_batch


class Format(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


def export_command(
    batch: str = typer.Argument(..., help="Batch name"),
    fmt: Format = typer.Option(Format.CSV, "--format", case_sensitive=False, help="csv or jsonl"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to FILE (default: stdout)"),
) -> None:
    """Export every task of a batch (image path, sha256, size, cost, errors, product columns)."""
    settings = load_settings()
    with database(settings) as db, db.session() as session:
        found = require_batch(session, batch)
        with _target(output) as out:
            rows = export_batch(session, found.id, fmt.value, out)
    where = str(output) if output else "stdout"
    err_console.print(f"exported {rows:,} task{'' if rows == 1 else 's'} of {batch} to {where} ({fmt.value})")


@contextlib.contextmanager
def _target(output: Path | None) -> Iterator[TextIO]:
    """stdout, or ``output`` written atomically (it appears only once complete)."""
    if output is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_text_file(output) as handle:
        yield handle
