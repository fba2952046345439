"""Reading OpenAI ``images/generations`` (JSON) and ``images/edits`` (multipart) into an ImageJob.

Relays put Gemini models behind this API as well as ``gpt-image`` ones, so any catalog model is
accepted. ``size`` is ``WIDTHxHEIGHT`` (sides multiples of 16, up to 8192 -- rendered exactly) or
``auto``/absent, which means the model's catalog 1:1 at its default size. Edits take one or more
files as ``image`` or ``image[]``; ``mask`` is accepted and ignored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from nanobatch.models.catalog import Catalog, CatalogError, ModelSpec
from nanobatch.simulator import openai_errors
from nanobatch.simulator.multipart import FormPart, parse_multipart
from nanobatch.simulator.protocol import HttpRequest, ImageJob, Rejected

SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
MAX_SIDE = 8192
MAX_N = 10
FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
RESPONSE_FORMATS = ("b64_json", "url")
QUALITIES = ("auto", "low", "medium", "high", "xhigh", "max", "standard", "hd")
BACKGROUNDS = ("transparent", "opaque", "auto")
IMAGE_FIELDS = ("image", "image[]")
FILE_TYPES = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"RIFF": "image/webp"}


def _reject(message: str, param: str | None = None) -> Rejected:
    return Rejected(openai_errors.invalid(message, param=param), "invalid")


def read_json(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise _reject(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly.)"
        ) from None
    if not isinstance(body, dict):
        raise _reject("The JSON body of your request must be an object.")
    return body


def read_form(request: HttpRequest) -> tuple[dict[str, str], list[FormPart]]:
    """Text fields and the uploaded image files of an edits request."""
    content_type = request.header("content-type") or ""
    try:
        parts = parse_multipart(content_type, request.body)
    except ValueError:
        message = f"Invalid Content-Type header ({content_type}), expected multipart/form-data."
        raise _reject(message) from None
    fields = {p.name: p.text for p in parts if p.filename is None and p.name not in IMAGE_FIELDS}
    images = [p for p in parts if p.name in IMAGE_FIELDS]
    if not images:
        raise _reject("Missing required parameter: 'image'.", "image")
    return fields, images


def image_mime(part: FormPart) -> str:
    """The upload's type from its bytes (clients often send application/octet-stream)."""
    for magic, mime in FILE_TYPES.items():
        if part.data.startswith(magic) and (mime != "image/webp" or part.data[8:12] == b"WEBP"):
            return mime
    raise _reject(
        f"Invalid file '{part.name}': unsupported mimetype ('{part.content_type}'). Supported "
        "file formats are 'image/jpeg', 'image/png', and 'image/webp'.",
        part.name,
    )


def resolve_model(catalog: Catalog, fields: Mapping[str, Any]) -> ModelSpec:
    name = fields.get("model")
    if not isinstance(name, str) or not name:
        raise _reject("Missing required parameter: 'model'.", "model")
    try:
        return catalog.resolve(name)
    except CatalogError:
        raise Rejected(openai_errors.model_not_found(name), "not_found") from None


def build_job(
    model: ModelSpec, fields: Mapping[str, Any], input_mimes: list[str], default_format: str
) -> ImageJob:
    """Validate the common fields of generations and edits against the model."""
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _reject("Missing required parameter: 'prompt'.", "prompt")
    if len(input_mimes) > model.max_input_images:
        raise _reject(
            f"Too many images: {len(input_mimes)}; model {model.name} accepts at most "
            f"{model.max_input_images}.",
            "image",
        )
    width, height = _size(model, fields.get("size"))
    n = _n(fields.get("n", 1))
    quality = _choice(fields.get("quality"), QUALITIES, "quality")
    background = _choice(fields.get("background"), BACKGROUNDS, "background")
    response_format = _choice(fields.get("response_format"), RESPONSE_FORMATS, "response_format")
    fmt = _choice(fields.get("output_format"), tuple(FORMATS), "output_format")
    return ImageJob(
        model=model,
        prompt=prompt,
        width=width,
        height=height,
        n=n,
        fmt=FORMATS[fmt] if fmt else default_format,
        aspect_ratio=_ratio(width, height),
        input_mime_types=tuple(input_mimes),
        prompt_tokens=model.estimate_prompt_tokens(prompt, len(input_mimes)),
        output_tokens=model.output_tokens(None),
        response_format=response_format or "b64_json",
        quality=quality,
        background=background,
    )


def _size(model: ModelSpec, size: Any) -> tuple[int, int]:
    if size in (None, "", "auto"):
        return model.dimensions(None, "1:1")
    match = SIZE.match(size) if isinstance(size, str) else None
    sides = (int(match[1]), int(match[2])) if match else (0, 0)
    if not all(16 <= side <= MAX_SIDE and side % 16 == 0 for side in sides):
        raise _reject(
            f"Invalid size '{size}'. Supported sizes are 'auto' or WIDTHxHEIGHT with both sides "
            f"multiples of 16 between 16 and {MAX_SIDE}.",
            "size",
        )
    return sides


def _n(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= MAX_N or isinstance(value, bool | float):
        raise _reject(f"Invalid 'n': expected an integer between 1 and {MAX_N}, got {value!r}.", "n")
    return n


def _choice(value: Any, allowed: tuple[str, ...], param: str) -> str | None:
    if value is None:
        return None
    if value not in allowed:
        raise _reject(
            f"Invalid value for '{param}': {value!r}. Supported values are: "
            f"{', '.join(repr(a) for a in allowed)}.",
            param,
        )
    return str(value)


def _ratio(width: int, height: int) -> str:
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"
