"""Intake of real shop exports (issue 15): key choice, delimiters, presets, option errors, streaming."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nanobatch.models.catalog import load_catalog
from nanobatch.tasks import presets
from nanobatch.tasks.intake import IntakeError, IntakeOptions, IntakeResult, read_file, read_rows
from tests.imageserver import ImageServer

CATALOG = load_catalog()
MODEL = "gemini-2.5-flash-image"  # past its shutdown: the options below allow it (no image sizes)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "catalogs"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def read(path: Path, **options: object) -> IntakeResult:
    return read_file(path, CATALOG, IntakeOptions(model=MODEL, allow_retired_model=True, **options))  # type: ignore[arg-type]


def errors(result: IntakeResult) -> list[str]:
    return [str(e) for e in result.errors]


@pytest.fixture
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.stop()


# --- the key -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        ("key,SKU,prompt", "key"),
        ("Handle,SKU,prompt", "SKU"),
        ("sku,id,prompt", "sku"),
        ("Handle,Variant SKU,prompt", "Variant SKU"),
        ("Handle,id,prompt", "id"),
        ("Title,Handle,prompt", "Handle"),
    ],
)
def test_without_key_the_first_known_key_column_is_used_and_reported(
    tmp_path: Path, header: str, chosen: str
) -> None:
    ncols = header.count(",") + 1
    result = read(write(tmp_path, "p.csv", f"{header}\n{','.join(['A'] * (ncols - 1))},a mug\n"))
    assert result.key_column == chosen and [t.key for t in result.tasks] == ["A"]


def test_key_names_any_column_as_written_or_normalised(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "Item Number,Title,prompt\nIT-1,Mug,a mug\n")
    assert [t.key for t in read(path, key_column="Item Number").tasks] == ["IT-1"]
    assert read(path, key_column="item_number").key_column == "Item Number"
    with pytest.raises(IntakeError, match=r"--key 'EAN' is not a column of the file \(columns: Item Number"):
        read(path, key_column="EAN")


def test_no_key_column_says_how_to_name_one(tmp_path: Path) -> None:
    with pytest.raises(IntakeError) as caught:
        read(write(tmp_path, "p.csv", "Title,prompt\nMug,a mug\n"))
    assert "no 'key' column, nor any of sku, SKU, Variant SKU, id, Handle" in str(caught.value)
    assert "--key COLUMN (columns: Title, prompt)" in str(caught.value)


def test_rows_from_python_report_the_key_column() -> None:
    result = read_rows(
        [{"SKU": "A", "prompt": "mug"}],
        CATALOG,
        IntakeOptions(model=MODEL, allow_retired_model=True),
        base_dir=Path(),
    )
    assert result.key_column == "SKU" and [t.key for t in result.tasks] == ["A"]


# --- delimiters and BOMs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "delimiter"),
    [
        ("key;title;prompt\nA;Mug, red;a mug\n", ";"),
        ("\ufeffkey;title;prompt\nA;Mug, red;a mug\n", ";"),
        ("sep=;\nkey;title;prompt\nA;Mug, red;a mug\n", ";"),
        ("\ufeffsep=;\r\nkey;title;prompt\r\nA;Mug, red;a mug\r\n", ";"),
        ("key\ttitle\tprompt\nA\tMug, red\ta mug\n", "\t"),
        ('key,title,prompt\nA,"Mug; red",a mug\n', ","),
    ],
)
def test_delimiter_and_bom_are_sniffed(tmp_path: Path, content: str, delimiter: str) -> None:
    result = read(write(tmp_path, "p.csv", content))
    assert errors(result) == [] and result.delimiter == delimiter
    assert [(t.key, t.prompt) for t in result.tasks] == [("A", "a mug")]


def test_a_sep_line_keeps_line_numbers_of_the_file(tmp_path: Path) -> None:
    result = read(write(tmp_path, "p.csv", "sep=;\nkey;prompt\nA;mug\nB;\n"))
    assert errors(result) == ["line 4: prompt: Field required"]


def test_a_utf16_file_says_how_to_save_it(tmp_path: Path) -> None:
    with pytest.raises(IntakeError, match=r"UTF-16.*save it as CSV UTF-8"):
        read(write(tmp_path, "p.csv", "key\tprompt\nA\tmug\n".encode("utf-16")))


# --- option errors once --------------------------------------------------------------------------


def test_an_option_error_is_reported_once_not_per_row(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "key,prompt,image_size\nA,mug,\nB,cup,\nC,plate,\nD,bowl,1K\n")
    result = read(path, image_size="2K")
    assert errors(result) == [
        "--size: model gemini-2.5-flash-image takes no image size (got '2K') (3 rows)",
        "line 5: image_size: model gemini-2.5-flash-image takes no image size (got '1K')",
    ]
    assert result.error_count == 2 and result.tasks == []


def test_the_aspect_flag_error_is_reported_once(tmp_path: Path) -> None:
    result = read(write(tmp_path, "p.csv", "key,prompt\nA,mug\nB,cup\n"), aspect_ratio="7:3")
    assert len(result.errors) == 1 and str(result.errors[0]).startswith("--aspect: aspect ratio '7:3'")


# --- presets -------------------------------------------------------------------------------------

SHOPIFY_HEADER = "Handle,Title,Body (HTML),Option1 Name,Option1 Value,Variant SKU,Image Src,Variant Image"


def test_shopify_variant_before_its_product_is_a_clear_row_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.csv",
        f"{SHOPIFY_HEADER}\n"
        "mug,,,,Blue,MUG-B,,\n"
        "mug,Mug,<p>Nice</p>,Color,Red,MUG-R,,\n"
        "mug,,,,Green,MUG-G,,\n",
    )
    result = read(path, preset="shopify")
    assert errors(result) == [
        "line 2: -: Handle: variant row of 'mug' comes before its product row (the row with the Title), "
        "or more than 10,000 products after it; keep the export's order (rows grouped by Handle)"
    ]
    assert [(t.key, t.extra["variant_title"]) for t in result.tasks] == [("MUG-R", "Red"), ("MUG-G", "Green")]
    assert result.tasks[1].extra["Title"] == "Mug" and result.tasks[1].extra["Body (HTML)"] == "Nice"


def test_shopify_needs_its_columns(tmp_path: Path) -> None:
    with pytest.raises(IntakeError, match=r"--preset shopify needs column\(s\) Handle, Title"):
        read(write(tmp_path, "s.csv", "key,prompt\nA,mug\n"), preset="shopify")


def test_shopify_variant_without_sku_gets_handle_and_options(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", f"{SHOPIFY_HEADER}\nmug,Mug,,Color,Red,,,\nmug,,,,Blue,,,\n")
    assert [t.key for t in read(path, preset="shopify").tasks] == ["mug-Red", "mug-Blue"]


def test_the_product_buffer_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presets, "PRODUCT_BUFFER", 2)
    buffer = presets._Buffer(2)
    for name in "abc":
        buffer.put(name, {})
    assert (buffer.get("a"), buffer.get("c")) == (None, {})


def test_woocommerce_variation_of_an_unknown_parent_is_a_row_error(tmp_path: Path) -> None:
    path = write(tmp_path, "w.csv", "ID,Type,SKU,Name,Parent,Images\n7,variation,V-1,Thing - Red,id:6,\n")
    assert errors(read(path, preset="woocommerce")) == [
        "line 2: -: Parent: variation's parent 'id:6' is not a variable product above it in the file "
        "(or is more than 10,000 products back); keep the export's order (parents before their variations)"
    ]


def test_a_template_can_replace_the_presets_prompt(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", f"{SHOPIFY_HEADER}\nmug,Mug,<b>Big</b>,Color,Red,M-R,,\n")
    result = read(path, preset="shopify", template="{Title} ({Option1 Value}): {body_html}")
    assert [t.prompt for t in result.tasks] == ["Mug (Red): Big"]


def test_merchant_feed_fills_a_group_down_and_keys_by_id(tmp_path: Path, images: ImageServer) -> None:
    text = (
        (FIXTURES / "merchant_feed.tsv").read_text().replace("https://images.example-store.com", images.url)
    )
    path = write(tmp_path, "feed.tsv", text)
    result = read(path, preset="merchant", inputs_dir=tmp_path / "out", allow_private_urls=True)
    assert errors(result) == [] and result.delimiter == "\t"
    tasks = {t.key: t for t in result.tasks}
    assert sorted(tasks) == ["BAG-9", "SH-1-40", "SH-1-41", "SH-1-42B"]
    assert tasks["SH-1-41"].input_images == tasks["SH-1-40"].input_images  # filled down from the group
    assert tasks["SH-1-42B"].input_images != tasks["SH-1-40"].input_images
    assert "grippy sole" in tasks["SH-1-41"].prompt and "<" not in tasks["SH-1-41"].prompt


# --- streaming -----------------------------------------------------------------------------------


def test_the_first_pass_keeps_no_rows_and_the_second_reads_the_file_again(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "key,prompt\n" + "".join(f"K{i},mug {i}\n" for i in range(50)))
    result = read(path)
    assert (result.valid, result._kept, len(result.samples)) == (50, None, 5)
    assert [t.key for t in result.iter_tasks()][-1] == "K49"
    path.write_text("key,prompt\nX,changed\n")
    with pytest.raises(IntakeError, match="the file changed while it was being submitted"):
        list(result.iter_tasks())


def test_errors_kept_are_bounded_but_all_are_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "key,prompt\n" + "".join(f"K{i},\n" for i in range(1500)))
    result = read(path)
    assert (result.error_count, len(result.errors)) == (1500, 1000)


def test_duplicates_are_skipped_identically_in_the_second_pass(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "key,prompt\nA,mug\nB,cup\nA,again\n")
    result = read(path)
    assert errors(result) == ["line 4: key: duplicate key 'A' (first on line 2)"]
    assert [(t.key, t.prompt) for t in result.iter_tasks()] == [("A", "mug"), ("B", "cup")]


def test_duplicates_name_their_first_line_from_a_file_and_from_python(tmp_path: Path) -> None:
    body = "key,prompt,aspect_ratio\nA,mug,7:3\nB,cup,\nA,again,\nB,more,\nA,third,\n"
    from_file = errors(read(write(tmp_path, "p.csv", body)))
    assert from_file[0].startswith("line 2: aspect_ratio: aspect ratio '7:3' is not one of")
    assert from_file[1:] == [
        "line 4: key: duplicate key 'A' (first on line 2)",
        "line 5: key: duplicate key 'B' (first on line 3)",
        "line 6: key: duplicate key 'A' (first on line 2)",
    ]
    rows = [dict(zip(("key", "prompt", "aspect_ratio"), r.split(","), strict=True)) for r in body.split()[1:]]
    from_python = errors(
        read_rows(rows, CATALOG, IntakeOptions(model=MODEL, allow_retired_model=True), base_dir=tmp_path)
    )
    assert from_python[1:] == [
        "line 3: key: duplicate key 'A' (first on line 1)",
        "line 4: key: duplicate key 'B' (first on line 2)",
        "line 5: key: duplicate key 'A' (first on line 1)",
    ]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"preset": "magento"}, "--preset 'magento': choose one of shopify, woocommerce, merchant"),
        ({"preset": "shopify", "per": "colour"}, "--per 'colour': choose product or variant"),
        ({"output_format": "gif"}, "--format 'gif': must be png or jpeg"),
    ],
)
def test_a_bad_option_is_one_clear_error(tmp_path: Path, options: dict[str, str], says: str) -> None:
    with pytest.raises(IntakeError, match=says.replace("(", r"\(")):
        read(write(tmp_path, "p.csv", "key,prompt\nA,mug\n"), **options)
