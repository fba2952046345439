"""Status values of tasks and batches, and which transitions between them are legal.

The transitions are enforced where they happen (a conditional ``UPDATE … WHERE status = …`` in
:mod:`models.transitions`); this module is the picture of them that code and docs share.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

#: Every legal move; ``failed → pending`` is an operator ``retry`` (fresh attempt budget).
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.PROCESSING, TaskStatus.CANCELLED}),
    TaskStatus.PROCESSING: frozenset(
        {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.PENDING, TaskStatus.CANCELLED}
    ),
    TaskStatus.FAILED: frozenset({TaskStatus.PENDING}),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


class BatchStatus(StrEnum):
    OPEN = "open"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    DONE = "done"


class Lane(StrEnum):
    """How a task reaches the upstream (docs/lanes.md): a service tier of ``generateContent``
    (``standard``, ``flex``, ``priority``) or the Batch API (``batch``). ``auto`` is a batch's choice
    only: the deadline planner gives each of its tasks one of the others."""

    STANDARD = "standard"
    FLEX = "flex"
    PRIORITY = "priority"
    BATCH = "batch"
    AUTO = "auto"


#: The lanes whose tasks travel as Celery messages (one ``generateContent`` call each, with the lane's
#: ``serviceTier``). Batch-lane tasks never do: the Batch API lane (``tasks/batch_lane.py``) groups them
#: into upstream jobs. Every place that chooses rows to publish applies it (``models.lifecycle``
#: ``dispatched_by_celery``, and the queue's partial indexes in ``models.tables``).
CELERY_LANES = frozenset({Lane.STANDARD, Lane.FLEX, Lane.PRIORITY})

#: The lanes a task can be in (``auto`` is resolved at submit).
TASK_LANES = (Lane.STANDARD, Lane.FLEX, Lane.PRIORITY, Lane.BATCH)


def parse_lane(text: str) -> Lane:
    """``text`` as a :class:`Lane`, or a ``ValueError`` that lists the valid lanes."""
    try:
        return Lane(text.strip().lower())
    except ValueError:
        valid = ", ".join(lane.value for lane in Lane)
        raise ValueError(f"unknown lane {text!r}; valid lanes: {valid}") from None


class ErrorCode(StrEnum):
    """Why a task failed, or why it is waiting: the ``error_code`` column and ``retry --reason CODE``.

    A public interface (users type these): extend, never rename. ``RETRYABLE`` below says whether an
    operator ``retry`` can help without changing the input (README, "Error codes").
    """

    # Upstream, transient: retried automatically with backoff (each counts an attempt).
    TRANSIENT = "transient"  # a transient upstream error of no more specific kind
    TIMEOUT = "timeout"  # the call took longer than NANOBATCH_REQUEST_TIMEOUT / connect timeout
    UNAVAILABLE = "unavailable"  # 5xx, connection refused/reset/dropped
    NO_IMAGE = "no_image"  # a 200 without an image (finishReason NO_IMAGE / OTHER)
    BAD_IMAGE = "bad_image"  # the image failed its check: truncated, not PNG/JPEG/WebP, too big, wrong size
    RESPONSE_TOO_LARGE = "response_too_large"  # the answer exceeded NANOBATCH_MAX_RESPONSE_BYTES
    # Upstream, rate limits: waits, never attempts.
    RATE_LIMITED = "rate_limited"  # 429 with a per-minute quota: the pool cools down
    DAILY_QUOTA = "daily_quota"  # 429 on a per-day quota: parked until Pacific midnight
    UNCLASSIFIED_429 = "unclassified_429"  # a 429 of no known shape: a bounded wait, message kept
    # Upstream, permanent: failed at once.
    PROVIDER_ERROR = "provider_error"  # an upstream error of no known kind
    PERMANENT = "permanent"  # a permanent upstream error of no more specific kind
    BLOCKED = "blocked"  # a safety block of the prompt or the output
    QUOTA_ZERO = "quota_zero"  # the quota is 0 or billing is off: a misconfigured account
    INVALID_REQUEST = "invalid_request"  # 400/401/403/404: bad request, bad key, unknown model
    BILLING = "billing"  # credits depleted, insufficient_quota, billing hard limit: pay, then retry
    ACCOUNT_RESTRICTED = "account_restricted"  # the upstream limited/disabled the account (policy)
    # Upstream, a wait bound ran out (each names its setting; the last upstream message is kept).
    RATE_WAIT_LIMIT = "rate_wait_limit"  # more 429 waits than NANOBATCH_MAX_RATE_WAITS
    RATE_WAIT_TIME_LIMIT = "rate_wait_time_limit"  # 429 waits past NANOBATCH_MAX_RATE_WAIT_SECONDS
    DAY_PARK_LIMIT = "day_park_limit"  # parked for the daily quota more than NANOBATCH_MAX_DAY_PARKS
    # Ours.
    INVALID_TASK = "invalid_task"  # the row cannot be served (unknown model, unreadable input image)
    LIMIT_TOO_SMALL = "limit_too_small"  # one request needs more tokens than the pool's tokens/minute
    STORAGE = "storage"  # the image could not be stored
    STORAGE_UNAVAILABLE = "storage_unavailable"  # the image store did not answer: waits, not counted
    INTERNAL = "internal"  # a bug or an infrastructure fault while serving the task
    LEASE_EXPIRED = "lease_expired"  # the worker holding the task stopped responding
    # Reasons a pending task waits (not failures).
    RATE_WAIT = "rate_wait"  # waiting for the global limiter to admit the call
    OUTSIDE_WINDOW = "outside_window"  # the batch's time window is closed
    BUDGET_REACHED = "budget_reached"  # the batch's budget is spent; waiting for it to be raised
    # Lanes.
    BATCH_JOB_ENDED = "batch_job_ended"  # its Batch API job failed, expired or was cancelled: next lane
    LANE_CHANGED = "lane_changed"  # moved to a faster lane to meet the batch's deadline

    @property
    def retryable(self) -> bool:
        """Whether ``nanobatch retry --reason CODE`` can succeed without changing the task's input."""
        return self not in NOT_RETRYABLE


#: Failures that a plain retry repeats: the prompt, the row or the request itself must change.
NOT_RETRYABLE = frozenset(
    {ErrorCode.BLOCKED, ErrorCode.INVALID_REQUEST, ErrorCode.INVALID_TASK, ErrorCode.PERMANENT}
)


def parse_error_code(text: str) -> ErrorCode:
    """``text`` as an :class:`ErrorCode`, or a ``ValueError`` that lists the valid codes."""
    try:
        return ErrorCode(text.strip().lower())
    except ValueError:
        valid = ", ".join(code.value for code in ErrorCode)
        raise ValueError(f"unknown error code {text!r}; valid codes: {valid}") from None
