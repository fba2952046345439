"""The two tables: ``batches`` (one submitted file) and ``generation_tasks`` (one image to make).

See docs/architecture.md, "State machine". A task row carries everything a worker needs, so a Celery
message only ever holds its id, and everything a worker learns, so the database alone answers "what happened".
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from nanobatch.models.base import Base, UTCDateTime, utcnow
from nanobatch.models.status import BatchStatus, TaskStatus


def new_id() -> str:
    return str(uuid.uuid4())


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.OPEN.value)
    source: Mapped[str | None] = mapped_column(String(500))
    template: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(100))
    image_size: Mapped[str | None] = mapped_column(String(8))
    aspect_ratio: Mapped[str] = mapped_column(String(8), default="1:1")
    output_format: Mapped[str] = mapped_column(String(8), default="png")
    reuse: Mapped[bool] = mapped_column(Boolean, default=False)
    budget_usd: Mapped[float | None] = mapped_column(Float)
    spent_usd: Mapped[float] = mapped_column(Float, default=0.0)
    reserved_usd: Mapped[float] = mapped_column(Float, default=0.0)
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime)
    window_start: Mapped[str | None] = mapped_column(String(5))  # "HH:MM" in window_tz
    window_end: Mapped[str | None] = mapped_column(String(5))
    window_tz: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    tasks: Mapped[list[GenerationTask]] = relationship(back_populates="batch", passive_deletes=True)


class GenerationTask(Base):
    __tablename__ = "generation_tasks"
    __table_args__ = (
        UniqueConstraint("batch_id", "key", name="uq_generation_tasks_batch_key"),
        Index("ix_generation_tasks_batch_status", "batch_id", "status"),
        Index("ix_generation_tasks_status_not_before", "status", "not_before"),
        Index("ix_generation_tasks_content_hash", "content_hash"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    input_images: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Recorded at submit, re-checked where the worker reads the input images (workers/inputs.py): the
    # folder they had to lie in, and each file's SHA-256 (same order as input_images).
    input_root: Mapped[str | None] = mapped_column(Text)
    input_sha256: Mapped[list[str] | None] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(100))
    image_size: Mapped[str | None] = mapped_column(String(8))
    aspect_ratio: Mapped[str] = mapped_column(String(8))
    output_format: Mapped[str] = mapped_column(String(8), default="png")
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.PENDING.value)

    # Scheduling and ownership.
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # error attempts only
    rate_waits: Mapped[int] = mapped_column(Integer, default=0)  # limiter/429 waits, never charged
    # The task's own upstream 429s, bounded by NANOBATCH_MAX_RATE_WAITS / _SECONDS / _DAY_PARKS.
    upstream_waits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    upstream_wait_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    day_parks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claim_token: Mapped[str | None] = mapped_column(String(36))
    worker: Mapped[str | None] = mapped_column(String(200))
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Outcome.
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result_uri: Mapped[str | None] = mapped_column(Text)
    result_sha256: Mapped[str | None] = mapped_column(String(64))
    mime_type: Mapped[str | None] = mapped_column(String(32))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    bytes: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    model_used: Mapped[str | None] = mapped_column(String(100))  # differs from model after a fallback
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the row's other columns, kept for export

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    batch: Mapped[Batch] = relationship(back_populates="tasks")
