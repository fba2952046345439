"""The model catalog: pixel tables, aliases, prices, and user extensions without code."""

from __future__ import annotations

import pytest

from nanobatch.models.catalog import ASPECT_RATIOS, BUNDLED_CATALOG, CatalogError, load_catalog, parse_catalog


def test_design_pixel_table_samples() -> None:
    catalog = load_catalog()
    pro = catalog.resolve("gemini-3-pro-image")
    flash = catalog.resolve("gemini-2.5-flash-image")
    assert pro.dimensions("4K", "21:9") == (6336, 2688)
    assert pro.dimensions("2K", "16:9") == (2752, 1536)
    assert pro.dimensions("1K", "2:3") == (848, 1264)
    assert flash.dimensions(None, "16:9") == (1344, 768)
    assert flash.dimensions(None, "21:9") == (1536, 672)


def test_every_model_and_size_covers_all_ten_ratios() -> None:
    for spec in load_catalog().models.values():
        for size in spec.size_specs.values():
            assert set(size.pixels) == set(ASPECT_RATIOS), spec.name


def test_aliases_resolve_to_the_canonical_model() -> None:
    catalog = load_catalog()
    assert catalog.canonical("gemini-3-pro-image-preview") == "gemini-3-pro-image"
    assert catalog.canonical("nano-banana") == "gemini-2.5-flash-image"


def test_sizes_are_checked_per_model() -> None:
    catalog = load_catalog()
    with pytest.raises(CatalogError, match="supports sizes"):
        catalog.resolve("gemini-3-pro-image").size_key("2k")
    with pytest.raises(CatalogError, match="takes no image size"):
        catalog.resolve("gemini-2.5-flash-image").size_key("1K")
    assert catalog.resolve("gemini-3-pro-image").size_key(None) == "1K"


def test_prices_and_tokens() -> None:
    pro = load_catalog().resolve("gemini-3-pro-image")
    assert pro.output_tokens("4K") == 2000
    assert pro.cost_usd("4K") == 0.24
    assert pro.cost_usd("1K", batch_api=True) == 0.067
    assert pro.cost_usd("1K", prompt_tokens=1_000_000) == pytest.approx(0.134 + 2.0)


def test_unknown_model_error_lists_the_known_ones() -> None:
    with pytest.raises(CatalogError, match="gemini-3-pro-image"):
        load_catalog().resolve("dall-e-9")


def test_a_user_file_adds_a_model_without_code(tmp_path) -> None:  # type: ignore[no-untyped-def]
    extra = tmp_path / "mine.toml"
    extra.write_text(
        '[[model]]\nname = "my-relay-model"\naliases = ["mine"]\nprovider = "openai"\nsizes = []\n'
        "max_input_images = 1\n[model.size.default]\noutput_tokens = 100\nprice_usd = 0.01\n"
        'pixels = { "1:1" = [512, 512] }\n'
    )
    catalog = parse_catalog(BUNDLED_CATALOG.read_text(), extra.read_text())
    assert catalog.resolve("mine").dimensions(None, "1:1") == (512, 512)
    assert "gemini-3-pro-image" in catalog
