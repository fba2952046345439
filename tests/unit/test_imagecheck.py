"""Full decode-verification: only complete PNG/JPEG/WebP images of the asked size count."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image

from nanobatch.workers.imagecheck import ExpectedSize, ImageFacts, ImageRejected, check_image


def encoded(fmt: str, width: int = 64, height: int = 48, *, noise: bool = True) -> bytes:
    image = (
        Image.effect_noise((width, height), 60).convert("RGB") if noise else Image.new("RGB", (width, height))
    )
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize(
    ("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_complete_images_of_the_allowed_formats_pass_with_their_decoded_facts(fmt: str, mime: str) -> None:
    assert check_image(encoded(fmt)) == ImageFacts(mime, 64, 48)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_images_are_rejected(fmt: str, keep: float) -> None:
    data = encoded(fmt, 256, 256)
    with pytest.raises(ImageRejected):
        check_image(data[: int(len(data) * keep)])


@pytest.mark.parametrize("cut", [1, 4, 12])
def test_a_png_missing_any_of_its_tail_is_rejected(cut: int) -> None:
    with pytest.raises(ImageRejected):
        check_image(encoded("PNG")[:-cut])


def test_a_corrupt_byte_in_the_pixel_data_is_rejected() -> None:
    data = bytearray(encoded("PNG", 256, 256))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(ImageRejected):
        check_image(bytes(data))


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_not_accepted(fmt: str) -> None:
    with pytest.raises(ImageRejected, match="not a complete PNG/JPEG/WebP"):
        check_image(encoded(fmt))


def test_garbage_is_rejected() -> None:
    with pytest.raises(ImageRejected):
        check_image(b"<html>bad gateway</html>")


def test_too_many_pixels_are_refused_from_the_header_before_decoding() -> None:
    with pytest.raises(ImageRejected, match="more than the 40,000,000 allowed"):
        check_image(header_only_png(8000, 6000), max_pixels=40_000_000)
    with pytest.raises(ImageRejected, match="pixels"):
        check_image(header_only_png(30000, 30000))  # Pillow's own bomb limit: still our error type


def test_the_size_asked_for_is_checked_before_decoding() -> None:
    with pytest.raises(ImageRejected, match="image is 8000x6000, 1024x1024 was asked for"):
        check_image(header_only_png(8000, 6000), max_pixels=10**9, expected=ExpectedSize(1024, 1024))


@pytest.mark.parametrize(
    ("expected", "size", "ok"),
    [
        (ExpectedSize(64, 48), (64, 48), True),
        (ExpectedSize(64, 48), (64, 49), False),
        (ExpectedSize(100, 100, tolerance=0.02), (102, 98), True),
        (ExpectedSize(100, 100, tolerance=0.02), (103, 100), False),
        (ExpectedSize(5504, 3072, mode="aspect"), (256, 143), True),  # the simulator's thumbnail
        (ExpectedSize(5504, 3072, mode="aspect"), (256, 256), False),
        (ExpectedSize(1024, 1024, mode="off"), (7, 3), True),
    ],
)
def test_size_expectations(expected: ExpectedSize, size: tuple[int, int], ok: bool) -> None:
    assert (expected.problem(*size) is None) is ok


def test_an_animated_image_is_not_accepted() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageRejected, match="animated"):
        check_image(buffer.getvalue())
