"""The provider interface: one request shape in, one result shape out, errors from ``workers.errors``.

Providers are thin translators between :class:`ImageRequest` and a wire protocol. They take an
injected ``httpx.Client`` (pooled, with explicit timeouts, shared by a worker's threads) so unit
tests can hand them an ``httpx.MockTransport`` and integration tests the simulator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from nanobatch.workers.imagecheck import ImageFacts

AuthStyle = Literal["x-goog-api-key", "bearer"]


@dataclass(frozen=True)
class InputImage:
    """A reference image for editing or composition."""

    data: bytes
    mime_type: str = "image/png"


@dataclass(frozen=True)
class ImageRequest:
    """One image to generate, in provider-neutral terms."""

    model: str  # the id the upstream knows the model by (the catalog's ``upstream_id``)
    prompt: str
    aspect_ratio: str = "1:1"
    image_size: str | None = None  # None: the model takes no imageSize (e.g. 2.5 flash image)
    output_format: Literal["png", "jpeg"] = "png"
    input_images: tuple[InputImage, ...] = ()
    # Pixel size the catalog expects; OpenAI-compatible providers need it to pick a `size`.
    width: int | None = None
    height: int | None = None
    #: Gemini ``serviceTier`` (``flex``/``priority``; ``None``: not sent, the standard tier). Other
    #: protocols have no tiers and ignore it.
    service_tier: str | None = None
    #: Full decode-verification of the answer's image (``workers.imagecheck``), run by the provider
    #: while it still holds the answer's body-gate slot, so the decode is bounded like the body
    #: (see :func:`checked`).
    check: Callable[[bytes], ImageFacts] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ImageResult:
    """A generated image and what the upstream told us about it."""

    data: bytes
    mime_type: str
    text: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    finish_reason: str | None = None
    model_version: str | None = None
    response_id: str | None = None
    revised_prompt: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
    #: Format and size read from the decoded pixels (``None`` when the request carried no check).
    facts: ImageFacts | None = None


def checked(request: ImageRequest, result: ImageResult) -> ImageResult:
    """``result`` with the facts of its decoded image, when ``request`` carries a check.

    Raises the check's :class:`~nanobatch.workers.imagecheck.ImageRejected` for a truncated, foreign,
    oversized or wrongly sized image. Providers call it inside their decode slot.
    """
    if request.check is None:
        return result
    return replace(result, facts=request.check(result.data))


@dataclass(frozen=True)
class ProviderConfig:
    """Where and how to call the upstream. The key is held here only, never logged or stored."""

    kind: Literal["gemini", "openai"] = "gemini"
    base_url: str = "https://generativelanguage.googleapis.com"
    api_version: str = "v1beta"
    auth: AuthStyle = "x-goog-api-key"
    api_key: str | None = field(default=None, repr=False)


class Provider(Protocol):
    """Anything that turns an :class:`ImageRequest` into an :class:`ImageResult` or a ProviderError."""

    name: str

    def generate(self, request: ImageRequest) -> ImageResult: ...
