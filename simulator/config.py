"""Settings of one simulator run, as a single value object.

The simulator is used three ways -- tests (no latency, tight quotas, one fault at 100 %), benchmarks
(realistic latency divided by a time scale) and users rehearsing a backfill from the CLI -- so every
behaviour knob lives here, is validated once at construction, and is passed inward. Nothing in the
simulator reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Image formats the simulator can encode, by short name.
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")


@dataclass
class SimulatorConfig:
    """How the fake upstream behaves. Rates are probabilities per request in ``[0, 1]``."""

    latency: tuple[float, float] = (8.0, 20.0)
    time_scale: float = 1.0
    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    fail_rates: dict[int, float] = field(default_factory=dict)
    timeout_rate: float = 0.0
    drop_rate: float = 0.0
    no_image_rate: float = 0.0
    block_words: tuple[str, ...] = ()
    api_key: str | None = None
    thumbnails: bool = False
    seed: int | None = None
    image_format_default: str = "png"

    def __post_init__(self) -> None:
        self.latency = (float(self.latency[0]), float(self.latency[1]))
        self.block_words = tuple(w.strip() for w in self.block_words if w.strip())
        self.image_format_default = _normalise_format(self.image_format_default)
        _check_latency(self.latency, self.time_scale)
        _check_limits(rpm=self.rpm, rpd=self.rpd, tpm=self.tpm, concurrency=self.concurrency)
        _check_rates(self)

    @classmethod
    def parse_fail_rates(cls, text: str) -> dict[int, float]:
        """``"500=0.01,503=0.05"`` -> ``{500: 0.01, 503: 0.05}`` (empty text -> ``{}``)."""
        rates: dict[int, float] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            status, sep, rate = item.partition("=")
            if not sep:
                raise ValueError(f"fail rate {item!r} is not STATUS=RATE (e.g. 503=0.05)")
            code, value = _parse_status(status.strip()), _parse_rate(rate.strip(), item)
            rates[code] = rates.get(code, 0.0) + value
        return rates

    @classmethod
    def parse_latency(cls, text: str) -> tuple[float, float]:
        """``"8-20"`` -> ``(8.0, 20.0)``; a single number means a fixed latency."""
        low, sep, high = text.strip().partition("-")
        try:
            bounds = (float(low), float(high)) if sep else (float(low), float(low))
        except ValueError:
            raise ValueError(f"latency {text!r} is not SECONDS or MIN-MAX (e.g. 8-20)") from None
        _check_latency(bounds, 1.0)
        return bounds

    @property
    def hold_seconds(self) -> float:
        """How long a simulated timeout holds a request: ``600 s`` scaled, never above a minute."""
        return min(600.0 * self.time_scale, 60.0)

    def describe(self) -> str:
        """One human line of the active settings; never includes the API key itself."""
        low, high = self.latency
        parts = [f"latency {low:g}-{high:g}s x{self.time_scale:g}"]
        limits = {"rpm": self.rpm, "rpd": self.rpd, "tpm": self.tpm, "concurrency": self.concurrency}
        parts += [f"{name} {value}" for name, value in limits.items() if value is not None]
        if self.fail_rates:
            parts.append("fail " + ",".join(f"{k}={v:g}" for k, v in sorted(self.fail_rates.items())))
        rates = {"timeout": self.timeout_rate, "drop": self.drop_rate, "no-image": self.no_image_rate}
        parts += [f"{name} {value:g}" for name, value in rates.items() if value]
        if self.block_words:
            parts.append(f"block words {len(self.block_words)}")
        parts.append("api key required" if self.api_key else "no auth")
        if self.thumbnails:
            parts.append("thumbnails")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        return ", ".join(parts)


def _normalise_format(name: str) -> str:
    short = name.lower().removeprefix("image/")
    short = "jpeg" if short == "jpg" else short
    if short not in IMAGE_FORMATS:
        raise ValueError(f"image format {name!r} is not one of {', '.join(IMAGE_FORMATS)}")
    return short


def _parse_status(text: str) -> int:
    if not text.isdigit() or not 400 <= int(text) <= 599:
        raise ValueError(f"fail-rate status {text!r} is not an HTTP error status (400-599)")
    return int(text)


def _parse_rate(text: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"fail rate {item!r}: {text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"fail rate {item!r}: rate must be between 0 and 1")
    return value


def _check_latency(latency: tuple[float, float], time_scale: float) -> None:
    low, high = latency
    if low < 0 or high < low:
        raise ValueError(f"latency {latency} must be 0 <= min <= max")
    if time_scale < 0:
        raise ValueError(f"time_scale {time_scale} must not be negative")


def _check_limits(**limits: int | None) -> None:
    for name, value in limits.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer or None (got {value})")


def _check_rates(config: SimulatorConfig) -> None:
    singles = {
        "timeout_rate": config.timeout_rate,
        "drop_rate": config.drop_rate,
        "no_image_rate": config.no_image_rate,
    }
    for name, value in {**singles, **{f"fail_rates[{k}]": v for k, v in config.fail_rates.items()}}.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1 (got {value})")
    for status in config.fail_rates:
        _parse_status(str(status))
    total = sum(config.fail_rates.values()) + config.timeout_rate + config.drop_rate
    if total > 1.0 + 1e-9:
        raise ValueError(f"fail rates + timeout_rate + drop_rate add up to {total:g}, more than 1")
