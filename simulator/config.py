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

#: Hostile fault modes, each configured by ``<kind>_rate``; their order is part of the seeded
#: sequence (they are drawn after statuses, timeouts and drops, so adding one changes nothing
#: for runs that leave it at 0).
HOSTILE_FAULTS: tuple[str, ...] = ("truncated", "oversized", "trickle", "echo_key", "larger_image")
ECHO_KEY_STATUSES: tuple[int, ...] = (429, 400)
MAX_OVERSIZE_BYTES = 16 * 1024**3
MAX_LARGER_IMAGE_FACTOR = 2.0  # 4K 21:9 at 2x is already a 68-megapixel render
#: ``serviceTier`` values a generateContent request may carry (google-genai ``types.ServiceTier``;
#: ``unspecified`` means standard). Matched case-insensitively, as the SDK's enum is.
SERVICE_TIERS: tuple[str, ...] = ("standard", "flex", "priority")
#: Statuses a flex request may be refused with for lack of capacity.
FLEX_STATUSES: tuple[int, ...] = (429, 503)
MAX_LATENCY_FACTOR = 100.0
MAX_BATCH_TURNAROUND = 72 * 3600.0  # simulated seconds; the real service expires jobs after 48 h
INLINE_BATCH_LIMIT_BYTES = 20 * 1024 * 1024  # the Batch API's inline request limit (20 MB)


@dataclass
class SimulatorConfig:
    """How the fake upstream behaves. Rates are probabilities per request in ``[0, 1]``."""

    latency: tuple[float, float] = (8.0, 20.0)
    time_scale: float = 1.0
    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    #: Per-model overrides of rpm/rpd/tpm/concurrency, e.g. ``{"gemini-3-pro-image": {"rpd": 250}}``:
    #: a model named here gets the limits above with these fields replaced (real quotas differ per model).
    model_limits: dict[str, dict[str, int]] = field(default_factory=dict)
    fail_rates: dict[int, float] = field(default_factory=dict)
    timeout_rate: float = 0.0
    drop_rate: float = 0.0
    no_image_rate: float = 0.0
    block_words: tuple[str, ...] = ()
    api_key: str | None = None
    thumbnails: bool = False
    seed: int | None = None
    image_format_default: str = "png"
    # Hostile fault modes (issue 11): answers that look fine at the HTTP level and are not.
    truncated_rate: float = 0.0  # 200 whose image is valid base64 of the first half of the file
    oversized_rate: float = 0.0  # 200 whose JSON body is at least ``oversize_bytes`` (streamed)
    oversize_bytes: int = 64 * 1024 * 1024
    trickle_rate: float = 0.0  # 200 whose body comes one byte per ``trickle_interval`` seconds...
    trickle_interval: float = 1.0  # (real seconds: time_scale applies to latency only)
    trickle_limit: float = 60.0  # ...for at most this long, then the rest at once
    echo_key_rate: float = 0.0  # an error repeating the caller's API key (as sent and lower-cased)
    echo_key_status: int = 429  # 429 (quota shape) or 400 (invalid argument shape)
    larger_image_rate: float = 0.0  # 200 whose image is ``larger_image_factor`` x each side
    larger_image_factor: float = 2.0
    # Service tiers (issue 16): ``serviceTier`` on generateContent. Flex waits longer and is refused
    # more often (on top of ``fail_rates``); priority waits less; standard is unchanged.
    flex_latency_factor: float = 3.0
    flex_fail_rates: dict[int, float] = field(default_factory=dict)  # {503: 0.1, 429: 0.05}
    priority_latency_factor: float = 0.5
    # Batch API (issue 16): jobs run in a background thread over files on disk.
    batch_turnaround: float = 600.0  # simulated seconds from create to done (x time_scale)
    batch_request_fail_rate: float = 0.0  # share of requests in a job answered by an INTERNAL error
    batch_fail_rate: float = 0.0  # share of jobs that end FAILED (no results)
    batch_expire_rate: float = 0.0  # share of jobs that end EXPIRED (no results)
    batch_inline_limit_bytes: int = INLINE_BATCH_LIMIT_BYTES
    batch_dir: str | None = None  # where uploads and results live (None: a temp dir, removed at stop)

    def __post_init__(self) -> None:
        self.latency = (float(self.latency[0]), float(self.latency[1]))
        self.block_words = tuple(w.strip() for w in self.block_words if w.strip())
        self.image_format_default = _normalise_format(self.image_format_default)
        _check_latency(self.latency, self.time_scale)
        _check_limits(rpm=self.rpm, rpd=self.rpd, tpm=self.tpm, concurrency=self.concurrency)
        _check_model_limits(self.model_limits)
        _check_rates(self)
        _check_hostile_settings(self)
        _check_tier_settings(self)
        _check_batch_settings(self)

    @property
    def hostile_rates(self) -> dict[str, float]:
        """``{kind: rate}`` of every hostile fault mode, in drawing order."""
        return {kind: float(getattr(self, f"{kind}_rate")) for kind in HOSTILE_FAULTS}

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
        for model, override in sorted(self.model_limits.items()):
            parts.append(f"{model}: " + " ".join(f"{k} {v}" for k, v in sorted(override.items())))
        if self.fail_rates:
            parts.append("fail " + ",".join(f"{k}={v:g}" for k, v in sorted(self.fail_rates.items())))
        rates = {"timeout": self.timeout_rate, "drop": self.drop_rate, "no-image": self.no_image_rate}
        rates |= {kind.replace("_", "-"): rate for kind, rate in self.hostile_rates.items()}
        parts += [f"{name} {value:g}" for name, value in rates.items() if value]
        if self.block_words:
            parts.append(f"block words {len(self.block_words)}")
        parts.append("api key required" if self.api_key else "no auth")
        if self.thumbnails:
            parts.append("thumbnails")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        parts.append(self._describe_lanes())
        return ", ".join(parts)

    def _describe_lanes(self) -> str:
        """Tier and batch knobs in one short phrase."""
        flex = f"flex x{self.flex_latency_factor:g}"
        if self.flex_fail_rates:
            flex += " fail " + ",".join(f"{k}={v:g}" for k, v in sorted(self.flex_fail_rates.items()))
        batch = f"batch {self.batch_turnaround:g}s"
        rates = {
            "request-fail": self.batch_request_fail_rate,
            "fail": self.batch_fail_rate,
            "expire": self.batch_expire_rate,
        }
        batch += "".join(f" {name} {rate:g}" for name, rate in rates.items() if rate)
        return f"{flex}, priority x{self.priority_latency_factor:g}, {batch}"

    def latency_factor(self, tier: str) -> float:
        """How a service tier stretches (flex) or shortens (priority) the drawn latency."""
        if tier == "flex":
            return self.flex_latency_factor
        if tier == "priority":
            return self.priority_latency_factor
        return 1.0

    @property
    def batch_turnaround_seconds(self) -> float:
        """Real seconds from a batch job's creation to its end."""
        return self.batch_turnaround * self.time_scale


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


MODEL_LIMIT_FIELDS: tuple[str, ...] = ("rpm", "rpd", "tpm", "concurrency")


def _check_model_limits(model_limits: dict[str, dict[str, int]]) -> None:
    for model, override in model_limits.items():
        if not model or not isinstance(override, dict):
            raise ValueError(f"model_limits: {model!r} must name a model and map limits to numbers")
        unknown = sorted(set(override) - set(MODEL_LIMIT_FIELDS))
        if unknown:
            raise ValueError(
                f"model_limits[{model}]: unknown limit(s) {unknown}; known: {MODEL_LIMIT_FIELDS}"
            )
        for name, value in override.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model_limits[{model}].{name} must be a positive integer (got {value!r})")


def _check_rates(config: SimulatorConfig) -> None:
    singles = {
        "timeout_rate": config.timeout_rate,
        "drop_rate": config.drop_rate,
        "no_image_rate": config.no_image_rate,
        **{f"{kind}_rate": rate for kind, rate in config.hostile_rates.items()},
    }
    for name, value in {**singles, **{f"fail_rates[{k}]": v for k, v in config.fail_rates.items()}}.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1 (got {value})")
    for status in config.fail_rates:
        _parse_status(str(status))
    hostile = sum(config.hostile_rates.values())
    total = sum(config.fail_rates.values()) + config.timeout_rate + config.drop_rate + hostile
    if total > 1.0 + 1e-9:
        raise ValueError(
            f"fail rates + timeout_rate + drop_rate + hostile fault rates add up to {total:g}, more than 1"
        )


def _check_hostile_settings(config: SimulatorConfig) -> None:
    """The knobs of the hostile modes; bounded so no setting can hang a test or exhaust the host."""
    if not 1 <= config.oversize_bytes <= MAX_OVERSIZE_BYTES:
        raise ValueError(
            f"oversize_bytes must be between 1 and {MAX_OVERSIZE_BYTES} (got {config.oversize_bytes})"
        )
    if not 0 < config.trickle_interval <= 60:
        raise ValueError(
            f"trickle_interval must be above 0 and at most 60 seconds (got {config.trickle_interval})"
        )
    if not 0 <= config.trickle_limit <= 3600:
        raise ValueError(f"trickle_limit must be between 0 and 3600 seconds (got {config.trickle_limit})")
    if config.echo_key_status not in ECHO_KEY_STATUSES:
        raise ValueError(f"echo_key_status must be 429 or 400 (got {config.echo_key_status})")
    if not 1 < config.larger_image_factor <= MAX_LARGER_IMAGE_FACTOR:
        raise ValueError(
            f"larger_image_factor must be above 1 and at most {MAX_LARGER_IMAGE_FACTOR:g} "
            f"(got {config.larger_image_factor})"
        )


def _check_tier_settings(config: SimulatorConfig) -> None:
    for name in ("flex_latency_factor", "priority_latency_factor"):
        value = getattr(config, name)
        if not 0 < value <= MAX_LATENCY_FACTOR:
            raise ValueError(f"{name} must be above 0 and at most {MAX_LATENCY_FACTOR:g} (got {value})")
    for status, rate in config.flex_fail_rates.items():
        if status not in FLEX_STATUSES:
            raise ValueError(f"flex_fail_rates: status {status} is not a capacity error (429 or 503)")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"flex_fail_rates[{status}] must be between 0 and 1 (got {rate})")
    if sum(config.flex_fail_rates.values()) > 1.0 + 1e-9:
        raise ValueError("flex_fail_rates add up to more than 1")


def _check_batch_settings(config: SimulatorConfig) -> None:
    if not 0 <= config.batch_turnaround <= MAX_BATCH_TURNAROUND:
        raise ValueError(
            f"batch_turnaround must be between 0 and {MAX_BATCH_TURNAROUND:g} seconds "
            f"(got {config.batch_turnaround})"
        )
    for name in ("batch_request_fail_rate", "batch_fail_rate", "batch_expire_rate"):
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1 (got {value})")
    if config.batch_fail_rate + config.batch_expire_rate > 1.0 + 1e-9:
        raise ValueError("batch_fail_rate + batch_expire_rate add up to more than 1")
    if config.batch_inline_limit_bytes < 1:
        raise ValueError(f"batch_inline_limit_bytes must be positive (got {config.batch_inline_limit_bytes})")
