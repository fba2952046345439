"""The model catalog: pixel tables, aliases, prices, and user extensions without code."""

from __future__ import annotations

from datetime import date

import pytest

from nanobatch.models.catalog import ASPECT_RATIOS, BUNDLED_CATALOG, CatalogError, load_catalog, parse_catalog

TEN = {"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"}


def test_design_pixel_table_samples() -> None:
    catalog = load_catalog()
    pro = catalog.resolve("gemini-3-pro-image")
    flash = catalog.resolve("gemini-2.5-flash-image")
    assert pro.dimensions("4K", "21:9") == (6336, 2688)
    assert pro.dimensions("2K", "16:9") == (2752, 1536)
    assert pro.dimensions("1K", "2:3") == (848, 1264)
    assert flash.dimensions(None, "16:9") == (1344, 768)
    assert flash.dimensions(None, "21:9") == (1536, 672)


def test_every_size_of_a_model_covers_the_models_ratios_and_gemini_ones_the_standard_ten() -> None:
    for spec in load_catalog().models.values():
        for size in spec.size_specs.values():
            assert set(size.pixels) == set(spec.aspect_ratios), spec.name
        assert set(spec.aspect_ratios) >= TEN, spec.name
    assert set(load_catalog().resolve("gemini-3.1-flash-image").aspect_ratios) == TEN | {
        "1:4",
        "4:1",
        "1:8",
        "8:1",
    }
    assert set(load_catalog().resolve("gemini-3-pro-image").aspect_ratios) == TEN  # no banner ratios on 3 Pro


def test_aspect_ratios_is_data_not_a_list_in_code() -> None:
    # ASPECT_RATIOS lists the bundled models' ratios (for display) and screens only the form of a
    # ratio: whether a model takes it is its pixel table's say.
    assert set(ASPECT_RATIOS) == {r for s in load_catalog().models.values() for r in s.aspect_ratios}
    assert "3:1" in ASPECT_RATIOS and "3x1" not in ASPECT_RATIOS and 3 not in ASPECT_RATIOS
    with pytest.raises(CatalogError, match="not one of"):
        load_catalog().resolve("gemini-3-pro-image").dimensions("1K", "8:1")


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


def test_a_user_file_adds_a_model_with_other_ratios_a_512_size_and_an_upstream_id(tmp_path) -> None:  # type: ignore[no-untyped-def]
    extra = tmp_path / "mine.toml"
    extra.write_text(
        '[[model]]\nname = "my-banner-model"\nupstream_id = "vendor/banner-v2"\nprovider = "gemini"\n'
        'sizes = ["512", "1K"]\ndefault_size = "512"\nmax_input_images = 2\nshutdown = 2030-01-01\n'
        "[model.size.512]\noutput_tokens = 700\nprice_usd = 0.02\n"
        'pixels = { "3:1" = [768, 256], "1:1" = [512, 512] }\n'
        "[model.size.1K]\noutput_tokens = 1100\nprice_usd = 0.04\n"
        'pixels = { "3:1" = [1536, 512], "1:1" = [1024, 1024] }\n'
    )
    catalog = parse_catalog(BUNDLED_CATALOG.read_text(), extra.read_text())
    spec = catalog.resolve("my-banner-model")
    assert spec.dimensions(None, "3:1") == (768, 256) and spec.size_key(None) == "512"
    assert spec.aspect_ratios == ("3:1", "1:1") and spec.sizes == ("512", "1K")
    assert spec.wire_id == "vendor/banner-v2" and catalog.canonical("vendor/banner-v2") == "my-banner-model"
    assert (
        spec.shutdown == date(2030, 1, 1)
        and not spec.retired(date(2029, 12, 31))
        and spec.retired(date(2030, 1, 1))
    )


def test_upstream_ids_default_to_the_name_and_the_pro_preview_id_resolves_to_ga() -> None:
    catalog = load_catalog()
    assert catalog.resolve("gemini-nano-banana-2.1").wire_id == "gemini-nano-banana-2.1"
    assert catalog.resolve("gemini-3-pro-image-preview").wire_id == "gemini-3-pro-image"


def test_retired_models_name_the_first_live_replacement() -> None:
    catalog = load_catalog()
    on = date(2026, 11, 29)
    flash = catalog.resolve("gemini-2.5-flash-image")
    assert flash.retired(on) and not flash.retired(date(2026, 10, 1))
    assert catalog.successor(flash, on).name == "gemini-nano-banana-2.1"  # type: ignore[union-attr]
    message = catalog.retirement("nano-banana", on)
    assert message is not None and "2026-10-02" in message and "gemini-nano-banana-2.1" in message
    assert "--allow-retired-model" in message
    assert catalog.retirement("gemini-nano-banana-2.1", on) is None
    assert catalog.retirement("nano-banana", date(2026, 10, 1)) is None


def test_shutdown_notice_starts_fourteen_days_ahead() -> None:
    catalog = load_catalog()
    assert catalog.shutdown_notice("gemini-2.5-flash-image", date(2026, 9, 17)) is None
    soon = catalog.shutdown_notice("gemini-2.5-flash-image", date(2026, 9, 18))
    assert soon is not None and "in 14 days" in soon
    assert "was shut down" in (catalog.shutdown_notice("gemini-2.5-flash-image", date(2026, 11, 29)) or "")
    assert catalog.shutdown_notice("gemini-nano-banana-2.1", date(2026, 11, 29)) is None


def test_a_replacement_must_name_a_known_model() -> None:
    bad = (
        '[[model]]\nname = "m"\nreplacement = "nope"\nsizes = []\n[model.size.default]\n'
        'output_tokens = 1\nprice_usd = 0.01\npixels = { "1:1" = [1, 1] }\n'
    )
    with pytest.raises(CatalogError, match="unknown models"):
        parse_catalog(bad)


def test_the_default_model_is_in_the_catalog_and_not_retired() -> None:
    from nanobatch.tasks.settings import Settings

    default = Settings.model_fields["default_model"].default
    assert load_catalog().retirement(default, date(2026, 11, 29)) is None
