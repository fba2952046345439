"""The Celery side, kept thin: the app and its configuration, the task definitions (one-line
wrappers around :mod:`nanobatch.tasks.serve` and :mod:`nanobatch.tasks.sweep`), the publisher that
carries task ids to workers, the per-process runtime, and the embedded worker.

``celery -A nanobatch.tasks.celeryapp worker -P threads`` (or ``-A nanobatch.tasks``) finds ``app``.
"""

from nanobatch.tasks.celeryapp.app import create_app

app = create_app()

__all__ = ["app"]
