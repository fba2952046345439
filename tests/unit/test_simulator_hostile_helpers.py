"""The hostile answer helpers: half an image, a larger size, an oversized body that is only streamed."""

from __future__ import annotations

import base64
import json

import pytest

from nanobatch.simulator.hostile import PAD_CHUNK, PAD_MARK, enlarged, oversized, truncated
from nanobatch.simulator.images import Renderer
from nanobatch.simulator.protocol import Reply


def test_truncated_keeps_the_first_half_of_the_file() -> None:
    image = Renderer().render("a lamp", 64, 48)
    half = truncated(image)
    assert half.data == image.data[: len(image.data) // 2] and half.data.startswith(b"\x89PNG")
    assert (half.mime_type, half.width, half.height) == (image.mime_type, 64, 48)
    assert base64.b64decode(base64.b64encode(half.data), validate=True) == half.data


def test_enlarged_scales_each_side() -> None:
    assert enlarged(1344, 768, 2.0) == (2688, 1536)
    assert enlarged(100, 60, 1.5) == (150, 90)


def _padded_reply(prompt: str = "a lamp") -> Reply:
    return Reply.json(200, {"data": [{"b64_json": "AAAA", "revised_prompt": PAD_MARK}], "note": prompt})


def test_oversized_streams_valid_json_of_exactly_the_size() -> None:
    size = 3 * PAD_CHUNK + 123
    stream = oversized(_padded_reply(), size)
    chunks = list(stream.chunks)
    body = b"".join(chunks)
    assert stream.length == len(body) == size
    assert max(len(chunk) for chunk in chunks) <= PAD_CHUNK  # never one big buffer
    payload = json.loads(body)
    assert set(payload["data"][0]["revised_prompt"]) == {"x"} and payload["note"] == "a lamp"
    assert (stream.status, stream.label) == (200, "oversized")


def test_oversized_chunks_are_produced_lazily() -> None:
    stream = oversized(_padded_reply(), 64 * 1024**3)  # 64 GiB: only possible if nothing is built
    first, second = next(stream.chunks), next(stream.chunks)
    assert first.startswith(b'{"data"') and len(second) == PAD_CHUNK


def test_a_small_size_adds_no_padding() -> None:
    body = b"".join(oversized(_padded_reply(), 1).chunks)
    assert json.loads(body)["data"][0]["revised_prompt"] == ""


def test_an_answer_without_the_mark_is_a_bug() -> None:
    with pytest.raises(ValueError, match="padding mark"):
        oversized(Reply.json(200, {"data": []}), 1024)
