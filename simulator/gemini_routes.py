"""The Gemini ``generateContent`` dialect: auth, routing by model, and answers shaped like Google's.

Every body produced here must pass ``google.genai.types.GenerateContentResponse.model_validate``
(strict: unknown keys are errors), because the official SDK is the contract. Answers carry
``usageMetadata`` with the catalog's output tokens, ``modelVersion`` echoing the model id of the
path (what was asked, as upstream does: the simulator's aliases resolve for sizes and quotas only)
and a fresh ``responseId``. A short text part precedes the image when the request asked for
``TEXT`` as well as ``IMAGE``, as the real models often do.

3 Pro image answers think first, as the real model does: they open with a ``thought: true`` text
part (counted in ``usageMetadata.thoughtsTokenCount`` and the total), and the first answer part
after the thoughts and every image part carry an opaque ``thoughtSignature`` (Gemini image docs,
"thought signatures"). A client that takes the first part, or the first text, gets the thought.
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import Any
from urllib.parse import unquote

from nanobatch.models.catalog import Catalog, CatalogError, ModelSpec
from nanobatch.simulator import google_errors
from nanobatch.simulator.auth import google_key, google_refusal
from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.gemini_request import build_job, read_body, read_object
from nanobatch.simulator.images import RenderedImage
from nanobatch.simulator.protocol import HttpRequest, ImageJob, Rejected, Reply
from nanobatch.simulator.quotas import QuotaViolation
from nanobatch.simulator.safety import BlockDecision

PATH = re.compile(r"^/(?P<version>v1beta|v1alpha|v1)/models/(?P<model>.+):generateContent$")
ROUTE = "gemini.generateContent"
NO_IMAGE_TEXT = "I can't generate an image for this request right now. Try rephrasing the prompt."
#: Models whose answers carry thoughts (every ``gemini-3-pro-image*`` name). A model fact, kept here
#: until the catalog has a field for it (models/ is outside the simulator).
THINKING_MODEL_PREFIX = "gemini-3-pro-image"
SIGNATURE_BYTES = 96
CHARS_PER_TOKEN = 4


class GeminiDialect:
    route = ROUTE
    allows_no_image = True

    def __init__(self, catalog: Catalog, config: SimulatorConfig, version: str, model: str) -> None:
        self.catalog, self.config, self.version = catalog, config, version
        self.model_name = unquote(model).removeprefix("models/")

    def auth_style(self, request: HttpRequest) -> str:
        return google_key(request)[0]

    def presented_key(self, request: HttpRequest) -> str | None:
        return google_key(request)[1]

    def authenticate(self, request: HttpRequest) -> None:
        refusal = google_refusal(request, self.config.api_key)
        if refusal is not None:
            raise Rejected(refusal, "auth")

    def parse(self, request: HttpRequest) -> ImageJob:
        body = read_body(request.body, self.version)  # unknown names fail before the model lookup
        return build_job(self._model(), body, self.config.image_format_default)

    def parse_object(self, body: object) -> ImageJob:
        """A request already decoded from JSON (one request of a batch job), validated alike."""
        return build_job(self._model(), read_object(body, self.version), self.config.image_format_default)

    def rate_limited(self, violation: QuotaViolation) -> Reply:
        return google_errors.quota_exceeded(violation)

    def failure(self, status: int) -> Reply:
        return google_errors.fault(status)

    def key_echo(self, job: ImageJob, key: str, status: int) -> Reply:
        return google_errors.key_echo(status, self.model_name, key)

    def blocked(self, job: ImageJob, decision: BlockDecision) -> Reply:
        if decision.shape == "prompt":
            body = {"promptFeedback": {"blockReason": decision.reason}, **self._envelope(job, output=0)}
            return Reply.json(200, body)
        candidate = {
            "finishReason": decision.reason,
            "index": 0,
            "finishMessage": "The generated image was blocked by safety filters.",
        }
        return Reply.json(200, {"candidates": [candidate], **self._envelope(job, output=0)})

    def no_image(self, job: ImageJob) -> Reply:
        candidate = {
            "content": {"role": "model", "parts": [{"text": NO_IMAGE_TEXT}]},
            "finishReason": "NO_IMAGE",
            "index": 0,
        }
        return Reply.json(200, {"candidates": [candidate], **self._envelope(job, output=0)})

    def success(self, job: ImageJob, images: list[RenderedImage], filler: str | None = None) -> Reply:
        thoughts = thought_parts(job)
        answer: list[dict[str, Any]] = [{"text": filler}] if filler is not None else []
        if job.want_text:
            answer.append({"text": f"Here is the image you asked for: {job.prompt[:60]}"})
        answer += [
            {"inlineData": {"mimeType": image.mime_type, "data": base64.b64encode(image.data).decode()}}
            for image in images
        ]
        if thoughts:
            sign(answer)
        content = {"role": "model", "parts": thoughts + answer}
        candidate = {"content": content, "finishReason": "STOP", "index": 0}
        thought_tokens = sum(len(part["text"]) for part in thoughts) // CHARS_PER_TOKEN
        envelope = self._envelope(job, output=job.output_tokens * len(images), thoughts=thought_tokens)
        return Reply.json(200, {"candidates": [candidate], **envelope})

    def _envelope(self, job: ImageJob, output: int, thoughts: int = 0) -> dict[str, Any]:
        """``usageMetadata``, ``modelVersion`` and ``responseId``: the part every answer shares."""
        return {
            "usageMetadata": usage_metadata(job, output, thoughts),
            "modelVersion": self.model_name,
            "responseId": secrets.token_urlsafe(16),
        }

    def _model(self) -> ModelSpec:
        try:
            model = self.catalog.resolve(self.model_name)
        except CatalogError:
            model = None
        if model is None or model.provider != "gemini":
            raise Rejected(google_errors.model_not_found(self.model_name, self.version), "not_found")
        return model


def thinks(job: ImageJob) -> bool:
    return job.model.name.startswith(THINKING_MODEL_PREFIX)


def thought_parts(job: ImageJob) -> list[dict[str, Any]]:
    """The thought summary a thinking model opens with (empty for the others)."""
    if not thinks(job):
        return []
    subject = job.prompt[:80] or "the picture"
    text = (
        f"**Planning the composition**\n\nI'm working out how to show {subject!r}: "
        f"the framing for a {job.aspect_ratio or '1:1'} canvas, where the subject sits, "
        "the light and the palette, and which requested details must stay visible.\n\n"
        "**Refining the details**\n\nI'm checking proportions and textures before rendering."
    )
    return [{"text": text, "thought": True}]


def sign(answer: list[dict[str, Any]]) -> None:
    """Give the first answer part and every image part a ``thoughtSignature`` (opaque bytes)."""
    for index, part in enumerate(answer):
        if index == 0 or "inlineData" in part:
            part["thoughtSignature"] = base64.b64encode(secrets.token_bytes(SIGNATURE_BYTES)).decode()


def usage_metadata(job: ImageJob, output: int, thoughts: int = 0) -> dict[str, Any]:
    image_tokens = len(job.input_mime_types) * job.model.input_image_tokens
    prompt_details = [{"modality": "TEXT", "tokenCount": job.prompt_tokens - image_tokens}]
    if image_tokens:
        prompt_details.append({"modality": "IMAGE", "tokenCount": image_tokens})
    usage: dict[str, Any] = {
        "promptTokenCount": job.prompt_tokens,
        "totalTokenCount": job.prompt_tokens + output + thoughts,
        "promptTokensDetails": prompt_details,
    }
    if output:
        usage["candidatesTokenCount"] = output
        usage["candidatesTokensDetails"] = [{"modality": "IMAGE", "tokenCount": output}]
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage
