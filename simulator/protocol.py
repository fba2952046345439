"""The vocabulary shared by the HTTP layer, the request pipeline and the two API dialects.

Gemini and OpenAI differ in how requests are spelled and how answers and errors are shaped, but a
simulated request goes through the same steps either way (auth, validation, quotas, faults,
latency, answer). Each dialect therefore turns its wire format into one :class:`ImageJob` and turns
outcomes back into :class:`Reply` values; the pipeline (``simulator.app``) never sees JSON shapes,
and the HTTP layer (``simulator.server``) never sees either.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from nanobatch.models.catalog import ModelSpec
from nanobatch.simulator.images import RenderedImage
from nanobatch.simulator.quotas import QuotaViolation
from nanobatch.simulator.safety import BlockDecision


@dataclass(frozen=True)
class HttpRequest:
    """A fully read request; header names are lower-cased."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""
    base_url: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(frozen=True)
class Reply:
    """A complete HTTP answer."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return cls(status, body, "application/json; charset=UTF-8", dict(headers or {}))


@dataclass(frozen=True)
class Hold:
    """Never answer: keep the connection open until the client gives up (or ``seconds`` pass)."""

    seconds: float


@dataclass(frozen=True)
class Drop:
    """Start sending ``reply`` with its full Content-Length, then cut the connection mid-body."""

    reply: Reply


@dataclass(frozen=True)
class Stream:
    """An answer whose body is produced chunk by chunk while it is sent, never held whole in memory
    (an oversized body); ``length`` is announced in Content-Length. ``label`` names it in
    ``stats()["abandoned"]`` when the client hangs up before the end."""

    status: int
    content_type: str
    length: int
    chunks: Iterator[bytes]
    label: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Trickle:
    """Send ``reply``'s headers at once, then its body one byte per ``interval`` seconds; after
    ``limit`` seconds the rest goes at once, so a patient client still gets a whole answer and a
    server thread is never tied up for longer than that."""

    reply: Reply
    interval: float
    limit: float
    label: str = "trickle"


Outcome = Reply | Hold | Drop | Stream | Trickle


class Rejected(Exception):
    """A request refused before it reaches quotas (bad auth, bad request, unknown model)."""

    def __init__(self, reply: Reply, outcome: str) -> None:
        super().__init__(outcome)
        self.reply = reply
        self.outcome = outcome


@dataclass
class ImageJob:
    """A validated image request, independent of the API it came through."""

    model: ModelSpec
    prompt: str
    width: int
    height: int
    fmt: str = "png"
    aspect_ratio: str | None = None
    image_size: str | None = None
    n: int = 1
    input_mime_types: tuple[str, ...] = ()
    input_sha256: tuple[str, ...] = ()  # of each input image's bytes (the request log shows which)
    prompt_tokens: int = 0
    output_tokens: int = 0
    want_text: bool = False
    response_format: str = "b64_json"
    quality: str | None = None
    background: str | None = None
    service_tier: str = "standard"  # Gemini ``serviceTier``: standard, flex or priority

    @property
    def quota_tokens(self) -> int:
        """What the request costs against a tokens-per-minute limit."""
        return self.prompt_tokens + self.output_tokens * self.n

    @property
    def label(self) -> str:
        """The small caption drawn on the image: model, size, ratio, pixels."""
        size = f"{self.width}x{self.height}"
        parts = [self.model.name, self.image_size or "", self.aspect_ratio or "", size]
        return "  ".join(part for part in parts if part)


class Dialect(Protocol):
    """One API's spelling of requests, answers and errors."""

    route: str
    allows_no_image: bool

    def auth_style(self, request: HttpRequest) -> str:
        """How a key was presented: ``x-goog-api-key``, ``bearer``, ``query`` or ``none``."""
        ...

    def presented_key(self, request: HttpRequest) -> str | None:
        """The key the client sent, if any (only the ``echo_key`` fault ever repeats it)."""
        ...

    def authenticate(self, request: HttpRequest) -> None:
        """Raises :class:`Rejected` when a key is required and missing or wrong."""
        ...

    def parse(self, request: HttpRequest) -> ImageJob:
        """Validate the request; raises :class:`Rejected` with the API's error answer."""
        ...

    def rate_limited(self, violation: QuotaViolation) -> Reply: ...

    def failure(self, status: int) -> Reply: ...

    def blocked(self, job: ImageJob, decision: BlockDecision) -> Reply: ...

    def no_image(self, job: ImageJob) -> Reply: ...

    def success(self, job: ImageJob, images: list[RenderedImage], filler: str | None = None) -> Reply:
        """The image answer; ``filler``, when given, goes in a free-text field of the answer (a
        Gemini text part, OpenAI's ``revised_prompt``) -- the oversized fault pads it there."""
        ...

    def key_echo(self, job: ImageJob, key: str, status: int) -> Reply:
        """A ``status`` (429 or 400) error that repeats ``key`` as sent and lower-cased."""
        ...
