"""``submit --dry-run`` arithmetic: what a batch will cost and how long it will take under the limits.

The ETA is the slowest of the constraints that apply to each quota pool: requests, images and
tokens per minute, the per-day cap (a batch larger than a day's quota takes days), the pool's
concurrency, and the workers' own concurrency with the expected upstream latency.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from nanobatch.models.catalog import Catalog, ModelSpec
from nanobatch.tasks.intake import TaskSpec
from nanobatch.workers.limiter import PoolLimits

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class PoolEstimate:
    pool: str
    tasks: int
    cost_usd: float
    per_minute: float
    bottleneck: str
    eta_seconds: float


@dataclass(frozen=True)
class Estimate:
    tasks: int
    cost_usd: float
    eta_seconds: float
    pools: list[PoolEstimate]


def estimate(
    specs: list[TaskSpec],
    catalog: Catalog,
    limits: dict[str, PoolLimits],
    *,
    worker_concurrency: int,
    latency_seconds: float,
) -> Estimate:
    by_pool = Counter(spec.model for spec in specs)
    cost = 0.0
    for spec in specs:
        model = catalog.resolve(spec.model)
        cost += model.cost_usd(
            spec.image_size, model.estimate_prompt_tokens(spec.prompt, len(spec.input_images))
        )
    pools = [
        _pool_estimate(pool, n, specs, catalog, limits.get(pool), worker_concurrency, latency_seconds)
        for pool, n in sorted(by_pool.items())
    ]
    # Pools share the workers' threads, so the batch cannot beat the workers' own rate.
    worker_rate = worker_concurrency * 60.0 / latency_seconds
    eta = max([p.eta_seconds for p in pools] + [len(specs) / worker_rate * 60.0]) if specs else 0.0
    return Estimate(tasks=len(specs), cost_usd=round(cost, 4), eta_seconds=eta, pools=pools)


def _pool_estimate(
    pool: str,
    n: int,
    specs: list[TaskSpec],
    catalog: Catalog,
    limits: PoolLimits | None,
    worker_concurrency: int,
    latency: float,
) -> PoolEstimate:
    model = catalog.resolve(pool)
    pool_specs = [s for s in specs if s.model == pool]
    tokens = sum(
        model.output_tokens(s.image_size) + model.estimate_prompt_tokens(s.prompt, len(s.input_images))
        for s in pool_specs
    ) / max(1, len(pool_specs))
    rates = {"workers": worker_concurrency * 60.0 / latency}
    if limits:
        if limits.rpm:
            rates["rpm"] = float(limits.rpm)
        if limits.ipm:
            rates["ipm"] = float(limits.ipm)
        if limits.tpm:
            rates["tpm"] = limits.tpm / tokens
        if limits.concurrency:
            rates["concurrency"] = limits.concurrency * 60.0 / latency
    bottleneck = min(rates, key=lambda name: rates[name])
    per_minute = rates[bottleneck]
    eta = n / per_minute * 60.0
    if limits and limits.rpd and n > limits.rpd:
        eta = max(eta, (n // limits.rpd) * SECONDS_PER_DAY)
        bottleneck = "rpd"
    cost = sum(
        model.cost_usd(s.image_size, model.estimate_prompt_tokens(s.prompt, len(s.input_images)))
        for s in pool_specs
    )
    return PoolEstimate(pool, n, round(cost, 4), per_minute, bottleneck, eta)


def _cost(model: ModelSpec, spec: TaskSpec) -> float:
    return model.cost_usd(spec.image_size, model.estimate_prompt_tokens(spec.prompt, len(spec.input_images)))


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
