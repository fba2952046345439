"""Settings of issue 16 (lanes: Batch API, service tiers, webhooks), kept out of ``tasks/settings.py``
until the integration step mixes them in (``class Settings(LaneSettings, ...)``; the field names
already carry the ``NANOBATCH_`` prefix's conventions, so nothing changes for users then).

Used on its own meanwhile: ``LaneSettings()`` reads the same environment and TOML-free. The webhook
URL and secret are ``SecretStr`` (a Slack incoming-webhook URL is itself a credential) and never
print.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nanobatch.tasks.webhooks import WebhookConfig
from nanobatch.workers.providers.gemini_batch import (
    INLINE_LIMIT_BYTES,
    UPLOAD_CHUNK_BYTES,
    UPLOAD_GRANULARITY,
)


class LaneSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NANOBATCH_", extra="ignore")

    # Batch API lane.
    batch_inline_limit_bytes: int = Field(default=INLINE_LIMIT_BYTES, gt=0)  # larger jobs go via a file
    batch_upload_chunk_bytes: int = Field(default=UPLOAD_CHUNK_BYTES, ge=UPLOAD_GRANULARITY)
    batch_poll_interval: float = Field(default=60.0, gt=0)  # seconds between polls of a running job
    # Service tier for standard-lane calls (None: the field is not sent, the service's default).
    service_tier: Literal["standard", "flex", "priority"] | None = None
    # Most requests in one upstream job (the builder groups pending batch-lane tasks up to this).
    batch_job_max_requests: int = Field(default=5000, ge=1, le=1_000_000)
    # The deadline planner (tasks/planner.py): the turnaround it expects from the Batch API, flex's and
    # priority's latency as a multiple of NANOBATCH_EXPECTED_LATENCY, and the time kept free before a
    # deadline.
    batch_expected_turnaround: float = Field(default=86_400.0, gt=0)
    flex_latency_factor: float = Field(default=3.0, gt=0)
    priority_latency_factor: float = Field(default=0.5, gt=0)
    deadline_margin: float = Field(default=900.0, ge=0)

    # Webhooks.
    webhook_url: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    webhook_format: Literal["json", "slack"] = "json"
    webhook_timeout: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_backoff_base: float = Field(default=2.0, gt=0)
    webhook_backoff_cap: float = Field(default=600.0, gt=0)
    webhook_queue_size: int = Field(default=1000, ge=1)
    # Thresholds for the events the integration step emits.
    webhook_failure_rate: float = Field(default=0.2, gt=0, le=1)  # batch.failure_rate_high above this
    webhook_failure_min_finished: int = Field(default=20, ge=1)  # ...once this many tasks finished
    webhook_pool_refused_seconds: float = Field(default=900.0, gt=0)  # pool.refused after this long
    # batch.deadline_at_risk when ETA + this margin passes the deadline.
    webhook_deadline_margin: float = Field(default=1800.0, ge=0)

    @model_validator(mode="after")
    def _json_webhooks_are_signed(self) -> LaneSettings:
        if self.batch_upload_chunk_bytes % UPLOAD_GRANULARITY:
            raise ValueError(f"batch_upload_chunk_bytes must be a multiple of {UPLOAD_GRANULARITY}")
        if self.webhook_url is not None and self.webhook_format == "json" and self.webhook_secret is None:
            raise ValueError(
                "NANOBATCH_WEBHOOK_URL with format json needs NANOBATCH_WEBHOOK_SECRET (events are signed)"
            )
        return self

    def webhook_config(self) -> WebhookConfig | None:
        """The delivery settings, or ``None`` when no webhook URL is configured."""
        if self.webhook_url is None:
            return None
        return WebhookConfig(
            url=self.webhook_url.get_secret_value(),
            secret=self.webhook_secret.get_secret_value() if self.webhook_secret else None,
            format=self.webhook_format,
            timeout=self.webhook_timeout,
            max_attempts=self.webhook_max_attempts,
            backoff_base=self.webhook_backoff_base,
            backoff_cap=self.webhook_backoff_cap,
            queue_size=self.webhook_queue_size,
        )
