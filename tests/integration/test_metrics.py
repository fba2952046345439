"""``nanobatch metrics`` as Prometheus sees it: a real exporter process scraped over HTTP, parsed with
``prometheus_client``'s own parser, and compared with the truth — the database, Redis, the limiter,
and what the simulator says it served.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from nanobatch.models.base import utcnow
from nanobatch.models.queries import THROUGHPUT_WINDOW
from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.tasks.telemetry import Telemetry
from nanobatch.workers.limiter import PoolLimits, RateLimiter
from tests.conftest import free_port
from tests.integration.conftest import DEFAULT_MODEL, REPO, Stack, write_csv

pytestmark = pytest.mark.integration

POOL = DEFAULT_MODEL  # the pool of rows that name no model
#: Runs the command function itself, so this test does not depend on how cli/main registers it.
RUNNER = "import typer; from cli.metrics_cmd import metrics_command; typer.run(metrics_command)"

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


def labels(**values: str) -> Labels:
    return frozenset(values.items())


class Exporter:
    """One ``nanobatch metrics`` process on a free loopback port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}/metrics"
        port = self.url.rsplit(":", 1)[1].split("/")[0]
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, "--port", port, "--address", "127.0.0.1"],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def scrape(self, timeout: float = 30.0) -> Samples:
        """Every sample of one scrape; waits (with a deadline) for the server to come up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = httpx.get(self.url, timeout=10)
                response.raise_for_status()
                return parse(response.text)
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"exporter not serving:\n{self.log.read_text()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def of(samples: Samples, name: str, **where: str) -> dict[Labels, float]:
    """Samples of one series name whose labels include ``where``."""
    wanted = set(where.items())
    return {lab: value for (n, lab), value in samples.items() if n == name and wanted <= lab}


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[Callable[[Stack], Exporter]]:
    started: list[Exporter] = []

    def start(s: Stack, **env: str) -> Exporter:
        started.append(Exporter({**s.env, **env}, tmp_path / f"exporter{len(started)}.log"))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


def db_truth(s: Stack, batch: str) -> tuple[dict[str, int], float, float, datetime]:
    """Counts per status, sum of task costs, the batch's spent_usd, and when it was created."""
    with s.runtime.db.session() as session:
        row = session.scalars(select(Batch).where(Batch.name == batch)).one()
        counts = dict(
            session.execute(
                select(GenerationTask.status, func.count())
                .where(GenerationTask.batch_id == row.id)
                .group_by(GenerationTask.status)
            ).all()
        )
        cost = session.scalar(
            select(func.sum(GenerationTask.cost_usd)).where(GenerationTask.batch_id == row.id)
        )
        return counts, float(cost or 0.0), row.spent_usd, row.created_at


def window_minutes(created: datetime, now: datetime) -> float:
    return min(THROUGHPUT_WINDOW, max(now - created, timedelta(seconds=1))) / timedelta(minutes=1)


def test_metrics_equal_the_database_redis_and_limiter_truth(simulator, stack, exporter, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given a stack whose pool has limits, and a 5-row batch (one prompt the upstream blocks) with a budget,
    # submitted while no worker runs
    s = stack(simulator(block_words=("forbidden",)))
    limiter = RateLimiter(s.runtime.redis, prefix=s.env["NANOBATCH_LIMITER_PREFIX"])
    limiter.set_limits(POOL, PoolLimits(rpm=6000, rpd=1000, concurrency=4))
    path = write_csv(
        tmp_path / "m.csv",
        "key,prompt",
        "A,red mug",
        "B,blue mug",
        "C,green mug",
        "D,forbidden mug",
        "E,yellow mug",
    )
    s.cli("submit", str(path), "--batch", "metrics", "--budget-usd", "5", check=True)
    queue = s.env["NANOBATCH_QUEUE"]
    ex = exporter(s)

    # Then the queue depth is the broker's list length and every task is pending
    before = ex.scrape()
    assert s.runtime.redis.llen(queue) == 5
    assert of(before, "nanobatch_queue_depth") == {
        labels(queue=queue): 5,
        labels(queue=f"{queue}.control"): 0,
    }
    assert of(before, "nanobatch_tasks", batch="metrics", status="pending") == {
        labels(batch="metrics", status="pending"): 5
    }

    # When a worker runs the batch to the end
    s.start_worker()
    s.wait_terminal("metrics")
    t0 = utcnow()
    after = ex.scrape()
    t1 = utcnow()

    # Then counts per status (zeros included), spend and budget equal the database
    counts, cost, spent, created = db_truth(s, "metrics")
    assert counts == {"completed": 4, "failed": 1}
    tasks = {dict(lab)["status"]: v for lab, v in of(after, "nanobatch_tasks", batch="metrics").items()}
    assert tasks == {"pending": 0, "processing": 0, "completed": 4, "failed": 1, "cancelled": 0}
    assert of(after, "nanobatch_batch_spend_usd")[labels(batch="metrics")] == pytest.approx(spent)
    assert spent == pytest.approx(cost) and cost > 0
    assert of(after, "nanobatch_batch_budget_usd") == {labels(batch="metrics"): 5.0}
    # and completions/minute is 4 over the batch's age (bracketed by the scrape's start and end)
    rate = of(after, "nanobatch_completions_per_minute")[labels(batch="metrics")]
    assert 4 / window_minutes(created, t1) - 1e-6 <= rate <= 4 / window_minutes(created, t0) + 1e-6
    assert of(after, "nanobatch_queue_depth")[labels(queue=queue)] == 0

    # And the limiter series equal the limiter's own state (5 requests admitted today, none in flight)
    state = limiter.state(POOL)
    assert state.day_used == 5
    assert of(after, "nanobatch_limiter_remaining", pool=POOL, limit="rpd") == {
        labels(pool=POOL, limit="rpd"): 995
    }
    assert (
        of(after, "nanobatch_limiter_remaining", limit="concurrency")[labels(pool=POOL, limit="concurrency")]
        == 4
    )
    assert of(after, "nanobatch_limiter_limit", pool=POOL)[labels(pool=POOL, limit="rpm")] == 6000
    assert of(after, "nanobatch_limiter_inflight") == {labels(pool=POOL): 0}
    assert of(after, "nanobatch_limiter_cooldown_seconds") == {labels(pool=POOL): 0}
    assert of(after, "nanobatch_limiter_share") == {labels(pool=POOL): 1.0}  # no neighbour: whole limits
    assert of(after, "nanobatch_quota_reset_timestamp") == {
        labels(pool=POOL): state.day_resets_at.timestamp()
    }
    assert all(v == 1 for v in of(after, "nanobatch_exporter_source_up").values())
    assert len(of(after, "nanobatch_exporter_source_up")) == 5


def test_cooldowns_and_recorded_telemetry_are_exported(simulator, stack, exporter) -> None:  # type: ignore[no-untyped-def]
    # Given a pool cooled down for an hour after a 429, and what workers recorded in Redis
    s = stack(simulator())
    prefix = s.env["NANOBATCH_LIMITER_PREFIX"]
    RateLimiter(s.runtime.redis, prefix=prefix).cooldown("probe-pool", 3600, reason="429 test")
    telemetry = Telemetry(s.runtime.redis, prefix=prefix)
    for seconds in (0.4, 9.0, 12.0):
        telemetry.observe_latency("probe-pool", seconds)
    telemetry.count_429("probe-pool", "GenerateRequestsPerMinutePerProjectPerModel")
    telemetry.count_retry("rate_limited")
    telemetry.count_outcome("deferred")
    # When Prometheus scrapes
    samples = exporter(s).scrape()
    # Then the cooldown is counted down from at most an hour
    cooldown = of(samples, "nanobatch_limiter_cooldown_seconds")[labels(pool="probe-pool")]
    assert 0 < cooldown <= 3600
    # And the histogram and counters are what was recorded
    bucket = of(samples, "nanobatch_upstream_latency_seconds_bucket", pool="probe-pool")
    assert (bucket[labels(pool="probe-pool", le="0.5")], bucket[labels(pool="probe-pool", le="10.0")]) == (
        1,
        2,
    )
    assert bucket[labels(pool="probe-pool", le="+Inf")] == 3
    assert of(samples, "nanobatch_upstream_latency_seconds_sum")[labels(pool="probe-pool")] == pytest.approx(
        21.4
    )
    assert of(samples, "nanobatch_rate_limited_total", pool="probe-pool") == {
        labels(pool="probe-pool", quota_id="GenerateRequestsPerMinutePerProjectPerModel"): 1
    }
    assert of(samples, "nanobatch_retries_total") == {labels(reason="rate_limited"): 1}
    assert of(samples, "nanobatch_task_outcomes_total") == {labels(status="deferred"): 1}


def test_a_source_that_is_down_does_not_hide_the_others(simulator, stack, exporter, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given a batch in the database and an exporter whose Redis is not there
    s = stack(simulator())
    s.submit_file(write_csv(tmp_path / "d.csv", "key,prompt", "A,mug"), "down")
    ex = exporter(s, NANOBATCH_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    # When scraped
    samples = ex.scrape()
    # Then the database series are there and the Redis sources report down
    assert of(samples, "nanobatch_tasks", batch="down", status="pending") == {
        labels(batch="down", status="pending"): 1
    }
    up = {dict(lab)["source"]: v for lab, v in of(samples, "nanobatch_exporter_source_up").items()}
    assert up == {"database": 1, "queues": 0, "limiter": 0, "telemetry": 0, "recovery": 0}
    assert not of(samples, "nanobatch_queue_depth")


# -- needs the telemetry hook in tasks/serve.py + tasks/runtime.py ---------------------------------


def test_worker_telemetry_matches_what_the_upstream_saw(simulator, stack, exporter, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given an upstream that allows one call at a time (429s) and fails a quarter of calls with 503,
    # and a worker with four threads
    sim = simulator(latency=(0.2, 0.2), concurrency=1, fail_rates={503: 0.25})
    s = stack(sim)
    s.start_worker(concurrency=4)
    rows = [f"K{i},mug number {i}" for i in range(8)]
    s.submit_file(write_csv(tmp_path / "t.csv", "key,prompt", *rows), "telemetry")
    # When the batch has run to the end
    s.wait_terminal("telemetry")
    ex = exporter(s)
    counts, _, _, _ = db_truth(s, "telemetry")
    gave_up_on_503 = counts.get("failed", 0)  # 429s never fail a task; only exhausted 503 retries do
    served = sim.stats()
    # Then (once the last delivery's counters are written) the workers' telemetry equals the upstream's view
    samples = _when_outcomes_add_up(ex, terminal=8)
    outcomes = {dict(lab)["status"]: v for lab, v in of(samples, "nanobatch_task_outcomes_total").items()}
    assert outcomes.get("completed", 0) == counts.get("completed", 0)
    assert outcomes.get("failed", 0) == counts.get("failed", 0)
    latency_count = of(samples, "nanobatch_upstream_latency_seconds_count")[labels(pool=POOL)]
    assert latency_count == served["requests"]
    limited = sum(of(samples, "nanobatch_rate_limited_total", pool=POOL).values())
    assert limited == served["rate_limited"] > 0
    retries = sum(of(samples, "nanobatch_retries_total").values())
    assert retries == served["rate_limited"] + served["by_status"].get("503", 0) - gave_up_on_503
    assert outcomes.get("deferred", 0) == retries
    # and every completed call took at least the upstream's 0.2 s (errors are answered at once)
    latency_sum = of(samples, "nanobatch_upstream_latency_seconds_sum")[labels(pool=POOL)]
    assert latency_sum >= 0.2 * counts["completed"]


def _when_outcomes_add_up(ex: Exporter, *, terminal: int, timeout: float = 30.0) -> Samples:
    """Scrape until the workers have counted ``terminal`` final outcomes (they are written just after the
    database row turns terminal), or fail with what was last seen."""
    deadline = time.monotonic() + timeout
    while True:
        samples = ex.scrape()
        outcomes = of(samples, "nanobatch_task_outcomes_total")
        final = sum(v for lab, v in outcomes.items() if dict(lab)["status"] in {"completed", "failed"})
        if final >= terminal:
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"worker telemetry never counted {terminal} final outcomes: {outcomes}")
        time.sleep(0.2)
