"""Reading a Gemini ``generateContent`` body into an :class:`ImageJob`, as strictly as the real API.

Clients send camelCase (REST docs, raw httpx) or snake_case (proto-JSON, some SDK paths), and the
real service accepts both, so every key is looked up in both spellings. What the real service
rejects is rejected here too, with its status and a similar message: unknown fields at the top
level and in ``imageConfig`` -- where the Developer API knows only ``aspectRatio`` and ``imageSize``,
so ``outputMimeType`` (the Vertex-only field clients copy from examples) is an unknown name, as is
``responseModalities`` on the ``v1`` path (only ``v1beta`` has it) -- an aspect ratio it does not
know, an ``imageSize`` the model lacks (sizes are case-sensitive: ``2k`` is an error), too many
input images, broken base64, ``systemInstruction`` on a model without developer instructions.
Unknown names are checked first, on the raw JSON, before the model is even looked up, as a
front end parsing the request would. Model facts come from the catalog, except the two noted below.
A top-level ``serviceTier`` (``flex``, ``standard``, ``priority``; ``unspecified`` = standard, any
case, as google-genai's ``ServiceTier`` sends it) lands on the job; another value is a 400.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from nanobatch.models.catalog import ASPECT_RATIOS, CatalogError, ModelSpec
from nanobatch.simulator.config import SERVICE_TIERS
from nanobatch.simulator.google_errors import developer_instruction_disabled, invalid_argument, unknown_fields
from nanobatch.simulator.protocol import ImageJob, Rejected

TOP_LEVEL_KEYS = frozenset(
    {
        "contents",
        "generationConfig",
        "generation_config",
        "safetySettings",
        "safety_settings",
        "systemInstruction",
        "system_instruction",
        "tools",
        "toolConfig",
        "tool_config",
        "cachedContent",
        "cached_content",
        "labels",
        "model",
        "serviceTier",
        "service_tier",
    }
)
#: The Developer API's ImageConfig; google-genai refuses output_mime_type, output_compression_quality
#: and the rest "outside Vertex", and the service answers them with an unknown-name 400.
IMAGE_CONFIG_KEYS = frozenset({"aspectRatio", "aspect_ratio", "imageSize", "image_size"})
#: GenerationConfig fields that exist on v1beta only; ``v1`` rejects them as unknown names.
V1BETA_ONLY_CONFIG_KEYS = frozenset({"responseModalities", "response_modalities"})
#: Models that refuse ``systemInstruction``. A model fact, kept here until the catalog has a field
#: for it (models/ is outside the simulator).
NO_DEVELOPER_INSTRUCTION = frozenset({"gemini-2.5-flash-image"})
INPUT_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})
#: What a Gemini answer can be encoded as; the request cannot choose (``image_format_default`` does).
OUTPUT_FORMATS = ("png", "jpeg")


def pick(mapping: dict[str, Any], camel: str, snake: str | None = None) -> Any:
    """A value under its camelCase or snake_case key (camelCase wins when both are present)."""
    if camel in mapping:
        return mapping[camel]
    return mapping.get(snake) if snake else None


def _reject(message: str) -> Rejected:
    return Rejected(invalid_argument(message), "invalid")


def read_body(raw: bytes, version: str = "v1beta") -> dict[str, Any]:
    """The request object, refused (400) when it is not JSON or names fields the API lacks."""
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _reject(f"Invalid JSON payload received. {exc}") from None
    return read_object(body, version)


def read_object(body: object, version: str = "v1beta") -> dict[str, Any]:
    """A decoded request object, refused (400) when it is not an object or names unknown fields."""
    if not isinstance(body, dict):
        raise _reject("Invalid JSON payload received. Expected an object (GenerateContentRequest).")
    unknown = unknown_names(body, version)
    if unknown:
        raise Rejected(unknown_fields(unknown), "invalid")
    return body


def unknown_names(body: dict[str, Any], version: str) -> list[tuple[str, str]]:
    """Every ``(name, where)`` the API version does not know, in the order they appear."""
    found = [(key, "") for key in body if key not in TOP_LEVEL_KEYS]
    config = pick(body, "generationConfig", "generation_config")
    if not isinstance(config, dict):
        return found
    if version == "v1":
        found += [(key, "generation_config") for key in config if key in V1BETA_ONLY_CONFIG_KEYS]
    image = pick(config, "imageConfig", "image_config")
    if isinstance(image, dict):
        found += [(key, "generation_config.image_config") for key in image if key not in IMAGE_CONFIG_KEYS]
    return found


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _reject(f"Invalid value at '{where}': expected an object.")
    return value


def read_contents(body: dict[str, Any]) -> tuple[str, list[str]]:
    """The prompt (all text parts joined) and the MIME type of every input image."""
    contents = body.get("contents")
    if isinstance(contents, dict):
        contents = [contents]
    if not isinstance(contents, list) or not contents:
        raise _reject("* GenerateContentRequest.contents: contents is not specified")
    texts: list[str] = []
    mimes: list[str] = []
    for index, content in enumerate(contents):
        parts = _object(content, f"contents[{index}]").get("parts")
        if not isinstance(parts, list) or not parts:
            raise _reject(
                f"* GenerateContentRequest.contents[{index}].parts: contents.parts must not be empty."
            )
        for part in parts:
            _read_part(_object(part, f"contents[{index}].parts"), texts, mimes)
    return "\n".join(texts), mimes


def _read_part(part: dict[str, Any], texts: list[str], mimes: list[str]) -> None:
    if isinstance(part.get("text"), str):
        texts.append(part["text"])
    inline = pick(part, "inlineData", "inline_data")
    if inline is not None:
        mimes.append(_check_inline(_object(inline, "inline_data")))
    file_data = pick(part, "fileData", "file_data")
    if file_data is not None:
        mimes.append(str(pick(_object(file_data, "file_data"), "mimeType", "mime_type") or "image/png"))


def _check_inline(inline: dict[str, Any]) -> str:
    mime = pick(inline, "mimeType", "mime_type")
    if mime not in INPUT_MIME_TYPES:
        raise _reject(f"Unsupported MIME type: {mime}")
    data = inline.get("data")
    if not isinstance(data, str) or not data:
        raise _reject("* GenerateContentRequest.contents.parts.inline_data.data: inline data is empty")
    try:
        base64.b64decode(data, altchars=b"-_" if ("-" in data or "_" in data) else None, validate=True)
    except (binascii.Error, ValueError):
        raise _reject(
            "Invalid value at 'contents.parts.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
        ) from None
    return str(mime)


def read_image_config(body: dict[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
    """``imageConfig`` and ``responseModalities`` (``None`` if absent); names were checked by read_body."""
    config = _object(pick(body, "generationConfig", "generation_config"), "generation_config")
    image = _object(pick(config, "imageConfig", "image_config"), "generation_config.image_config")
    modalities = pick(config, "responseModalities", "response_modalities")
    if modalities is not None and not isinstance(modalities, list):
        raise _reject("Invalid value at 'generation_config.response_modalities': expected a list.")
    return image, [str(m).upper() for m in modalities] if modalities is not None else None


def build_job(model: ModelSpec, body: dict[str, Any], default_format: str) -> ImageJob:
    """Everything validated against the model's catalog entry."""
    instruction = pick(body, "systemInstruction", "system_instruction")
    if instruction is not None and model.name in NO_DEVELOPER_INSTRUCTION:
        raise Rejected(developer_instruction_disabled(model.name), "invalid")
    prompt, mimes = read_contents(body)
    image, modalities = read_image_config(body)
    if modalities is not None and "IMAGE" not in modalities:
        wanted = ", ".join(m.lower() for m in modalities) or "none"
        raise _reject(f"Model does not support the requested response modalities: {wanted}")
    if len(mimes) > model.max_input_images:
        raise _reject(
            f"Too many input images: {len(mimes)}; model {model.name} accepts at most "
            f"{model.max_input_images}."
        )
    ratio, size = _ratio(image), _size(model, image)
    width, height = _dimensions(model, size, ratio)
    return ImageJob(
        model=model,
        prompt=prompt,
        width=width,
        height=height,
        fmt=default_format if default_format in OUTPUT_FORMATS else "png",
        aspect_ratio=ratio,
        image_size=size,
        input_mime_types=tuple(mimes),
        input_sha256=_input_digests(body),
        prompt_tokens=model.estimate_prompt_tokens(prompt, len(mimes)),
        output_tokens=model.output_tokens(size),
        want_text=bool(modalities and "TEXT" in modalities),
        service_tier=read_service_tier(body),
    )


def read_service_tier(body: dict[str, Any]) -> str:
    """The request's ``serviceTier`` (``standard`` when absent or ``unspecified``), case-insensitive."""
    tier = pick(body, "serviceTier", "service_tier")
    if tier is None:
        return "standard"
    name = str(tier).lower() if isinstance(tier, str) else ""
    if name == "unspecified":
        return "standard"
    if name not in SERVICE_TIERS:
        raise _reject(
            f"Invalid value at 'service_tier' (type.googleapis.com/google.ai.generativelanguage.v1beta."
            f'ServiceTier), "{tier}"'
        )
    return name


def _input_digests(body: dict[str, Any]) -> tuple[str, ...]:
    """sha256 of each inline input image (already validated by :func:`read_contents`)."""
    contents = body.get("contents")
    digests = []
    for content in contents if isinstance(contents, list) else [contents]:
        for part in content.get("parts", []) if isinstance(content, dict) else []:
            inline = pick(part, "inlineData", "inline_data") if isinstance(part, dict) else None
            if isinstance(inline, dict) and isinstance(inline.get("data"), str):
                data = inline["data"]
                raw = base64.b64decode(data, altchars=b"-_" if ("-" in data or "_" in data) else None)
                digests.append(hashlib.sha256(raw).hexdigest())
    return tuple(digests)


def _ratio(image: dict[str, Any]) -> str:
    ratio = pick(image, "aspectRatio", "aspect_ratio")
    if ratio is None:
        return "1:1"
    if ratio not in ASPECT_RATIOS:
        raise _reject(f"Unsupported aspect ratio: {ratio}. Supported: {', '.join(ASPECT_RATIOS)}.")
    return str(ratio)


def _size(model: ModelSpec, image: dict[str, Any]) -> str | None:
    size = pick(image, "imageSize", "image_size")
    if size is None:
        return model.default_size or None
    if not model.supports_image_size:
        raise _reject(f"imageSize is not supported for model {model.name}.")
    if size not in model.sizes:
        raise _reject(f"Unsupported image size: {size}. Supported: {', '.join(model.sizes)}.")
    return str(size)


def _dimensions(model: ModelSpec, size: str | None, ratio: str) -> tuple[int, int]:
    try:
        return model.dimensions(size, ratio)
    except CatalogError as exc:
        raise _reject(str(exc)) from None
