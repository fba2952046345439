"""Reading and validating a product file (CSV/TSV or JSONL) into task specs, reporting every bad row.

A customer's export is messy: BOMs, semicolons from a European Excel, stray quotes, Latin-1 bytes,
duplicate SKUs, empty prompts, HTML descriptions, variant rows. The whole file is read and every
problem is collected with its line number, field and reason, so one run of ``submit`` shows them
all; nothing is written unless the caller accepts the good rows (``--skip-invalid``).

Memory does not grow with the file: :func:`read_file` is a first, validating pass that keeps only
counts, the errors (the first :data:`MAX_ERRORS_KEPT`), five sample prompts and a 128-bit hash of
each key (for duplicates); :meth:`IntakeResult.iter_tasks` is the second pass, which reads the file again and
yields the valid rows for the producer to insert chunk by chunk. (Rows given as Python mappings are
already in memory and are kept as specs.)

What a file may be (docs: README "Input files" and the sections after it):

* delimiter ``,`` ``;`` or tab, sniffed from the header (or an Excel ``sep=;`` first line); a
  UTF-8 BOM is ignored;
* the key column is ``--key COLUMN``, else the first present of :data:`KEY_CANDIDATES`;
* prompts come from a ``prompt`` column or a template (:mod:`nanobatch.tasks.templates`) that may
  use any column by its name as written or normalised;
* a preset (:mod:`nanobatch.tasks.presets`) reads a Shopify, WooCommerce or Merchant Center export;
* ``input_images`` are local files (inside the allowed folder) or ``https://`` URLs, fetched once
  and stored content-addressed (:mod:`nanobatch.tasks.inputs`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nanobatch.models.catalog import Catalog, CatalogError, ModelSpec
from nanobatch.tasks import presets
from nanobatch.tasks.inputs import (
    OBJECT_STORE_MESSAGE,
    Fetcher,
    FetchError,
    is_object_store,
    is_url,
    put_input,
)
from nanobatch.tasks.inputs import check_image as check_fetched_image
from nanobatch.tasks.templates import Columns, RowValueError, Template, TemplateError, columns_text
from nanobatch.workers.storage import as_store
from nanobatch.workers.store import StorageError, Store

MAX_KEY_LENGTH = 200
MAX_PROMPT_CHARS = 32_000
MAX_INPUT_IMAGE_BYTES = 20 * 1024 * 1024
MAX_FIELD_BYTES = 1024 * 1024  # one CSV cell; larger is a broken file, not a product
MAX_ERRORS_KEPT = 1000  # row errors kept for the report; the rest are counted
MAX_URLS_COUNTED = 10_000  # distinct input-image URLs whose rows are counted for --dry-run
SAMPLES = 5  # rendered prompts kept for --dry-run
#: Characters no text value may hold: C0 controls (NUL included) except tab, newline and carriage
#: return, DEL, C1 controls, and lone surrogates. PostgreSQL cannot store NUL in text at all (one such
#: byte used to fail the whole submit); the others garble logs, exports and spreadsheets.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
#: Keys (file names, export rows, CLI arguments) may not even hold tab or a line break.
_KEY_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
INPUT_IMAGE_SEPARATOR = "|"
KNOWN_COLUMNS = {"key", "prompt", "model", "image_size", "aspect_ratio", "input_images", "output_format"}
#: Key columns tried in order when ``--key`` is not given (as written in the header).
KEY_CANDIDATES = ("key", "sku", "SKU", "Variant SKU", "id", "Handle")
DELIMITERS = (",", ";", "\t")
OUTPUT_FORMATS = {"png", "jpeg", "jpg"}
#: The flag whose default a row used, by column (errors caused by a flag are reported once).
OPTION_FLAGS = {"image_size": "--size", "aspect_ratio": "--aspect", "model": "--model"}
#: How the key is chosen under each preset (shown by ``submit`` and returned by the API).
PRESET_KEYS = {
    ("shopify", "variant"): "Variant SKU (Handle-options when empty)",
    ("shopify", "product"): "Handle",
    ("woocommerce", "variant"): "SKU (id-ID when empty)",
    ("woocommerce", "product"): "SKU (id-ID when empty)",
    ("merchant", "variant"): "id",
    ("merchant", "product"): "item_group_id (id when empty)",
}


class IntakeError(ValueError):
    """The file as a whole cannot be read (missing, empty, not CSV/JSONL, bad template)."""


@dataclass(frozen=True)
class RowError:
    line: int  # 0: not one row's fault (a command-line option, a template), see ``field``
    field: str
    reason: str

    def __str__(self) -> str:
        if self.line == 0:
            return f"{self.field}: {self.reason}"
        return f"line {self.line}: {self.field}: {self.reason}"


@dataclass(frozen=True)
class TaskSpec:
    """One validated row, ready to become a ``GenerationTask``."""

    line: int
    key: str
    prompt: str
    model: str  # canonical
    image_size: str | None
    aspect_ratio: str
    output_format: str
    input_images: tuple[str, ...]
    content_hash: str
    extra: dict[str, Any]
    #: The folder input images had to lie in, and each one's SHA-256: the worker re-checks both.
    input_root: str | None = None
    input_sha256: tuple[str, ...] = ()


@dataclass
class IntakeResult:
    """What validation found. ``errors`` holds the first :data:`MAX_ERRORS_KEPT` problems and
    ``error_count`` all of them; ``valid`` rows come back from :meth:`iter_tasks`."""

    errors: list[RowError] = field(default_factory=list)
    rows_read: int = 0
    valid: int = 0
    ignored: int = 0  # rows a preset skips (image-only rows, parents or variants per --per)
    error_count: int = 0
    key_column: str | None = None
    delimiter: str | None = None
    samples: list[tuple[str, str]] = field(default_factory=list)  # (key, prompt) of the first rows
    url_rows: Counter[str] = field(default_factory=Counter)  # rows per input-image URL
    option_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    _kept: list[TaskSpec] | None = None
    _replay: Callable[[], Iterator[TaskSpec]] | None = None

    def add_error(self, error: RowError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(error)

    def add_option_error(self, flag: str, reason: str) -> None:
        self.option_errors[(flag, reason)] += 1

    def accept(self, spec: TaskSpec, *, keep: bool) -> None:
        self.valid += 1
        if len(self.samples) < SAMPLES:
            self.samples.append((spec.key, spec.prompt))
        if keep:
            if self._kept is None:
                self._kept = []
            self._kept.append(spec)

    def count_url(self, url: str) -> None:
        if url in self.url_rows or len(self.url_rows) < MAX_URLS_COUNTED:
            self.url_rows[url] += 1

    def add_duplicates(self, duplicates: list[tuple[int, str]], first_lines: dict[str, int]) -> None:
        """Duplicate-key errors found by a pass that kept only key hashes (already counted)."""
        for line, key in duplicates:
            first = first_lines.get(key)
            where = f"first on line {first}" if first else "also on an earlier line"
            self.errors.append(RowError(line, "key", f"duplicate key {key!r} ({where})"))
        self.errors.sort(key=lambda error: error.line)

    def finish(self) -> None:
        """Option errors become one error each (not one per row), listed first."""
        reported = [
            RowError(0, flag, f"{reason} ({n:,} row{'' if n == 1 else 's'})")
            for (flag, reason), n in self.option_errors.items()
        ]
        self.error_count += len(reported)
        self.errors[:0] = reported
        del self.errors[MAX_ERRORS_KEPT:]

    def iter_tasks(self) -> Iterator[TaskSpec]:
        """The valid rows, in file order (a second pass over a file: memory stays flat)."""
        if self._replay is not None:
            return self._replay()
        return iter(self._kept or ())

    @property
    def tasks(self) -> list[TaskSpec]:
        """Every valid row as a list (convenient for small inputs; :meth:`iter_tasks` streams)."""
        return list(self.iter_tasks())


@dataclass(frozen=True)
class IntakeOptions:
    """Per-file defaults and rules (from the CLI flags)."""

    model: str
    aspect_ratio: str = "1:1"
    image_size: str | None = None
    output_format: str = "png"
    template: str | None = None
    images_dir: Path | None = None  # input images must resolve inside this (default: the file's dir)
    allow_retired_model: bool = False  # accept models past their catalog shutdown date
    today: date | None = None  # the day shutdown dates are compared with (default: today, UTC)

    key_column: str | None = None  # --key; None: the first of KEY_CANDIDATES (or the preset's)
    preset: str | None = None  # shopify | woocommerce | merchant
    per: str = "variant"  # with a preset: one image per "variant" or per "product"
    # The image store (the output dir or bucket) where URL inputs are kept, and local input files too
    # when it is an object store (workers on other hosts read them there); None: URLs refused.
    inputs_dir: Store | Path | str | None = None
    allow_private_urls: bool = False
    store_inputs: bool = True  # False (dry run): fetch and check URLs, store nothing
    aspect_from_flag: bool = True  # whether aspect_ratio is the user's --aspect (else a setting)


class ProductRow(BaseModel):
    """The columns nanobatch understands; other columns are kept as ``extra`` for templates/export."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    key: str = Field(min_length=1, max_length=MAX_KEY_LENGTH)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str
    image_size: str | None = None
    aspect_ratio: str
    output_format: str = "png"
    input_images: list[str] = []

    @field_validator("key")
    @classmethod
    def _printable_key(cls, value: str) -> str:
        if (found := _KEY_CONTROL.search(value)) is not None:
            raise ValueError(f"key must not contain control characters (found {_describe(found.group())})")
        return value

    @field_validator("output_format")
    @classmethod
    def _format(cls, value: str) -> str:
        value = value.lower()
        if value not in OUTPUT_FORMATS:
            raise ValueError("output_format must be png or jpeg")
        return "jpeg" if value == "jpg" else value

    @field_validator("input_images", mode="before")
    @classmethod
    def _split_images(cls, value: Any) -> Any:
        if value is None or value == "":
            return []
        if isinstance(value, str):
            return [part.strip() for part in value.split(INPUT_IMAGE_SEPARATOR) if part.strip()]
        return value


def _describe(char: str) -> str:
    return "a NUL byte" if char == "\x00" else f"U+{ord(char):04X}"


def text_problems(values: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, reason) for every text value (column names too, nested JSON too) holding a forbidden
    character; tab, newline and carriage return are allowed (multi-line prompts are normal)."""
    for name, value in values.items():
        for where, text in _texts(str(name), value):
            if (found := _CONTROL.search(text)) is not None:
                shown = _KEY_CONTROL.sub("?", where)  # the report itself stays printable
                yield shown, f"contains {_describe(found.group())}; control characters are not allowed"
                break


def _texts(where: str, value: Any) -> Iterator[tuple[str, str]]:
    yield where, where
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(f"{where}.{key}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _texts(f"{where}[{index}]", item)


# --- entry points ----------------------------------------------------------------------------------


def read_file(path: Path, catalog: Catalog, options: IntakeOptions) -> IntakeResult:
    """Validate every row of ``path``; raises :class:`IntakeError` only for file-level problems.

    The result keeps no rows: :meth:`IntakeResult.iter_tasks` reads the file again.
    """
    if not path.is_file():
        raise IntakeError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in {".xlsx", ".xls", ".xlsm", ".ods", ".numbers"}:
        raise IntakeError(f"{path}: an Excel workbook; save it as CSV UTF-8 (File → Save As) and submit that")
    if suffix not in {".csv", ".tsv", ".txt", ".jsonl", ".ndjson"}:
        raise IntakeError(f"{path}: expected a .csv, .tsv or .jsonl file")
    _check_options(options)
    stamp = _stamp(path)
    result = IntakeResult()
    fetcher = _fetcher(options)
    validator = _RowValidator(catalog, options, path.parent, None, fetcher)
    for spec in _specs(path, options, result, validator):
        result.accept(spec, keep=False)
    if result.rows_read == 0:
        raise IntakeError(f"{path}: the file has no rows")
    if validator.duplicates:
        # Rare (an error path): one more pass, remembering only the duplicated keys' first lines.
        locate = validator.fresh(first_lines={key: 0 for _, key in validator.duplicates})
        for _ in _specs(path, options, IntakeResult(), locate):
            pass
        result.add_duplicates(validator.duplicates, locate.first_lines or {})
    result.finish()

    def replay() -> Iterator[TaskSpec]:
        if _stamp(path) != stamp:
            raise IntakeError(f"{path}: the file changed while it was being submitted; submit it again")
        yielded = 0
        for spec in _specs(path, options, IntakeResult(), validator.fresh(replaying=True)):
            yielded += 1
            yield spec
        fetcher.close()
        if yielded != result.valid or _stamp(path) != stamp:
            raise IntakeError(f"{path}: the file changed while it was being submitted; submit it again")

    result._replay = replay
    fetcher.close()
    return result


def read_rows(
    rows: Iterable[Mapping[str, Any]], catalog: Catalog, options: IntakeOptions, *, base_dir: Path
) -> IntakeResult:
    """Validate rows given as mappings (the Python API) by the same rules as a file's rows.

    ``line`` in each :class:`RowError` is the row's 1-based position; relative input image paths
    resolve against ``base_dir``.
    """
    _check_options(options)
    result = IntakeResult()
    fetcher = _fetcher(options)
    template = _template(options, None)
    validator = _RowValidator(catalog, options, base_dir, template, fetcher)
    source: list[tuple[int, dict[str, Any], str | None]] = []
    for line, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            source.append((line, {}, "each row must be a mapping of column to value"))
            continue
        source.append((line, {str(k): v for k, v in row.items() if v not in ("", None)}, None))
    seen_columns: set[str] = set()

    def run(validator: _RowValidator, result: IntakeResult) -> None:
        key_column = options.key_column
        for line, values, problem in _presetted(options, iter(source)):
            result.rows_read += 1
            if values is None:
                result.ignored += 1
                continue
            if problem is not None:
                result.add_error(RowError(line, "-", problem))
                continue
            if key_column is None:
                key_column = _pick_key(list(values), options)
                result.key_column = key_column
            seen_columns.update(values)
            spec = validator.check(line, values, key_column, result)
            if spec is not None:
                result.accept(spec, keep=not validator.replaying)

    try:
        run(validator, result)
        if validator.duplicates:
            locate = validator.fresh(first_lines={key: 0 for _, key in validator.duplicates})
            run(locate, IntakeResult())
            result.add_duplicates(validator.duplicates, locate.first_lines or {})
    except TemplateError as exc:
        raise IntakeError(str(exc)) from None
    finally:
        fetcher.close()
    if result.rows_read == 0:
        raise IntakeError("no rows to submit")
    _check_template_columns(template, seen_columns, result)
    result.finish()
    return result


# --- the pass over a file --------------------------------------------------------------------------

Row = tuple[int, dict[str, Any], str | None]  # (line, values, file-level problem of this row)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _fetcher(options: IntakeOptions) -> Fetcher:
    return Fetcher(
        options.inputs_dir or Path("."),
        allow_private=options.allow_private_urls,
        store=options.store_inputs and options.inputs_dir is not None,
    )


def _check_options(options: IntakeOptions) -> None:
    """Problems with the options themselves: one error, before any row."""
    if options.output_format.lower() not in OUTPUT_FORMATS:
        raise IntakeError(f"--format {options.output_format!r}: must be png or jpeg")
    if options.preset is not None and options.preset not in presets.PRESETS:
        raise IntakeError(f"--preset {options.preset!r}: choose one of {', '.join(presets.PRESETS)}")
    if options.per not in ("product", "variant"):
        raise IntakeError(f"--per {options.per!r}: choose product or variant")


def _specs(
    path: Path, options: IntakeOptions, result: IntakeResult, validator: _RowValidator
) -> Iterator[TaskSpec]:
    """Every valid row of the file as a spec; errors and counts go to ``result``."""
    with path.open("rb") as handle:
        if path.suffix.lower() in {".jsonl", ".ndjson"}:
            header: list[str] | None = None
            rows = _jsonl_rows(handle)
        else:
            header, rows = _csv_rows(handle, result)
        key_column = _header_key(header, options) if header is not None else options.key_column
        if header is not None and options.preset is not None:
            try:
                presets.check_header(options.preset, header)
            except presets.PresetError as exc:
                raise IntakeError(f"line 1: {exc}") from None
        columns = None if header is None else _template_columns(header, options)
        template = _template(options, columns)
        if header is not None and template is None and "prompt" not in header:
            raise IntakeError("line 1: no 'prompt' column; add one or pass --template")
        result.key_column = _key_label(options, key_column)
        validator.template = template
        seen_columns: set[str] = set()
        try:
            for line, values, problem in _presetted(options, rows):
                result.rows_read += 1
                if values is None:
                    result.ignored += 1
                    continue
                if problem is not None:
                    result.add_error(RowError(line, "-", problem))
                    continue
                if key_column is None:  # JSONL: the first row decides
                    key_column = _pick_key(list(values), options)
                    result.key_column = _key_label(options, key_column)
                if header is None:
                    seen_columns.update(values)
                spec = validator.check(line, values, key_column, result)
                if spec is not None:
                    yield spec
        except TemplateError as exc:
            raise IntakeError(str(exc)) from None
        if header is None:
            _check_template_columns(template, seen_columns, result)


def _presetted(options: IntakeOptions, rows: Iterator[Row]) -> Iterator[presets.Out]:
    if options.preset is None:
        return iter(rows)
    return presets.apply(options.preset, rows, "product" if options.per == "product" else "variant")


def _template_columns(header: list[str], options: IntakeOptions) -> list[str]:
    if options.preset is None:
        return header
    return [*header, presets.KEY_COLUMN, presets.INPUT_COLUMN, "variant_title"]


def _template(options: IntakeOptions, columns: list[str] | None) -> Template | None:
    source, lenient = options.template, False
    if source is None and options.preset is not None and (columns is None or "prompt" not in columns):
        source, lenient = presets.DEFAULT_TEMPLATES[options.preset], True
    if source is None:
        return None
    try:
        return Template(source, columns, lenient=lenient)
    except TemplateError as exc:
        raise IntakeError(str(exc)) from None


def _check_template_columns(template: Template | None, seen: set[str], result: IntakeResult) -> None:
    """Without a header (JSONL, API rows) a template name no row had is one error, not N."""
    if template is None or not template.jinja or template.lenient or not seen:
        return
    missing = template.missing_everywhere(seen)
    if missing:
        raise IntakeError(
            f"template uses column(s) {', '.join(missing)} that no row has "
            f"(template {template.source!r}; columns: {columns_text(sorted(seen))})"
        )


def _header_key(header: list[str], options: IntakeOptions) -> str:
    if options.key_column is None and options.preset is not None:
        return presets.KEY_COLUMN
    if options.key_column is not None:
        found = Columns(header).resolve(options.key_column)
        if found is None:
            raise IntakeError(
                f"--key {options.key_column!r} is not a column of the file (columns: {columns_text(header)})"
            )
        return found
    return _pick_key(header, options) or ""


def _pick_key(names: list[str], options: IntakeOptions) -> str:
    if options.key_column is not None:
        found = Columns(names).resolve(options.key_column)
        return found or options.key_column
    if options.preset is not None:
        return presets.KEY_COLUMN
    for candidate in KEY_CANDIDATES:
        if candidate in names:
            return candidate
    raise IntakeError(
        f"line 1: the header has no 'key' column, nor any of {', '.join(KEY_CANDIDATES[1:])}; "
        f"name the key column with --key COLUMN (columns: {columns_text(names)})"
    )


def _key_label(options: IntakeOptions, key_column: str | None) -> str | None:
    if options.preset is not None and options.key_column is None:
        return PRESET_KEYS[(options.preset, "product" if options.per == "product" else "variant")]
    return key_column


# --- CSV and JSONL readers -------------------------------------------------------------------------


def _decoded(handle: BinaryIO, bad_lines: set[int], first: bytes | None = None) -> Iterator[str]:
    """Lines as text; undecodable lines are recorded (1-based) and yielded with replacement chars."""
    lines: Iterable[bytes] = handle if first is None else _prepend(first, handle)
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines.add(number)
            yield raw.decode("utf-8", errors="replace")


def _prepend(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def sniff_delimiter(header_line: str) -> str:
    """``,`` ``;`` or tab: the one that splits the header (outside quotes) most often."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for ch in header_line:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(DELIMITERS, key=lambda d: counts[d])  # ties: the earlier (comma) wins
    return best if counts[best] else ","


def _csv_rows(handle: BinaryIO, result: IntakeResult) -> tuple[list[str], Iterator[Row]]:
    bad_lines: set[int] = set()
    csv.field_size_limit(MAX_FIELD_BYTES)
    first = handle.readline()
    if not first.strip():
        raise IntakeError("the file is empty (no header line)")
    if first.startswith(b"\xef\xbb\xbf"):
        first = first[3:]
    if first.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise IntakeError("line 1: the file is UTF-16 (Excel 'Unicode text'); save it as CSV UTF-8")
    offset = 0
    text = first.decode("utf-8", errors="replace")
    if text.strip().lower().startswith("sep=") and len(text.strip()) == 5:
        delimiter = text.strip()[4]  # Excel's "sep=;" line names the delimiter
        first, offset = handle.readline(), 1
    else:
        delimiter = sniff_delimiter(text)
    result.delimiter = delimiter
    reader = csv.reader(_decoded(handle, bad_lines, first), strict=True, delimiter=delimiter)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise IntakeError("the file is empty (no header line)") from None
    except csv.Error as exc:
        raise IntakeError(f"line {1 + offset}: the header is not valid CSV: {exc}") from None
    if 1 in bad_lines:
        raise IntakeError(f"line {1 + offset}: the header is not valid UTF-8 (save the file as UTF-8)")
    if len(set(header)) != len(header):
        raise IntakeError(f"line {1 + offset}: duplicate column names in header {header}")
    return header, _csv_data(reader, header, bad_lines, offset)


def _csv_data(reader: Any, header: list[str], bad_lines: set[int], offset: int) -> Iterator[Row]:
    previous_end = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield previous_end + 1 + offset, {}, f"not valid CSV: {exc}"
            previous_end = reader.line_num
            continue
        start, previous_end = previous_end + 1, reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        if any(n in bad_lines for n in range(start, previous_end + 1)):
            yield start + offset, {}, "not valid UTF-8 (save the file as UTF-8)"
        elif len(cells) != len(header):
            yield start + offset, {}, f"expected {len(header)} columns, found {len(cells)}"
        else:
            yield start + offset, {k: v for k, v in zip(header, cells, strict=True) if v != ""}, None


def _jsonl_rows(handle: BinaryIO) -> Iterator[Row]:
    bad_lines: set[int] = set()
    for number, text in enumerate(_decoded(handle, bad_lines), start=1):
        if not text.strip():
            continue
        if number in bad_lines:
            yield number, {}, "not valid UTF-8 (save the file as UTF-8)"
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, {}, f"not valid JSON: {exc.msg} at column {exc.colno}"
            continue
        if not isinstance(value, dict):
            yield number, {}, "each line must be a JSON object"
            continue
        yield number, {k: v for k, v in value.items() if v not in ("", None)}, None


# --- one row ---------------------------------------------------------------------------------------


class _RowValidator:
    """Row-level rules that need context: defaults, the catalog, the template, seen keys, images.

    Keys seen are kept as 128-bit hashes in a set (~70 MB for a million keys, about half a
    ``dict`` of the keys themselves); a duplicate is recorded as (line, key) and its first line is
    found afterwards by a pass that remembers only the duplicated keys (``first_lines``). :meth:`fresh` makes
    the validator for another pass: the second pass (``replaying``) decides duplicates the same way
    (first occurrence wins) and takes URL inputs from the fetcher's memory of the first pass.
    """

    def __init__(
        self,
        catalog: Catalog,
        options: IntakeOptions,
        base_dir: Path,
        template: Template | None,
        fetcher: Fetcher,
    ) -> None:
        self.catalog = catalog
        self.options = options
        self.base_dir = base_dir.resolve()
        self.allowed_root = (options.images_dir or base_dir).resolve()
        self.template = template
        self.fetcher = fetcher
        self.seen: set[int] = set()
        self.first_lines: dict[str, int] | None = None  # exact first lines (for these keys only)
        self.duplicates: list[tuple[int, str]] = []  # (line, key), up to MAX_ERRORS_KEPT
        self.replaying = False
        self._image_hashes: dict[str, str] = {}
        self._uploaded: dict[Path, str] = {}  # local input file -> its object's URI (object stores)
        self._store = as_store(options.inputs_dir) if options.inputs_dir is not None else None

    def fresh(self, *, replaying: bool = False, first_lines: dict[str, int] | None = None) -> _RowValidator:
        """A validator for another pass over the same rows (no keys seen; caches shared)."""
        other = _RowValidator.__new__(_RowValidator)
        other.__dict__.update(self.__dict__)
        other.seen, other.duplicates = set(), []
        other.replaying = replaying or first_lines is not None
        other.first_lines = first_lines
        self.seen = set()  # this pass is over: its hashes are not needed any more
        return other

    def check(self, line: int, raw: dict[str, Any], key_column: str, result: IntakeResult) -> TaskSpec | None:
        errors_before = result.error_count + sum(result.option_errors.values())
        others = {name: value for name, value in raw.items() if name != key_column}  # the key: its own rule
        bad_text = [RowError(line, where, reason) for where, reason in text_problems(others)]
        if bad_text:  # before any other rule: such values must not reach paths, templates or the database
            for error in bad_text:
                result.add_error(error)
            return None
        values = self._with_defaults(line, raw, key_column, result)
        if values is None:
            return None
        try:
            row = ProductRow.model_validate(values)
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(part) for part in err["loc"]) or "-"
                result.add_error(RowError(line, where, err["msg"]))
            return None
        spec = self._model(line, row, raw, result)
        images = self._input_images(line, row, spec, result)
        errors_now = result.error_count + sum(result.option_errors.values())
        if self._duplicate(line, row.key, result) or errors_now > errors_before or spec is None:
            return None
        return self._task(line, row, spec, images or ())

    def _with_defaults(
        self, line: int, raw: dict[str, Any], key_column: str, result: IntakeResult
    ) -> dict[str, Any] | None:
        values = dict(raw)
        if key_column != "key":
            values.pop("key", None)
            if key_column in raw:
                values["key"] = raw[key_column]
        values.setdefault("model", self.options.model)
        values.setdefault("aspect_ratio", self.options.aspect_ratio)
        values.setdefault("output_format", self.options.output_format)
        if self.options.image_size and "image_size" not in values:
            values["image_size"] = self.options.image_size
        if self.template is not None and (self.options.template is not None or "prompt" not in raw):
            try:
                values["prompt"] = self.template.render(raw)
            except RowValueError as exc:
                result.add_error(RowError(line, "template", str(exc)))
                return None
        for name in ("key", "prompt", "model", "aspect_ratio", "image_size", "output_format"):
            if name in values and not isinstance(values[name], str):
                values[name] = str(values[name])
        return values

    def _problem(
        self, line: int, column: str, raw: dict[str, Any], message: str, result: IntakeResult
    ) -> None:
        """A row error, or — when the value came from a command-line option — one error for them all."""
        flag = OPTION_FLAGS.get(column)
        from_flag = flag is not None and column not in raw
        if column == "aspect_ratio" and not self.options.aspect_from_flag:
            flag = "NANOBATCH_DEFAULT_ASPECT_RATIO"
        if from_flag and flag is not None:
            result.add_option_error(flag, message)
        else:
            result.add_error(RowError(line, column, message))

    def _model(
        self, line: int, row: ProductRow, raw: dict[str, Any], result: IntakeResult
    ) -> ModelSpec | None:
        try:
            spec = self.catalog.resolve(row.model)
        except CatalogError as exc:
            self._problem(line, "model", raw, str(exc), result)
            return None
        retired = (
            None
            if self.options.allow_retired_model
            else self.catalog.retirement(row.model, self.options.today)
        )
        if retired:
            self._problem(line, "model", raw, retired, result)
        try:
            spec.size_key(row.image_size)
        except CatalogError as exc:
            self._problem(line, "image_size", raw, str(exc), result)
        try:
            spec.dimensions(row.image_size if spec.supports_image_size else None, row.aspect_ratio)
        except CatalogError as exc:
            self._problem(line, "aspect_ratio", raw, str(exc), result)
        return spec

    def _input_images(
        self, line: int, row: ProductRow, spec: ModelSpec | None, result: IntakeResult
    ) -> tuple[str, ...] | None:
        if not row.input_images:
            return ()
        if spec is not None and len(row.input_images) > spec.max_input_images:
            result.add_error(
                RowError(line, "input_images", f"{spec.name} accepts at most {spec.max_input_images} images")
            )
            return None
        paths = []
        for ref in row.input_images:
            if is_url(ref) and not self.replaying:
                result.count_url(ref)
            problem, resolved = self._check_image(ref)
            if problem:
                result.add_error(RowError(line, "input_images", f"{ref}: {problem}"))
            else:
                paths.append(str(resolved))
        return tuple(paths)

    def _check_image(self, ref: str) -> tuple[str | None, str | None]:
        if is_object_store(ref):
            return OBJECT_STORE_MESSAGE, None
        if is_url(ref):
            if self.options.inputs_dir is None and self.options.store_inputs:
                return "URL inputs need an output directory to keep the downloaded image", None
            try:
                fetched = self.fetcher.get(ref)
            except FetchError as exc:
                return str(exc), None
            if not self.fetcher.store:  # dry run: checked, not stored
                self._image_hashes[ref] = fetched.sha256
                return None, ref
            self._image_hashes[fetched.ref] = fetched.sha256
            return None, fetched.ref
        if "://" in ref:
            return "only local files, http:// and https:// URLs are supported", None
        candidate = Path(ref) if Path(ref).is_absolute() else self.base_dir / ref
        resolved = candidate.resolve()
        if resolved != self.allowed_root and self.allowed_root not in resolved.parents:
            return f"outside the allowed directory {self.allowed_root}", None
        if not resolved.is_file():
            return "no such file", None
        if resolved.stat().st_size > MAX_INPUT_IMAGE_BYTES:
            return f"larger than {MAX_INPUT_IMAGE_BYTES // (1024 * 1024)} MB", None
        try:
            with Image.open(resolved) as image:
                image.verify()
        except Exception:  # Pillow raises many unrelated types for non-images
            return "not a readable image", None
        return self._upload(resolved)

    def _upload(self, resolved: Path) -> tuple[str | None, str | None]:
        """A checked local input file: recorded as its path on the local backend; on an object store,
        uploaded once, content-addressed, and recorded as the object's URI (read from any host)."""
        store = self._store
        if store is None or store.is_local or not self.options.store_inputs:
            return None, str(resolved)
        if resolved not in self._uploaded:
            data = resolved.read_bytes()
            try:
                ext = check_fetched_image(data)
                stored = put_input(store, data, ext)
            except FetchError as exc:
                return str(exc), None
            except (OSError, StorageError) as exc:
                return f"cannot upload to the image store: {exc}", None
            self._uploaded[resolved] = stored.ref
            self._image_hashes[stored.ref] = stored.sha256
        return None, self._uploaded[resolved]

    def _duplicate(self, line: int, key: str, result: IntakeResult) -> bool:
        if self.first_lines is not None and self.first_lines.get(key, -1) == 0:
            self.first_lines[key] = line
        digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest(), "big")
        if digest not in self.seen:
            self.seen.add(digest)
            return False
        if self.replaying:
            return True
        result.error_count += 1
        if len(self.duplicates) < MAX_ERRORS_KEPT:
            self.duplicates.append((line, key))
        return True

    def _task(self, line: int, row: ProductRow, spec: ModelSpec, images: tuple[str, ...]) -> TaskSpec:
        size = spec.size_key(row.image_size) if spec.supports_image_size else None
        extra = {k: v for k, v in (row.model_extra or {}).items() if k not in KNOWN_COLUMNS}
        return TaskSpec(
            line=line,
            key=row.key,
            prompt=row.prompt,
            model=spec.name,
            image_size=size,
            aspect_ratio=row.aspect_ratio,
            output_format=row.output_format,
            input_images=images,
            content_hash=self._content_hash(spec.name, row, size, images),
            extra=extra,
            input_root=str(self.allowed_root) if images else None,
            input_sha256=tuple(self._file_digest(p) for p in images),
        )

    def _content_hash(self, model: str, row: ProductRow, size: str | None, images: Iterable[str]) -> str:
        image_digests = [self._file_digest(p) for p in images]
        payload = json.dumps([model, row.prompt, size, row.aspect_ratio, row.output_format, image_digests])
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _file_digest(self, path: str) -> str:
        if path not in self._image_hashes:  # stored inputs are recorded when stored: a local file here
            self._image_hashes[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return self._image_hashes[path]
