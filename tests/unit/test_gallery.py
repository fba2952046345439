"""The HTML report: user text escaped, nothing external, thumbnails small, big batches capped."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from nanobatch.models.base import utcnow
from nanobatch.models.db import Database
from nanobatch.models.queries import BatchSummary
from nanobatch.models.tables import Batch, GenerationTask, new_id
from nanobatch.tasks.gallery import (
    FailureGroup,
    ReportData,
    Tile,
    collect,
    default_report_path,
    render_html,
    thumbnail_data_uri,
    with_thumbnails,
    write_report,
)
from nanobatch.workers.storage import safe_name

HOSTILE = '<script>alert("x")</script>'
ATTR_BREAKER = '"><img src=x onerror=alert(1)>'


def summary(name: str = "shop", **counts: int) -> BatchSummary:
    full = {"pending": 0, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0} | counts
    return BatchSummary(
        name=name,
        status="open",
        counts=full,
        cost_usd=0.078,
        budget_usd=None,
        per_minute=0.0,
        created_at=utcnow(),
    )


def report(
    tiles: list[Tile], failures: list[FailureGroup] | None = None, name: str = "shop", **counts: int
) -> ReportData:
    now = utcnow()
    counts.setdefault("completed", len(tiles))
    return ReportData(
        summary=summary(name, **counts),
        started_at=now - timedelta(minutes=3),
        finished_at=now,
        tiles=tiles,
        failures=failures or [],
        generated_at=now,
    )


def tile(key: str = "SKU-1", prompt: str = "a red mug", thumbnail: str | None = None) -> Tile:
    return Tile(key, "completed", prompt, 0.039, 1024, 1024, None, thumbnail)


def png(path: Path, size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG") -> Path:
    Image.new(mode, size, (200, 30, 30) if mode == "RGB" else (200, 30, 30, 128)).save(path, fmt)
    return path


def decode(data_uri: str) -> Image.Image:
    assert data_uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1])))


# --- Escaping and self-containment --------------------------------------------------------------


def test_keys_prompts_and_messages_are_escaped_everywhere() -> None:
    data = report(
        [tile(key=HOSTILE, prompt=ATTR_BREAKER + " " + "long " * 60)],
        [FailureGroup(code=HOSTILE, count=1, items=[(HOSTILE, ATTR_BREAKER)])],
        name=HOSTILE,
        failed=1,
    )
    page = render_html(dataclasses.replace(data, source=HOSTILE, model=ATTR_BREAKER))
    assert "<script" not in page.lower()
    assert "onerror=alert(1)>" not in page  # the attribute breaker stays inside its quotes, as text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page


def test_the_page_loads_nothing_from_anywhere() -> None:
    thumb = thumbnail_data_uri(None) or "data:image/jpeg;base64,AAAA"
    page = render_html(
        report([tile(thumbnail=thumb)], [FailureGroup("blocked", 1, [("A", "IMAGE_SAFETY")])], failed=1)
    )
    references = re.findall(r'\b(?:src|href|action|poster|srcset)\s*=\s*"([^"]*)"', page)
    assert references and all(ref.startswith("data:") for ref in references)
    assert "http://" not in page and "https://" not in page and "<link" not in page and "url(" not in page
    assert "default-src 'none'; img-src data:; style-src 'unsafe-inline'" in page  # CSP: belt and braces


def test_a_long_prompt_is_shortened_with_the_full_text_kept() -> None:
    prompt = "studio photo of a tall red ceramic mug " * 10
    page = render_html(report([tile(prompt=prompt)]))
    assert f'title="{prompt}"' in page and "…" in page
    assert "<details><summary>Full prompt</summary>" in page


def test_a_capped_gallery_says_how_many_it_shows() -> None:
    page = render_html(report([tile()], completed=1500))
    assert "Showing the first 1 of 1,500 completed images" in page
    assert "Showing the first" not in render_html(report([tile()]))


def test_failure_groups_list_a_bounded_number_of_keys() -> None:
    group = FailureGroup("blocked", 250, [(f"K{i}", "SAFETY") for i in range(200)])
    page = render_html(report([], [group], failed=250))
    assert page.count('<tr><td class="key">') == 200 and "… and 50 more." in page
    assert "No completed images yet." in page


def test_a_tile_whose_file_is_gone_says_so_instead_of_a_broken_image() -> None:
    page = render_html(report([tile(thumbnail=None)]))
    assert "image file missing" in page and "<img" not in page


# --- Thumbnails ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((2048, 1024), (256, 128)),  # wide: the long side becomes 256
        ((768, 1344), (146, 256)),  # tall 9:16
        ((100, 50), (100, 50)),  # never upscaled
    ],
)
def test_thumbnails_fit_256_px_keeping_the_aspect_ratio(
    tmp_path: Path, size: tuple[int, int], expected: tuple[int, int]
) -> None:
    uri = thumbnail_data_uri(png(tmp_path / "i.png", size))
    assert uri is not None
    with decode(uri) as image:
        assert image.format == "JPEG" and image.size == expected


def test_a_jpeg_source_and_a_transparent_png_become_small_jpegs(tmp_path: Path) -> None:
    jpeg = thumbnail_data_uri(png(tmp_path / "i.jpg", (4096, 4096), fmt="JPEG"))
    transparent = thumbnail_data_uri(png(tmp_path / "t.png", (512, 512), mode="RGBA"))
    assert jpeg and transparent
    assert len(jpeg) < 20_000  # a 4K source still yields a few kB, not megabytes
    with decode(jpeg) as a, decode(transparent) as b:
        assert a.size == (256, 256) and b.size == (256, 256)
        r, g, _ = b.convert("RGB").getpixel((128, 128))
        assert r > 200 and g > 100  # half-transparent red over white is pink, not dark red over black


def test_an_unreadable_file_gives_no_thumbnail(tmp_path: Path) -> None:
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert thumbnail_data_uri(tmp_path / "junk.png") is None
    assert thumbnail_data_uri(tmp_path / "absent.png") is None


# --- From a real (SQLite) database --------------------------------------------------------------


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url)
    yield database
    database.dispose()


def seed(db: Database, tmp_path: Path) -> Batch:
    """Three completed images (one file deleted), two blocked failures, one pending row."""
    batch = Batch(id=new_id(), name="shop", model="gemini-2.5-flash-image", created_at=utcnow())
    now = utcnow()
    rows = []
    for i, key in enumerate(["C", "A", "B"]):
        path = png(tmp_path / f"{key}.png", (1344, 768))
        rows.append(
            GenerationTask(
                key=key,
                status="completed",
                result_uri=path.as_uri(),
                width=1344,
                height=768,
                cost_usd=0.039,
                started_at=now - timedelta(seconds=90 - i),
                finished_at=now,
            )
        )
    (tmp_path / "C.png").unlink()
    rows += [
        GenerationTask(key=k, status="failed", error_code="blocked", error_message="IMAGE_SAFETY")
        for k in ("F2", "F1")
    ]
    rows.append(GenerationTask(key="P", status="pending"))
    with db.session() as session:
        session.add(batch)
        session.flush()
        for row in rows:
            row.batch_id, row.prompt, row.model = batch.id, f"prompt {row.key}", batch.model
            row.aspect_ratio = "16:9"
            session.add(row)
    return batch


def test_a_report_from_the_database(db: Database, tmp_path: Path) -> None:
    batch = seed(db, tmp_path)
    with db.session() as session:
        data = with_thumbnails(collect(session, batch, max_images=2))
    assert [t.key for t in data.tiles] == ["A", "B"] and data.capped  # first 2 of 3 completed, by key
    assert all(t.thumbnail for t in data.tiles)
    assert data.failures == [FailureGroup("blocked", 2, [("F1", "IMAGE_SAFETY"), ("F2", "IMAGE_SAFETY")])]
    assert data.summary.counts == {"pending": 1, "processing": 0, "completed": 3, "failed": 2, "cancelled": 0}
    path = default_report_path(tmp_path / "images", "shop")
    assert path == tmp_path / "images" / safe_name("shop") / "report.html"
    assert write_report(data, path) == path.stat().st_size
    assert path.read_text(encoding="utf-8").count('<img src="data:image/jpeg;base64,') == 2


def test_a_completed_row_whose_file_was_deleted_gets_a_placeholder(db: Database, tmp_path: Path) -> None:
    batch = seed(db, tmp_path)
    with db.session() as session:
        data = with_thumbnails(collect(session, batch))
    assert {t.key: t.thumbnail is None for t in data.tiles} == {"A": False, "B": False, "C": True}
    assert "image file missing" in render_html(data)


def test_signed_links_widen_the_csp_to_their_origin_only() -> None:
    link = "https://bucket.s3.amazonaws.com/b/k.png?X-Amz-Signature=abc"
    page = render_html(report([tile(thumbnail=link)]))
    assert "img-src data: https://bucket.s3.amazonaws.com;" in page
    assert 'src="https://bucket.s3.amazonaws.com/b/k.png?X-Amz-Signature=abc"' in page
    assert "script-src" not in page and "default-src 'none'" in page
    assert "img-src data:;" in render_html(report([tile()]))  # embedded thumbnails: nothing else
