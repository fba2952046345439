"""Every image is decoded in full before it counts: generated results and the inputs sent upstream.

Reading only the header (what ``Image.open`` does) accepts a PNG cut off half-way, or any bytes that
start like an image. So :func:`check_image`

1. parses with the allowed formats only (PNG, JPEG, WebP: no exotic decoder ever sees hostile bytes);
2. refuses more than ``max_pixels`` pixels *before* decoding (the header declares the size), so a
   hostile 50k x 50k PNG costs nothing;
3. compares the declared size with the size asked for (:class:`ExpectedSize`), also before decoding;
4. decodes every pixel (``load``); a PNG must also pass ``verify`` (chunk CRCs) and end with its
   ``IEND`` chunk, because Pillow happily decodes a PNG whose tail is missing.

Memory: decoding runs inside a body-gate slot (``workers.providers.body_gate``; the caller passes
``decode_slot``) for anything over :data:`SMALL_DECODE_PIXELS`, so at most a few decoded pixel buffers
(at most ``max_pixels`` x 4 bytes each) exist per process at once, whatever the size of the answer's
body; the buffer is freed as soon as the check returns.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

from PIL import Image

#: Pillow format name → the MIME type we record (the allow-list).
ALLOWED_FORMATS: dict[str, str] = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
DEFAULT_MAX_PIXELS = 40_000_000
#: Images up to this many pixels (a 4 MiB RGBA buffer) are decoded without taking a decode slot.
SMALL_DECODE_PIXELS = 1 << 20
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: Aspect-only checks allow this relative error (a thumbnail's sides are rounded to whole pixels).
_ASPECT_SLACK = 0.02

SizeCheck = Literal["exact", "aspect", "off"]


class ImageRejected(ValueError):
    """The bytes are not an image we accept (the message says why, for the task's error_message)."""


@dataclass(frozen=True)
class ImageFacts:
    """What the decoded image is, read from the pixels, not from what anyone claimed."""

    mime_type: str
    width: int
    height: int


@dataclass(frozen=True)
class ExpectedSize:
    """The size asked for (from the catalog), and how strictly to hold the answer to it.

    ``tolerance`` is a fraction of each side (the model's ``size_tolerance``; 0 means exact).
    ``mode`` ``"aspect"`` compares the ratio only (rehearsals against a thumbnail simulator).
    """

    width: int
    height: int
    tolerance: float = 0.0
    mode: SizeCheck = "exact"

    def problem(self, width: int, height: int) -> str | None:
        """Why ``width`` x ``height`` is not what was asked for; ``None`` when it is."""
        if self.mode == "off":
            return None
        asked = f"{self.width}x{self.height}"
        if self.mode == "aspect":
            wanted, got = self.width / self.height, width / height
            if abs(got - wanted) / wanted > max(self.tolerance, _ASPECT_SLACK):
                return f"aspect ratio of {width}x{height} does not match the {asked} asked for"
            return None
        if abs(width - self.width) > self.tolerance * self.width or abs(height - self.height) > (
            self.tolerance * self.height
        ):
            return f"image is {width}x{height}, {asked} was asked for"
        return None


def check_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    expected: ExpectedSize | None = None,
    decode_slot: Callable[[], AbstractContextManager[object]] | None = None,
) -> ImageFacts:
    """Decode ``data`` completely and return its facts, or raise :class:`ImageRejected`.

    ``decode_slot`` (e.g. a body gate's ``lambda: gate.hold(None)``) is held while a large image's
    pixels are decoded.
    """
    formats = tuple(ALLOWED_FORMATS)
    try:
        with Image.open(io.BytesIO(data), formats=formats) as image:
            facts = _declared(image, max_pixels, expected)
            if image.format == "PNG":
                image.verify()  # chunk structure and CRCs, to the end of the file
        if facts.mime_type == "image/png" and not data.endswith(_PNG_IEND):
            raise ImageRejected("truncated PNG: the file does not end with its IEND chunk")
        large = facts.width * facts.height > SMALL_DECODE_PIXELS
        slot = decode_slot() if decode_slot is not None and large else nullcontext()
        with slot, Image.open(io.BytesIO(data), formats=formats) as image:
            image.load()  # every pixel: a truncated or corrupt stream fails here
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"too many pixels: {exc}") from exc
    except Exception as exc:  # Pillow raises many unrelated types for hostile bytes
        raise ImageRejected(f"not a complete PNG/JPEG/WebP image: {type(exc).__name__}: {exc}") from exc
    return facts


def _declared(image: Image.Image, max_pixels: int, expected: ExpectedSize | None) -> ImageFacts:
    """The header's facts, checked before any pixel is decoded."""
    mime = ALLOWED_FORMATS.get(image.format or "")
    if mime is None:
        raise ImageRejected(f"format {image.format or 'unknown'} is not PNG, JPEG or WebP")
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image is {width}x{height} = {width * height:,} pixels, more than the {max_pixels:,} allowed "
            "(NANOBATCH_MAX_IMAGE_PIXELS)"
        )
    if getattr(image, "n_frames", 1) != 1:
        raise ImageRejected("animated images are not accepted")
    if expected is not None and (problem := expected.problem(width, height)) is not None:
        raise ImageRejected(problem)
    return ImageFacts(mime, width, height)
