"""Webhook events from a real worker's sweep, to a real loopback receiver that checks the HMAC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nanobatch.simulator.testing import wait_until
from nanobatch.tasks.webhooks import DELIVERY_HEADER, EVENT_HEADER
from tests.integration import test_webhooks_delivery as delivery
from tests.integration.conftest import write_csv

SECRET = delivery.SECRET
receiver = delivery.receiver  # the loopback receiver fixture (checks the HMAC, fails on purpose)

pytestmark = pytest.mark.integration


@pytest.fixture
def webhook_receiver(receiver: Any) -> Any:
    return receiver


def test_batch_finished_is_signed_and_retried_after_a_500(
    simulator, stack, webhook_receiver: Any, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # Given a receiver that answers the first delivery with 500, then 200
    hook = webhook_receiver([500])
    sim = simulator()
    s = stack(
        sim,
        NANOBATCH_WEBHOOK_URL=hook.url,
        NANOBATCH_WEBHOOK_SECRET=SECRET,
        NANOBATCH_WEBHOOK_BACKOFF_BASE="0.05",
        NANOBATCH_WEBHOOK_BACKOFF_CAP="0.2",
    )
    path = write_csv(tmp_path / "p.csv", "key,prompt", "a,a red mug", "b,a blue mug", "c,a green mug")
    s.submit_file(path, "evening")
    # When a worker runs the batch to the end
    s.start_worker(concurrency=2)
    s.wait_terminal("evening")
    # Then one batch.finished event arrives, signed, after one retry with the same delivery id
    delivered = wait_until(hook.delivered, timeout=90, message="a delivered batch.finished webhook")
    finished = [d for d in delivered if d["headers"][EVENT_HEADER.lower()] == "batch.finished"]
    assert len(finished) == 1 and finished[0]["verified"]
    assert finished[0]["body"]["data"]["batch"] == "evening"
    assert finished[0]["body"]["data"]["counts"]["completed"] == 3
    attempts = [d for d in hook.seen if d["body"]["type"] == "batch.finished"]
    assert [d["status"] for d in attempts] == [500, 200]
    assert len({d["headers"][DELIVERY_HEADER.lower()] for d in attempts}) == 1
    assert SECRET not in s.worker_logs() and "pathsecret" not in s.worker_logs()
