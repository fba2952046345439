"""``nanobatch purge BATCH --images [--yes]``: delete a batch's images from the image store.

Works on every backend (a local folder or a bucket: everything under the batch's prefix goes,
published results and any staged claim images). Rows stay: they are the record of what was generated
and paid (export still lists them, with URIs that no longer exist). Input images are content-addressed
and shared between batches (``inputs/``), so they are kept. Refused while the batch still has pending
or processing tasks: a worker could be writing into the prefix. Asks for confirmation unless ``--yes``.
"""

from __future__ import annotations

import sys

import typer

from nanobatch.cli.context import console, database, fail, image_store, load_settings, require_batch
from nanobatch.models.queries import batch_summaries
from nanobatch.workers.storage import batch_prefix
from nanobatch.workers.store import StorageError


def purge_command(
    batch: str = typer.Argument(..., help="Batch name"),
    images: bool = typer.Option(False, "--images", help="Delete the batch's images from the image store"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (scripts)"),
) -> None:
    """Delete a batch's images from the image store (local folder or bucket)."""
    if not images:
        raise fail("say what to purge: --images (the batch's images in the image store)", 2)
    settings = load_settings()
    store = image_store(settings, check=True)
    with database(settings) as db, db.session() as session:
        require_batch(session, batch)
        counts = batch_summaries(session, batch)[0].counts
    active = counts.get("pending", 0) + counts.get("processing", 0)
    if active:
        raise fail(f"batch {batch} still has {active:,} pending or processing tasks; cancel it or wait", 1)
    prefix = batch_prefix(batch)
    try:
        keys = store.list(prefix)
    except StorageError as exc:
        raise fail(str(exc), 1) from None
    if not keys:
        console.print(f"No images of batch [bold]{batch}[/bold] in {store.location}.")
        return
    where = f"{store.location}/{prefix}"
    if not yes:
        if not sys.stdin.isatty():
            raise fail(f"would delete {len(keys):,} objects under {where}; add --yes to confirm", 1)
        if not typer.confirm(f"Delete {len(keys):,} objects under {where}?", default=False):
            raise typer.Exit(1)
    try:
        removed = store.delete_prefix(prefix)
    except StorageError as exc:
        raise fail(f"{exc} (run purge again to finish)", 1) from None
    console.print(f"Deleted {removed:,} objects of batch [bold]{batch}[/bold] under {where}.")
