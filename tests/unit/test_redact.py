"""Redaction catches the key in every spelling an upstream echoes it, and in every field we keep."""

from __future__ import annotations

import base64
from urllib.parse import quote, quote_plus

import pytest

from nanobatch.workers.errors import RateLimited
from nanobatch.workers.providers.base import ImageRequest, ImageResult
from nanobatch.workers.providers.redacted import RedactedProvider
from nanobatch.workers.redact import REDACTED, metric_label, redact

KEY = "relayKey/Secret+0123456789=ABCDEF"


@pytest.mark.parametrize(
    "echo",
    [
        KEY,
        KEY.lower(),
        KEY.upper(),
        quote(KEY, safe=""),
        quote(KEY, safe="").lower(),
        quote_plus(KEY, safe=""),
        base64.b64encode(KEY.encode()).decode(),
        base64.urlsafe_b64encode(KEY.encode()).decode().rstrip("="),
    ],
)
def test_every_spelling_of_the_key_is_redacted(echo: str) -> None:
    text = redact(f"quota for {echo} exceeded", KEY)
    assert text == f"quota for {REDACTED} exceeded"


def test_key_shapes_are_redacted_case_insensitively_even_when_the_key_is_unknown() -> None:
    assert redact("key aiza" + "x" * 30) == f"key {REDACTED}"
    assert redact("see ?KEY=abc&x=1") == f"see ?KEY={REDACTED}&x=1"


def test_a_metric_label_is_redacted_small_and_bounded() -> None:
    label = metric_label(f"PerMinute-{KEY.lower()}\n" + "x" * 500, KEY)
    assert KEY.lower() not in label.lower() and "\n" not in label and len(label) <= 100
    assert label.startswith("PerMinute-[REDACTED]")


class _Echoing:
    name = "echo"

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def generate(self, request: ImageRequest) -> ImageResult:
        if self.fail:
            raise RateLimited(f"slow down {KEY.lower()}", quota_ids=(f"PerDay-{quote(KEY, safe='')}",))
        return ImageResult(
            data=b"\x89PNG" + KEY.encode(),  # bytes are not text: never touched
            mime_type="image/png",
            model_version=f"m/{KEY.lower()}",
            response_id=KEY,
            text=f"made for {KEY}",
            extra={"echo": [KEY.upper()], KEY: 1},
        )


def test_every_text_a_provider_returns_or_raises_is_redacted() -> None:
    result = RedactedProvider(_Echoing(fail=False), KEY).generate(ImageRequest(model="m", prompt="p"))
    assert result.data.endswith(KEY.encode())
    assert (result.model_version, result.response_id, result.text) == (
        f"m/{REDACTED}",
        REDACTED,
        f"made for {REDACTED}",
    )
    assert result.extra == {"echo": [REDACTED], REDACTED: 1}
    with pytest.raises(RateLimited) as caught:
        RedactedProvider(_Echoing(fail=True), KEY).generate(ImageRequest(model="m", prompt="p"))
    error = caught.value
    assert error.quota_ids == (f"PerDay-{REDACTED}",)
    assert KEY.lower() not in str(error).lower() and KEY.lower() not in error.message.lower()
