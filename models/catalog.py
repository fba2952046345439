"""The model catalog: names, aliases, sizes, pixel tables, tokens, prices and lifecycle, read from TOML.

Model facts change (previews are renamed, models are shut down, prices move), so they live in one
data file (``catalog.toml`` beside this module) that users extend without touching code: set
``NANOBATCH_CATALOG_FILE`` to a file of extra ``[[model]]`` blocks and they are merged over the
bundled ones. Everything that needs a dimension, a token count, a price, the id sent upstream or a
shutdown date asks this module. A model's aspect ratios are the keys of its pixel tables and its sizes
the names of its ``[model.size.*]`` tables: a model with other ratios (``1:8``) or another size
(``512``) is one catalog entry, no code.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path

BUNDLED_CATALOG = Path(__file__).with_name("catalog.toml")

#: What an aspect ratio looks like ("16:9"); which ones a model takes is in its pixel tables.
RATIO_PATTERN = re.compile(r"[1-9]\d{0,2}:[1-9]\d{0,2}")

#: ``nanobatch status`` warns about batches whose model shuts down within this many days.
SHUTDOWN_WARNING_DAYS = 14

#: Size key used in the TOML for models that take no ``imageSize``.
NO_SIZE = "default"


class CatalogError(ValueError):
    """A model, size or ratio that the catalog does not know (the message says what it does know)."""


@dataclass(frozen=True)
class SizeSpec:
    """What one output size of a model produces and costs."""

    output_tokens: int
    price_usd: float
    batch_price_usd: float
    pixels: dict[str, tuple[int, int]]
    #: Per lane (``flex``, ``priority``; ``standard`` and ``batch`` are the fields above).
    lane_prices: dict[str, float] = field(default_factory=dict)

    def price_in(self, lane: str | None) -> float:
        """USD per image in ``lane`` (``None``/``standard``: the standard price)."""
        if lane in (None, "", "standard"):
            return self.price_usd
        if lane == "batch":
            return self.batch_price_usd
        return self.lane_prices.get(lane, self.price_usd)


@dataclass(frozen=True)
class ModelSpec:
    """One image model, as the catalog describes it."""

    name: str
    provider: str
    sizes: tuple[str, ...]
    default_size: str
    max_input_images: int
    input_image_tokens: int
    prompt_price_per_mtok: float
    size_specs: dict[str, SizeSpec]
    aliases: tuple[str, ...] = ()
    shutdown: date | None = None
    #: The model id sent upstream (URL or ``model`` field); the canonical name when the entry omits it.
    upstream_id: str = ""
    #: The model the provider recommends instead, once this one is deprecated.
    replacement: str | None = None
    #: How far a generated image's sides may be from the pixel table (a fraction; 0: exactly).
    size_tolerance: float = 0.0

    @property
    def supports_image_size(self) -> bool:
        return bool(self.sizes)

    @property
    def wire_id(self) -> str:
        """The id the upstream knows this model by (``upstream_id``, else the canonical name)."""
        return self.upstream_id or self.name

    @property
    def aspect_ratios(self) -> tuple[str, ...]:
        """Every ratio this model takes at some size, in catalog order."""
        found: dict[str, None] = {}
        for size in self.size_specs.values():
            found.update(dict.fromkeys(size.pixels))
        return tuple(found)

    def retired(self, on: date | None = None) -> bool:
        """True once the upstream has shut this model down (on or after its ``shutdown`` date)."""
        return self.shutdown is not None and (on or today()) >= self.shutdown

    def days_to_shutdown(self, on: date | None = None) -> int | None:
        """Days until the shutdown date (negative once past); ``None`` when none is recorded."""
        return None if self.shutdown is None else (self.shutdown - (on or today())).days

    def size_key(self, size: str | None) -> str:
        """The catalog key for a requested size (``None`` means the default); raises if unsupported."""
        if not self.sizes:
            if size not in (None, "", NO_SIZE):
                raise CatalogError(f"model {self.name} takes no image size (got {size!r})")
            return NO_SIZE
        chosen = size or self.default_size
        if chosen not in self.sizes:
            raise CatalogError(f"model {self.name} supports sizes {', '.join(self.sizes)} (got {chosen!r})")
        return chosen

    def spec_for(self, size: str | None) -> SizeSpec:
        return self.size_specs[self.size_key(size)]

    def dimensions(self, size: str | None, aspect_ratio: str) -> tuple[int, int]:
        """Exact output pixels (width, height) for a size and ratio."""
        pixels = self.spec_for(size).pixels
        if aspect_ratio not in pixels:
            at = f" at size {self.size_key(size)}" if self.sizes else ""
            raise CatalogError(
                f"aspect ratio {aspect_ratio!r} is not one of {', '.join(pixels)} (model {self.name}{at})"
            )
        return pixels[aspect_ratio]

    def output_tokens(self, size: str | None) -> int:
        return self.spec_for(size).output_tokens

    def estimate_prompt_tokens(self, prompt: str, input_images: int = 0) -> int:
        """A cheap, deliberately generous estimate (4 characters a token) for limiter admission."""
        return max(1, len(prompt) // 4) + input_images * self.input_image_tokens

    def cost_usd(
        self, size: str | None, prompt_tokens: int = 0, *, batch_api: bool = False, lane: str | None = None
    ) -> float:
        """Price of one image plus its prompt tokens, in ``lane`` (default standard; ``batch_api`` is
        ``lane="batch"``). Prompt tokens get the lane's discount or premium too (the Batch API and
        flex halve every token, not only the image's)."""
        spec = self.spec_for(size)
        lane = "batch" if batch_api else lane
        image = spec.price_in(lane)
        factor = image / spec.price_usd if spec.price_usd else 1.0
        return round(image + prompt_tokens * self.prompt_price_per_mtok * factor / 1_000_000, 6)


@dataclass(frozen=True)
class Catalog:
    """All known models, addressable by canonical name or alias."""

    models: dict[str, ModelSpec]
    aliases: dict[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> ModelSpec:
        """The model for a name, alias or upstream id; :class:`CatalogError` lists the known names."""
        canonical = self.aliases.get(name, name)
        try:
            return self.models[canonical]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise CatalogError(f"unknown model {name!r}; known models: {known}") from None

    def canonical(self, name: str) -> str:
        return self.resolve(name).name

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.models or name in self.aliases)

    def successor(self, spec: ModelSpec, on: date | None = None) -> ModelSpec | None:
        """The first model along ``spec``'s replacement chain that is not retired ``on`` that day."""
        seen = {spec.name}
        current = spec
        while current.replacement and current.replacement in self:
            current = self.resolve(current.replacement)
            if current.name in seen:
                return None
            seen.add(current.name)
            if not current.retired(on):
                return current
        return None

    def retirement(self, name: str, on: date | None = None) -> str | None:
        """Why ``name`` may not be submitted ``on`` that day (shut down; what instead), else ``None``."""
        spec = self.resolve(name)
        if not spec.retired(on):
            return None
        asked = f" ({name!r})" if name != spec.name else ""
        return (
            f"model {spec.name}{asked} was shut down upstream on {spec.shutdown}: "
            f"{self._instead(spec, on)} (to submit anyway: --allow-retired-model / allow_retired_model=True)"
        )

    def shutdown_notice(
        self, name: str, on: date | None = None, within_days: int = SHUTDOWN_WARNING_DAYS
    ) -> str | None:
        """A warning when ``name`` is retired or shuts down within ``within_days``; else ``None``."""
        if name not in self:
            return None
        spec = self.resolve(name)
        left = spec.days_to_shutdown(on)
        if left is None or left > within_days:
            return None
        when = (
            f"was shut down on {spec.shutdown}"
            if left <= 0
            else f"shuts down on {spec.shutdown} (in {left} day{'s' * (left != 1)})"
        )
        return f"model {spec.name} {when}: {self._instead(spec, on)}"

    def _instead(self, spec: ModelSpec, on: date | None) -> str:
        successor = self.successor(spec, on)
        if successor is None:
            return "no replacement is recorded in the catalog; choose another model"
        via = (
            f" (recommended replacement {spec.replacement}, itself retired)"
            if spec.replacement != successor.name
            else ""
        )
        return f"use {successor.name} instead{via}"


def today() -> date:
    """The current UTC date (shutdown dates are compared against it)."""
    return datetime.now(UTC).date()


def _date(value: object, model: str) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise CatalogError(f"catalog model {model!r}: shutdown {value!r} is not a YYYY-MM-DD date") from None


#: Lane prices as a share of the standard price, for sizes that name no ``<lane>_price_usd``
#: (overridden by the catalog's ``[lane_price_factors]`` table).
DEFAULT_LANE_FACTORS = {"batch": 0.5, "flex": 0.5, "priority": 2.0}


def _size_spec(spec: dict, factors: dict[str, float]) -> SizeSpec:
    price = float(spec["price_usd"])

    def lane_price(lane: str) -> float:
        return float(spec.get(f"{lane}_price_usd", round(price * factors[lane], 6)))

    return SizeSpec(
        output_tokens=int(spec["output_tokens"]),
        price_usd=price,
        batch_price_usd=lane_price("batch"),
        pixels={ratio: (int(wh[0]), int(wh[1])) for ratio, wh in spec["pixels"].items()},
        lane_prices={"flex": lane_price("flex"), "priority": lane_price("priority")},
    )


def _parse_model(raw: dict, factors: dict[str, float] | None = None) -> ModelSpec:
    factors = factors or DEFAULT_LANE_FACTORS
    sizes = {key: _size_spec(spec, factors) for key, spec in raw["size"].items()}
    declared = tuple(str(s) for s in raw.get("sizes", ()))
    missing = [s for s in (declared or (NO_SIZE,)) if s not in sizes]
    if missing:
        raise CatalogError(f"catalog model {raw['name']!r} lacks [model.size] tables for {missing}")
    bad = [ratio for size in sizes.values() for ratio in size.pixels if not RATIO_PATTERN.fullmatch(ratio)]
    if bad:
        raise CatalogError(f"catalog model {raw['name']!r}: {bad} are not aspect ratios like 16:9")
    return ModelSpec(
        name=raw["name"],
        provider=raw.get("provider", "gemini"),
        sizes=declared,
        default_size=raw.get("default_size", declared[0] if declared else ""),
        max_input_images=int(raw.get("max_input_images", 0)),
        input_image_tokens=int(raw.get("input_image_tokens", 0)),
        prompt_price_per_mtok=float(raw.get("prompt_price_per_mtok", 0.0)),
        size_specs=sizes,
        aliases=tuple(raw.get("aliases", ())),
        shutdown=_date(raw.get("shutdown"), raw["name"]),
        upstream_id=str(raw.get("upstream_id") or ""),
        replacement=raw.get("replacement") or None,
        size_tolerance=float(raw.get("size_tolerance", 0.0)),
    )


def parse_catalog(*texts: str) -> Catalog:
    """Build a catalog from TOML texts; later texts override earlier models of the same name."""
    models: dict[str, ModelSpec] = {}
    factors = dict(DEFAULT_LANE_FACTORS)
    for text in texts:
        data = tomllib.loads(text)
        factors |= {lane: float(v) for lane, v in data.get("lane_price_factors", {}).items()}
        for raw in data.get("model", []):
            spec = _parse_model(raw, factors)
            models[spec.name] = spec
    aliases = {alias: spec.name for spec in models.values() for alias in spec.aliases}
    # The upstream id resolves too (rows and relays use it), unless it is another model's name.
    aliases |= {spec.upstream_id: spec.name for spec in models.values() if spec.upstream_id not in models}
    aliases.pop("", None)
    catalog = Catalog(models=models, aliases=aliases)
    unknown = [
        f"{s.name} -> {s.replacement}"
        for s in models.values()
        if s.replacement and s.replacement not in catalog
    ]
    if unknown:
        raise CatalogError(f"catalog replacements name unknown models: {', '.join(unknown)}")
    return catalog


@lru_cache(maxsize=8)
def load_catalog(extra_file: str | None = None) -> Catalog:
    """The bundled catalog, merged with a user's extra file when one is given (cached per path)."""
    texts = [BUNDLED_CATALOG.read_text(encoding="utf-8")]
    if extra_file:
        texts.append(Path(extra_file).read_text(encoding="utf-8"))
    return parse_catalog(*texts)


class AspectRatios(tuple[str, ...]):
    """The ratios of the bundled catalog, for display; membership accepts any well-formed ``W:H``.

    Kept for callers that screen a ratio before asking the model (the simulator): which ratios a
    model takes is decided by its pixel tables (:meth:`ModelSpec.dimensions`), so a catalog entry
    with a new ratio needs no change here.
    """

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str) and RATIO_PATTERN.fullmatch(item) is not None


def _bundled_ratios() -> AspectRatios:
    found: dict[str, None] = {}
    for spec in load_catalog().models.values():
        found.update(dict.fromkeys(spec.aspect_ratios))
    return AspectRatios(found)


#: Every ratio some bundled model takes (see :class:`AspectRatios`); a model's own are ``spec.aspect_ratios``.
ASPECT_RATIOS: AspectRatios = _bundled_ratios()
