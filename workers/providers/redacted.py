"""The provider boundary's one redaction: every text an upstream answer hands us passes through here.

Redacting error messages only was not enough: a relay that echoes the key puts it in a 429's quota id
(which becomes a metric label), in ``modelVersion`` (stored as ``model_used`` and exported), in
``responseId`` or a text part. So whatever leaves a provider — every string field of an
:class:`ImageResult` (and of its ``extra``), every string attribute of a :class:`ProviderError`
(message, status, quota ids, reasons) — is redacted here, with :func:`workers.redact.redact`, before
the worker stores, logs, exports or counts any of it. The image bytes are not text and pass unchanged.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from nanobatch.workers.errors import ProviderError
from nanobatch.workers.providers.base import ImageRequest, ImageResult, Provider
from nanobatch.workers.redact import redact


class RedactedProvider:
    """A provider whose answers and errors carry no secret in any text field."""

    def __init__(self, inner: Provider, secret: str | None) -> None:
        self.inner = inner
        self.name = inner.name
        self._secret = secret

    def generate(self, request: ImageRequest) -> ImageResult:
        try:
            result = self.inner.generate(request)
        except ProviderError as error:
            scrub_error(error, self._secret)
            raise
        return scrub_result(result, self._secret)


def redacted(provider: Provider, secret: str | None) -> RedactedProvider:
    return RedactedProvider(provider, secret)


def scrub(value: Any, secret: str | None) -> Any:
    """``value`` with every string inside it (nested lists, tuples, dicts; keys too) redacted."""
    if isinstance(value, str):
        return redact(value, secret)
    if isinstance(value, tuple):
        return tuple(scrub(item, secret) for item in value)
    if isinstance(value, list):
        return [scrub(item, secret) for item in value]
    if isinstance(value, dict):
        return {scrub(k, secret): scrub(v, secret) for k, v in value.items()}
    return value


def scrub_result(result: ImageResult, secret: str | None) -> ImageResult:
    changes = {
        f.name: scrub(getattr(result, f.name), secret)
        for f in fields(result)
        if f.name not in {"data", "facts"}
    }
    return replace(result, **changes)


def scrub_error(error: ProviderError, secret: str | None) -> None:
    """Redact the error in place (it is re-raised with its traceback and cause)."""
    for name, value in list(vars(error).items()):
        if name.startswith("__"):
            continue
        setattr(error, name, scrub(value, secret))
    error.args = tuple(scrub(arg, secret) for arg in error.args)
