"""Issue 3 end to end through real workers: editing via inlineData, the OpenAI-compatible route,
and the 3 Pro 4K 21:9 size through both protocols."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from nanobatch.models.tables import GenerationTask
from tests.integration.conftest import write_csv

pytestmark = pytest.mark.integration


def only_task(s) -> GenerationTask:  # type: ignore[no-untyped-def]
    with s.runtime.db.session() as session:
        return session.scalars(select(GenerationTask)).one()


def test_an_edit_row_sends_its_images_as_inline_data(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a product photo and a row that edits it together with a second reference image
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "photo.png")
    Image.new("RGB", (32, 32), (30, 30, 200)).save(tmp_path / "logo.jpg")
    sim = simulator()
    s = stack(sim)
    s.start_worker()
    path = write_csv(
        tmp_path / "p.csv",
        "key,prompt,input_images",
        "EDIT-1,put the mug on a marble table,photo.png|logo.jpg",
    )
    s.submit_file(path, "edits")
    # Then the task completes and the simulator received both images inline, with their mime types
    assert s.wait_terminal("edits").counts["completed"] == 1
    (record,) = [r for r in sim.requests(10) if r["route"].startswith("gemini")]
    assert record["n_input_images"] == 2
    assert record["input_mime_types"] == ["image/png", "image/jpeg"]
    assert sim.stats()["input_images_received"] == 2


@pytest.mark.parametrize("provider", ["gemini", "openai"])
def test_pro_4k_21_9_through_both_protocols(simulator, stack, tmp_path: Path, provider: str) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(thumbnails=False)
    s = stack(sim, NANOBATCH_PROVIDER=provider)
    s.start_worker()
    path = write_csv(tmp_path / "p.csv", "key,prompt", "WIDE-1,panoramic living room with a grey sofa")
    result = s.cli(
        "submit",
        str(path),
        "--batch",
        "wide",
        "--model",
        "gemini-3-pro-image",
        "--size",
        "4K",
        "--aspect",
        "21:9",
        check=True,
    )
    assert "1 new" in result.stdout
    assert s.wait_terminal("wide").counts["completed"] == 1
    task = only_task(s)
    assert (task.width, task.height, task.image_size, task.aspect_ratio) == (6336, 2688, "4K", "21:9")
    (record,) = sim.requests(10)
    assert record["route"].startswith("openai" if provider == "openai" else "gemini")
    with Image.open(Path((task.result_uri or "").removeprefix("file://"))) as image:
        assert image.size == (6336, 2688)


def test_openai_compatible_edit_uses_multipart(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    Image.new("RGB", (64, 64), (10, 120, 10)).save(tmp_path / "photo.png")
    sim = simulator()
    s = stack(
        sim,
        NANOBATCH_PROVIDER="openai",
        NANOBATCH_AUTH="bearer",
        NANOBATCH_API_KEY="sk-test-relay-key-000000",
    )
    s.start_worker()
    s.submit_file(
        write_csv(tmp_path / "p.csv", "key,prompt,input_images", "E,new background,photo.png"), "oa"
    )
    assert s.wait_terminal("oa").counts["completed"] == 1
    (record,) = sim.requests(10)
    assert record["route"].startswith("openai") and record["n_input_images"] == 1
