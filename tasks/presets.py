"""Shop export presets: the file a shop already has (Shopify, WooCommerce, Merchant Center) as input.

A preset turns the export's rows into one row per image to make:

* **product-level fields are filled down** onto variant rows (Shopify by ``Handle``, WooCommerce by
  ``Parent``, Merchant Center by ``item_group_id``): a variant's empty cells take its product's value;
* rows that carry no product (Shopify's image-only rows; with ``per="variant"`` a WooCommerce
  ``variable`` parent, with ``per="product"`` the variant rows) are **ignored** and counted;
* **HTML is stripped** from description columns;
* the **product photo** becomes the row's input image (``Variant Image`` else ``Image Src``; the
  first of ``Images``; ``image_link``);
* the **key** is the variant's SKU/id (``per="variant"``) or the product's handle/id (``per="product"``).

Fill-down needs the product row before its variants (exports are written that way). Products are
kept in a bounded buffer (:data:`PRODUCT_BUFFER` most recent), so a file whose variants come long
after their product, or before it, gets a per-row error saying so; memory never grows with the file.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from nanobatch.tasks.templates import strip_html

Per = Literal["product", "variant"]
PRESETS = ("shopify", "woocommerce", "merchant")
PRODUCT_BUFFER = 10_000

#: One source row: (line, cells, problem) — the same shape the readers produce.
Row = tuple[int, dict[str, Any], str | None]
#: What a preset yields: a row to validate, or (line, {}, problem), or (line, None, None) = ignored.
Out = tuple[int, dict[str, Any] | None, str | None]

#: Prompt used when the file has no ``prompt`` column and no ``--template`` is given.
DEFAULT_TEMPLATES = {
    "shopify": (
        "Professional e-commerce photo of this product: {{ title }}"
        "{% if variant_title %} ({{ variant_title }}){% endif %}{% if vendor %} by {{ vendor }}{% endif %}."
        " Keep the product exactly as in the photo; clean white studio background, soft light."
        "{% if body_html %} Product details: {{ body_html | truncate(300) }}{% endif %}"
    ),
    "woocommerce": (
        "Professional e-commerce photo of this product: {{ name }}."
        " Keep the product exactly as in the photo; clean white studio background, soft light."
        "{% if short_description %} Product details: {{ short_description | truncate(300) }}"
        "{% elif description %} Product details: {{ description | truncate(300) }}{% endif %}"
    ),
    "merchant": (
        "Professional e-commerce photo of this product: {{ title }}"
        "{% if color %}, {{ color }}{% endif %}{% if size %}, size {{ size }}{% endif %}."
        " Keep the product exactly as in the photo; clean white studio background, soft light."
        "{% if description %} Product details: {{ description | truncate(300) }}{% endif %}"
    ),
}


class PresetError(ValueError):
    """The file does not look like this preset's export (missing columns)."""


@dataclass
class _Spec:
    name: str
    required: tuple[str, ...]
    html_columns: tuple[str, ...]
    keep_own: tuple[str, ...]  # columns never filled down (the variant's identity)
    notes: list[str] = field(default_factory=list)


SPECS = {
    "shopify": _Spec(
        "shopify",
        ("Handle", "Title"),
        ("Body (HTML)",),
        ("Handle", "Variant Image", "Image Position", "Image Alt Text"),
    ),
    "woocommerce": _Spec(
        "woocommerce",
        ("Type", "Name"),
        ("Description", "Short description"),
        ("ID", "SKU", "Type", "Parent", "GTIN, UPC, EAN, or ISBN"),
    ),
    "merchant": _Spec(
        "merchant",
        ("id", "title"),
        ("description",),
        ("id", "gtin", "mpn", "link"),
    ),
}

#: The generated columns a preset adds to every row it yields.
INPUT_COLUMN = "input_images"
KEY_COLUMN = "key"


def check_header(preset: str, header: list[str]) -> None:
    spec = SPECS[preset]
    missing = [name for name in spec.required if name not in header]
    if preset == "woocommerce" and "SKU" not in header and "ID" not in header:
        missing.append("SKU or ID")
    if missing:
        raise PresetError(
            f"--preset {preset} needs column(s) {', '.join(missing)} (columns: {', '.join(header)})"
        )


def apply(preset: str, rows: Iterator[Row], per: Per) -> Iterator[Out]:
    """The preset's rows from the file's rows (see the module docstring)."""
    if preset == "shopify":
        return _Shopify(per).run(rows)
    if preset == "woocommerce":
        return _WooCommerce(per).run(rows)
    if preset == "merchant":
        return _Merchant(per).run(rows)
    raise PresetError(f"unknown preset {preset!r} (choose {', '.join(PRESETS)})")


class _Buffer:
    """The most recent products, by id (bounded: memory does not grow with the file)."""

    def __init__(self, size: int = PRODUCT_BUFFER) -> None:
        self.size = size
        self.items: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.items.get(key)


def _clean_html(spec: _Spec, cells: dict[str, Any]) -> dict[str, Any]:
    for name in spec.html_columns:
        if cells.get(name):
            cells[name] = strip_html(cells[name])
    return cells


def _fill_down(spec: _Spec, product: dict[str, Any], cells: dict[str, Any]) -> dict[str, Any]:
    filled = {k: v for k, v in product.items() if k not in spec.keep_own and k not in (INPUT_COLUMN,)}
    filled.update({k: v for k, v in cells.items() if v not in ("", None)})
    return filled


def _first_url(value: Any) -> str | None:
    """The first image of a cell that may list several (WooCommerce: comma-separated)."""
    if not value:
        return None
    for part in str(value).split(","):
        if part.strip():
            return part.strip()
    return None


class _Shopify:
    """Rows grouped by Handle: the product row has the Title; variant rows repeat the Handle with an
    empty Title; image-only rows carry only Handle + Image Src/Position."""

    spec = SPECS["shopify"]
    VARIANT_MARKERS = ("Variant SKU", "Option1 Value", "Variant Price", "Variant Image", "Variant Barcode")

    def __init__(self, per: Per) -> None:
        self.per = per
        self.products = _Buffer()

    def run(self, rows: Iterator[Row]) -> Iterator[Out]:
        for line, cells, problem in rows:
            if problem is not None:
                yield line, {}, problem
                continue
            handle = str(cells.get("Handle", "")).strip()
            if not handle:
                yield line, {}, "Handle: every Shopify row needs a Handle"
                continue
            if cells.get("Title"):
                product = _clean_html(self.spec, dict(cells))
                self.products.put(handle, product)
                yield line, self._row(product, product, handle), None
                continue
            if not any(cells.get(name) for name in self.VARIANT_MARKERS):
                yield line, None, None  # image-only row: extra photos of the product
                continue
            if self.per == "product":
                yield line, None, None
                continue
            parent = self.products.get(handle)
            if parent is None:
                yield (
                    line,
                    {},
                    f"Handle: variant row of {handle!r} comes before its product row (the row with the "
                    f"Title), or more than {PRODUCT_BUFFER:,} products after it; keep the export's "
                    "order (rows grouped by Handle)",
                )
                continue
            yield line, self._row(parent, _fill_down(self.spec, parent, cells), handle), None

    def _row(self, product: dict[str, Any], cells: dict[str, Any], handle: str) -> dict[str, Any]:
        if self.per == "product":
            cells = dict(product)
            key = handle
        else:
            options = [
                str(cells.get(f"Option{n} Value") or "")
                for n in (1, 2, 3)
                if cells.get(f"Option{n} Value") and cells.get(f"Option{n} Value") != "Default Title"
            ]
            cells["variant_title"] = " / ".join(options)
            key = str(cells.get("Variant SKU") or "") or "-".join([handle, *options])
        cells.setdefault("variant_title", "")
        photo = (cells.get("Variant Image") if self.per == "variant" else None) or product.get("Image Src")
        out = dict(cells)
        out[KEY_COLUMN] = key
        if photo and INPUT_COLUMN not in cells:
            out[INPUT_COLUMN] = str(photo).strip()
        return out


class _WooCommerce:
    """``Type`` says simple / variable / variation; a variation names its parent in ``Parent``
    (``id:123`` or the parent's SKU); ``Images`` lists URLs separated by commas."""

    spec = SPECS["woocommerce"]

    def __init__(self, per: Per) -> None:
        self.per = per
        self.products = _Buffer()

    def run(self, rows: Iterator[Row]) -> Iterator[Out]:
        for line, cells, problem in rows:
            if problem is not None:
                yield line, {}, problem
                continue
            kinds = {part.strip().lower() for part in str(cells.get("Type", "")).split(",")}
            cells = _clean_html(self.spec, dict(cells))
            if "variation" in kinds:
                if self.per == "product":
                    yield line, None, None
                    continue
                parent_ref = str(cells.get("Parent", "")).strip()
                parent = self.products.get(parent_ref) if parent_ref else None
                if parent is None:
                    yield (
                        line,
                        {},
                        f"Parent: variation's parent {parent_ref or '(empty)'!r} is not a variable product "
                        f"above it in the file (or is more than {PRODUCT_BUFFER:,} products back); keep the "
                        "export's order (parents before their variations)",
                    )
                    continue
                yield line, self._row(_fill_down(self.spec, parent, cells)), None
                continue
            if "variable" in kinds:
                for ref in (f"id:{cells.get('ID')}" if cells.get("ID") else None, cells.get("SKU")):
                    if ref:
                        self.products.put(str(ref), cells)
                if self.per == "variant":
                    yield line, None, None  # the variations are the images to make
                    continue
            if not cells.get("Name"):
                yield line, None, None
                continue
            yield line, self._row(cells), None

    def _row(self, cells: dict[str, Any]) -> dict[str, Any]:
        out = dict(cells)
        out[KEY_COLUMN] = str(cells.get("SKU") or "") or (f"id-{cells['ID']}" if cells.get("ID") else "")
        photo = _first_url(cells.get("Images"))
        if photo and INPUT_COLUMN not in cells:
            out[INPUT_COLUMN] = photo
        return out


class _Merchant:
    """Every row is an item; variants share ``item_group_id`` (the first row of a group fills the
    others' empty cells). ``image_link`` is the photo."""

    spec = SPECS["merchant"]

    def __init__(self, per: Per) -> None:
        self.per = per
        self.groups = _Buffer()
        self.emitted_groups = _Buffer()

    def run(self, rows: Iterator[Row]) -> Iterator[Out]:
        for line, cells, problem in rows:
            if problem is not None:
                yield line, {}, problem
                continue
            cells = _clean_html(self.spec, dict(cells))
            group = str(cells.get("item_group_id", "")).strip()
            if group:
                first = self.groups.get(group)
                if first is None:
                    self.groups.put(group, cells)
                else:
                    cells = _fill_down(self.spec, first, cells)
                if self.per == "product":
                    if self.emitted_groups.get(group) is not None:
                        yield line, None, None
                        continue
                    self.emitted_groups.put(group, {})
            out = dict(cells)
            out[KEY_COLUMN] = group if (self.per == "product" and group) else str(cells.get("id", ""))
            if cells.get("image_link") and INPUT_COLUMN not in cells:
                out[INPUT_COLUMN] = str(cells["image_link"]).strip()
            yield line, out, None
