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
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from nanobatch.models.base import Base, UTCDateTime, utcnow
from nanobatch.models.status import CELERY_LANES, BatchStatus, Lane, TaskStatus

#: Rows Celery carries (``models.status.CELERY_LANES``): batch-lane rows wait in the queue's indexes
#: for no message, so a refill never publishes one (the Batch API lane takes them).
CELERY_LANE_SQL = "lane IN ({})".format(", ".join(f"'{lane.value}'" for lane in sorted(CELERY_LANES)))
#: The predicates of the queue's partial indexes; a query must repeat one to use its index.
QUEUED_FRESH = f"status = 'pending' AND dispatched_at IS NULL AND not_before IS NULL AND {CELERY_LANE_SQL}"
QUEUED_LATER = (
    f"status = 'pending' AND dispatched_at IS NULL AND not_before IS NOT NULL AND {CELERY_LANE_SQL}"
)
IN_FLIGHT = "status = 'pending' AND dispatched_at IS NOT NULL"
#: A completed row still naming its claim's staged file (``workers/storage.py``: ``STAGING_DIR``), i.e.
#: recorded but not yet published: normally for milliseconds, for good when the worker died between
#: the two steps. The sweeper publishes those (``tasks/publishing.py``); the index holds only them.
STAGED_RESULT = "status = 'completed' AND result_uri LIKE '%/.staged/%'"


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
    # Dispatch order (docs/architecture.md, "Dispatch"): higher priority first; equal priorities
    # share the window by weighted round robin.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    weight: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Lanes (docs/lanes.md): what the submitter chose (``auto`` included) and the time to finish by.
    lane: Mapped[str] = mapped_column(String(16), default=Lane.STANDARD.value, server_default="standard")
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)

    tasks: Mapped[list[GenerationTask]] = relationship(back_populates="batch", passive_deletes=True)


class GenerationTask(Base):
    __tablename__ = "generation_tasks"
    __table_args__ = (
        UniqueConstraint("batch_id", "key", name="uq_generation_tasks_batch_key"),
        # Serves every (batch, status) read and status's recent completions (migration 0006).
        Index("ix_generation_tasks_batch_status_finished", "batch_id", "status", "finished_at"),
        Index("ix_generation_tasks_status_not_before", "status", "not_before"),
        Index("ix_generation_tasks_content_hash", "content_hash"),
        # A small partial index over pending rows waiting with a code (status's alerts, budget;
        # docs/architecture.md, "Counts").
        Index(
            "ix_generation_tasks_pending_code",
            "batch_id",
            "status",  # redundant, but then SQLite's planner prefers this index (three equalities)
            "error_code",
            postgresql_where=text("status = 'pending' AND error_code IS NOT NULL"),
            sqlite_where=text("status = 'pending' AND error_code IS NOT NULL"),
        ),
        Index("ix_generation_tasks_batch_job_id", "batch_job_id"),
        # The queue of record (models/queue.py), each a partial index small or ordered as its query
        # needs: undispatched rows in id order per pool and batch; retries parked until not_before;
        # rows with a message out (the window: bounded by its size).
        Index(
            "ix_generation_tasks_queue_fresh",
            "model",
            "batch_id",
            "id",
            postgresql_where=text(QUEUED_FRESH),
            sqlite_where=text(QUEUED_FRESH),
        ),
        Index(
            "ix_generation_tasks_queue_later",
            "not_before",
            postgresql_where=text(QUEUED_LATER),
            sqlite_where=text(QUEUED_LATER),
        ),
        Index(
            "ix_generation_tasks_in_flight",
            "model",
            "dispatched_at",
            postgresql_where=text(IN_FLIGHT),
            sqlite_where=text(IN_FLIGHT),
        ),
        Index(
            "ix_generation_tasks_staged_result",
            "finished_at",
            postgresql_where=text(STAGED_RESULT),
            sqlite_where=text(STAGED_RESULT),
        ),
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
    # The lane the task runs in (once finished: ran in), never ``auto``; its upstream batch job if any;
    # what its call would have cost at the standard price (the saving status and export show).
    lane: Mapped[str] = mapped_column(String(16), default=Lane.STANDARD.value, server_default="standard")
    batch_job_id: Mapped[str | None] = mapped_column(String(36))
    standard_cost_usd: Mapped[float | None] = mapped_column(Float)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    batch: Mapped[Batch] = relationship(back_populates="tasks")


class BatchCount(Base):
    """Tasks of a batch per (model, lane, status), and the sums of their ``cost_usd`` and standard cost.

    Kept by database triggers on ``generation_tasks`` (migration 0006), never written by our code
    except :func:`models.counts.compact`; read through :mod:`models.counts` (docs/architecture.md,
    "Counts"). No foreign key: a batch's delete cascades to its tasks, whose triggers bring its
    counts to zero, and the compaction drops rows of batches that are gone.
    """

    __tablename__ = "batch_counts"

    batch_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    lane: Mapped[str] = mapped_column(String(16), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    #: The same tasks at the standard price (``coalesce(standard_cost_usd, cost_usd)`` of each).
    standard_cost_usd: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class BatchCountDelta(Base):
    """PostgreSQL only: the insert-only log its statement triggers append to (no hot counter row);
    folded into :class:`BatchCount` by the sweeper. Empty on SQLite."""

    __tablename__ = "batch_count_deltas"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(36), index=True)
    model: Mapped[str] = mapped_column(String(100))
    lane: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    n: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[float] = mapped_column(Float)
    standard_cost_usd: Mapped[float] = mapped_column(Float)


class BatchJob(Base):
    """One job submitted to the Gemini Batch API: the source of truth for work that left our queue.

    Written (state ``creating``) before the remote create, so a crash between the two is found by
    the poller (it adopts the remote job by its display name, which is this row's id).
    """

    __tablename__ = "batch_jobs"
    __table_args__ = (Index("ix_batch_jobs_state", "state"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200))  # upstream "batches/…", once created
    model: Mapped[str] = mapped_column(String(100))
    lane: Mapped[str] = mapped_column(String(16), default=Lane.BATCH.value, server_default="batch")
    state: Mapped[str] = mapped_column(String(32))
    source: Mapped[str | None] = mapped_column(String(8))  # inline | file
    input_file: Mapped[str | None] = mapped_column(String(200))
    responses_file: Mapped[str | None] = mapped_column(String(200))
    request_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    succeeded: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
