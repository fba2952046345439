"""The Celery side: the app (``celery -A tasks worker -P threads`` finds ``tasks.app``), the task
definitions, the sweeper, and the producer API the CLI uses. Depends on ``workers`` and ``models``."""

from nanobatch.tasks.celery_app import create_app

app = create_app()

__all__ = ["app"]
