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

from nanobatch.workers.limiter import PoolLimits

DEFAULT_HOME = Path("nanobatch-data")
GOOGLE_BASE_URL = "https://generativelanguage.googleapis.com"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NANOBATCH_",
        extra="ignore",
        toml_file=os.environ.get("NANOBATCH_CONFIG_FILE", "nanobatch.toml"),
    )

    # Storage and infrastructure.
    database_url: str = f"sqlite:///{DEFAULT_HOME}/nanobatch.db"
    redis_url: str | None = None  # None: embedded broker (in-process) and embedded limiter
    output_dir: Path = DEFAULT_HOME / "images"
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
    request_timeout: float = Field(default=120.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)

    # Defaults for rows that do not say.
    default_model: str = "gemini-2.5-flash-image"
    default_aspect_ratio: str = "1:1"

    # Worker behaviour.
    concurrency: int = Field(default=16, gt=0, le=1000)
    max_attempts: int = Field(default=5, gt=0, le=100)
    # Large answers (4K images) read and decoded at once per process: bounds worker memory.
    decode_slots: int = Field(default=4, gt=0, le=1000)
    # glibc mmap threshold pinned in workers so large freed blocks return to the OS (0: leave it).
    malloc_mmap_threshold: int = Field(default=1 << 20, ge=0, le=1 << 30)
    backoff_base: float = Field(default=2.0, gt=0)
    backoff_cap: float = Field(default=300.0, gt=0)
    max_inline_wait: float = Field(default=20.0, ge=0)  # wait for limiter capacity inside the task
    max_countdown: float = Field(default=60.0, ge=0)  # longer waits park the row in the DB
    lease_seconds: float | None = Field(default=None, gt=0)  # default: request_timeout + 60
    expected_latency: float = Field(default=15.0, gt=0)  # seconds per call, for dry-run ETAs
    fallback_models: list[str] = []
    limits: dict[str, PoolLimits] = {}  # seeds for pools that have no live limits in Redis yet
    limiter_prefix: str = "nanobatch"

    # Recovery: every worker runs the sweeper (one at a time cluster-wide) and heartbeats in Redis.
    sweep_interval: float = Field(default=10.0, gt=0)
    heartbeat_interval: float = Field(default=5.0, gt=0)
    # A worker silent this long is dead (or paused): the sweeper reclaims its tasks.
    heartbeat_ttl: float = Field(default=20.0, gt=0)
    # Reconnects before the Celery worker gives up on the broker (Celery's default, ~45 min of
    # backoff); `nanobatch worker` then starts it again after a pause. None: retry forever.
    broker_connection_max_retries: int | None = Field(default=100, ge=0)
    redispatch_after: float = Field(default=600.0, gt=0)
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
        return data
