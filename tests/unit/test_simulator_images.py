"""Images: exact catalog dimensions per (model, size, ratio), real decodable bytes, thumbnails."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from nanobatch.models.catalog import load_catalog
from nanobatch.simulator.gemini_request import build_job
from nanobatch.simulator.images import Renderer, palette_for, thumbnail_size


def _body(ratio: str, size: str | None) -> dict:
    image_config = {"aspectRatio": ratio} | ({"imageSize": size} if size else {})
    return {
        "contents": [{"parts": [{"text": "a red bicycle"}]}],
        "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": image_config},
    }


@pytest.mark.parametrize(
    ("model", "size", "ratio", "expected"),
    [
        ("gemini-3-pro-image", "4K", "21:9", (6336, 2688)),
        ("gemini-2.5-flash-image", None, "16:9", (1344, 768)),
        ("gemini-3-pro-image", "2K", "16:9", (2752, 1536)),
        ("gemini-3-pro-image", "1K", "2:3", (848, 1264)),
        ("gemini-3-pro-image", None, "1:1", (1024, 1024)),
        ("nano-banana", None, "21:9", (1536, 672)),
    ],
)
def test_job_dimensions_come_from_the_catalog(
    model: str, size: str | None, ratio: str, expected: tuple[int, int]
) -> None:
    job = build_job(load_catalog().resolve(model), _body(ratio, size), "png")
    assert (job.width, job.height) == expected


def test_output_tokens_come_from_the_catalog() -> None:
    spec = load_catalog().resolve("gemini-3-pro-image")
    assert build_job(spec, _body("1:1", "4K"), "png").output_tokens == spec.output_tokens("4K")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_rendered_bytes_decode_at_the_exact_size(fmt: str) -> None:
    image = Renderer().render("a red bicycle", 1376, 768, fmt=fmt, label="x")
    decoded = Image.open(io.BytesIO(image.data))
    assert decoded.size == (1376, 768)
    assert decoded.format == fmt.upper()
    assert image.mime_type == f"image/{fmt}"


def test_a_4k_ultrawide_png_is_real() -> None:
    image = Renderer().render("wide", 6336, 2688, label="gemini-3-pro-image 4K 21:9")
    assert Image.open(io.BytesIO(image.data)).size == (6336, 2688)


def test_different_prompts_give_different_images() -> None:
    renderer = Renderer()
    assert renderer.render("a", 64, 64).data != renderer.render("b", 64, 64).data
    assert palette_for("a") != palette_for("b")
    assert renderer.render("a", 64, 64, variant=1).data != renderer.render("a", 64, 64).data


def test_thumbnails_keep_the_aspect_within_256() -> None:
    assert thumbnail_size(6336, 2688) == (256, 109)
    assert thumbnail_size(768, 1344) == (146, 256)
    assert thumbnail_size(100, 50) == (100, 50)
    image = Renderer().render("t", 6336, 2688, thumbnail=True)
    assert Image.open(io.BytesIO(image.data)).size == (256, 109)
