"""Build providers and their shared HTTP client from typed config (the only place that picks a class).

Why a factory: callers (the Celery task, the CLI, benchmarks) hold a :class:`ProviderConfig` and one
``httpx.Client`` per worker process; they should not import protocol modules or branch on ``kind``.
"""

from __future__ import annotations

import httpx

from nanobatch.workers.providers.base import Provider, ProviderConfig
from nanobatch.workers.providers.body_gate import BodyGate
from nanobatch.workers.providers.gemini import GeminiProvider
from nanobatch.workers.providers.http import make_http_client
from nanobatch.workers.providers.openai_compat import OpenAICompatProvider

__all__ = ["make_http_client", "make_provider"]

_PROVIDERS: dict[str, type[GeminiProvider] | type[OpenAICompatProvider]] = {
    "gemini": GeminiProvider,
    "openai": OpenAICompatProvider,
}


def make_provider(config: ProviderConfig, client: httpx.Client, gate: BodyGate | None = None) -> Provider:
    """The provider for ``config.kind``, talking through the injected (shared, pooled) ``client``.

    ``gate`` bounds how many large answers the process reads and decodes at once (one per process).
    """
    try:
        provider_class = _PROVIDERS[config.kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {config.kind!r}; known: {', '.join(_PROVIDERS)}") from None
    return provider_class(config, client, gate)
