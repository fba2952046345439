"""The walking skeleton end to end: real PostgreSQL, Redis, Celery worker processes and the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.workers.storage import safe_name
from tests.integration.conftest import Stack, write_csv

pytestmark = pytest.mark.integration


def tasks_of(s: Stack, batch: str) -> dict[str, GenerationTask]:
    with s.runtime.db.session() as session:
        rows = session.scalars(select(GenerationTask).join(Batch).where(Batch.name == batch))
        return {t.key: t for t in rows}


def test_submitted_rows_become_images_of_the_exact_size(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a worker and a file asking for a 3 Pro 4K 21:9 image and a default-model 16:9 image
    s = stack(simulator())
    s.start_worker()
    path = write_csv(
        tmp_path / "p.csv",
        "key,prompt,model,image_size,aspect_ratio",
        "SKU-1,red mug,gemini-3-pro-image,4K,21:9",
        "SKU-2,blue mug,,,16:9",
    )
    # When it is submitted
    report = s.submit_file(path, "sizes")
    assert (report.new, report.dispatched) == (2, 2)
    # Then both complete with real images of the catalog's dimensions, recorded in the row
    assert s.wait_terminal("sizes").counts["completed"] == 2
    for key, size in {"SKU-1": (6336, 2688), "SKU-2": (1376, 768)}.items():  # 1K 16:9 of the Gemini 3 grid
        with Image.open(s.output_dir / safe_name("sizes") / f"{safe_name(key)}.png") as image:
            assert image.size == size and image.format == "PNG"
    tasks = tasks_of(s, "sizes")
    assert (tasks["SKU-1"].width, tasks["SKU-1"].height, tasks["SKU-1"].output_tokens) == (6336, 2688, 2000)
    assert tasks["SKU-1"].cost_usd == pytest.approx(0.24, abs=0.001)
    assert tasks["SKU-2"].mime_type == "image/png" and len(tasks["SKU-2"].result_sha256 or "") == 64
    assert s.summary("sizes").cost_usd == pytest.approx(sum(t.cost_usd or 0 for t in tasks.values()))


def test_status_json_has_the_documented_shape(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    s.start_worker()
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "A,mug", "B,cup"), "shape")
    s.wait_terminal("shape")
    one = json.loads(s.cli("status", "shape", "--json", check=True).stdout)
    assert one == {
        "batch": "shape",
        "cost_usd": pytest.approx(one["cost_usd"]),
        "counts": {"pending": 0, "processing": 0, "completed": 2, "failed": 0, "cancelled": 0},
        # lanes (issue 16): appended keys, the original three unchanged
        "lane": "standard",
        "standard_cost_usd": pytest.approx(one["cost_usd"]),
        "by_lane": {
            "standard": {
                "tasks": 2,
                "completed": 2,
                "cost_usd": pytest.approx(one["cost_usd"]),
                "standard_cost_usd": pytest.approx(one["cost_usd"]),
            }
        },
        "publishing": 0,  # every completed image is at its key's name
    }
    assert one["cost_usd"] > 0
    every = json.loads(s.cli("status", "--json", check=True).stdout)
    assert isinstance(every, list) and every[0]["batch"] == "shape"


def test_resubmitting_the_same_batch_adds_nothing(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    path = write_csv(tmp_path / "p.csv", "key,prompt", "A,mug", "B,cup")
    first = s.cli("submit", str(path), "--batch", "again", check=True)
    assert "2 new, 0 already present" in first.stdout
    path = write_csv(tmp_path / "p.csv", "key,prompt", "A,mug", "B,cup", "C,plate")
    second = s.cli("submit", str(path), "--batch", "again", check=True)
    assert "1 new, 2 already present" in second.stdout
    assert sorted(tasks_of(s, "again")) == ["A", "B", "C"]


BAD_FILES = {
    "missing key": ("key,prompt\n,a mug\n", "line 2: key"),
    "duplicate key": ("key,prompt\nA,mug\nA,cup\n", "line 3: key: duplicate key 'A'"),
    "empty prompt": ("key,prompt\nA,mug\nB,   \n", "line 3: prompt"),
    "unknown ratio": ("key,prompt,aspect_ratio\nA,mug,5:7\n", "line 2: aspect_ratio"),
    "unknown size": ("key,prompt,model,image_size\nA,mug,gemini-3-pro-image,3K\n", "line 2: image_size"),
    "template column": ("key,title\nA,mug\n", "template uses column(s) color"),
    "non-utf8": (b"key,prompt\nA,mug\nB,caf\xe9\n", "line 3: -: not valid UTF-8"),
    "empty file": ("", "the file is empty"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_rejected_with_line_numbers_and_writes_nothing(
    simulator, stack, tmp_path: Path, case: str
) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    content, expected = BAD_FILES[case]
    path = tmp_path / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    args = ["submit", str(path), "--batch", "bad"]
    if case == "template column":
        args += ["--template", "Photo of {title} in {color}"]
    result = s.cli(*args)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    with s.runtime.db.session() as session:
        assert session.scalars(select(Batch)).all() == []
    assert not s.output_dir.exists()


def test_a_redelivered_message_for_a_completed_task_does_nothing(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a single-threaded worker (messages are served in order) and a completed task
    sim = simulator()
    s = stack(sim)
    s.start_worker(concurrency=1)
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "A,mug"), "redeliver")
    s.wait_terminal("redeliver")
    before = tasks_of(s, "redeliver")["A"]
    calls = sim.stats()["requests"]
    # When the same task id is published again (a broker redelivery), followed by a sentinel task
    s.runtime.dispatcher.publish([before.id])
    s.submit_file(write_csv(tmp_path / "q.csv", "key,prompt", "S,sentinel"), "sentinel")
    s.wait_terminal("sentinel")
    # Then the redelivery was dropped: only the sentinel reached the upstream, the row is untouched
    assert sim.stats()["requests"] == calls + 1
    after = tasks_of(s, "redeliver")["A"]
    assert (after.status, after.finished_at, after.result_sha256) == (
        "completed",
        before.finished_at,
        before.result_sha256,
    )


def test_a_hostile_key_cannot_write_outside_the_output_dir(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    s.start_worker()
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "../../etc/x,mug", "/tmp/abs,cup"), "hostile")
    assert s.wait_terminal("hostile").counts["completed"] == 2
    root = s.output_dir.resolve()
    for task in tasks_of(s, "hostile").values():
        path = Path((task.result_uri or "").removeprefix("file://")).resolve()
        assert root in path.parents and path.is_file()
    assert not (tmp_path / "etc").exists() and not (root.parent / "etc").exists()
