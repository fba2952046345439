"""Issue 15: the export a shop already has is the input.

Real PostgreSQL, Redis, Celery worker processes and the simulator; product photos are served by a
loopback image server (``tests/imageserver.py``) in place of the shop's CDN. Each export is submitted
with one documented command, completes with one image per variant (or per product), with prompts
free of HTML, and each request to the simulator carried that variant's own photo (the simulator's
request log records the sha256 of every input image).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from nanobatch.models.tables import Batch, GenerationTask
from tests.imageserver import ImageServer, sha256_of
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "catalogs"
SHOPIFY_CDN = "https://cdn.shopify.com"
SHOPIFY_FILES = "/s/files/1/0612/0001/files"
WOO_HOST = "https://shop.example.com"
WOO_UPLOADS = "/wp-content/uploads/2026/03"


@pytest.fixture
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.stop()


def localised(name: str, host: str, server: ImageServer, tmp_path: Path) -> Path:
    """The fixture export with its photo host pointed at the loopback image server."""
    text = (FIXTURES / name).read_bytes().replace(host.encode(), server.url.encode())
    path = tmp_path / name
    path.write_bytes(text)
    return path


def tasks_of(s: Stack, batch: str) -> dict[str, GenerationTask]:
    with s.runtime.db.session() as session:
        rows = session.scalars(select(GenerationTask).join(Batch).where(Batch.name == batch))
        return {t.key: t for t in rows}


def photo_sent(sim, prompt_fragment: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The input-image digests of the simulator requests whose prompt contains ``prompt_fragment``."""
    found = [r["input_sha256"] for r in sim.requests(200) if prompt_fragment in r["prompt"]]
    assert found, f"no request with {prompt_fragment!r}"
    return found[-1]


def test_a_shopify_export_becomes_one_edited_photo_per_variant(simulator, stack, images, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given a Shopify products export (variants, image-only rows, HTML bodies, CDN photo URLs)
    sim = simulator()
    s = stack(sim, NANOBATCH_ALLOW_PRIVATE_URLS="true")
    s.start_worker()
    export = localised("shopify_products_export.csv", SHOPIFY_CDN, images, tmp_path)
    # When it is submitted with the documented command
    result = s.cli("submit", str(export), "--preset", "shopify", "--batch", "shop", check=True)
    # Then the key choice and the ignored image-only rows are reported, and every variant completes
    assert "key column: Variant SKU" in result.stderr and "2 row(s) without a product" in result.stderr
    assert "5 new, 0 already present" in result.stdout
    assert s.wait_terminal("shop").counts["completed"] == 5
    tasks = tasks_of(s, "shop")
    assert sorted(tasks) == ["MUG-001", "TEE-BLK-M", "TEE-WHT-M", "TOTE-NAT", "TOTE-NAV"]
    for task in tasks.values():
        assert "<" not in task.prompt and "&amp;" not in task.prompt and "&nbsp;" not in task.prompt
        assert Path(task.input_images[0]).parent == (s.output_dir / "inputs").resolve()
    assert "Soft organic cotton tee. Crew neck Regular fit" in tasks["TEE-BLK-M"].prompt
    assert "Holds 350 ml & is dishwasher safe." in tasks["MUG-001"].prompt
    # Each variant was edited from its own photo; a variant without one used the product's photo
    expected = {
        "Classic Tee (Black / M)": "classic-tee-black.jpg",
        "Classic Tee (White / M)": "classic-tee-white.jpg",
        "Ceramic Mug by": "ceramic-mug.jpg",
        "Canvas Tote (Natural)": "canvas-tote.jpg",
        "Canvas Tote (Navy)": "canvas-tote.jpg",
    }
    for fragment, photo in expected.items():
        assert photo_sent(sim, fragment) == [sha256_of(f"{SHOPIFY_FILES}/{photo}")], fragment
    # Each distinct URL was fetched once, and image-only rows' photos not at all
    assert images.hits[f"{SHOPIFY_FILES}/canvas-tote.jpg"] == 1
    assert images.hits[f"{SHOPIFY_FILES}/classic-tee-back.jpg"] == 0


def test_per_product_makes_one_image_per_shopify_product(simulator, stack, images, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = simulator()
    s = stack(sim, NANOBATCH_ALLOW_PRIVATE_URLS="true")
    s.start_worker()
    export = localised("shopify_products_export.csv", SHOPIFY_CDN, images, tmp_path)
    result = s.cli(
        "submit", str(export), "--preset", "shopify", "--per", "product", "--batch", "p", check=True
    )
    assert "key column: Handle" in result.stderr and "3 new" in result.stdout
    assert s.wait_terminal("p").counts["completed"] == 3
    assert sorted(tasks_of(s, "p")) == ["canvas-tote", "ceramic-mug", "classic-tee"]
    assert photo_sent(sim, "Classic Tee by") == [sha256_of(f"{SHOPIFY_FILES}/classic-tee-black.jpg")]


def test_a_woocommerce_export_becomes_one_edited_photo_per_variation(
    simulator, stack, images, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    # Given a WooCommerce export: a variable product, its variations (one names its parent by SKU,
    # one has no photo of its own), a simple product; BOM, CRLF, HTML descriptions
    sim = simulator()
    s = stack(sim, NANOBATCH_ALLOW_PRIVATE_URLS="true")
    s.start_worker()
    export = localised("woocommerce_products_export.csv", WOO_HOST, images, tmp_path)
    template = (
        "Photo of {{ name }}{% if attribute_1_value_s %} in {{ attribute_1_value_s | lower }}{% endif %}."
        " {{ description | truncate(60) }}"
    )
    result = s.cli(
        "submit", str(export), "--preset", "woocommerce", "--template", template, "--batch", "woo", check=True
    )
    assert "key column: SKU" in result.stderr and "4 new" in result.stdout
    assert s.wait_terminal("woo").counts["completed"] == 4
    tasks = tasks_of(s, "woo")
    assert sorted(tasks) == ["CAP-01", "HOODIE-BLUE", "HOODIE-GREY", "HOODIE-RED"]
    # The description was filled down from the parent and its HTML removed
    assert tasks["HOODIE-GREY"].prompt.startswith(
        "Photo of Zip Hoodie - Grey in grey. Fleece-lined zip hoodie with two pockets."
    )
    assert all("<" not in t.prompt for t in tasks.values())
    assert photo_sent(sim, "Zip Hoodie - Grey") == [sha256_of(f"{WOO_UPLOADS}/hoodie-grey.jpg")]
    assert photo_sent(sim, "Zip Hoodie - Red") == [sha256_of(f"{WOO_UPLOADS}/hoodie-blue.jpg")]
    assert photo_sent(sim, "Baseball Cap") == [sha256_of(f"{WOO_UPLOADS}/cap.jpg")]
    # The export carries the prompt (last fixed column) and the shop's own columns
    exported = s.cli("export", "woo", check=True).stdout
    rows = {r["key"]: r for r in csv.DictReader(io.StringIO(exported))}
    assert rows["CAP-01"]["prompt"] == tasks["CAP-01"].prompt
    assert rows["CAP-01"]["Regular price"] == "18" and Path(rows["CAP-01"]["path"]).is_file()


def test_dry_run_shows_the_key_the_first_prompts_and_rows_per_photo(
    simulator, stack, images, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator(), NANOBATCH_ALLOW_PRIVATE_URLS="true")
    export = localised("shopify_products_export.csv", SHOPIFY_CDN, images, tmp_path)
    result = s.cli("submit", str(export), "--preset", "shopify", "--dry-run", check=True)
    out = result.stdout
    assert "key column: Variant SKU" in result.stderr
    assert "first 5 prompt(s):" in out
    assert "  TEE-WHT-M: Professional e-commerce photo of this product: Classic Tee (White / M)" in out
    assert "input images by URL: 4 distinct" in out
    assert f"     2  {images.url}{SHOPIFY_FILES}/canvas-tote.jpg\n" in out
    # Fetched to check, stored nowhere, written nowhere
    assert not (s.output_dir / "inputs").exists()
    with s.runtime.db.session() as session:
        assert session.scalars(select(Batch)).all() == []


def test_an_unusable_photo_url_is_a_row_error_at_submit(simulator, stack, images, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())  # NANOBATCH_ALLOW_PRIVATE_URLS is not set: loopback is refused
    path = tmp_path / "p.csv"
    path.write_text(
        "key,prompt,input_images\n"
        f"A,edit,{images.url}/a.jpg\n"
        "B,edit,s3://bucket/b.jpg\n"
        f"C,edit,{images.url.replace('127.0.0.1', 'localhost')}/c.jpg\n"
    )
    result = s.cli("submit", str(path), "--batch", "urls")
    assert result.returncode == 1
    assert "line 2: input_images" in result.stderr and "resolves to a loopback address" in result.stderr
    assert (
        "line 3: input_images: s3://bucket/b.jpg: object-store URLs are not accepted as input images"
        in result.stderr
    )
    assert (
        "line 4: input_images" in result.stderr
        and "localhost resolves to a loopback address" in result.stderr
    )
    assert sum(images.hits.values()) == 0


def test_a_european_excel_export_with_shop_column_names_just_works(simulator, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Excel (de/fr locale) writes a BOM, "sep=;" and semicolons; columns as the shop names them
    s = stack(simulator())
    path = tmp_path / "artikel.csv"
    path.write_bytes(
        "\ufeffsep=;\r\nSKU;Title;Option1 Value;Body (HTML)\r\n"
        'A-1;Becher;Rot;"<p>Steingut, 350&nbsp;ml</p>"\r\nA-2;Becher;Blau;<p>Steingut</p>\r\n'.encode()
    )
    result = s.cli(
        "submit",
        str(path),
        "--batch",
        "eu",
        "--template",
        "{title} in {Option1 Value}: {body_html}",
        check=True,
    )
    assert "key column: SKU" in result.stderr and "delimiter: ';'" in result.stderr
    assert "2 new, 0 already present" in result.stdout
    assert tasks_of(s, "eu")["A-1"].prompt == "Becher in Rot: Steingut, 350 ml"


def test_a_flag_error_is_printed_once_not_per_row(simulator, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    path = tmp_path / "p.csv"
    path.write_text("key,prompt\n" + "".join(f"K{i},mug {i}\n" for i in range(30)))
    result = s.cli(
        "submit", str(path), "--batch", "flag", "--size", "2K", "--model", "gemini-2.5-flash-image"
    )
    assert "shut down" in result.stderr  # a retired model: refused once, for the whole file
    result = s.cli(
        "submit",
        str(path),
        "--batch",
        "flag",
        "--size",
        "2K",
        "--model",
        "gemini-2.5-flash-image",
        "--allow-retired-model",
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "takes no image size" in line]
    assert lines == ["✗ --size: model gemini-2.5-flash-image takes no image size (got '2K') (30 rows)"]
    assert "1 invalid row(s); nothing was written" in result.stderr


def test_template_mistakes_are_one_line_never_a_traceback(simulator, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    path = tmp_path / "p.csv"
    path.write_text("key,Title,price\nA,Mug,abc\nB,Cup,3\n")
    for template, says in [
        ("{title!x}", "{title!x}: conversion must be !r, !s or !a"),
        ("{price:.2q}", "format spec '.2q' is not valid"),
        ("{{ title.__class__ }}", "not allowed in the sandbox"),
    ]:
        result = s.cli("submit", str(path), "--batch", "t", "--template", template)
        said = " ".join(result.stderr.split())
        assert result.returncode == 2 and "Traceback" not in said, said
        assert said.startswith(f"error: template {template!r}: ") and says in said
        assert said.endswith("(columns: key, Title, price)")
    result = s.cli("submit", str(path), "--batch", "t", "--template", "{title} for {price:.2f}")
    assert (
        result.returncode == 1 and "line 2: template: {price:.2f} needs a number, got 'abc'" in result.stderr
    )


def test_the_api_returns_the_key_column(simulator, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from nanobatch import Client

    s = stack(simulator())
    path = tmp_path / "p.csv"
    path.write_text("Handle,Variant SKU,prompt\nmug,MUG-1,a mug\n")
    with Client(s.settings) as client:
        result = client.submit(path, batch="api")
    assert (result.key_column, result.new) == ("Variant SKU", 1)


def test_an_input_image_gone_at_run_time_fails_the_task_with_the_reason(  # type: ignore[no-untyped-def]
    simulator, stack, images, tmp_path
) -> None:
    s = stack(simulator(), NANOBATCH_ALLOW_PRIVATE_URLS="true")
    path = tmp_path / "p.csv"
    path.write_text(f"key,prompt,input_images\nA,edit this,{images.url}/a.jpg\n")
    s.cli("submit", str(path), "--batch", "gone", check=True)
    for stored in (s.output_dir / "inputs").iterdir():
        stored.unlink()
    s.start_worker()
    assert s.wait_terminal("gone").counts["failed"] == 1
    task = tasks_of(s, "gone")["A"]
    assert task.error_code == "invalid_task" and "no such file" in (task.error_message or "").lower()
