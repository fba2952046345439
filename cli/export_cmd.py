"""``nanobatch export BATCH --format csv|jsonl [--output FILE]``: one row per task, for a shop catalog.

Rows stream from the database to the output, so a 100k-row batch never sits in memory. To a file,
the export is written under a temporary name and renamed at the end: an interrupted export never
leaves a truncated file that looks complete. Progress and the row count go to stderr, so stdout
carries nothing but the data.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TextIO

import typer

from nanobatch.cli.context import database, err_console, fail, image_store, load_settings, require_batch
from nanobatch.tasks.export import atomic_text_file, export_batch
from nanobatch.workers.store import StorageError, Store


def sign_uri(store: Store, seconds: int, uri: str | None) -> str | None:
    """A signed URL of a stored result (``None`` for a result outside the store)."""
    key = store.key_of(uri) if uri else None
    if key is None:
        return None
    try:
        return store.sign(key, seconds)
    except StorageError as exc:
        raise fail(f"cannot sign {uri}: {exc}", 1) from None


class Format(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


def export_command(
    batch: str = typer.Argument(..., help="Batch name"),
    fmt: Format = typer.Option(Format.CSV, "--format", case_sensitive=False, help="csv or jsonl"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to FILE (default: stdout)"),
    signed_urls: int | None = typer.Option(
        None,
        "--signed-urls",
        min=1,
        max=7 * 24 * 3600,
        metavar="SECONDS",
        help="Fill signed_url with an https link to each image, valid SECONDS (object stores)",
    ),
) -> None:
    """Export every task of a batch (image path and URI, sha256, size, cost, errors, product columns)."""
    settings = load_settings()
    signer = None
    if signed_urls is not None:
        store = image_store(settings, check=True)
        if store.is_local:
            raise fail("--signed-urls needs an object store (NANOBATCH_OUTPUT_DIR=s3://…, gs://…, az://…)", 2)
        signer = functools.partial(sign_uri, store, signed_urls)
    with database(settings) as db, db.session() as session:
        found = require_batch(session, batch)
        with _target(output) as out:
            rows = export_batch(session, found.id, fmt.value, out, signer=signer)
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
