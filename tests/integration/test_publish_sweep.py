"""A result recorded but never published is published by the sweep (tasks/publishing.py).

A worker records its result on its claim's staged file, then publishes it under the key's name. A
worker killed between the two left the row on its staged file for good (CI: the no-beat chaos run,
"1 task(s) completed without a result file" with every row completed). Each test builds exactly that
state with the product's own calls, on both backends, and lets the sweep finish the job.
"""

from __future__ import annotations

import hashlib
import io
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from nanobatch import Client
from nanobatch.models import transitions
from nanobatch.models.base import utcnow
from nanobatch.models.queries import PUBLISH_WAIT, BatchSummary, batch_summaries
from nanobatch.models.tables import GenerationTask
from nanobatch.tasks.events import Thresholds, batch_events
from nanobatch.tasks.publishing import PUBLISH_GRACE_SECONDS, publish_recorded
from nanobatch.tasks.sweep import sweep
from nanobatch.tasks.webhooks import EventType
from nanobatch.workers import storage
from nanobatch.workers.imagecheck import ImageFacts
from nanobatch.workers.storage import STAGING_DIR, Usage
from tests.integration.conftest import Stack, write_csv

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> dict[str, str]:
    """The stack's extra environment: nothing (a local folder) or an S3 bucket on loopback."""
    return {} if request.param == "local" else dict(request.getfixturevalue("s3_env"))


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def recorded_not_published(s: Stack, tmp_path: Path) -> tuple[str, bytes]:
    """Submit one task, claim it, stage its image and record it on the row; then stop, as a worker
    SIGKILLed right after its commit would. Returns the task id and the image."""
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "SKU 1/a,mug"), "cut")
    rt = s.runtime
    with rt.db.session() as session:
        task_id = session.scalars(select(GenerationTask.id)).one()
        claimed = transitions.claim(session, task_id, worker="gone@host", lease_seconds=60)
    assert claimed is not None
    data = png()
    staged = storage.stage(
        rt.store, "cut", task_id, claimed.claim_token, data, ImageFacts("image/png", 8, 6), Usage()
    )
    outcome = transitions.Outcome(
        result_uri=staged.uri,
        result_sha256=staged.sha256,
        mime_type=staged.mime_type,
        width=8,
        height=6,
        bytes=len(data),
    )
    with rt.db.transaction() as connection:
        assert transitions.complete(connection, task_id, claimed.claim_token, outcome)
    return task_id, data


def row(s: Stack, task_id: str) -> GenerationTask:
    with s.runtime.db.session() as session:
        task = session.get(GenerationTask, task_id)
        assert task is not None
        session.expunge(task)
        return task


def test_a_result_recorded_but_never_published_is_published_by_the_sweep(  # type: ignore[no-untyped-def]
    simulator, stack, backend, tmp_path
) -> None:
    # Given a completed row still naming its staged file: its worker died before publishing
    s = stack(simulator(), **backend)
    task_id, data = recorded_not_published(s, tmp_path)
    store = s.runtime.store
    staged_uri = row(s, task_id).result_uri
    assert staged_uri is not None and f"/{STAGING_DIR}/" in staged_uri
    # When a sweep runs after the publish grace period
    report = sweep(s.runtime, now=utcnow() + timedelta(seconds=PUBLISH_GRACE_SECONDS + 1))
    # Then the row names the key's published object, with the same bytes, and no staged file is left
    task = row(s, task_id)
    final = storage.target_key("cut", "SKU 1/a", "image/png")
    assert report.published == 1
    assert (task.status, task.result_uri) == ("completed", store.uri(final))
    assert store.read(final, 1 << 20) == data
    assert task.result_sha256 == hashlib.sha256(data).hexdigest()
    assert store.list(storage.batch_prefix("cut") + f"{STAGING_DIR}/") == []
    # And a second sweep finds nothing left to do
    assert sweep(s.runtime, now=utcnow() + timedelta(seconds=PUBLISH_GRACE_SECONDS + 2)).published == 0


def test_a_just_recorded_result_is_left_to_its_own_worker(simulator, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given a row recorded on its staged file a moment ago (its worker is publishing it right now)
    s = stack(simulator())
    task_id, _ = recorded_not_published(s, tmp_path)
    staged_uri = row(s, task_id).result_uri
    # When a sweep runs within the grace period
    report = sweep(s.runtime)
    # Then the sweep leaves it alone
    assert report.published == 0
    assert row(s, task_id).result_uri == staged_uri


def test_a_row_published_meanwhile_is_not_touched(simulator, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given a row recorded on its staged file, whose worker publishes it just before the sweep's move
    s = stack(simulator())
    task_id, data = recorded_not_published(s, tmp_path)
    rt = s.runtime
    with rt.db.session() as session:
        recorded = transitions.staged_results(session, finished_before=utcnow() + timedelta(1), limit=5)
    assert [r.id for r in recorded] == [task_id]
    # When both publish the same recorded result (the worker first, the late sweeper second)
    assert publish_recorded(rt, recorded[0]) is True
    with pytest.raises(storage.StorageError, match="staged image gone"):
        publish_recorded(rt, recorded[0])
    # Then the row names the published file once, with the recorded bytes
    task = row(s, task_id)
    assert task.result_uri == rt.store.uri(storage.target_key("cut", "SKU 1/a", "image/png"))
    assert rt.store.read(storage.target_key("cut", "SKU 1/a", "image/png"), 1 << 20) == data


def test_a_batch_is_finished_only_once_its_images_are_published(simulator, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given a batch whose only task is completed but whose image still has its staged name
    s = stack(simulator())
    recorded_not_published(s, tmp_path)
    rt = s.runtime
    limits = Thresholds(failure_rate=0.5, failure_min_finished=10, deadline_margin=0)

    def summary(now: datetime | None = None) -> BatchSummary:
        with rt.db.session() as session:
            return batch_summaries(session, "cut", now=now)[0]

    def finished_events() -> list[EventType]:
        with rt.db.session() as session:
            found = batch_events(session, utcnow(), limits)
        return [e.type for e in found if e.type == EventType.BATCH_FINISHED]

    # Then it counts as completed but not finished: watch, wait, the demo and the webhook hold on
    held = summary()
    assert (held.remaining, held.publishing, held.settled) == (0, 1, False)
    assert held.as_json()["publishing"] == 1
    with Client(s.settings) as client, pytest.raises(TimeoutError):
        client.wait("cut", timeout=0.3, poll=0.1)
    assert finished_events() == []
    # but not for ever: a result still staged after PUBLISH_WAIT (a stuck straggler) no longer holds it
    assert summary(utcnow() + PUBLISH_WAIT + timedelta(seconds=1)).settled
    # When the sweep publishes it
    assert sweep(rt, now=utcnow() + timedelta(seconds=PUBLISH_GRACE_SECONDS + 1)).published == 1
    # Then the batch is finished
    done = summary()
    assert (done.publishing, done.settled) == (0, True)
    with Client(s.settings) as client:
        assert client.wait("cut", timeout=5)["publishing"] == 0
    assert finished_events() == [EventType.BATCH_FINISHED]
