"""Gemini service tiers on a ``generateContent`` body: ``flex`` (cheaper, slower, refused more often),
``standard`` (today's behaviour) and ``priority`` (faster, dearer).

The tier is a top-level ``serviceTier`` field of the request, beside ``contents`` and
``generationConfig`` (google-genai ``GenerateContentConfig.service_tier`` -> ``serviceTier`` in
``models._GenerateContentConfig_to_mldev``; ``types.ServiceTier`` values ``flex``, ``standard``,
``priority``, sent lower-case). Kept apart from :mod:`workers.providers.gemini` so the request
builder stays as it is until the lanes integration decides where a task's tier comes from.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

FIELD = "serviceTier"


class ServiceTier(StrEnum):
    STANDARD = "standard"
    FLEX = "flex"
    PRIORITY = "priority"


def parse_service_tier(value: str) -> ServiceTier:
    """``value`` as a tier (case-insensitive), or a ``ValueError`` listing the valid ones."""
    try:
        return ServiceTier(value.strip().lower())
    except ValueError:
        valid = ", ".join(tier.value for tier in ServiceTier)
        raise ValueError(f"unknown service tier {value!r}; valid tiers: {valid}") from None


def with_service_tier(body: dict[str, Any], tier: ServiceTier | str | None) -> dict[str, Any]:
    """A copy of the generateContent ``body`` asking for ``tier``; ``None`` leaves it as it is
    (no field: the service's default, standard)."""
    if tier is None:
        return dict(body)
    chosen = tier if isinstance(tier, ServiceTier) else parse_service_tier(tier)
    return {**body, FIELD: chosen.value}
