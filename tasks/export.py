"""Reading a batch back out for operators: one flat row per task (CSV / JSONL) and failure counts.

The export is what a shop team imports into its catalog, so each row carries where the image is
(``path``: the local path, or the object's URI on an object store; ``image_uri``: the stored URI as
recorded; ``signed_url``: with ``--signed-urls SECONDS``, an https link that works without
credentials until it expires) and its facts (sha256, dimensions, type, size, cost) plus the
product's own extra columns from the submitted file. Rows stream from the database in chunks
(``yield_per``), so a 100k-row batch never sits in memory. Only task columns are read: the API key
lives in the environment and never in the database, so it cannot leak through an export.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nanobatch.models.status import TaskStatus
from nanobatch.models.tables import GenerationTask
from nanobatch.workers.storage import local_path

ExportFormat = Literal["csv", "jsonl"]

#: The fixed columns, in order (a public interface: extend at the end, never rename).
FIELDS: tuple[str, ...] = (
    "key",
    "status",
    "path",
    "sha256",
    "width",
    "height",
    "mime_type",
    "bytes",
    "cost_usd",
    "model",
    "image_size",
    "aspect_ratio",
    "error_code",
    "error_message",
    "attempts",
    "prompt",
    "image_uri",
    "signed_url",
    "lane",  # the lane the task ran in (issue 16)
    "standard_cost_usd",  # what the same call costs at the standard price
)
#: Prefix for a product column whose name clashes with a fixed one (e.g. a ``status`` column).
CLASH_PREFIX = "extra_"
CHUNK = 1000

_COLUMNS = (
    GenerationTask.key,
    GenerationTask.status,
    GenerationTask.result_uri,
    GenerationTask.result_sha256,
    GenerationTask.width,
    GenerationTask.height,
    GenerationTask.mime_type,
    GenerationTask.bytes,
    GenerationTask.cost_usd,
    GenerationTask.model,
    GenerationTask.model_used,
    GenerationTask.image_size,
    GenerationTask.aspect_ratio,
    GenerationTask.error_code,
    GenerationTask.error_message,
    GenerationTask.attempts,
    GenerationTask.prompt,
    GenerationTask.extra,
    GenerationTask.lane,
    GenerationTask.standard_cost_usd,
)


def extra_name(name: str) -> str:
    """The export column of a product column: its own name unless a fixed column already has it."""
    return f"{CLASH_PREFIX}{name}" if name in FIELDS else name


Signer = Callable[[str | None], str | None]


def export_row(task: Any, signer: Signer | None = None) -> dict[str, Any]:
    """One task (a row of ``_COLUMNS`` or a ``GenerationTask``) as a flat export dict; ``signer``
    turns a stored URI into a signed URL (``None`` when there is no image)."""
    row: dict[str, Any] = {
        "key": task.key,
        "status": task.status,
        "path": local_path(task.result_uri),
        "sha256": task.result_sha256,
        "width": task.width,
        "height": task.height,
        "mime_type": task.mime_type,
        "bytes": task.bytes,
        "cost_usd": task.cost_usd,
        "model": task.model_used or task.model,  # the model that made the image, after any fallback
        "image_size": task.image_size,
        "aspect_ratio": task.aspect_ratio,
        "error_code": task.error_code,
        "error_message": task.error_message,
        "attempts": task.attempts,
        "prompt": task.prompt,
        "image_uri": task.result_uri,
        "signed_url": signer(task.result_uri) if signer is not None and task.result_uri else None,
        "lane": task.lane,
        "standard_cost_usd": task.standard_cost_usd,
    }
    for name, value in (task.extra or {}).items():
        row[extra_name(name)] = value
    return row


def stream_rows(
    session: Session, batch_id: str, *, chunk: int = CHUNK, signer: Signer | None = None
) -> Iterator[dict[str, Any]]:
    """Every task of the batch as an export dict, in key order, fetched ``chunk`` rows at a time."""
    stmt = (
        select(*_COLUMNS)
        .where(GenerationTask.batch_id == batch_id)
        .order_by(GenerationTask.key)
        .execution_options(yield_per=chunk)
    )
    for task in session.execute(stmt):
        yield export_row(task, signer)


def extra_columns(session: Session, batch_id: str, *, chunk: int = CHUNK) -> list[str]:
    """Export names of the batch's product columns, first-seen order (a CSV header needs them first).

    A separate streaming pass over the ``extra`` column only: bounded memory, whatever the batch size.
    """
    stmt = (
        select(GenerationTask.extra)
        .where(GenerationTask.batch_id == batch_id)
        .order_by(GenerationTask.key)
        .execution_options(yield_per=chunk)
    )
    names: dict[str, None] = {}
    for extra in session.scalars(stmt):
        names.update(dict.fromkeys(extra_name(name) for name in extra or {}))
    return list(names)


#: A cell starting with one of these is run as a formula by spreadsheet tools (OWASP "CSV Injection":
#: ``=``, ``+``, ``-``, ``@``, tab, carriage return).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def neutralise(text: str) -> str:
    """``text`` made inert for spreadsheets: a leading ``'`` when it could start a formula.

    Plain numbers (``-5``, ``+1.5``) are left alone: no spreadsheet runs them, and prices stay numbers.
    """
    if text.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def _csv_value(value: Any) -> Any:
    """Scalars as they are; nested JSONL values (lists, objects) as JSON text; ``None`` as empty.

    Text that a spreadsheet would run as a formula is neutralised (CSV only: JSONL stays exact).
    """
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return neutralise(json.dumps(value, ensure_ascii=False))
    if isinstance(value, str):
        return neutralise(value)
    return value


def write_csv(rows: Iterable[dict[str, Any]], extras: Sequence[str], out: TextIO) -> int:
    """Write a header (fixed columns, then ``extras``) and the rows; returns the number of rows."""
    writer = csv.writer(out)
    names = [*FIELDS, *extras]
    writer.writerow([neutralise(name) for name in names])  # product column names are customer text too
    count = 0
    for row in rows:
        writer.writerow([_csv_value(row.get(name)) for name in names])
        count += 1
    return count


def write_jsonl(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    """One JSON object per line, with the same flat keys as the CSV columns; returns the row count."""
    count = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        count += 1
    return count


def export_batch(
    session: Session, batch_id: str, fmt: ExportFormat, out: TextIO, *, signer: Signer | None = None
) -> int:
    """Stream every task of the batch to ``out`` as ``fmt``; returns the number of rows written."""
    if fmt == "csv":
        return write_csv(stream_rows(session, batch_id, signer=signer), extra_columns(session, batch_id), out)
    if fmt == "jsonl":
        return write_jsonl(stream_rows(session, batch_id, signer=signer), out)
    raise ValueError(f"unknown export format {fmt!r} (csv or jsonl)")


def reason_counts(session: Session, batch_id: str, status: TaskStatus = TaskStatus.FAILED) -> dict[str, int]:
    """How many tasks in ``status`` carry each ``error_code``, most frequent first.

    For ``failed`` that is why the batch lost them; for ``pending`` it is what they are waiting out
    (a transient error being retried, a lost lease).
    """
    conditions = [GenerationTask.batch_id == batch_id, GenerationTask.status == status.value]
    if status != TaskStatus.FAILED:  # a fresh pending row has no reason to report
        conditions.append(GenerationTask.error_code.is_not(None))
    rows = session.execute(
        select(func.coalesce(GenerationTask.error_code, "unknown"), func.count())
        .where(*conditions)
        .group_by(GenerationTask.error_code)
    )
    counts = {str(code): int(n) for code, n in rows}
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


@contextlib.contextmanager
def atomic_text_file(path: Path) -> Iterator[TextIO]:
    """Write ``path`` under a temporary name and rename it into place only when the block succeeds.

    An interrupted export or report never leaves a truncated file that looks complete. The
    temporary file is created with ``open(…, "x")`` rather than ``mkstemp`` so the result gets the
    user's normal permissions (umask), not 0600: reports and exports are meant to be shared.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("x", encoding="utf-8", newline="") as handle:  # csv writes its own line ends
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
