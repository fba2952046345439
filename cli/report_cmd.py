"""``nanobatch report BATCH [--output FILE]``: a self-contained HTML gallery of the batch.

Default location ``<output_dir>/<batch>/report.html``, next to the images it shows (with an object
store: ``<batch>-report.html`` here). The page is a snapshot: run it again for a batch that is still
going. It reads the images through the image store, so it works from any host (``--images``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from nanobatch.cli.context import console, database, fail, image_store, load_settings, require_batch
from nanobatch.tasks.gallery import MAX_IMAGES, collect, default_report_path, with_thumbnails, write_report


def report_command(
    batch: str = typer.Argument(..., help="Batch name"),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="HTML file to write (default: <output_dir>/<batch>/report.html)"
    ),
    max_images: int = typer.Option(
        MAX_IMAGES, "--max-images", min=0, help="Thumbnails shown (first N completed, by key)"
    ),
    images: str = typer.Option(
        "embed",
        "--images",
        help="embed: thumbnails inside the page (default); signed: links to signed URLs of the stored images",
    ),
    link_seconds: int = typer.Option(
        7 * 24 * 3600, "--link-seconds", min=1, max=7 * 24 * 3600, help="How long signed links work"
    ),
) -> None:
    """Write an HTML report: totals, a thumbnail grid and failures grouped by reason."""
    if images not in {"embed", "signed"}:
        fail(f"--images must be embed or signed, not {images!r}")
    settings = load_settings()
    store = image_store(settings, check=True)  # a bad store: one line, not a page of missing images
    with database(settings) as db, db.session() as session:
        found = require_batch(session, batch)
        data = collect(session, found, max_images=max_images)
    path = output or default_report_path(store, batch)
    signed = link_seconds if images == "signed" else None
    size = write_report(with_thumbnails(data, store=store, signed_seconds=signed), path)
    shown = f"{len(data.tiles):,} of {data.summary.counts['completed']:,} images"
    console.print(f"Report of [bold]{batch}[/bold] ({shown}, {size / 1e6:.1f} MB): {path.resolve()}")
