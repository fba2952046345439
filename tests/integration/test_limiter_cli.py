"""``nanobatch limits set|show`` against real Redis, under the test's own key prefix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from nanobatch.cli.limits_cmd import limits_app
from nanobatch.workers.limiter import PoolLimits, RateLimiter

pytestmark = pytest.mark.integration

FLASH = "gemini-2.5-flash-image"


@pytest.fixture
def cli(redis_url: str, key_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run ``nanobatch limits ...`` with the Redis URL and prefix of this test; returns the result."""
    monkeypatch.chdir(tmp_path)  # no stray nanobatch.toml
    env = {
        "NANOBATCH_REDIS_URL": redis_url,
        "NANOBATCH_LIMITER_PREFIX": key_prefix,
        "NANOBATCH_CATALOG_FILE": None,
        "COLUMNS": "200",
    }

    def run(*args: str, **overrides: str | None) -> Any:
        return CliRunner().invoke(limits_app, list(args), env={**env, **overrides})

    return run


@pytest.fixture
def limiter(redis_url: str, key_prefix: str) -> RateLimiter:
    return RateLimiter(redis.Redis.from_url(redis_url), prefix=key_prefix)


def show_json(cli: Any, *args: str) -> list[dict[str, Any]]:
    result = cli("show", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_set_maps_an_alias_to_its_model_and_merges(cli: Any, limiter: RateLimiter) -> None:
    assert cli("set", "--pool", "nano-banana", "--rpm", "300", "--tpm", "100000").exit_code == 0

    result = cli("set", "--pool", FLASH, "--rpd", "5000", "--clear", "tpm")

    assert result.exit_code == 0, result.output
    assert FLASH in result.output
    assert limiter.get_limits(FLASH) == PoolLimits(rpm=300, rpd=5000)
    assert limiter.get_limits("nano-banana") == PoolLimits()  # never stored under the alias


def test_a_custom_pool_is_taken_as_given(cli: Any, limiter: RateLimiter) -> None:
    assert cli("set", "--pool", "my-project:my-model", "--concurrency", "8").exit_code == 0

    assert limiter.pools() == ["my-project:my-model"]
    assert limiter.get_limits("my-project:my-model") == PoolLimits(concurrency=8)


def test_show_json_reports_use_remaining_resets_and_cooldown(cli: Any, limiter: RateLimiter) -> None:
    limiter.set_limits(FLASH, PoolLimits(rpm=60, rpd=100, concurrency=3))
    limiter.acquire(FLASH, holder="task-1", tokens=1300)
    limiter.cooldown(FLASH, 30, reason="429 PerMinute")

    [state] = show_json(cli, "--pool", "nano-banana")

    assert state["pool"] == FLASH
    assert state["limits"] == {"rpm": 60, "ipm": None, "tpm": None, "rpd": 100, "concurrency": 3}
    assert state["used"]["rpd"] == 1 and state["inflight"] == 1
    assert state["remaining"]["rpd"] == 99 and state["remaining"]["concurrency"] == 2
    assert state["day_resets_at"].endswith(("T00:00:00-08:00", "T00:00:00-07:00"))
    assert state["cooldown_reason"] == "429 PerMinute" and state["cooldown_until"]


def test_show_reports_the_adaptive_share_after_a_429_the_limiter_did_not_predict(
    cli: Any, limiter: RateLimiter
) -> None:
    limiter.set_limits(FLASH, PoolLimits(rpm=60))
    [whole] = show_json(cli, "--pool", FLASH)
    assert (whole["share"], whole["share_drops"]) == (1.0, 0)

    limiter.adapt_after_refusal(FLASH)  # an idle pool: the drop halves its share

    [lowered] = show_json(cli, "--pool", FLASH)
    assert lowered["share"] == pytest.approx(0.5) and lowered["share_drops"] == 1
    table = cli("show", "--pool", FLASH)
    assert table.exit_code == 0, table.output
    assert "share" in table.output and "50%" in table.output and "unpredicted 429" in table.output


def test_show_without_pool_lists_every_pool(cli: Any, limiter: RateLimiter) -> None:
    limiter.set_limits("pool-a", PoolLimits(rpm=1))
    limiter.set_limits("pool-b", PoolLimits(ipm=2))

    assert [state["pool"] for state in show_json(cli)] == ["pool-a", "pool-b"]


def test_show_table(cli: Any, limiter: RateLimiter) -> None:
    limiter.set_limits(FLASH, PoolLimits(rpm=600, tpm=50_000))
    limiter.acquire(FLASH, holder="h", tokens=1290)
    limiter.cooldown(FLASH, 45, reason="429 PerMinute")

    result = cli("show")

    assert result.exit_code == 0, result.output
    for text in (FLASH, "600", "50,000", "48,710", "1,290", "Pacific", "429 PerMinute"):
        assert text in result.output
    assert "PST" in result.output or "PDT" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rpm", "0"], "--rpm"),
        (["--rpm", "-5"], "--rpm"),
        (["--tpm", "2000000000"], "--tpm"),
        (["--concurrency", "many"], "--concurrency"),
        (["--clear", "rps"], "--clear"),
        (["--rpm", "5", "--clear", "rpm"], "cannot both set and clear rpm"),
        ([], "nothing to do"),
    ],
)
def test_invalid_input_is_a_clear_error(
    cli: Any, limiter: RateLimiter, args: list[str], message: str
) -> None:
    result = cli("set", "--pool", FLASH, *args)

    assert result.exit_code == 2
    assert message in result.output
    assert limiter.pools() == []


def test_without_redis_the_cli_explains_where_limits_live(cli: Any) -> None:
    result = cli("show", NANOBATCH_REDIS_URL=None)

    assert result.exit_code == 2
    assert "limits live in Redis" in result.output
