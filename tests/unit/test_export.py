"""Export rows: the flat shape a shop catalog imports, from in-memory rows and from a real SQLite DB."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nanobatch.models.base import Base, utcnow
from nanobatch.models.db import Database
from nanobatch.models.status import TaskStatus
from nanobatch.models.tables import Batch, GenerationTask, new_id
from nanobatch.tasks.export import (
    FIELDS,
    atomic_text_file,
    export_batch,
    export_row,
    extra_columns,
    reason_counts,
    stream_rows,
    write_csv,
    write_jsonl,
)
from nanobatch.workers.storage import local_path


def task(**values: Any) -> GenerationTask:
    """An unsaved row with the columns a finished task has (override any of them)."""
    defaults: dict[str, Any] = {
        "key": "SKU-1",
        "status": "completed",
        "prompt": "a red mug",
        "model": "gemini-2.5-flash-image",
        "model_used": None,
        "image_size": None,
        "aspect_ratio": "1:1",
        "result_uri": None,
        "result_sha256": None,
        "width": None,
        "height": None,
        "mime_type": None,
        "bytes": None,
        "cost_usd": None,
        "error_code": None,
        "error_message": None,
        "attempts": 0,
        "extra": None,
    }
    return GenerationTask(**{**defaults, **values})


def completed(key: str, path: Path, **values: Any) -> GenerationTask:
    return task(
        key=key,
        result_uri=path.as_uri(),
        result_sha256="ab" * 32,
        width=1024,
        height=1024,
        mime_type="image/png",
        bytes=1234,
        cost_usd=0.039,
        **values,
    )


def test_a_completed_row_has_every_column_and_a_local_path(tmp_path: Path) -> None:
    path = tmp_path / "out dir" / "SKU 1%.png"  # spaces and % are percent-encoded in the URI
    row = export_row(completed("SKU 1%", path, extra={"title": "Red mug", "price": "9.99"}))
    assert list(row)[: len(FIELDS)] == list(FIELDS)
    assert row["path"] == str(path)
    assert (row["width"], row["height"], row["bytes"], row["cost_usd"]) == (1024, 1024, 1234, 0.039)
    assert (row["title"], row["price"]) == ("Red mug", "9.99")


def test_the_model_is_the_one_that_made_the_image_after_a_fallback() -> None:
    assert export_row(task(model_used="gemini-3-pro-image"))["model"] == "gemini-3-pro-image"
    assert export_row(task())["model"] == "gemini-2.5-flash-image"


def test_a_product_column_named_like_a_fixed_column_is_prefixed_not_lost() -> None:
    row = export_row(task(status="failed", extra={"status": "discontinued", "path": "/shop/x"}))
    assert (row["status"], row["extra_status"], row["extra_path"]) == ("failed", "discontinued", "/shop/x")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (None, None),
        ("", None),
        ("file:///data/images/b/A%20B.png", "/data/images/b/A B.png"),
        ("s3://bucket/b/A.png", "s3://bucket/b/A.png"),  # not a local file: passed through unchanged
    ],
)
def test_local_path(uri: str | None, expected: str | None) -> None:
    assert local_path(uri) == expected


def test_csv_has_a_header_of_fixed_then_product_columns_and_empty_cells_for_none(tmp_path: Path) -> None:
    rows = [
        export_row(completed("A", tmp_path / "A.png", extra={"title": "Mug", "tags": ["red", "tall"]})),
        export_row(
            task(
                key="B",
                status="failed",
                error_code="blocked",
                error_message='said "no", twice',
                attempts=1,
                extra={"title": "Cup"},
            )
        ),
    ]
    out = io.StringIO()
    assert write_csv(rows, ["title", "tags"], out) == 2
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(parsed[0]) == [*FIELDS, "title", "tags"]
    assert parsed[0]["tags"] == '["red", "tall"]'  # nested JSONL values become JSON text
    assert parsed[1]["path"] == "" and parsed[1]["tags"] == ""
    assert (parsed[1]["error_code"], parsed[1]["error_message"], parsed[1]["attempts"]) == (
        "blocked",
        'said "no", twice',
        "1",
    )


def test_jsonl_is_one_object_per_line_with_native_types(tmp_path: Path) -> None:
    rows = [
        export_row(completed("A", tmp_path / "A.png", extra={"tags": ["red"]})),
        export_row(task(key="B")),
    ]
    out = io.StringIO()
    assert write_jsonl(rows, out) == 2
    objects = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [o["key"] for o in objects] == ["A", "B"]
    assert objects[0]["width"] == 1024 and objects[0]["tags"] == ["red"]
    assert objects[1]["path"] is None and objects[1]["cost_usd"] is None


# --- From a real (SQLite) database --------------------------------------------------------------


def make_batch(db: Database, tmp_path: Path, n: int = 25) -> str:
    """A batch of ``n`` rows: every 5th failed (blocked or unavailable), every 7th pending, rest completed."""
    batch_id = new_id()
    with db.session() as session:
        session.add(Batch(id=batch_id, name="shop", model="gemini-2.5-flash-image", created_at=utcnow()))
        session.flush()
        for i in range(n):
            key = f"SKU-{i:03d}"
            if i % 5 == 0:
                row = task(
                    key=key,
                    status="failed",
                    error_code="blocked" if i % 10 else "unavailable",
                    error_message=f"no image for {key}",
                    attempts=1,
                )
            elif i % 7 == 0:
                row = task(key=key, status="pending", error_code="transient" if i == 7 else None)
            else:
                extra = {"title": f"Product {i}"} | ({"colour": "red"} if i == 3 else {})
                row = completed(key, tmp_path / f"{key}.png", extra=extra)
            row.batch_id = batch_id
            session.add(row)
    return batch_id


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url)
    yield database
    database.dispose()


def test_a_batch_streams_in_key_order_across_chunks(db: Database, tmp_path: Path) -> None:
    batch_id = make_batch(db, tmp_path, n=25)
    with db.session() as session:
        keys = [row["key"] for row in stream_rows(session, batch_id, chunk=4)]
    assert keys == [f"SKU-{i:03d}" for i in range(25)]


def test_csv_export_from_the_database(db: Database, tmp_path: Path) -> None:
    batch_id = make_batch(db, tmp_path)
    out = io.StringIO()
    with db.session() as session:
        assert extra_columns(session, batch_id, chunk=3) == ["title", "colour"]  # first-seen order
        assert export_batch(session, batch_id, "csv", out) == 25
    rows = {r["key"]: r for r in csv.DictReader(io.StringIO(out.getvalue()))}
    assert rows["SKU-003"]["colour"] == "red" and rows["SKU-004"]["colour"] == ""
    assert rows["SKU-001"]["path"] == str(tmp_path / "SKU-001.png")
    assert rows["SKU-005"]["status"] == "failed" and rows["SKU-005"]["error_code"] == "blocked"


def test_jsonl_export_from_the_database(db: Database, tmp_path: Path) -> None:
    batch_id = make_batch(db, tmp_path)
    out = io.StringIO()
    with db.session() as session:
        assert export_batch(session, batch_id, "jsonl", out) == 25
    objects = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(objects) == 25
    assert objects[1]["title"] == "Product 1" and objects[1]["cost_usd"] == pytest.approx(0.039)
    assert "title" not in objects[0]  # a failed row without product columns has none


def test_an_unknown_format_is_refused(db: Database, tmp_path: Path) -> None:
    batch_id = make_batch(db, tmp_path, n=1)
    with db.session() as session, pytest.raises(ValueError, match="xml"):
        export_batch(session, batch_id, "xml", io.StringIO())  # type: ignore[arg-type]


def test_reason_counts_group_failures_and_ignore_fresh_pending_rows(db: Database, tmp_path: Path) -> None:
    batch_id = make_batch(db, tmp_path)
    with db.session() as session:
        assert reason_counts(session, batch_id) == {"blocked": 2, "unavailable": 3}
        assert reason_counts(session, batch_id, TaskStatus.PENDING) == {"transient": 1}


def test_no_table_has_a_column_that_could_hold_a_secret() -> None:
    # The export reads task columns only; keeping secrets out of the schema keeps them out of exports.
    columns = [f"{t.name}.{c.name}" for t in Base.metadata.tables.values() for c in t.columns]
    assert not [c for c in columns if any(word in c for word in ("api_key", "secret", "password", "auth"))]
    assert not [f for f in FIELDS if "api" in f or "secret" in f]


def test_an_export_file_appears_only_when_complete_and_with_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out" / "export.csv"
    with pytest.raises(RuntimeError), atomic_text_file(target) as handle:
        handle.write("key,status\n")
        raise RuntimeError("interrupted")
    assert not target.exists() and list(target.parent.iterdir()) == []  # nothing half-written is left
    old = os.umask(0o022)
    try:
        with atomic_text_file(target) as handle:
            handle.write("key,status\n")
    finally:
        os.umask(old)
    assert target.read_text() == "key,status\n"
    assert target.stat().st_mode & 0o777 == 0o644  # shareable, not mkstemp's 0600


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+2", "'+1+2"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcell", "'\tcell"),
        ("\rcell", "'\rcell"),
        ("-5", "-5"),  # plain numbers are not formulas
        ("+1.5e3", "+1.5e3"),
        ("mug", "mug"),
        ("a=b", "a=b"),
    ],
)
def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(cell: str, written: str) -> None:
    row = export_row(task(key="K", extra={"note": cell}))
    out = io.StringIO()
    write_csv([row], ["note"], out)
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert parsed[0]["note"] == written
    out = io.StringIO()
    write_jsonl([row], out)
    assert json.loads(out.getvalue())["note"] == cell  # JSONL stays exact


def test_csv_column_names_and_keys_are_neutralised_too() -> None:
    out = io.StringIO()
    write_csv([export_row(task(key="=1+1", extra={"@cmd": "x"}))], ["@cmd"], out)
    header, row = list(csv.reader(io.StringIO(out.getvalue())))
    assert header[-1] == "'@cmd" and row[0] == "'=1+1" and row[-1] == "x"


def test_a_signer_fills_signed_url_and_the_stored_uri_is_exported(tmp_path: Path) -> None:
    row = export_row(
        completed("A", tmp_path / "A.png"),
        signer=lambda uri: f"https://signed.example/{uri.rsplit('/', 1)[-1]}",
    )
    assert row["image_uri"] == (tmp_path / "A.png").as_uri()
    assert row["signed_url"] == "https://signed.example/A.png"
    assert export_row(completed("A", tmp_path / "A.png"))["signed_url"] is None
    assert list(FIELDS[-4:-2]) == ["image_uri", "signed_url"]  # new columns only at the end (lanes after)
