"""The application: intake, producer, serving one task, sweeping, estimates, exports, reports.

The modules directly in this package do not import Celery. The Celery side — the app, the task
definitions, the publisher, the embedded worker, the per-process runtime — lives in
:mod:`nanobatch.tasks.celeryapp` and is built only when something asks for it, so importing the
intake (or ``nanobatch.Client``) never configures Celery. ``celery -A nanobatch.tasks worker`` still
finds the app: ``app`` (and ``celery``) are resolved here on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery
    celery: Celery


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        from nanobatch.tasks.celeryapp import app

        return app
    raise AttributeError(f"module 'nanobatch.tasks' has no attribute {name!r}")
