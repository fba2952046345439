"""Alembic environment: runs against the engine handed in by :func:`models.db.upgrade`."""

from __future__ import annotations

from alembic import context

from nanobatch.models import tables  # noqa: F401  (registers the tables on Base.metadata)
from nanobatch.models.base import Base

engine = context.config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
