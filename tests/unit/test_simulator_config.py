"""SimulatorConfig: flag parsing and validation, and the CLI's flag-to-config step."""

from __future__ import annotations

import pytest

from nanobatch.cli.simulator_cmd import build_config, ready_line
from nanobatch.simulator.config import SimulatorConfig


def test_fail_rates_parse_into_status_to_rate() -> None:
    parsed = SimulatorConfig.parse_fail_rates("500=0.01,503=0.05, 504=0.01")
    assert parsed == {500: 0.01, 503: 0.05, 504: 0.01}


def test_empty_fail_rates_mean_none() -> None:
    assert SimulatorConfig.parse_fail_rates("") == {}
    assert SimulatorConfig.parse_fail_rates(" , ") == {}


def test_repeated_status_adds_up() -> None:
    assert SimulatorConfig.parse_fail_rates("503=0.1,503=0.2") == {503: pytest.approx(0.3)}


@pytest.mark.parametrize("text", ["500", "500=x", "abc=0.1", "200=0.1", "600=0.1", "503=1.5", "503=-0.1"])
def test_bad_fail_rates_are_refused_with_the_item(text: str) -> None:
    with pytest.raises(ValueError, match="fail"):
        SimulatorConfig.parse_fail_rates(text)


def test_latency_parses_a_range_or_one_number() -> None:
    assert SimulatorConfig.parse_latency("8-20") == (8.0, 20.0)
    assert SimulatorConfig.parse_latency("0.5") == (0.5, 0.5)
    with pytest.raises(ValueError):
        SimulatorConfig.parse_latency("20-8")
    with pytest.raises(ValueError):
        SimulatorConfig.parse_latency("fast")


def test_rates_adding_above_one_are_refused() -> None:
    with pytest.raises(ValueError, match="add up"):
        SimulatorConfig(fail_rates={500: 0.6}, timeout_rate=0.3, drop_rate=0.2)


def test_hostile_rates_count_towards_the_total() -> None:
    with pytest.raises(ValueError, match="add up"):
        SimulatorConfig(fail_rates={500: 0.5}, truncated_rate=0.3, trickle_rate=0.3)
    with pytest.raises(ValueError, match="echo_key_rate"):
        SimulatorConfig(echo_key_rate=1.5)


def test_hostile_defaults_are_off_with_bounded_knobs() -> None:
    config = SimulatorConfig()
    assert set(config.hostile_rates.values()) == {0.0}
    assert list(config.hostile_rates) == ["truncated", "oversized", "trickle", "echo_key", "larger_image"]
    assert (config.oversize_bytes, config.trickle_interval, config.trickle_limit) == (
        64 * 1024 * 1024,
        1.0,
        60.0,
    )
    assert (config.echo_key_status, config.larger_image_factor) == (429, 2.0)


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"oversize_bytes": 0}, "oversize_bytes"),
        ({"trickle_interval": 0}, "trickle_interval"),
        ({"trickle_limit": -1}, "trickle_limit"),
        ({"trickle_limit": 7200}, "trickle_limit"),
        ({"echo_key_status": 500}, "echo_key_status"),
        ({"larger_image_factor": 1.0}, "larger_image_factor"),
        ({"larger_image_factor": 8}, "larger_image_factor"),
    ],
)
def test_hostile_knobs_are_validated(settings: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SimulatorConfig(**settings)


def test_non_positive_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="rpm"):
        SimulatorConfig(rpm=0)


def test_hold_is_scaled_and_capped_at_a_minute() -> None:
    assert SimulatorConfig(time_scale=0.01).hold_seconds == pytest.approx(6.0)
    assert SimulatorConfig(time_scale=1.0).hold_seconds == 60.0


def test_cli_flags_build_the_config() -> None:
    config = build_config(
        latency="1-2",
        time_scale=0.01,
        rpm=10,
        fail_rate="503=0.5",
        block_words="gore, knife,",
        api_key="k",
        thumbnails=True,
        seed=7,
    )
    assert config.latency == (1.0, 2.0)
    assert config.fail_rates == {503: 0.5}
    assert config.block_words == ("gore", "knife")
    assert (config.rpm, config.api_key, config.thumbnails, config.seed) == (10, "k", True, 7)


def test_cli_flags_drive_the_hostile_modes() -> None:
    config = build_config(
        truncated_rate=0.1,
        oversized_rate=0.1,
        oversize_bytes=1024,
        trickle_rate=0.1,
        trickle_interval=0.5,
        trickle_limit=5,
        echo_key_rate=0.1,
        echo_key_status=400,
        larger_image_rate=0.1,
        larger_image_factor=1.5,
    )
    assert set(config.hostile_rates.values()) == {0.1}
    assert (config.oversize_bytes, config.trickle_interval, config.trickle_limit) == (1024, 0.5, 5)
    assert (config.echo_key_status, config.larger_image_factor) == (400, 1.5)
    assert "echo-key 0.1" in config.describe() and "larger-image 0.1" in config.describe()
    assert build_config().hostile_rates == SimulatorConfig().hostile_rates


def test_the_ready_line_never_shows_the_key() -> None:
    class FakeRunning:
        url = "http://127.0.0.1:1"
        config = SimulatorConfig(api_key="very-secret-key", rpm=5)

    line = ready_line(FakeRunning())  # type: ignore[arg-type]
    assert "very-secret-key" not in line
    assert "http://127.0.0.1:1" in line and "rpm 5" in line and "api key required" in line
