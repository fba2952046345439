"""Reading a Gemini ``generateContent`` body into an :class:`ImageJob`, as strictly as the real API.

Clients send camelCase (REST docs, raw httpx) or snake_case (proto-JSON, some SDK paths), and the
real service accepts both, so every key is looked up in both spellings. What the real service
rejects is rejected here too, with its status and a similar message: unknown fields at the top
level and in ``imageConfig``, an aspect ratio it does not know, an ``imageSize`` the model lacks
(sizes are case-sensitive: ``2k`` is an error), too many input images, broken base64. Model facts
come from the catalog only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from nanobatch.models.catalog import ASPECT_RATIOS, CatalogError, ModelSpec
from nanobatch.simulator.google_errors import invalid_argument
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
    }
)
IMAGE_CONFIG_KEYS = frozenset(
    {
        "aspectRatio",
        "aspect_ratio",
        "imageSize",
        "image_size",
        "outputMimeType",
        "output_mime_type",
        "outputCompressionQuality",
        "output_compression_quality",
    }
)
INPUT_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})
OUTPUT_FORMATS = {"image/png": "png", "image/jpeg": "jpeg"}


def pick(mapping: dict[str, Any], camel: str, snake: str | None = None) -> Any:
    """A value under its camelCase or snake_case key (camelCase wins when both are present)."""
    if camel in mapping:
        return mapping[camel]
    return mapping.get(snake) if snake else None


def _reject(message: str) -> Rejected:
    return Rejected(invalid_argument(message), "invalid")


def read_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _reject(f"Invalid JSON payload received. {exc}") from None
    if not isinstance(body, dict):
        raise _reject("Invalid JSON payload received. Expected an object (GenerateContentRequest).")
    _check_known(body, TOP_LEVEL_KEYS, "")
    return body


def _check_known(mapping: dict[str, Any], known: frozenset[str], where: str) -> None:
    for key in mapping:
        if key not in known:
            at = f" at '{where}'" if where else ""
            raise _reject(f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.')


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
    """``imageConfig`` (checked for unknown keys) and ``responseModalities`` (``None`` if absent)."""
    config = _object(pick(body, "generationConfig", "generation_config"), "generation_config")
    image = _object(pick(config, "imageConfig", "image_config"), "generation_config.image_config")
    _check_known(image, IMAGE_CONFIG_KEYS, "generation_config.image_config")
    modalities = pick(config, "responseModalities", "response_modalities")
    if modalities is not None and not isinstance(modalities, list):
        raise _reject("Invalid value at 'generation_config.response_modalities': expected a list.")
    return image, [str(m).upper() for m in modalities] if modalities is not None else None


def build_job(model: ModelSpec, body: dict[str, Any], default_format: str) -> ImageJob:
    """Everything validated against the model's catalog entry."""
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
        fmt=_format(image, default_format),
        aspect_ratio=ratio,
        image_size=size,
        input_mime_types=tuple(mimes),
        input_sha256=_input_digests(body),
        prompt_tokens=model.estimate_prompt_tokens(prompt, len(mimes)),
        output_tokens=model.output_tokens(size),
        want_text=bool(modalities and "TEXT" in modalities),
    )


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


def _format(image: dict[str, Any], default_format: str) -> str:
    mime = pick(image, "outputMimeType", "output_mime_type")
    if mime is None:
        return default_format if default_format in OUTPUT_FORMATS.values() else "png"
    if mime not in OUTPUT_FORMATS:
        raise _reject(f"Unsupported output MIME type: {mime}. Supported: {', '.join(OUTPUT_FORMATS)}.")
    return OUTPUT_FORMATS[mime]
