"""Worker telemetry in Redis: what workers record is what the exporter reads, on every backend.

Runs on real Redis and on the embedded fakeredis (what a worker without NANOBATCH_REDIS_URL uses);
the exposition test renders the Prometheus text and parses it back, as a scraper would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import fakeredis
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from nanobatch.tasks.metrics import telemetry_metrics
from nanobatch.tasks.telemetry import LATENCY_BUCKETS, Telemetry, bucket_for, bucket_label
from tests.conftest import free_port

POOL = "gemini-2.5-flash-image"


@pytest.fixture(params=["redis", "fakeredis"])
def telemetry(request: pytest.FixtureRequest) -> Iterator[Telemetry]:
    if request.param == "fakeredis":
        yield Telemetry(fakeredis.FakeRedis(server=fakeredis.FakeServer()), prefix="nbunit")
        return
    prefix = request.getfixturevalue("key_prefix")
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    yield Telemetry(client, prefix=prefix)
    client.close()


def test_bucket_bounds_are_inclusive_and_end_with_inf() -> None:
    assert bucket_for(0.0) == "0.25"
    assert bucket_for(0.25) == "0.25"  # Prometheus buckets are "less than or equal"
    assert bucket_for(0.2500001) == "0.5"
    assert bucket_for(300.0) == "300.0"
    assert bucket_for(300.5) == "+Inf"
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS) and math.isinf(LATENCY_BUCKETS[-1])


def test_latency_observations_become_a_cumulative_histogram(telemetry: Telemetry) -> None:
    # Given four calls of one pool (one exactly on a bound, one above every bound) and one of another
    for seconds in (0.1, 0.25, 3.0, 400.0):
        telemetry.observe_latency(POOL, seconds)
    telemetry.observe_latency("other", 12.0)
    # When the exporter reads them back
    snapshot = telemetry.snapshot()
    # Then buckets are cumulative, +Inf holds every call, sum and count add up
    histogram = dict(snapshot.latency[POOL].cumulative())
    assert histogram["0.25"] == 2 and histogram["2.0"] == 2 and histogram["5.0"] == 3
    assert histogram["300.0"] == 3 and histogram["+Inf"] == 4
    assert snapshot.latency[POOL].count == 4
    assert snapshot.latency[POOL].sum == pytest.approx(403.35)
    assert dict(snapshot.latency["other"].cumulative())["10.0"] == 0
    assert dict(snapshot.latency["other"].cumulative())["15.0"] == 1


def test_nan_is_dropped_and_negative_durations_count_as_zero(telemetry: Telemetry) -> None:
    telemetry.observe_latency(POOL, math.nan)
    telemetry.observe_latency(POOL, -1.0)  # a clock step backwards must not corrupt the sum
    histogram = telemetry.snapshot().latency[POOL]
    assert (histogram.count, histogram.sum, histogram.cumulative()[0]) == (1, 0.0, ("0.25", 1))


def test_counters_keep_their_labels_apart(telemetry: Telemetry) -> None:
    per_minute = "GenerateRequestsPerMinutePerProjectPerModel"
    telemetry.count_429(POOL, per_minute)
    telemetry.count_429(POOL, per_minute)
    telemetry.count_429("other")
    telemetry.count_retry("rate_wait")
    telemetry.count_retry("unavailable")
    telemetry.count_retry("rate_wait")
    for status in ("completed", "completed", "failed"):
        telemetry.count_outcome(status)
    snapshot = telemetry.snapshot()
    assert snapshot.rate_limited == {(POOL, per_minute): 2, ("other", ""): 1}
    assert snapshot.retries == {"rate_wait": 2, "unavailable": 1}
    assert snapshot.outcomes == {"completed": 2, "failed": 1}


def test_a_separator_inside_a_label_value_cannot_shift_labels(telemetry: Telemetry) -> None:
    telemetry.count_429("pool|x", "quota|y")
    telemetry.observe_latency("pool|x", 1.0)
    snapshot = telemetry.snapshot()
    assert snapshot.rate_limited == {("pool_x", "quota_y"): 1}
    assert set(snapshot.latency) == {"pool_x"}


def test_prefixes_isolate_deployments(telemetry: Telemetry) -> None:
    neighbour = Telemetry(telemetry.client, prefix=f"{telemetry.prefix}-other")
    neighbour.count_outcome("failed")
    telemetry.count_outcome("completed")
    assert telemetry.snapshot().outcomes == {"completed": 1}
    neighbour.reset()


def test_recording_never_raises_when_redis_is_down() -> None:
    # Given a Redis that is not there
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    down = Telemetry(client, prefix="nbdown")
    # When a worker records (after a paid call) nothing propagates: the task must still finish
    down.observe_latency(POOL, 1.0)
    down.count_429(POOL, "q")
    down.count_retry("rate_wait")
    down.count_outcome("completed")
    # But the exporter's read does raise, so it can report the source as down
    with pytest.raises(redis.RedisError):
        down.snapshot()


class _Fixed(Collector):
    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self):  # type: ignore[no-untyped-def]
        return telemetry_metrics(self.telemetry.snapshot())


def test_exposition_parses_back_to_what_was_recorded(telemetry: Telemetry) -> None:
    # Given recorded telemetry
    telemetry.observe_latency(POOL, 0.7)
    telemetry.observe_latency(POOL, 7.0)
    telemetry.count_429(POOL, "PerDay")
    telemetry.count_retry("timeout")
    telemetry.count_outcome("completed")
    # When rendered in the Prometheus text format and parsed as a scraper would
    registry = CollectorRegistry()
    registry.register(_Fixed(telemetry))
    text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    # Then the series carry the documented names and labels
    bucket = "nanobatch_upstream_latency_seconds_bucket"
    assert samples[(bucket, (("le", "1.0"), ("pool", POOL)))] == 1
    assert samples[(bucket, (("le", "10.0"), ("pool", POOL)))] == 2
    assert samples[(bucket, (("le", "+Inf"), ("pool", POOL)))] == 2
    assert samples[("nanobatch_upstream_latency_seconds_count", (("pool", POOL),))] == 2
    assert samples[("nanobatch_upstream_latency_seconds_sum", (("pool", POOL),))] == pytest.approx(7.7)
    assert samples[("nanobatch_rate_limited_total", (("pool", POOL), ("quota_id", "PerDay")))] == 1
    assert samples[("nanobatch_retries_total", (("reason", "timeout"),))] == 1
    assert samples[("nanobatch_task_outcomes_total", (("status", "completed"),))] == 1
    assert bucket_label(math.inf) == "+Inf"


def test_pool_health_records_refused_since_until_a_success(telemetry: Telemetry) -> None:
    # Given three refusals of one pool, the first at t=1000
    assert telemetry.record_refusal(POOL, "429 slow down", now=1000.0) == 1000.0
    assert telemetry.record_refusal(POOL, "429 again", now=1500.0) == 1000.0  # since the first one
    assert telemetry.record_refusal(POOL, "unrecognised 429: busy", unclassified=True, now=2000.0) == 1000.0
    health = telemetry.pool_health()[POOL]
    # Then the pool is refused since t=1000, with the last message kept
    assert (health.refused_since, health.last_refusal) == (1000.0, "unrecognised 429: busy")
    assert health.last_unclassified == "unrecognised 429: busy"
    assert health.refused_for(2800.0) == 1800.0
    assert health.stalled(2801.0, after=1800.0) and not health.stalled(2800.0, after=1800.0)
    # When a call succeeds, the pool is healthy again and the next refusal starts a new span
    telemetry.record_success(POOL, now=3000.0)
    health = telemetry.pool_health()[POOL]
    assert (health.refused_since, health.last_success) == (None, 3000.0) and not health.stalled(9e9, 0)
    assert telemetry.record_refusal(POOL, "429", now=3100.0) == 3100.0
    assert telemetry.snapshot().pools[POOL].refused_since == 3100.0


def test_pool_health_never_raises_when_redis_is_down() -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    down = Telemetry(client, prefix="nbdown")
    down.record_success(POOL)
    assert down.record_refusal(POOL, "429") is None


def test_stalled_pools_are_exported_as_gauges(telemetry: Telemetry) -> None:
    telemetry.record_refusal(POOL, "429", now=1000.0)
    telemetry.record_refusal("healthy", "429", now=1000.0)
    telemetry.record_success("healthy", now=1200.0)
    families = {f.name: f for f in telemetry_metrics(telemetry.snapshot(), now=3000.0, stalled_after=1800.0)}
    refused = {s.labels["pool"]: s.value for s in families["nanobatch_pool_refused_seconds"].samples}
    stalled = {s.labels["pool"]: s.value for s in families["nanobatch_pool_stalled"].samples}
    assert refused == {POOL: 2000.0, "healthy": 0.0}
    assert stalled == {POOL: 1.0, "healthy": 0.0}
    last = {s.labels["pool"]: s.value for s in families["nanobatch_pool_last_success_timestamp"].samples}
    assert last == {"healthy": 1200.0}


def test_storage_writes_are_a_latency_histogram_and_an_error_counter(telemetry: Telemetry) -> None:
    telemetry.storage_write(0.2, True)
    telemetry.storage_write(3.0, False)
    telemetry.storage_write(float("nan"), False)  # dropped
    registry = CollectorRegistry()
    registry.register(_Fixed(telemetry))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    stage = (("operation", "stage"),)
    assert samples[("nanobatch_storage_write_seconds_count", stage)] == 2
    assert samples[("nanobatch_storage_write_seconds_sum", stage)] == pytest.approx(3.2)
    assert samples[("nanobatch_storage_write_seconds_bucket", (("le", "1.0"), *stage))] == 1
    assert samples[("nanobatch_storage_errors_total", stage)] == 1
