"""What an operator must hear about without asking: models near shutdown, waits no rule recognised,
pools whose every call is refused. Shared by ``nanobatch status`` and ``nanobatch watch``.

Everything here is read-only and cheap: two aggregate queries on the database and one hash read
from Redis (the workers' pool health, :mod:`tasks.telemetry`). Redis is optional: without it (the
embedded mode) or when it cannot be reached, the pool alerts are left out, never the command.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from nanobatch.models.catalog import Catalog, CatalogError, load_catalog
from nanobatch.models.queries import models_by_batch, pending_with_code
from nanobatch.models.status import ErrorCode
from nanobatch.tasks.estimate import human_duration
from nanobatch.tasks.settings import Settings
from nanobatch.tasks.telemetry import PoolHealth, Telemetry

log = logging.getLogger("nanobatch.alerts")


@dataclass(frozen=True)
class Alert:
    subject: str  # "batch spring", "pool gemini-3-pro-image"
    text: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.text}"


def model_alerts(catalog: Catalog, models: dict[str, list[str]], on: date | None = None) -> list[Alert]:
    """Batches whose tasks use a model that is retired or shuts down within 14 days."""
    alerts = []
    for batch, names in models.items():
        for model in names:
            notice = catalog.shutdown_notice(model, on)
            if notice:
                alerts.append(Alert(f"batch {batch}", notice))
    return alerts


def unclassified_alerts(waiting: dict[str, tuple[int, str | None]]) -> list[Alert]:
    """Batches with tasks waiting after 429s no rule recognised (code ``unclassified_429``)."""
    return [
        Alert(
            f"batch {batch}",
            f"{count} task(s) waiting after an unrecognised 429 (unclassified_429): {message or '-'}",
        )
        for batch, (count, message) in waiting.items()
    ]


def pool_alerts(pools: dict[str, PoolHealth], now: float, after: float) -> list[Alert]:
    """Pools whose every call has been refused for longer than ``after`` seconds."""
    return [
        Alert(
            f"pool {health.pool}",
            f"every call refused for {human_duration(health.refused_for(now))} "
            f"(NANOBATCH_POOL_REFUSED_ALERT_SECONDS={after:g}); last answer: {health.last_refusal or '-'}",
        )
        for health in pools.values()
        if health.stalled(now, after)
    ]


def read_pool_health(settings: Settings) -> dict[str, PoolHealth]:
    """The workers' pool health from Redis; empty in embedded mode or when Redis cannot be read."""
    if settings.embedded:
        return {}
    from nanobatch.tasks.runtime import redis_for  # a Redis client only when there is one to reach

    client = redis_for(settings)
    try:
        return Telemetry(client, prefix=settings.limiter_prefix).pool_health()
    except (RedisError, OSError) as exc:
        log.warning("pool health not read: %s", exc)
        return {}
    finally:
        client.close()


def catalog_or_none(settings: Settings) -> Catalog | None:
    """The catalog, or ``None`` when the user's catalog file is unreadable (alerts are optional)."""
    try:
        return load_catalog(settings.catalog_file)
    except (OSError, CatalogError, ValueError) as exc:
        log.warning("model shutdown alerts skipped: cannot read the catalog: %s", exc)
        return None


def collect(
    session: Session,
    settings: Settings,
    catalog: Catalog | None,
    batches: Sequence[str],
    *,
    pools: Sequence[str] | None = None,
    now: float | None = None,
) -> list[Alert]:
    """Every alert for ``batches`` (and the pools they use, or ``pools`` when given)."""
    alerts = model_alerts(catalog, models_by_batch(session, batches)) if catalog is not None else []
    alerts += unclassified_alerts(pending_with_code(session, batches, ErrorCode.UNCLASSIFIED_429))
    health = read_pool_health(settings)
    wanted = set(pools) if pools is not None else None
    if wanted is not None:
        health = {pool: h for pool, h in health.items() if pool in wanted}
    alerts += pool_alerts(health, time.time() if now is None else now, settings.pool_refused_alert_seconds)
    return alerts
