"""Reading and validating a product file (CSV or JSONL) into task specs, reporting every bad row.

A customer's export is messy: BOMs, stray quotes, Latin-1 bytes, duplicate SKUs, empty prompts.
The whole file is read and every problem is collected with its line number, field and reason, so
one run of ``submit`` shows them all; nothing is written unless the caller accepts the good rows
(``--skip-invalid``). The file is streamed line by line, so a 100 MB file never sits in memory
twice; only the validated rows are kept.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import string
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nanobatch.models.catalog import Catalog, CatalogError, ModelSpec

MAX_KEY_LENGTH = 200
MAX_PROMPT_CHARS = 32_000
MAX_INPUT_IMAGE_BYTES = 20 * 1024 * 1024
MAX_FIELD_BYTES = 1024 * 1024  # one CSV cell; larger is a broken file, not a product
#: Characters no text value may hold: C0 controls (NUL included) except tab, newline and carriage
#: return, DEL, C1 controls, and lone surrogates. PostgreSQL cannot store NUL in text at all (one such
#: byte used to fail the whole submit); the others garble logs, exports and spreadsheets.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
#: Keys (file names, export rows, CLI arguments) may not even hold tab or a line break.
_KEY_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
INPUT_IMAGE_SEPARATOR = "|"
KNOWN_COLUMNS = {"key", "prompt", "model", "image_size", "aspect_ratio", "input_images", "output_format"}


class IntakeError(ValueError):
    """The file as a whole cannot be read (missing, empty, not CSV/JSONL, bad template)."""


@dataclass(frozen=True)
class RowError:
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
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
    tasks: list[TaskSpec] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    rows_read: int = 0


@dataclass(frozen=True)
class IntakeOptions:
    """Per-file defaults and rules (from the CLI flags)."""

    model: str
    aspect_ratio: str = "1:1"
    image_size: str | None = None
    output_format: str = "png"
    template: str | None = None
    images_dir: Path | None = None  # input images must resolve inside this (default: the file's dir)


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
        if value not in {"png", "jpeg", "jpg"}:
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


def read_file(path: Path, catalog: Catalog, options: IntakeOptions) -> IntakeResult:
    """Validate every row of ``path``; raises :class:`IntakeError` only for file-level problems."""
    if not path.is_file():
        raise IntakeError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".jsonl", ".ndjson"}:
        raise IntakeError(f"{path}: expected a .csv or .jsonl file")
    template_fields = _template_fields(options.template)
    validator = _RowValidator(catalog, options, path.parent, template_fields)
    result = IntakeResult()
    with path.open("rb") as handle:
        rows = _csv_rows(handle, template_fields) if suffix == ".csv" else _jsonl_rows(handle)
        for line, raw, problem in rows:
            result.rows_read += 1
            if problem is not None:
                result.errors.append(RowError(line, "-", problem))
                continue
            validator.check(line, raw, result)
    if result.rows_read == 0:
        raise IntakeError(f"{path}: the file has no rows")
    return result


def read_rows(
    rows: Iterable[Mapping[str, Any]], catalog: Catalog, options: IntakeOptions, *, base_dir: Path
) -> IntakeResult:
    """Validate rows given as mappings (the Python API) by the same rules as a file's rows.

    ``line`` in each :class:`RowError` is the row's 1-based position; relative input image paths
    resolve against ``base_dir``.
    """
    validator = _RowValidator(catalog, options, base_dir, _template_fields(options.template))
    result = IntakeResult()
    for line, row in enumerate(rows, start=1):
        result.rows_read += 1
        if not isinstance(row, Mapping):
            result.errors.append(RowError(line, "-", "each row must be a mapping of column to value"))
            continue
        validator.check(line, {str(k): v for k, v in row.items() if v not in ("", None)}, result)
    if result.rows_read == 0:
        raise IntakeError("no rows to submit")
    return result


def _template_fields(template: str | None) -> tuple[str, ...]:
    if template is None:
        return ()
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise IntakeError(f"template is not valid: {exc}") from None
    for name in names:
        if not name or not name.isidentifier():
            raise IntakeError(f"template field {{{name}}} must name a column, e.g. {{title}}")
    if not names:
        raise IntakeError("template uses no column; add fields like {title}")
    return tuple(dict.fromkeys(names))


Row = tuple[int, dict[str, Any], str | None]  # (line, values, file-level problem of this row)


def _decoded(handle: BinaryIO, bad_lines: set[int]) -> Iterator[str]:
    """Lines as text; undecodable lines are recorded (1-based) and yielded with replacement chars."""
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines.add(number)
            yield raw.decode("utf-8", errors="replace")


def _csv_rows(handle: BinaryIO, template_fields: tuple[str, ...]) -> Iterator[Row]:
    bad_lines: set[int] = set()
    csv.field_size_limit(MAX_FIELD_BYTES)
    reader = csv.reader(_decoded(handle, bad_lines), strict=True)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise IntakeError("the file is empty (no header line)") from None
    except csv.Error as exc:
        raise IntakeError(f"line 1: the header is not valid CSV: {exc}") from None
    _check_header(header, template_fields, 1 in bad_lines)
    previous_end = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield previous_end + 1, {}, f"not valid CSV: {exc}"
            previous_end = reader.line_num
            continue
        start, previous_end = previous_end + 1, reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        if any(n in bad_lines for n in range(start, previous_end + 1)):
            yield start, {}, "not valid UTF-8 (save the file as UTF-8)"
        elif len(cells) != len(header):
            yield start, {}, f"expected {len(header)} columns, found {len(cells)}"
        else:
            yield start, {k: v for k, v in zip(header, cells, strict=True) if v != ""}, None


def _check_header(header: list[str], template_fields: tuple[str, ...], undecodable: bool) -> None:
    if undecodable:
        raise IntakeError("line 1: the header is not valid UTF-8 (save the file as UTF-8)")
    if len(set(header)) != len(header):
        raise IntakeError(f"line 1: duplicate column names in header {header}")
    if "key" not in header:
        raise IntakeError(f"line 1: the header has no 'key' column (columns: {', '.join(header)})")
    missing = [name for name in template_fields if name not in header]
    if missing:
        raise IntakeError(
            f"line 1: template uses column(s) {', '.join(missing)} not in the header ({', '.join(header)})"
        )
    if not template_fields and "prompt" not in header:
        raise IntakeError("line 1: no 'prompt' column; add one or pass --template")


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


class _RowValidator:
    """Row-level rules that need context: defaults, the catalog, the template, seen keys, file paths."""

    def __init__(
        self, catalog: Catalog, options: IntakeOptions, base_dir: Path, template_fields: tuple[str, ...]
    ) -> None:
        self.catalog = catalog
        self.options = options
        self.base_dir = base_dir.resolve()
        self.allowed_root = (options.images_dir or base_dir).resolve()
        self.template_fields = template_fields
        self.seen: dict[str, int] = {}
        self._image_hashes: dict[Path, str] = {}

    def check(self, line: int, raw: dict[str, Any], result: IntakeResult) -> None:
        errors_before = len(result.errors)
        others = {name: value for name, value in raw.items() if name != "key"}  # the key's own rule below
        bad_text = [RowError(line, where, reason) for where, reason in text_problems(others)]
        if bad_text:  # before any other rule: such values must not reach paths, templates or the database
            result.errors.extend(bad_text)
            return
        values = self._with_defaults(line, raw, result)
        if values is None:
            return
        try:
            row = ProductRow.model_validate(values)
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(part) for part in err["loc"]) or "-"
                result.errors.append(RowError(line, where, err["msg"]))
            return
        spec = self._model(line, row, result)
        images = self._input_images(line, row, spec, result)
        if self._duplicate(line, row.key, result) or len(result.errors) > errors_before or spec is None:
            return
        result.tasks.append(self._task(line, row, spec, images or ()))

    def _with_defaults(self, line: int, raw: dict[str, Any], result: IntakeResult) -> dict[str, Any] | None:
        values = dict(raw)
        values.setdefault("model", self.options.model)
        values.setdefault("aspect_ratio", self.options.aspect_ratio)
        values.setdefault("output_format", self.options.output_format)
        if self.options.image_size and "image_size" not in values:
            values["image_size"] = self.options.image_size
        if self.options.template:
            missing = [name for name in self.template_fields if name not in values]
            if missing:
                result.errors.append(RowError(line, "template", f"row has no value for {', '.join(missing)}"))
                return None
            values["prompt"] = self.options.template.format_map({k: values[k] for k in self.template_fields})
        for name in ("key", "prompt", "model", "aspect_ratio", "image_size", "output_format"):
            if name in values and not isinstance(values[name], str):
                values[name] = str(values[name])
        return values

    def _model(self, line: int, row: ProductRow, result: IntakeResult) -> ModelSpec | None:
        try:
            spec = self.catalog.resolve(row.model)
        except CatalogError as exc:
            result.errors.append(RowError(line, "model", str(exc)))
            return None
        try:
            spec.size_key(row.image_size)
        except CatalogError as exc:
            result.errors.append(RowError(line, "image_size", str(exc)))
        try:
            spec.dimensions(row.image_size if spec.supports_image_size else None, row.aspect_ratio)
        except CatalogError as exc:
            result.errors.append(RowError(line, "aspect_ratio", str(exc)))
        return spec

    def _input_images(
        self, line: int, row: ProductRow, spec: ModelSpec | None, result: IntakeResult
    ) -> tuple[str, ...] | None:
        if not row.input_images:
            return ()
        if spec is not None and len(row.input_images) > spec.max_input_images:
            result.errors.append(
                RowError(line, "input_images", f"{spec.name} accepts at most {spec.max_input_images} images")
            )
            return None
        paths = []
        for ref in row.input_images:
            problem, resolved = self._check_image(ref)
            if problem:
                result.errors.append(RowError(line, "input_images", f"{ref}: {problem}"))
            else:
                paths.append(str(resolved))
        return tuple(paths)

    def _check_image(self, ref: str) -> tuple[str | None, Path | None]:
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
        return None, resolved

    def _duplicate(self, line: int, key: str, result: IntakeResult) -> bool:
        first = self.seen.setdefault(key, line)
        if first != line:
            result.errors.append(RowError(line, "key", f"duplicate key {key!r} (first on line {first})"))
            return True
        return False

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
            input_sha256=tuple(self._file_digest(Path(p)) for p in images),
        )

    def _content_hash(self, model: str, row: ProductRow, size: str | None, images: Iterable[str]) -> str:
        image_digests = [self._file_digest(Path(p)) for p in images]
        payload = json.dumps([model, row.prompt, size, row.aspect_ratio, row.output_format, image_digests])
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _file_digest(self, path: Path) -> str:
        if path not in self._image_hashes:
            self._image_hashes[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._image_hashes[path]
