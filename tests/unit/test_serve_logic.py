"""Pure pieces of the task pipeline: model fallback choice and request building."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from sqlalchemy.exc import OperationalError

from nanobatch.models.catalog import load_catalog
from nanobatch.tasks import serve
from nanobatch.tasks.serve import Job, build_request, choose_model

CATALOG = load_catalog()


def job(**changes: object) -> Job:
    fields: dict[str, object] = {
        "id": "t1",
        "token": "tok",
        "batch_id": "b1",
        "batch_name": "b",
        "key": "k",
        "prompt": "a mug",
        "model": "gemini-3-pro-image",
        "image_size": "2K",
        "aspect_ratio": "16:9",
        "output_format": "png",
        "input_images": (),
        "attempts": 0,
        "error_code": None,
        "content_hash": None,
        "reuse": False,
    }
    fields.update(changes)
    return Job(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("attempts", "code", "chain", "expected"),
    [
        (0, None, ["gemini-2.5-flash-image"], "gemini-3-pro-image"),  # healthy: own model
        (1, "unavailable", ["gemini-2.5-flash-image"], "gemini-3-pro-image"),  # one outage is not a pattern
        (2, "unavailable", ["gemini-2.5-flash-image"], "gemini-2.5-flash-image"),
        (3, "timeout", ["m1", "m2"], "m2"),
        (9, "timeout", ["m1", "m2"], "m2"),  # the chain's end is sticky
        (5, "blocked", ["m1"], "gemini-3-pro-image"),  # only outages trigger a fallback
        (5, "unavailable", [], "gemini-3-pro-image"),  # off by default
    ],
)
def test_fallback_chain_after_repeated_outages(
    attempts: int, code: str | None, chain: list[str], expected: str
) -> None:
    assert choose_model(job(attempts=attempts, error_code=code), chain) == expected


def test_request_carries_catalog_pixels_and_size_only_where_supported() -> None:
    pro = build_request(job(), CATALOG.resolve("gemini-3-pro-image"))
    assert (pro.image_size, pro.width, pro.height) == ("2K", 2752, 1536)
    flash = build_request(
        job(model="gemini-2.5-flash-image", image_size=None), CATALOG.resolve("nano-banana")
    )
    assert (flash.image_size, flash.width, flash.height, flash.model) == (
        None,
        1344,
        768,
        "gemini-2.5-flash-image",
    )


def test_request_reads_input_images_with_their_mime_types(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    request = build_request(
        job(input_images=(str(tmp_path / "a.jpg"), str(tmp_path / "b.png")), output_format="jpeg"),
        CATALOG.resolve("gemini-3-pro-image"),
    )
    assert [i.mime_type for i in request.input_images] == ["image/jpeg", "image/png"]
    assert request.output_format == "jpeg" and request.input_images[1].data.startswith(b"\x89PNG")


class _FlakyDatabase:
    """Fails the first ``failures`` connections the way a restarting PostgreSQL does."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.kinds: list[str] = []

    def _connect(self, kind: str) -> Iterator[str]:
        self.calls += 1
        self.kinds.append(kind)
        if self.calls <= self.failures:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        yield "session"

    @contextmanager
    def transaction(self) -> Iterator[str]:
        yield from self._connect("transaction")

    @contextmanager
    def autocommit(self) -> Iterator[str]:
        yield from self._connect("autocommit")


def test_final_writes_ride_out_a_database_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "DB_RETRY_DELAYS", (0.0, 0.0, 0.0))
    db = _FlakyDatabase(failures=3)
    assert serve.write_with_retry(SimpleNamespace(db=db), lambda session: f"wrote with {session}") == (  # type: ignore[arg-type]
        "wrote with session"
    )
    assert db.calls == 4
    assert db.kinds == ["transaction"] * 4


def test_single_statement_writes_run_in_autocommit_and_retry_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "DB_RETRY_DELAYS", (0.0, 0.0))
    db = _FlakyDatabase(failures=1)
    rt = SimpleNamespace(db=db)
    assert serve.write_with_retry(rt, lambda c: c, single_statement=True) == "session"  # type: ignore[arg-type]
    assert db.kinds == ["autocommit", "autocommit"]


def test_a_database_that_stays_down_raises_after_the_last_try(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "DB_RETRY_DELAYS", (0.0, 0.0))
    db = _FlakyDatabase(failures=10)
    with pytest.raises(OperationalError):
        serve.write_with_retry(SimpleNamespace(db=db), lambda session: session)  # type: ignore[arg-type]
    assert db.calls == 3
