"""The Gemini ``generateContent`` dialect: auth, routing by model, and answers shaped like Google's.

Every body produced here must pass ``google.genai.types.GenerateContentResponse.model_validate``
(strict: unknown keys are errors), because the official SDK is the contract. Answers carry
``usageMetadata`` with the catalog's output tokens, ``modelVersion`` as the canonical model name
(aliases resolve, as upstream) and a fresh ``responseId``. A short text part precedes the image
when the request asked for ``TEXT`` as well as ``IMAGE``, as the real models often do.
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import Any
from urllib.parse import unquote

from nanobatch.models.catalog import Catalog, CatalogError, ModelSpec
from nanobatch.simulator import google_errors
from nanobatch.simulator.auth import google_key, key_matches
from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.gemini_request import build_job, read_body
from nanobatch.simulator.images import RenderedImage
from nanobatch.simulator.protocol import HttpRequest, ImageJob, Rejected, Reply
from nanobatch.simulator.quotas import QuotaViolation
from nanobatch.simulator.safety import BlockDecision

PATH = re.compile(r"^/(?P<version>v1beta|v1alpha|v1)/models/(?P<model>.+):generateContent$")
ROUTE = "gemini.generateContent"
NO_IMAGE_TEXT = "I can't generate an image for this request right now. Try rephrasing the prompt."


class GeminiDialect:
    route = ROUTE
    allows_no_image = True

    def __init__(self, catalog: Catalog, config: SimulatorConfig, version: str, model: str) -> None:
        self.catalog, self.config, self.version = catalog, config, version
        self.model_name = unquote(model).removeprefix("models/")

    def auth_style(self, request: HttpRequest) -> str:
        return google_key(request)[0]

    def authenticate(self, request: HttpRequest) -> None:
        expected = self.config.api_key
        if expected is None:
            return
        key = google_key(request)[1]
        if key is None:
            raise Rejected(google_errors.api_key_missing(), "auth")
        if not key_matches(key, expected):
            raise Rejected(google_errors.api_key_invalid(), "auth")

    def parse(self, request: HttpRequest) -> ImageJob:
        body = read_body(request.body, self.version)  # unknown names fail before the model lookup
        return build_job(self._model(), body, self.config.image_format_default)

    def rate_limited(self, violation: QuotaViolation) -> Reply:
        return google_errors.quota_exceeded(violation)

    def failure(self, status: int) -> Reply:
        return google_errors.fault(status)

    def blocked(self, job: ImageJob, decision: BlockDecision) -> Reply:
        if decision.shape == "prompt":
            body = {"promptFeedback": {"blockReason": decision.reason}, **_envelope(job, output=0)}
            return Reply.json(200, body)
        candidate = {
            "finishReason": decision.reason,
            "index": 0,
            "finishMessage": "The generated image was blocked by safety filters.",
        }
        return Reply.json(200, {"candidates": [candidate], **_envelope(job, output=0)})

    def no_image(self, job: ImageJob) -> Reply:
        candidate = {
            "content": {"role": "model", "parts": [{"text": NO_IMAGE_TEXT}]},
            "finishReason": "NO_IMAGE",
            "index": 0,
        }
        return Reply.json(200, {"candidates": [candidate], **_envelope(job, output=0)})

    def success(self, job: ImageJob, images: list[RenderedImage]) -> Reply:
        parts: list[dict[str, Any]] = []
        if job.want_text:
            parts.append({"text": f"Here is the image you asked for: {job.prompt[:60]}"})
        parts += [
            {"inlineData": {"mimeType": image.mime_type, "data": base64.b64encode(image.data).decode()}}
            for image in images
        ]
        candidate = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
        body = {"candidates": [candidate], **_envelope(job, output=job.output_tokens * len(images))}
        return Reply.json(200, body)

    def _model(self) -> ModelSpec:
        try:
            model = self.catalog.resolve(self.model_name)
        except CatalogError:
            model = None
        if model is None or model.provider != "gemini":
            raise Rejected(google_errors.model_not_found(self.model_name, self.version), "not_found")
        return model


def _envelope(job: ImageJob, output: int) -> dict[str, Any]:
    """``usageMetadata``, ``modelVersion`` and ``responseId``: the part every answer shares."""
    return {
        "usageMetadata": usage_metadata(job, output),
        "modelVersion": job.model.name,
        "responseId": secrets.token_urlsafe(16),
    }


def usage_metadata(job: ImageJob, output: int) -> dict[str, Any]:
    image_tokens = len(job.input_mime_types) * job.model.input_image_tokens
    prompt_details = [{"modality": "TEXT", "tokenCount": job.prompt_tokens - image_tokens}]
    if image_tokens:
        prompt_details.append({"modality": "IMAGE", "tokenCount": image_tokens})
    usage: dict[str, Any] = {
        "promptTokenCount": job.prompt_tokens,
        "totalTokenCount": job.prompt_tokens + output,
        "promptTokensDetails": prompt_details,
    }
    if output:
        usage["candidatesTokenCount"] = output
        usage["candidatesTokensDetails"] = [{"modality": "IMAGE", "tokenCount": output}]
    return usage
