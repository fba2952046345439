"""Prompt templates a shop can write: ``{column}`` (Python format) or Jinja2, always sandboxed.

Two syntaxes, told apart by the text itself:

* **Jinja2** when the template contains ``{{``, ``{%`` or ``{#``: ``Photo of {{ title }}{% if color %}
  in {{ color }}{% endif %}. {{ body_html | truncate(200) }}``. Rendered by a
  :class:`~jinja2.sandbox.SandboxedEnvironment` with no loader (``include``/``import``/``extends``
  are refused), no globals, no attribute access and ``StrictUndefined``: a name that is not a column
  is one error before any row is read. Filters: Jinja2's own (``truncate``, ``lower``, ``trim``,
  ``replace``, …) plus ``strip_html``; ``default`` treats an empty cell as missing.
* **the ``{column}`` form** otherwise (the original syntax, kept working): ``{title}``,
  ``{Option1 Value}``, ``{price:.2f}`` (Python format specs: a numeric spec reads the cell as a
  number), ``{title:.40}`` (truncation), ``{title!r}``. A column with an empty cell is a row error.

Columns are named as written in the header or normalised (case-insensitive, runs of
non-alphanumerics → ``_``): ``{Body (HTML)}`` = ``{body_html}``, ``{{ option1_value }}``. In Jinja2 a
name with spaces is written as it appears (``{{ Option1 Value }}`` is rewritten to
``{{ row["Option1 Value"] }}``) or through ``row``. Every value a template inserts has its HTML tags
removed and entities decoded: a description exported as HTML never reaches a prompt as markup.

Every mistake in a template is one :class:`TemplateError` naming the template and the columns; a
cell that does not fit (``abc`` for ``{price:.2f}``) is a row error (:class:`RowValueError`).
"""

from __future__ import annotations

import html
import re
import string
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.runtime import LoopContext
from jinja2.sandbox import SandboxedEnvironment

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_HTML_HINT = re.compile(r"<[A-Za-z/!]|&[#A-Za-z0-9]+;")
_JINJA_MARKERS = ("{{", "{%", "{#")
_FLOAT_TYPES = set("eEfFgGn%")
_INT_TYPES = set("bcdoxX")
MAX_COLUMNS_SHOWN = 40


class TemplateError(ValueError):
    """The template itself is wrong (syntax, unknown column, forbidden construct)."""


class RowValueError(ValueError):
    """One row's value does not fit the template (reported as a row error)."""


def normalise(name: str) -> str:
    """``Body (HTML)`` → ``body_html``; ``Option1 Value`` → ``option1_value``."""
    return _NON_ALNUM.sub("_", name.lower()).strip("_")


def is_jinja(template: str) -> bool:
    return any(marker in template for marker in _JINJA_MARKERS)


class _TextOnly(HTMLParser):
    _BREAKS = {"br", "p", "div", "li", "ul", "ol", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table"}
    _SKIP = {"script", "style"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BREAKS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BREAKS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def strip_html(value: Any) -> str:
    """Text of an HTML fragment: tags removed, entities decoded, whitespace collapsed."""
    text = "" if value is None else str(value)
    if not _HTML_HINT.search(text):
        return text
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return " ".join(html.unescape("".join(parser.parts)).split())


def columns_text(columns: Iterable[str]) -> str:
    names = list(columns)
    shown = ", ".join(names[:MAX_COLUMNS_SHOWN])
    return shown + (f", … ({len(names)} columns)" if len(names) > MAX_COLUMNS_SHOWN else "")


class Columns:
    """The names a template may use for a file's columns: as written, and normalised."""

    def __init__(self, header: Iterable[str]) -> None:
        self.header = list(header)
        self.by_name: dict[str, str] = {name: name for name in self.header}
        aliases: dict[str, set[str]] = {}
        for name in self.header:
            aliases.setdefault(normalise(name), set()).add(name)
        for alias, names in aliases.items():
            if alias and alias not in self.by_name and len(names) == 1:
                self.by_name[alias] = next(iter(names))

    def resolve(self, name: str) -> str | None:
        """The header column ``name`` refers to (as written, else normalised), or ``None``."""
        if name in self.by_name:
            return self.by_name[name]
        return self.by_name.get(normalise(name))


class Template:
    """A compiled template; :meth:`render` takes one row (column as written → cell text)."""

    def __init__(self, source: str, columns: Iterable[str] | None, *, lenient: bool = False) -> None:
        """``columns`` is the file's header, or ``None`` when rows carry their own keys (JSONL).

        ``lenient`` (a preset's built-in template): a name that is not a column renders empty.
        """
        self.source = source
        self.lenient = lenient
        self.columns = Columns(columns) if columns is not None else None
        self.jinja = is_jinja(source)
        if self.jinja:
            self._compile_jinja()
        else:
            self._compile_format()

    # -- errors ----------------------------------------------------------------------------------

    def error(self, message: str) -> TemplateError:
        where = f"template {self.source!r}: {message}"
        if self.columns is not None:
            where += f" (columns: {columns_text(self.columns.header)})"
        return TemplateError(where)

    # -- the {column} form -----------------------------------------------------------------------

    def _compile_format(self) -> None:
        try:
            parsed = list(string.Formatter().parse(self.source))
        except ValueError as exc:
            raise self.error(f"is not valid: {exc}") from None
        self._parts: list[tuple[str, str | None, str, str | None]] = []
        names: list[str] = []
        for literal, name, raw_spec, conversion in parsed:
            spec = raw_spec or ""
            if name is None:
                self._parts.append((literal, None, "", None))
                continue
            if not name.strip() or name.strip().isdigit():
                raise self.error(f"field {{{name}}} must name a column, e.g. {{title}}")
            if conversion not in (None, "r", "s", "a"):
                raise self.error(f"{{{name}!{conversion}}}: conversion must be !r, !s or !a")
            if spec and ("{" in spec):
                raise self.error(f"{{{name}:{spec}}}: nested fields are not supported")
            _check_spec(self, name, spec)
            names.append(name)
            self._parts.append((literal, name, spec, conversion))
        if not names:
            raise self.error("uses no column; add fields like {title}")
        self.fields = tuple(dict.fromkeys(names))
        if self.columns is not None:
            missing = [name for name in self.fields if self.columns.resolve(name) is None]
            if missing:
                raise TemplateError(
                    f"template uses column(s) {', '.join(missing)} not in the header "
                    f"(template {self.source!r}; columns: {columns_text(self.columns.header)})"
                )

    def _render_format(self, row: Mapping[str, Any]) -> str:
        lookup = Columns(row) if self.columns is None else self.columns
        out: list[str] = []
        missing: list[str] = []
        for literal, name, spec, conversion in self._parts:
            out.append(literal)
            if name is None:
                continue
            column = lookup.resolve(name)
            value = row.get(column) if column is not None else None
            if value is None or value == "":
                missing.append(name)
                continue
            out.append(_format_value(name, strip_html(value), spec, conversion))
        if missing:
            raise RowValueError(f"row has no value for {', '.join(dict.fromkeys(missing))}")
        return "".join(out)

    # -- Jinja2 ----------------------------------------------------------------------------------

    def _compile_jinja(self) -> None:
        source = self.source
        if self.columns is not None:
            source = _quote_spaced_names(source, self.columns.header)
        try:
            ast = _ENV.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise self.error(f"is not valid Jinja2 ({exc.message}, template line {exc.lineno})") from None
        for node in ast.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            raise self.error(f"{type(node).__name__.lower()} is not allowed (templates cannot read files)")
        self.fields = tuple(sorted(meta.find_undeclared_variables(ast) - {"row"}))
        if self.columns is not None and not self.lenient:
            missing = [name for name in self.fields if self.columns.resolve(name) is None]
            if missing:
                raise TemplateError(
                    f"template uses column(s) {', '.join(missing)} not in the header "
                    f"(template {self.source!r}; columns: {columns_text(self.columns.header)})"
                )
        try:
            self._jinja = _ENV.from_string(ast)
        except jinja2.TemplateError as exc:
            raise self.error(f"is not valid Jinja2 ({exc})") from None

    def _render_jinja(self, row: Mapping[str, Any]) -> str:
        clean = {name: strip_html(value) for name, value in row.items()}
        columns = self.columns if self.columns is not None else Columns(clean)
        context: dict[str, Any] = {}
        for name in self.fields:
            column = columns.resolve(name)
            context[name] = clean.get(column, "") if column is not None else ""
        context["row"] = {name: clean.get(name, "") for name in columns.header} | clean
        try:
            return self._jinja.render(context).strip()
        except jinja2.exceptions.SecurityError as exc:
            raise self.error(f"not allowed in the sandbox: {exc}") from None
        except jinja2.UndefinedError as exc:
            raise self.error(f"{exc.message}") from None
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as exc:
            raise RowValueError(f"template failed on this row: {type(exc).__name__}: {exc}") from None

    # -- both ------------------------------------------------------------------------------------

    def render(self, row: Mapping[str, Any]) -> str:
        """The prompt for ``row``; :class:`RowValueError` for this row, :class:`TemplateError` for all."""
        return self._render_jinja(row) if self.jinja else self._render_format(row)

    def missing_everywhere(self, seen: Iterable[str]) -> list[str]:
        """Fields no row had (for sources without a header); ``seen`` are the keys rows carried."""
        known = Columns(seen)
        return [name for name in self.fields if known.resolve(name) is None]


def _check_spec(template: Template, name: str, spec: str) -> None:
    if not spec:
        return
    sample: Any = 1.5 if spec[-1] in _FLOAT_TYPES else 1 if spec[-1] in _INT_TYPES else "text"
    try:
        format(sample, spec)
    except ValueError as exc:
        raise template.error(f"{{{name}:{spec}}}: format spec {spec!r} is not valid ({exc})") from None


def _format_value(name: str, value: str, spec: str, conversion: str | None) -> str:
    converted: Any = value
    if conversion == "r":
        converted = repr(value)
    elif conversion == "a":
        converted = ascii(value)
    if spec and conversion is None:
        kind = spec[-1]
        try:
            if kind in _FLOAT_TYPES:
                converted = float(value.replace(",", ".") if value.count(",") == 1 else value)
            elif kind in _INT_TYPES:
                converted = int(float(value))
        except ValueError:
            raise RowValueError(f"{{{name}:{spec}}} needs a number, got {value!r}") from None
    try:
        return format(converted, spec)
    except ValueError as exc:
        raise RowValueError(f"{{{name}:{spec}}} cannot format {value!r}: {exc}") from None


def _quote_spaced_names(source: str, header: Iterable[str]) -> str:
    """``{{ Option1 Value | lower }}`` → ``{{ row["Option1 Value"] | lower }}`` for such headers."""
    for name in sorted(header, key=len, reverse=True):
        if name.isidentifier():
            continue
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        pattern = re.compile(r"(\{\{-?\s*)" + re.escape(name) + r"(?=\s*(?:\||-?\}\}))")
        source = pattern.sub(_quoter(quoted), source)
    return source


def _quoter(quoted: str) -> Any:
    return lambda match: f'{match.group(1)}row["{quoted}"]'


class _Sandbox(SandboxedEnvironment):
    """No attribute access at all (only the ``loop`` of a for-loop), no globals, no loader."""

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return isinstance(obj, LoopContext) and not attr.startswith("_")


def _default(value: Any, default_value: Any = "", boolean: bool = True) -> Any:
    """Jinja2's ``default``, but an empty cell counts as missing (``boolean=True`` by default)."""
    if isinstance(value, jinja2.Undefined) or (boolean and not value):
        return default_value
    return value


def _environment() -> _Sandbox:
    env = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.globals.clear()
    env.filters["strip_html"] = strip_html
    env.filters["striphtml"] = strip_html
    env.filters["default"] = _default
    env.filters["d"] = _default
    return env


_ENV = _environment()
