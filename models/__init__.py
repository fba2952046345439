"""Persistence: typed SQLAlchemy models, the status state machine, migrations, the model catalog.

Nothing here imports Celery or HTTP code: every other package may depend on ``models``.
"""

from nanobatch.models.base import Base, utcnow
from nanobatch.models.catalog import ASPECT_RATIOS, Catalog, CatalogError, ModelSpec, load_catalog
from nanobatch.models.db import Database
from nanobatch.models.status import BatchStatus, TaskStatus
from nanobatch.models.tables import Batch, GenerationTask

__all__ = [
    "ASPECT_RATIOS",
    "Base",
    "Batch",
    "BatchStatus",
    "Catalog",
    "CatalogError",
    "Database",
    "GenerationTask",
    "ModelSpec",
    "TaskStatus",
    "load_catalog",
    "utcnow",
]
