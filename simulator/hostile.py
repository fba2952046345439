"""Hostile answers: 200s that look fine at the HTTP level and are not, for clients to prove they check.

A client that stores whatever a 200 carries will one day store half a PNG, an image of the wrong
size, or read a 64 MiB body into memory. These helpers turn a normal answer into such a one; the
pipeline (``simulator.app``) decides when, from the configured rates. Nothing here holds a large body
in memory: an oversized answer is the normal answer with a marker where the padding goes, streamed
as head, padding blocks, tail.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

from nanobatch.simulator.images import RenderedImage
from nanobatch.simulator.protocol import Reply, Stream

#: Put in a free-text field of an answer; replaced on the wire by the padding. NULs keep it from
#: ever matching a prompt echoed elsewhere in the same body.
PAD_MARK = "\x00nanobatch-oversize-padding\x00"
_PAD_MARK_JSON = json.dumps(PAD_MARK)[1:-1].encode("ascii")  # as it appears inside a JSON string
PAD_CHUNK = 64 * 1024
_PAD_BLOCK = b"x" * PAD_CHUNK


def truncated(image: RenderedImage) -> RenderedImage:
    """The first half of the encoded file: valid base64 once encoded, not a decodable image."""
    return dataclasses.replace(image, data=image.data[: len(image.data) // 2])


def enlarged(width: int, height: int, factor: float) -> tuple[int, int]:
    """The size of an image ``factor`` times larger on each side than the one asked for."""
    return round(width * factor), round(height * factor)


def oversized(reply: Reply, size: int) -> Stream:
    """``reply`` (built with :data:`PAD_MARK` as filler) padded to at least ``size`` bytes, streamed.

    The padding is a run of ``x`` inside the string that held the mark, so the body stays valid
    JSON of the API's own shape: only its size is hostile.
    """
    head, mark, tail = reply.body.partition(_PAD_MARK_JSON)
    if not mark:
        raise ValueError("the answer has no padding mark to replace")
    padding = max(0, size - len(head) - len(tail))
    return Stream(
        status=reply.status,
        content_type=reply.content_type,
        length=len(head) + padding + len(tail),
        chunks=_padded(head, padding, tail),
        label="oversized",
        headers=dict(reply.headers),
    )


def _padded(head: bytes, padding: int, tail: bytes) -> Iterator[bytes]:
    yield head
    blocks, rest = divmod(padding, PAD_CHUNK)
    for _ in range(blocks):
        yield _PAD_BLOCK
    if rest:
        yield _PAD_BLOCK[:rest]
    yield tail
