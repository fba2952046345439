"""Service tiers on a task's request: flex and priority send ``serviceTier``, standard sends nothing."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from nanobatch.models.catalog import load_catalog
from nanobatch.tasks.serve import build_request
from nanobatch.workers.providers.base import ImageRequest, ProviderConfig
from nanobatch.workers.providers.gemini import GeminiProvider
from tests.unit.test_serve_logic import job

CATALOG = load_catalog()


@pytest.mark.parametrize(("lane", "tier"), [("standard", None), ("flex", "flex"), ("priority", "priority")])
def test_a_tasks_lane_is_its_requests_service_tier(lane: str, tier: str | None) -> None:
    spec = CATALOG.resolve("gemini-3-pro-image")
    assert build_request(job(lane=lane), spec).service_tier == tier


def png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("tier", [None, "flex", "priority"])
def test_the_gemini_body_carries_the_tier(tier: str | None) -> None:
    seen: list[dict[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        part = {"inlineData": {"mimeType": "image/png", "data": png()}}
        return httpx.Response(
            200, json={"candidates": [{"content": {"parts": [part]}, "finishReason": "STOP"}]}
        )

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        provider = GeminiProvider(ProviderConfig(base_url="http://sim.test", api_key="k"), client)
        provider.generate(ImageRequest(model="m", prompt="a mug", service_tier=tier))
    assert seen[0].get("serviceTier") == tier
