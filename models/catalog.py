"""The model catalog: names, aliases, sizes, pixel tables, tokens and prices, read from TOML.

Model facts change (previews are renamed, models are shut down, prices move), so they live in one
data file (``catalog.toml`` beside this module) that users extend without touching code: set
``NANOBATCH_CATALOG_FILE`` to a file of extra ``[[model]]`` blocks and they are merged over the
bundled ones. Everything that needs a dimension, a token count or a price asks this module.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

BUNDLED_CATALOG = Path(__file__).with_name("catalog.toml")

#: The ten aspect ratios every Gemini image model accepts.
ASPECT_RATIOS: tuple[str, ...] = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")

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
    shutdown: str | None = None
    #: How far a generated image's sides may be from the pixel table (a fraction; 0: exactly).
    size_tolerance: float = 0.0

    @property
    def supports_image_size(self) -> bool:
        return bool(self.sizes)

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
            raise CatalogError(f"aspect ratio {aspect_ratio!r} is not one of {', '.join(pixels)}")
        return pixels[aspect_ratio]

    def output_tokens(self, size: str | None) -> int:
        return self.spec_for(size).output_tokens

    def estimate_prompt_tokens(self, prompt: str, input_images: int = 0) -> int:
        """A cheap, deliberately generous estimate (4 characters a token) for limiter admission."""
        return max(1, len(prompt) // 4) + input_images * self.input_image_tokens

    def cost_usd(self, size: str | None, prompt_tokens: int = 0, *, batch_api: bool = False) -> float:
        """Price of one image plus its prompt tokens."""
        spec = self.spec_for(size)
        image = spec.batch_price_usd if batch_api else spec.price_usd
        return round(image + prompt_tokens * self.prompt_price_per_mtok / 1_000_000, 6)


@dataclass(frozen=True)
class Catalog:
    """All known models, addressable by canonical name or alias."""

    models: dict[str, ModelSpec]
    aliases: dict[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> ModelSpec:
        """The model for a name or alias; raises :class:`CatalogError` listing the known names."""
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


def _parse_model(raw: dict) -> ModelSpec:
    sizes = {
        key: SizeSpec(
            output_tokens=int(spec["output_tokens"]),
            price_usd=float(spec["price_usd"]),
            batch_price_usd=float(spec.get("batch_price_usd", spec["price_usd"])),
            pixels={ratio: (int(wh[0]), int(wh[1])) for ratio, wh in spec["pixels"].items()},
        )
        for key, spec in raw["size"].items()
    }
    declared = tuple(raw.get("sizes", ()))
    missing = [s for s in (declared or (NO_SIZE,)) if s not in sizes]
    if missing:
        raise CatalogError(f"catalog model {raw['name']!r} lacks [model.size] tables for {missing}")
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
        shutdown=raw.get("shutdown"),
        size_tolerance=float(raw.get("size_tolerance", 0.0)),
    )


def parse_catalog(*texts: str) -> Catalog:
    """Build a catalog from TOML texts; later texts override earlier models of the same name."""
    models: dict[str, ModelSpec] = {}
    for text in texts:
        for raw in tomllib.loads(text).get("model", []):
            spec = _parse_model(raw)
            models[spec.name] = spec
    aliases = {alias: spec.name for spec in models.values() for alias in spec.aliases}
    return Catalog(models=models, aliases=aliases)


@lru_cache(maxsize=8)
def load_catalog(extra_file: str | None = None) -> Catalog:
    """The bundled catalog, merged with a user's extra file when one is given (cached per path)."""
    texts = [BUNDLED_CATALOG.read_text(encoding="utf-8")]
    if extra_file:
        texts.append(Path(extra_file).read_text(encoding="utf-8"))
    return parse_catalog(*texts)
