"""From what a user asked for (CLI flags or Python arguments) to validated rows and batch options.

The CLI's ``submit`` and :meth:`nanobatch.Client.submit` both go through here and then through
:func:`nanobatch.tasks.producer.submit`, so a row is validated by one set of rules whichever door
it came in by. Nothing here prints or exits: problems are :class:`IntakeError` (the input as a
whole), :class:`RowError` values (single rows) or :class:`SubmitError` (the batch options).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nanobatch.models.catalog import Catalog, CatalogError
from nanobatch.models.schedule import next_occurrence, parse_window
from nanobatch.tasks.intake import IntakeError, IntakeOptions, IntakeResult, read_file, read_rows
from nanobatch.tasks.producer import BatchOptions, SubmitError
from nanobatch.tasks.settings import Settings

#: A product file, or rows as mappings (column → value).
Source = str | Path | Iterable[Mapping[str, Any]]


@dataclass(frozen=True)
class SubmitChoices:
    """Everything a submitter may choose besides the rows; ``None`` means the settings' default."""

    model: str | None = None
    size: str | None = None
    aspect_ratio: str | None = None
    template: str | None = None
    output_format: str = "png"
    images_dir: Path | None = None
    budget_usd: float | None = None
    reuse: bool = False
    at: str | None = None
    window: str | None = None
    allow_retired_model: bool = False  # submit even a model past its catalog shutdown date
    key: str | None = (
        None  # the key column (--key); None: the first of key, sku, SKU, Variant SKU, id, Handle
    )
    preset: str | None = None  # shopify | woocommerce | merchant
    per: str = "variant"  # with a preset: one image per variant or per product
    update: bool = False  # replace rows whose content changed (submit --update)


def intake_options(
    choices: SubmitChoices, catalog: Catalog, settings: Settings, *, dry_run: bool = False
) -> IntakeOptions:
    """The per-row defaults and rules; :class:`IntakeError` for an unknown default model, or one the
    upstream has shut down (naming its replacement) unless ``allow_retired_model``.

    URL input images are stored under the output directory (``dry_run``: fetched and checked only).
    """
    name = choices.model or settings.default_model
    try:
        model = catalog.canonical(name)
    except CatalogError as exc:
        raise IntakeError(str(exc)) from None
    retired = None if choices.allow_retired_model else catalog.retirement(name)
    if retired:
        raise IntakeError(retired)
    return IntakeOptions(
        model=model,
        aspect_ratio=choices.aspect_ratio or settings.default_aspect_ratio,
        image_size=choices.size,
        output_format=choices.output_format.lower(),
        template=choices.template,
        images_dir=choices.images_dir,
        allow_retired_model=choices.allow_retired_model,
        key_column=choices.key,
        preset=choices.preset.lower() if choices.preset else None,
        per=choices.per.lower(),
        inputs_dir=settings.output_dir,
        allow_private_urls=settings.allow_private_urls,
        store_inputs=not dry_run,
        aspect_from_flag=choices.aspect_ratio is not None,
    )


def read_source(source: Source, catalog: Catalog, options: IntakeOptions) -> IntakeResult:
    """Validate a file (CSV/JSONL) or in-memory rows; relative image paths resolve against the
    file's folder, or the current directory for rows."""
    if isinstance(source, str | Path):
        return read_file(Path(source), catalog, options)
    return read_rows(source, catalog, options, base_dir=Path.cwd())


def batch_options(name: str, choices: SubmitChoices, settings: Settings) -> BatchOptions:
    """The batch's own options; :class:`SubmitError` for a bad budget, start time or window."""
    if not name or not name.strip():
        raise SubmitError("a batch needs a name")
    try:
        scheduled: datetime | None = next_occurrence(choices.at, settings.timezone) if choices.at else None
        window = parse_window(choices.window) if choices.window else None
    except ValueError as exc:
        raise SubmitError(str(exc)) from None
    return BatchOptions(
        name=name,
        budget_usd=choices.budget_usd,
        reuse=choices.reuse,
        scheduled_for=scheduled,
        window=window,
        window_tz=settings.timezone,
    )
