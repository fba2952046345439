"""``nanobatch report BATCH [--output FILE]``: a self-contained HTML gallery of the batch.

Default location ``<output_dir>/<batch>/report.html``, next to the images it shows. The page is
a snapshot: run it again for a batch that is still going.
"""

from __future__ import annotations

from pathlib import Path

import typer

from nanobatch.cli.context import console, database, load_settings, require_batch
from nanobatch.tasks.gallery import MAX_IMAGES, collect, default_report_path, with_thumbnails, write_report


def report_command(
    batch: str = typer.Argument(..., help="Batch name"),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="HTML file to write (default: <output_dir>/<batch>/report.html)"
    ),
    max_images: int = typer.Option(
        MAX_IMAGES, "--max-images", min=0, help="Thumbnails shown (first N completed, by key)"
    ),
) -> None:
    """Write an HTML report: totals, a thumbnail grid and failures grouped by reason."""
    settings = load_settings()
    with database(settings) as db, db.session() as session:
        found = require_batch(session, batch)
        data = collect(session, found, max_images=max_images)
    path = output or default_report_path(settings.output_dir, batch)
    size = write_report(with_thumbnails(data), path)
    shown = f"{len(data.tiles):,} of {data.summary.counts['completed']:,} images"
    console.print(f"Report of [bold]{batch}[/bold] ({shown}, {size / 1e6:.1f} MB): {path.resolve()}")
