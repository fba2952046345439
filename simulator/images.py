"""Real, cheap images at exact sizes: a flat colour from the prompt's hash, a border, the prompt text.

Clients store, hash, measure and sometimes decode what they receive, so the bytes must be genuine
PNG/JPEG/WebP at the catalog's exact pixel size -- but a 100k rehearsal must not burn CPU, and a
6336x2688 image must not take a second. PNGs are drawn on a 4-colour palette canvas (2 bits a pixel,
``compress_level=1``): the blank canvas is cached per size and only its palette changes per prompt,
so a 4K 21:9 PNG costs tens of milliseconds. JPEG/WebP need RGB and cost more, still well under a
second. Thumbnail mode draws a small image with the same aspect (longest side <= 256) for load tests.
"""

from __future__ import annotations

import hashlib
import io
import textwrap
import threading
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

THUMBNAIL_SIDE = 256
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_CANVAS_PIXEL_BUDGET = 80_000_000  # about five 4K canvases of 1 byte per pixel

Palette = tuple[tuple[int, int, int], ...]  # background, border, text, label


@dataclass(frozen=True)
class RenderedImage:
    data: bytes
    mime_type: str
    width: int
    height: int


def thumbnail_size(width: int, height: int, side: int = THUMBNAIL_SIDE) -> tuple[int, int]:
    """The largest size with the same aspect whose longest side is at most ``side``."""
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def palette_for(prompt: str) -> Palette:
    """Colours derived from the prompt, so different prompts give visibly different images."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    background = (digest[0], digest[1], digest[2])
    border = (255 - digest[0], 255 - digest[1], 255 - digest[2])
    light = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2] > 140
    text = (16, 16, 16) if light else (240, 240, 240)
    label = (60, 60, 60) if light else (200, 200, 200)
    return background, border, text, label


class Renderer:
    """Draws images; owns a small, bounded cache of blank canvases (one renderer per simulator)."""

    def __init__(self) -> None:
        self._canvases: OrderedDict[tuple[int, int], Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def render(
        self,
        prompt: str,
        width: int,
        height: int,
        *,
        fmt: str = "png",
        label: str = "",
        thumbnail: bool = False,
        variant: int = 0,
    ) -> RenderedImage:
        """An image of exactly ``width`` x ``height`` in ``fmt`` (png, jpeg or webp), or its thumbnail.

        ``variant`` tells apart several images of one prompt (OpenAI ``n``) by colour.
        """
        if thumbnail:
            width, height = thumbnail_size(width, height)
        colours = palette_for(f"{prompt}\x00{variant}" if variant else prompt)
        image = self._blank(width, height, colours, rgb=fmt != "png")
        _draw(image, prompt, label, rgb=fmt != "png", colours=colours)
        return RenderedImage(_encode(image, fmt), MIME_TYPES[fmt], width, height)

    def _blank(self, width: int, height: int, colours: Palette, *, rgb: bool) -> Image.Image:
        if rgb:
            return Image.new("RGB", (width, height), colours[0])
        canvas = self._cached_canvas(width, height).copy()
        canvas.putpalette([channel for colour in colours for channel in colour])
        return canvas

    def _cached_canvas(self, width: int, height: int) -> Image.Image:
        key = (width, height)
        with self._lock:
            canvas = self._canvases.get(key)
            if canvas is not None:
                self._canvases.move_to_end(key)
                return canvas
        canvas = Image.new("P", key, 0)
        with self._lock:
            self._canvases[key] = canvas
            while sum(w * h for w, h in self._canvases) > _CANVAS_PIXEL_BUDGET and len(self._canvases) > 1:
                self._canvases.popitem(last=False)
        return canvas


def _draw(image: Image.Image, prompt: str, label: str, *, rgb: bool, colours: Palette) -> None:
    """Border, a small label line and the wrapped prompt, scaled to the image."""
    width, height = image.size
    ink: tuple[tuple[int, int, int] | int, ...] = colours if rgb else (0, 1, 2, 3)  # RGB or indexes
    border, text, small = ink[1], ink[2], ink[3]
    draw = ImageDraw.Draw(image)
    edge = max(1, min(width, height) // 64)
    draw.rectangle((0, 0, width - 1, height - 1), outline=border, width=edge)
    size = max(8, min(width // 16, height // 10))
    margin = edge + size // 2
    if label:
        draw.text((margin, margin), label, fill=small, font=ImageFont.load_default(size=max(8, size // 2)))
    columns = max(8, int((width - 2 * margin) / (size * 0.6)))
    rows = max(1, int((height - 3 * margin) / (size * 1.25)))
    lines = textwrap.wrap(prompt or "(no prompt)", columns)[:rows]
    font = ImageFont.load_default(size=size)
    top = margin + size
    for index, line in enumerate(lines):
        draw.text((margin, top + index * int(size * 1.25)), line, fill=text, font=font)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, "PNG", compress_level=1)
    elif fmt == "jpeg":
        image.save(buffer, "JPEG", quality=80)
    else:
        image.save(buffer, "WEBP", quality=80, method=0)
    return buffer.getvalue()
