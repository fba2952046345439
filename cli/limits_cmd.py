"""``nanobatch limits``: show and change the global rate limits of quota pools.

Limits live in Redis (one hash per pool) and every worker's limiter reads them on each acquire, so a
``set`` applies to running workers at once, with no restart. Pool names are canonical model names; an
alias from the catalog is mapped to its model, any other name is taken as a custom pool.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlparse

import redis
import typer
from rich.table import Table

from nanobatch.cli.context import console, fail, load_settings
from nanobatch.models.catalog import CatalogError, load_catalog
from nanobatch.tasks.settings import Settings
from nanobatch.workers.limiter import LIMIT_FIELDS, LIMIT_MAXIMA, PACIFIC, PoolLimits, PoolState, RateLimiter

limits_app = typer.Typer(
    help="Show and change the global rate limits (stored in Redis, applied live to every worker).",
    no_args_is_help=True,
)


class LimitName(StrEnum):
    """The limits ``--clear`` accepts (the same names as :data:`LIMIT_FIELDS`)."""

    rpm = "rpm"
    ipm = "ipm"
    tpm = "tpm"
    rpd = "rpd"
    concurrency = "concurrency"


def _limit_option(name: str, text: str) -> Any:
    return typer.Option(f"--{name}", min=1, max=LIMIT_MAXIMA[name], help=f"{text} (1-{LIMIT_MAXIMA[name]:,})")


@limits_app.command("set")
def set_command(
    pool: Annotated[str, typer.Option("--pool", help="Model name, alias or custom pool name.")],
    rpm: Annotated[int | None, _limit_option("rpm", "Requests per minute")] = None,
    ipm: Annotated[int | None, _limit_option("ipm", "Images per minute")] = None,
    tpm: Annotated[int | None, _limit_option("tpm", "Tokens per minute")] = None,
    rpd: Annotated[int | None, _limit_option("rpd", "Requests per day (resets at midnight Pacific)")] = None,
    concurrency: Annotated[int | None, _limit_option("concurrency", "Calls in flight at once")] = None,
    clear: Annotated[
        list[LimitName] | None, typer.Option("--clear", help="Remove a limit (repeatable).")
    ] = None,
) -> None:
    """Set (merge) or clear limits of one pool; fields not mentioned are kept."""
    given = {"rpm": rpm, "ipm": ipm, "tpm": tpm, "rpd": rpd, "concurrency": concurrency}
    values = {name: value for name, value in given.items() if value is not None}
    cleared = [str(name.value) for name in clear or []]
    both = sorted(set(values) & set(cleared))
    if both:
        raise fail(f"cannot both set and clear {', '.join(both)}", code=2)
    if not values and not cleared:
        raise fail("nothing to do: give at least one of --rpm --ipm --tpm --rpd --concurrency --clear", 2)
    settings = load_settings()
    name = canonical_pool(settings, pool)
    with _redis_errors(settings):
        limiter = _limiter(settings)
        if cleared:
            limiter.clear_limits(name, *cleared)
        result = limiter.set_limits(name, PoolLimits(**values)) if values else limiter.get_limits(name)
    console.print(f"pool [bold]{name}[/bold]: {_describe(result)}")


@limits_app.command("show")
def show_command(
    pool: Annotated[str | None, typer.Option("--pool", help="Only this pool (model name or alias).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Limits, use in the last minute and today, what remains, in-flight calls, resets and cooldowns."""
    settings = load_settings()
    with _redis_errors(settings):
        limiter = _limiter(settings)
        names = [canonical_pool(settings, pool)] if pool else limiter.pools()
        states = [limiter.state(name) for name in names]
    if as_json:
        typer.echo(json.dumps([state_as_json(state) for state in states], indent=2))
    elif not states:
        console.print("no pools yet: set limits with `nanobatch limits set --pool MODEL --rpm N`")
    else:
        console.print(state_table(states))


def canonical_pool(settings: Settings, name: str) -> str:
    """The catalog's canonical model name for ``name`` (an alias), else ``name`` itself."""
    if not name.strip() or "{" in name or "}" in name:
        raise fail(f"invalid pool name {name!r}", code=2)
    try:
        catalog = load_catalog(settings.catalog_file)
    except (OSError, CatalogError, ValueError) as exc:
        raise fail(f"cannot read the model catalog: {exc}") from None
    return catalog.canonical(name) if name in catalog else name


def state_as_json(state: PoolState) -> dict[str, Any]:
    resets = state.day_resets_at
    return {
        "pool": state.pool,
        "limits": state.limits.as_dict(),
        "used": {
            "rpm": state.rpm_used,
            "ipm": state.ipm_used,
            "tpm": state.tpm_used,
            "rpd": state.day_used,
            "concurrency": state.inflight,
        },
        "remaining": state.remaining,
        "inflight": state.inflight,
        "day_resets_at": resets.isoformat(),
        "day_resets_at_local": resets.astimezone().isoformat(),
        "cooldown_until": state.cooldown_until.isoformat() if state.cooldown_until else None,
        "cooldown_reason": state.cooldown_reason,
        "share": state.share,
        "share_drops": state.share_drops,
    }


def state_table(states: list[PoolState]) -> Table:
    """One section per pool, one row per limit, then the pool's cooldown and adaptive share."""
    table = Table(title="Rate limits (used: last 60 s; rpd: today, Pacific day)")
    for column in ("pool", "limit", "set", "used", "remaining", "window / reset"):
        numeric = column in ("set", "used", "remaining")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for state in states:
        for row_index, name in enumerate(LIMIT_FIELDS):
            table.add_row(state.pool if row_index == 0 else "", name, *_limit_cells(state, name))
        table.add_row("", "cooldown", "", "", "", _cooldown_cell(state))
        table.add_row("", "share", f"{state.share:.0%}", "", "", _share_cell(state), end_section=True)
    return table


def _limit_cells(state: PoolState, name: str) -> tuple[str, str, str, str]:
    limit = getattr(state.limits, name)
    used = {
        "rpm": state.rpm_used,
        "ipm": state.ipm_used,
        "tpm": state.tpm_used,
        "rpd": state.day_used,
        "concurrency": state.inflight,
    }[name]
    remaining = state.remaining[name]
    window = {"rpd": _reset_cell(state.day_resets_at), "concurrency": "in flight now"}.get(name, "last 60 s")
    return (
        "-" if limit is None else f"{limit:,}",
        f"{used:,.0f}",
        "-" if remaining is None else f"{remaining:,.0f}",
        window,
    )


def _reset_cell(resets_at: datetime) -> str:
    local = resets_at.astimezone()
    return f"resets {local:%Y-%m-%d %H:%M %Z} ({resets_at.astimezone(PACIFIC):%H:%M %Z})"


def _cooldown_cell(state: PoolState) -> str:
    if state.cooldown_until is None:
        return "none"
    until = state.cooldown_until.astimezone()
    return f"until {until:%Y-%m-%d %H:%M:%S %Z} ({state.cooldown_reason or 'no reason'})"


def _share_cell(state: PoolState) -> str:
    if state.share >= 1.0:
        return "whole limits apply"
    return f"rpm/ipm/tpm x {state.share:.2f} after {state.share_drops} unpredicted 429(s); recovering"


def _describe(limits: PoolLimits) -> str:
    configured = limits.configured()
    return ", ".join(f"{k}={v:,}" for k, v in configured.items()) if configured else "no limits"


def _limiter(settings: Settings) -> RateLimiter:
    if not settings.redis_url:
        raise fail(
            "limits live in Redis, and no Redis is configured: set NANOBATCH_REDIS_URL "
            "(the embedded mode keeps its limiter inside one process, out of reach of this command)",
            code=2,
        )
    return RateLimiter(redis.Redis.from_url(settings.redis_url), prefix=settings.limiter_prefix)


@contextmanager
def _redis_errors(settings: Settings) -> Iterator[None]:
    """Turn an unreachable Redis into one clear line (host and port only: the URL may hold a password)."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        parsed = urlparse(settings.redis_url or "")
        raise fail(f"cannot reach Redis at {parsed.hostname}:{parsed.port or 6379}: {exc}") from None
