"""The OpenAI images dialect: ``POST /v1/images/generations`` and ``POST /v1/images/edits``.

Answers carry what openai-python's ``ImagesResponse`` declares: ``created``, ``data`` (``b64_json`` or
``url``, with ``revised_prompt``), ``background``, ``output_format``, ``quality``, ``size`` and
``usage`` with input and output token details. ``quality``/``background`` report what was used,
never ``auto`` (the response type has no such value): auto quality is reported as ``high`` and
an auto background as ``opaque`` -- the simulator's choices, since it draws the same either way.
A URL points back at this simulator (``/_sim/files/<id>``) so clients exercise their download path.
OpenAI has no "200 without an image" answer, so ``no_image_rate`` does not apply here; both safety
block shapes become the 400 ``moderation_blocked`` error OpenAI returns.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from nanobatch.models.catalog import Catalog
from nanobatch.simulator import openai_errors
from nanobatch.simulator.auth import key_matches, openai_key
from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.files import FileStore
from nanobatch.simulator.images import RenderedImage
from nanobatch.simulator.openai_request import build_job, image_mime, read_form, read_json, resolve_model
from nanobatch.simulator.protocol import HttpRequest, ImageJob, Rejected, Reply
from nanobatch.simulator.quotas import QuotaViolation
from nanobatch.simulator.safety import BlockDecision

PATHS = {"/v1/images/generations": "generations", "/v1/images/edits": "edits"}
#: Requested quality -> the quality an answer reports (``standard``/``hd`` are retired DALL-E names).
REPORTED_QUALITY = {"auto": "high", "standard": "medium", "hd": "high"}


class OpenAIDialect:
    allows_no_image = False

    def __init__(
        self, catalog: Catalog, config: SimulatorConfig, files: FileStore, endpoint: str, base_url: str
    ) -> None:
        self.catalog, self.config, self.files, self.endpoint = catalog, config, files, endpoint
        self.base_url = base_url
        self.route = f"openai.{endpoint}"

    def auth_style(self, request: HttpRequest) -> str:
        return openai_key(request)[0]

    def presented_key(self, request: HttpRequest) -> str | None:
        return openai_key(request)[1]

    def authenticate(self, request: HttpRequest) -> None:
        expected = self.config.api_key
        if expected is None:
            return
        key = openai_key(request)[1]
        if key is None:
            raise Rejected(openai_errors.api_key_missing(), "auth")
        if not key_matches(key, expected):
            raise Rejected(openai_errors.api_key_invalid(), "auth")

    def parse(self, request: HttpRequest) -> ImageJob:
        default = self.config.image_format_default
        if self.endpoint == "edits":
            fields, uploads = read_form(request)
            model = resolve_model(self.catalog, fields)
            return build_job(model, fields, [image_mime(part) for part in uploads], default)
        body = read_json(request)
        return build_job(resolve_model(self.catalog, body), body, [], default)

    def rate_limited(self, violation: QuotaViolation) -> Reply:
        return openai_errors.rate_limited(violation)

    def failure(self, status: int) -> Reply:
        return openai_errors.fault(status)

    def key_echo(self, job: ImageJob, key: str, status: int) -> Reply:
        return openai_errors.key_echo(status, job.model.name, key)

    def blocked(self, job: ImageJob, decision: BlockDecision) -> Reply:
        return openai_errors.content_blocked()

    def no_image(self, job: ImageJob) -> Reply:
        raise NotImplementedError("OpenAI images have no empty-answer shape")

    def success(self, job: ImageJob, images: list[RenderedImage], filler: str | None = None) -> Reply:
        """The images; ``filler``, when given, is the first image's ``revised_prompt``."""
        quality = job.quality or "auto"
        data = [self._datum(job, image) for image in images]
        if filler is not None and data:
            data[0]["revised_prompt"] = filler
        body = {
            "created": int(time.time()),
            "background": "transparent" if job.background == "transparent" else "opaque",
            "data": data,
            "output_format": job.fmt,
            "quality": REPORTED_QUALITY.get(quality, quality),
            "size": f"{job.width}x{job.height}",
            "usage": usage(job, output=job.output_tokens * len(images)),
        }
        return Reply.json(200, body)

    def _datum(self, job: ImageJob, image: RenderedImage) -> dict[str, Any]:
        if job.response_format == "url":
            file_id = self.files.put(image.data, image.mime_type)
            return {"url": f"{self.base_url}/_sim/files/{file_id}", "revised_prompt": job.prompt}
        return {"b64_json": base64.b64encode(image.data).decode(), "revised_prompt": job.prompt}


def usage(job: ImageJob, output: int) -> dict[str, Any]:
    """Token usage as ``ImagesResponse.usage``: totals plus input and output details."""
    image_tokens = len(job.input_mime_types) * job.model.input_image_tokens
    text_tokens = job.prompt_tokens - image_tokens
    return {
        "input_tokens": job.prompt_tokens,
        "input_tokens_details": {"image_tokens": image_tokens, "text_tokens": text_tokens},
        "output_tokens": output,
        "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
        "total_tokens": job.prompt_tokens + output,
    }
