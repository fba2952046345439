"""All configuration, read once from the environment (prefix ``NANOBATCH_``) or a TOML file.

Only the CLI and the Celery app build a :class:`Settings`; everything below them receives plain
values (``workers/`` never reads the environment). The API key comes only from the environment
(``NANOBATCH_API_KEY`` or ``GEMINI_API_KEY``), is a ``SecretStr`` so it never prints, and is not
accepted from the TOML file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from nanobatch.tasks.lane_settings import LaneSettings
from nanobatch.workers.limiter import Adaptation, PoolLimits

DEFAULT_HOME = Path("nanobatch-data")
GOOGLE_BASE_URL = "https://generativelanguage.googleapis.com"


class Settings(LaneSettings):
    """Every setting; the lanes' (Batch API, service tiers, planner, webhooks) come from
    :class:`LaneSettings` (``tasks/lane_settings.py``, docs/lanes.md)."""

    model_config = SettingsConfigDict(
        env_prefix="NANOBATCH_",
        extra="ignore",
        toml_file=os.environ.get("NANOBATCH_CONFIG_FILE", "nanobatch.toml"),
    )

    # Storage and infrastructure.
    database_url: str = f"sqlite:///{DEFAULT_HOME}/nanobatch.db"
    redis_url: str | None = None  # None: embedded broker (in-process) and embedded limiter
    # A local folder or an object-store URL (s3://bucket/prefix, gs://…, az://…): docs/storage.md.
    output_dir: str = str(DEFAULT_HOME / "images")
    catalog_file: str | None = None
    queue: str = "nanobatch"

    # Upstream.
    provider: Literal["gemini", "openai"] = "gemini"
    provider_base_url: str = GOOGLE_BASE_URL
    api_version: str = "v1beta"
    auth: Literal["x-goog-api-key", "bearer"] = "x-goog-api-key"
    api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("NANOBATCH_API_KEY", "GEMINI_API_KEY")
    )
    # Bounds the whole call, connect to last byte (not each read): a byte-trickling upstream is cut off.
    request_timeout: float = Field(default=120.0, gt=0)
    # Input images by URL (and other outbound fetches): private, loopback, link-local and metadata
    # addresses are refused unless this is true (tests on loopback, private networks).
    allow_private_urls: bool = False
    connect_timeout: float = Field(default=10.0, gt=0)
    # An answer larger than this (declared or streamed, after decompression) is a transient upstream
    # fault; a 4K image is ~30 MB of base64 JSON.
    max_response_bytes: int = Field(default=64 << 20, gt=0)

    # Defaults for rows that do not say.
    default_model: str = "gemini-nano-banana-2.1"  # GA 2026-10-06 (models/catalog.toml)
    default_aspect_ratio: str = "1:1"

    # Worker behaviour.
    concurrency: int = Field(default=16, gt=0, le=1000)
    max_attempts: int = Field(default=5, gt=0, le=100)
    # Large answers (4K images) read and decoded at once per process: bounds worker memory.
    decode_slots: int = Field(default=4, gt=0, le=1000)
    # glibc mmap threshold pinned in workers so large freed blocks return to the OS (0: leave it).
    malloc_mmap_threshold: int = Field(default=1 << 20, ge=0, le=1 << 30)
    # Every image (generated or input) is fully decoded before it counts; more pixels than this is
    # refused before decoding (the largest 4K size is 6336x2688 = 17 Mpx).
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    # How a generated image's size is checked against the catalog: "exact" (within the model's
    # size_tolerance), "aspect" (the ratio only: rehearsals against a thumbnail simulator), "off".
    image_size_check: Literal["exact", "aspect", "off"] = "exact"
    # Input images are re-checked where the worker reads them (size, symlinks, content, decode).
    max_input_image_bytes: int = Field(default=20 << 20, gt=0)
    # How long the final write of a paid result keeps retrying through a database outage; after
    # that the image stays staged on disk and the next delivery records it (docs/integrity.md).
    result_write_deadline: float = Field(default=900.0, gt=0)
    backoff_base: float = Field(default=2.0, gt=0)
    backoff_cap: float = Field(default=300.0, gt=0)
    max_inline_wait: float = Field(default=20.0, ge=0)  # wait for limiter capacity inside the task
    max_countdown: float = Field(default=60.0, ge=0)  # longer waits park the row in the DB
    lease_seconds: float | None = Field(default=None, gt=0)  # default: request_timeout + 60
    expected_latency: float = Field(default=15.0, gt=0)  # seconds per call, for dry-run ETAs
    fallback_models: list[str] = []
    # No wait without an end: per-task bounds on waiting out the upstream's 429s (workers/retry.py).
    max_rate_waits: int = Field(default=30, ge=0)  # 429 waits per task, then failed rate_wait_limit
    max_rate_wait_seconds: float = Field(default=3600.0, ge=0)  # their total, then rate_wait_time_limit
    max_day_parks: int = Field(default=3, ge=0)  # parks until Pacific midnight, then day_park_limit
    rate_limit_wait: float = Field(default=5.0, gt=0)  # first wait after a 429 that names none
    rate_limit_wait_max: float = Field(default=300.0, gt=0)  # ... doubled per such wait up to this
    pool_refused_alert_seconds: float = Field(default=1800.0, ge=0)  # alert: every call refused this long
    limits: dict[str, PoolLimits] = {}  # seeds for pools that have no live limits in Redis yet
    limiter_prefix: str = "nanobatch"
    # Adaptive share (docs/architecture.md, "Limiter"): after a per-minute 429 the limiter did not
    # predict, a pool's rpm/ipm/tpm apply times a share: x factor, held, then + recovery per minute.
    limiter_adapt: bool = True
    limiter_adapt_factor: float = Field(default=0.97, gt=0, lt=1)
    limiter_adapt_hold: float = Field(default=120.0, ge=0, le=86_400)
    limiter_adapt_recovery: float = Field(default=0.05, gt=0, le=1)  # share regained per minute

    # Recovery: every worker runs the sweeper (one at a time cluster-wide) and heartbeats in Redis.
    sweep_interval: float = Field(default=10.0, gt=0)
    heartbeat_interval: float = Field(default=5.0, gt=0)
    # A worker silent this long is dead (or paused): the sweeper reclaims its tasks.
    heartbeat_ttl: float = Field(default=20.0, gt=0)
    # Reconnects before the Celery worker gives up on the broker (Celery's default, ~45 min of
    # backoff); `nanobatch worker` then starts it again after a pause. None: retry forever.
    broker_connection_max_retries: int | None = Field(default=100, ge=0)
    redispatch_after: float = Field(default=600.0, gt=0)
    # PostgreSQL ends a worker's transaction left idle this long (its process paused mid-write:
    # SIGSTOP, a VM freeze), so the row locks it held stall nobody else; 0 = never (models/db.py).
    db_idle_transaction_limit: float = Field(default=60.0, ge=0)
    # Dispatch (docs/architecture.md, "Dispatch"): at most this many messages per quota pool in the
    # broker, refilled from the database as tasks end. The window is dispatch_window if set, else
    # dispatch_window_factor x the pool's concurrency (its limit, or the live workers' threads).
    dispatch_window_factor: float = Field(default=2.0, gt=0, le=1000)
    dispatch_window: int | None = Field(default=None, gt=0, le=1_000_000)
    # A pool with rpm/ipm gets no more than its calls in flight (rate x mean latency) plus this many
    # seconds of its admissions: a slow pool's tasks must not wait at its gate on every worker thread
    # while a faster pool has work (dispatch.rate_bound).
    dispatch_ahead: float = Field(default=10.0, gt=0, le=3600)
    # Refill also on this timer in every worker: how late a retry may be published after it is due.
    dispatch_interval: float = Field(default=2.0, gt=0)
    # The previous design, kept for comparison in bench/scale.py: submit publishes every row at once.
    dispatch_publish_all: bool = False
    timezone: str = "UTC"  # for batch windows and --at
    inbox_dir: Path | None = None
    inbox_time: str = "00:30"
    inbox_settle_seconds: float = Field(
        default=60.0, ge=0
    )  # skip files modified more recently (still copying)

    # Operations.
    flower_basic_auth: SecretStr | None = None  # "user:password"

    @field_validator("provider_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("output_dir", mode="before")
    @classmethod
    def _location_text(cls, value: object) -> object:
        """A :class:`Path` (tests, the API) is a local folder: kept as text like a URL."""
        return str(value) if isinstance(value, Path) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlWithoutSecrets(settings_cls))

    @model_validator(mode="after")
    def _lease_outlives_a_task(self) -> Settings:
        """A lease shorter than a task may legitimately hold its claim would let the sweeper hand a
        healthy task to a second worker (and pay for it twice)."""
        floor = self.request_timeout + self.max_inline_wait
        if self.lease_seconds is not None and self.lease_seconds <= floor:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds:g}) must exceed "
                f"request_timeout + max_inline_wait ({floor:g})"
            )
        return self

    @model_validator(mode="after")
    def _heartbeat_outlives_its_interval(self) -> Settings:
        """A TTL that one late beat could outlast would hand a healthy worker's tasks to another."""
        if self.heartbeat_ttl < 2 * self.heartbeat_interval:
            raise ValueError(
                f"heartbeat_ttl ({self.heartbeat_ttl:g}) must be at least twice "
                f"heartbeat_interval ({self.heartbeat_interval:g})"
            )
        return self

    @property
    def adaptation(self) -> Adaptation | None:
        """The limiter's reaction to unpredicted 429s, or ``None`` when turned off."""
        if not self.limiter_adapt:
            return None
        return Adaptation(
            factor=self.limiter_adapt_factor,
            hold_seconds=self.limiter_adapt_hold,
            recovery_per_minute=self.limiter_adapt_recovery,
        )

    @property
    def effective_lease_seconds(self) -> float:
        return self.lease_seconds or self.request_timeout + self.max_inline_wait + 30.0

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: broker and limiter live inside one process."""
        return not self.redis_url

    @property
    def broker_url(self) -> str:
        return self.redis_url or "memory://localhost//"

    @property
    def api_key_value(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None


class _TomlWithoutSecrets(TomlConfigSettingsSource):
    """The TOML file may hold any setting except the API key: secrets come from the environment."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        if "api_key" in data:
            raise ValueError("api_key must not be set in the config file; use NANOBATCH_API_KEY")
        for secret in ("webhook_url", "webhook_secret"):
            if secret in data:
                raise ValueError(
                    f"{secret} must not be set in the config file; use NANOBATCH_{secret.upper()}"
                )
        return data
