"""nanobatch: bulk image generation with Gemini image models and OpenAI-compatible endpoints.

The one import root of the distribution. Applications use :class:`nanobatch.Client` (the same
path the ``nanobatch`` command takes); the subpackages are ``nanobatch.models`` (persistence and
lifecycle rules), ``nanobatch.workers`` (serving one call, free of Celery), ``nanobatch.tasks``
(the application and its Celery side), ``nanobatch.cli`` and ``nanobatch.simulator``.

``Client`` is imported on first use, so ``import nanobatch.models`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from nanobatch.api import Client, RowProblem, SubmitRejected, SubmitResult

__all__ = ["Client", "RowProblem", "SubmitRejected", "SubmitResult", "__version__"]


def __getattr__(name: str) -> Any:
    if name in {"Client", "RowProblem", "SubmitRejected", "SubmitResult"}:
        from nanobatch import api

        return getattr(api, name)
    raise AttributeError(f"module 'nanobatch' has no attribute {name!r}")
