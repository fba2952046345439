"""The drop folder: product files left in ``NANOBATCH_INBOX_DIR`` become batches on a beat schedule.

Every ``.csv`` / ``.jsonl`` file directly in the folder is validated as a whole (``tasks.intake``) and
submitted as batch ``<stem>-<YYYYMMDD>`` (``tasks.producer``), then moved to ``done/``; a file with any
invalid row writes nothing and is moved to ``rejected/`` next to ``<name>.errors.txt``, which lists
every problem. Files modified in the last ``settle_seconds`` may still be being copied and are left
for the next run.

Why it is safe to run twice, or to crash half-way: the batch date is the file's modification date
(not the day of the run), so a file that was submitted but not moved before a crash is submitted
again under the same name on any later run, and the producer's ``ON CONFLICT DO NOTHING`` reports
its rows as "already present" instead of creating them twice. An infrastructure failure (database or
broker down) raises and leaves the file where it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from nanobatch.models.catalog import CatalogError
from nanobatch.tasks.intake import IntakeError, IntakeOptions, RowError, read_file
from nanobatch.tasks.producer import BatchOptions, SubmitError, submit
from nanobatch.tasks.runtime import Runtime

log = logging.getLogger("nanobatch.inbox")

SUFFIXES = frozenset({".csv", ".jsonl"})
DONE_DIR = "done"
REJECTED_DIR = "rejected"
#: A file modified more recently than this may still be being written by a copy or an export.
SETTLE_SECONDS = 60.0
#: Batch names are at most 200 characters (``batches.name``); the date suffix needs 9.
MAX_STEM = 180
COUNT_KEYS = ("submitted", "rejected", "waiting", "errors", "new_tasks", "existing_tasks")


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file: ``accepted`` (moved to done/) or not (moved to rejected/)."""

    path: Path
    accepted: bool
    batch: str
    new_tasks: int = 0
    existing_tasks: int = 0
    errors: tuple[str, ...] = ()


def process_inbox(runtime: Runtime, *, settle_seconds: float = SETTLE_SECONDS) -> dict[str, int]:
    """Submit every settled product file in the inbox; returns counts for the task result and logs.

    Keys: ``submitted`` / ``rejected`` (files), ``waiting`` (files left for the next run because
    they changed recently), ``errors`` (files left in place because the database or broker failed;
    logged, retried next run), ``new_tasks`` / ``existing_tasks`` (rows over all submitted files).
    """
    counts = dict.fromkeys(COUNT_KEYS, 0)
    inbox = runtime.settings.inbox_dir
    if inbox is None or not inbox.is_dir():
        log.warning("inbox %s is not a directory; nothing to do", inbox)
        return counts
    cutoff = time.time() - settle_seconds
    for path in candidates(inbox):
        if _mtime(path) > cutoff:
            counts["waiting"] += 1
            continue
        try:
            outcome = submit_file(runtime, path)
            finish(inbox, outcome)
        except Exception:  # one file's infrastructure failure must not block the files after it
            log.exception("inbox: %s left in place; it is tried again on the next run", path.name)
            counts["errors"] += 1
            continue
        counts["submitted" if outcome.accepted else "rejected"] += 1
        counts["new_tasks"] += outcome.new_tasks
        counts["existing_tasks"] += outcome.existing_tasks
    return counts


def candidates(inbox: Path) -> list[Path]:
    """Product files directly in ``inbox`` (not in subfolders, not hidden), in name order."""
    return sorted(
        p
        for p in inbox.iterdir()
        if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
    )


def batch_name(path: Path, timezone: str) -> str:
    """``<stem>-<YYYYMMDD>`` with the file's modification date in ``timezone`` (stable across re-runs)."""
    day = datetime.fromtimestamp(_mtime(path), ZoneInfo(timezone))
    return f"{path.stem[:MAX_STEM]}-{day:%Y%m%d}"


def submit_file(runtime: Runtime, path: Path) -> FileOutcome:
    """Validate and submit one file; row or file problems become a rejection, infrastructure errors raise."""
    settings = runtime.settings
    name = batch_name(path, settings.timezone)
    try:
        options = IntakeOptions(
            model=runtime.catalog.canonical(settings.default_model),
            aspect_ratio=settings.default_aspect_ratio,
            inputs_dir=settings.output_dir,  # input images by URL are kept there
            allow_private_urls=settings.allow_private_urls,
        )
        intake = read_file(path, runtime.catalog, options)
    except (IntakeError, CatalogError) as exc:  # CatalogError: NANOBATCH_DEFAULT_MODEL is unknown
        return FileOutcome(path, False, name, errors=(str(exc),))
    if intake.errors:
        return FileOutcome(path, False, name, errors=tuple(_lines(intake.errors)))
    dispatcher = None if settings.embedded else runtime.dispatcher
    try:
        report = submit(
            runtime.db, dispatcher, intake, BatchOptions(name=name), intake_options=options, source=str(path)
        )
    except (SubmitError, IntakeError) as exc:  # IntakeError: the file changed between the two passes
        return FileOutcome(path, False, name, errors=(str(exc),))
    log.info("inbox: %s → batch %s: %d new, %d already present", path.name, name, report.new, report.existing)
    return FileOutcome(path, True, name, new_tasks=report.new, existing_tasks=report.existing)


def finish(inbox: Path, outcome: FileOutcome) -> Path | None:
    """Move the file to done/ or rejected/ (never overwriting), the errors file written first.

    Returns the new path, or ``None`` when the file vanished meanwhile (another run moved it).
    """
    folder = inbox / (DONE_DIR if outcome.accepted else REJECTED_DIR)
    folder.mkdir(exist_ok=True)
    target = unique_target(folder, outcome.path.name)
    if not outcome.accepted:
        _write_errors(target, outcome)
        log.warning(
            "inbox: %s rejected (%d problem(s)), see %s",
            outcome.path.name,
            len(outcome.errors),
            errors_path(target),
        )
    try:
        outcome.path.rename(target)
    except FileNotFoundError:
        return None
    return target


def unique_target(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/<stem>.<n><suffix>`` when a file of that name is already there."""
    target = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    number = 1
    while target.exists() or errors_path(target).exists():
        target = folder / f"{stem}.{number}{suffix}"
        number += 1
    return target


def errors_path(target: Path) -> Path:
    return target.with_name(target.name + ".errors.txt")


def _write_errors(target: Path, outcome: FileOutcome) -> None:
    header = (
        f"{outcome.path.name}: {len(outcome.errors)} problem(s); nothing was submitted "
        f"(batch {outcome.batch}).\nFix the file and drop it into the inbox again.\n\n"
    )
    errors_path(target).write_text(header + "\n".join(outcome.errors) + "\n", encoding="utf-8")


def _lines(errors: Sequence[RowError]) -> list[str]:
    return [str(error) for error in errors]


def _mtime(path: Path) -> float:
    """Modification time; a file that vanished (moved by a concurrent run) counts as brand new."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
