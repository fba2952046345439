"""Reading product files: every bad row is reported with its line, field and reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from nanobatch.models.catalog import load_catalog
from nanobatch.tasks.intake import IntakeError, IntakeOptions, IntakeResult, read_file

CATALOG = load_catalog()
# A model without image sizes. It is past its shutdown date, so these rule tests allow retired models;
# the refusal itself is tested in test_upstream_truth.py.
FLASH = "gemini-2.5-flash-image"
OPTIONS = IntakeOptions(model=FLASH, allow_retired_model=True)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def read(path: Path, options: IntakeOptions = OPTIONS) -> IntakeResult:
    return read_file(path, CATALOG, options)


def errors(result: IntakeResult) -> list[str]:
    return [str(e) for e in result.errors]


def test_good_csv_becomes_task_specs(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "key,prompt,aspect_ratio,color\nA,red mug,16:9,red\nB,blue mug,,blue\n")
    result = read(path)
    assert errors(result) == []
    a, b = result.tasks
    assert (a.key, a.aspect_ratio, a.model, a.image_size, a.extra) == (
        "A",
        "16:9",
        "gemini-2.5-flash-image",
        None,
        {"color": "red"},
    )
    assert b.aspect_ratio == "1:1" and a.content_hash != b.content_hash


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("key,prompt\n,a mug\n", "line 2: key: Field required"),
        ("key,prompt\nA,a mug\nA,another\n", "line 3: key: duplicate key 'A' (first on line 2)"),
        ("key,prompt\nA,   \n", "line 2: prompt: String should have at least 1 character"),
        ("key,prompt,aspect_ratio\nA,mug,7:3\n", "line 2: aspect_ratio: aspect ratio '7:3' is not one of"),
        (
            "key,prompt,model,image_size\nA,mug,gemini-3-pro-image,8K\n",
            "line 2: image_size: model gemini-3-pro-image",
        ),
        (
            "key,prompt,image_size\nA,mug,2K\n",
            "line 2: image_size: model gemini-2.5-flash-image takes no image size",
        ),
        ("key,prompt,model\nA,mug,dall-e-9\n", "line 2: model: unknown model 'dall-e-9'"),
        ('key,prompt\nA,"unterminated\n', "line 2: -: not valid CSV"),
        ("key,prompt\nA,mug,extra\n", "line 2: -: expected 2 columns, found 3"),
    ],
)
def test_bad_rows_are_reported_with_line_field_and_reason(tmp_path: Path, body: str, expected: str) -> None:
    result = read(write(tmp_path, "p.csv", body))
    assert any(e.startswith(expected) for e in errors(result)), errors(result)
    assert result.tasks == [] or len(result.tasks) < result.rows_read


def test_non_utf8_bytes_are_reported_on_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", b"key,prompt\nA,mug\nB,caf\xe9 cup\nC,plate\n")
    result = read(path)
    assert errors(result) == ["line 3: -: not valid UTF-8 (save the file as UTF-8)"]
    assert [t.key for t in result.tasks] == ["A", "C"]


def test_bom_and_multiline_quoted_cells_keep_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", '\ufeffkey,prompt\nA,"two\nlines"\nB,\n')
    result = read(path)
    assert result.tasks[0].key == "A" and result.tasks[0].prompt == "two\nlines"
    assert errors(result) == ["line 4: prompt: Field required"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "the file is empty"),
        ("key,prompt\n", "the file has no rows"),
        ("name,prompt\nA,mug\n", "no 'key' column"),
        ("key,title\nA,mug\n", "no 'prompt' column"),
    ],
)
def test_file_level_problems_raise(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(IntakeError, match=message):
        read(write(tmp_path, "p.csv", body))


def test_template_fills_from_columns_and_unknown_columns_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "key,title,color\nA,mug,red\n")
    result = read(
        path, IntakeOptions(model=FLASH, allow_retired_model=True, template="Photo of {title}, {color}")
    )
    assert result.tasks[0].prompt == "Photo of mug, red"
    with pytest.raises(IntakeError, match="template uses column"):
        read(
            path, IntakeOptions(model=FLASH, allow_retired_model=True, template="Photo of {title} in {size}")
        )


def test_jsonl_rows_and_their_errors(tmp_path: Path) -> None:
    body = (
        '{"key": "A", "prompt": "mug"}\n\n{"key": "B", "prompt": "x", "aspect_ratio": "9:16"}\n{oops\n[1]\n'
    )
    result = read(write(tmp_path, "p.jsonl", body))
    assert [t.key for t in result.tasks] == ["A", "B"]
    assert [e.split(":")[0] for e in errors(result)] == ["line 4", "line 5"]


def test_input_images_must_be_real_images_inside_the_allowed_dir(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "fake.png").write_text("not an image")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    Image.new("RGB", (4, 4)).save(outside)
    (tmp_path / "link.png").symlink_to(outside)
    body = (
        "key,prompt,input_images\nA,edit,ok.png\nB,edit,missing.png\nC,edit,fake.png\n"
        "D,edit,link.png\nE,edit,../x.png\nF,edit,ok.png|ok.png|ok.png|ok.png\n"
    )
    result = read(write(tmp_path, "p.csv", body))
    assert [t.key for t in result.tasks] == ["A"]
    assert result.tasks[0].input_images == (str((tmp_path / "ok.png").resolve()),)
    reasons = errors(result)
    assert "no such file" in reasons[0] and "not a readable image" in reasons[1]
    assert "outside the allowed directory" in reasons[2] and "outside the allowed directory" in reasons[3]
    assert "accepts at most 3 images" in reasons[4]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"key,prompt\nA,bad\x00mug\n", "line 2: prompt: contains a NUL byte"),
        (b"key,prompt\nA,esc\x1b[31mred\n", "line 2: prompt: contains U+001B"),
        (b"key,prompt,title\nA,mug,x\x7fy\n", "line 2: title: contains U+007F"),
        (b"key,prompt\nA\x00B,mug\n", "line 2: key: Value error, key must not contain control characters"),
        (b'key,prompt\n"A\tB",mug\n', "line 2: key: Value error, key must not contain control characters"),
        (b"key,prompt,input_images\nA,mug,a\x00.png\n", "line 2: input_images: contains a NUL byte"),
    ],
)
def test_control_characters_are_a_row_error(tmp_path: Path, body: bytes, expected: str) -> None:
    result = read(write(tmp_path, "p.csv", body))
    assert [e for e in errors(result) if e.startswith(expected)], errors(result)
    assert result.tasks == []


def test_nested_and_named_control_characters_in_jsonl_are_found(tmp_path: Path) -> None:
    lines = [
        '{"key": "A", "prompt": "mug", "tags": ["ok", "b\\u0000d"]}',
        '{"key": "B", "prompt": "mug", "bad\\u0001name": "x"}',
        '{"key": "C", "prompt": "mug", "lone": "\\ud800"}',
        '{"key": "D", "prompt": "tab\\tand\\nnewline\\r\\nare fine", "note": "a\\tb"}',
    ]
    result = read(write(tmp_path, "p.jsonl", "\n".join(lines) + "\n"))
    assert [str(e) for e in result.errors] == [
        "line 1: tags[1]: contains a NUL byte; control characters are not allowed",
        "line 2: bad?name: contains U+0001; control characters are not allowed",
        "line 3: lone: contains U+D800; control characters are not allowed",
    ]
    assert [t.key for t in result.tasks] == ["D"] and result.tasks[0].prompt.startswith("tab\tand\n")


def test_input_images_are_recorded_with_their_folder_and_digest(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    result = read(write(tmp_path, "p.csv", "key,prompt,input_images\nA,edit,a.png\nB,plain,\n"))
    with_image, without = result.tasks
    assert with_image.input_images == (str((tmp_path / "a.png").resolve()),)
    assert with_image.input_root == str(tmp_path.resolve())
    assert with_image.input_sha256 == (hashlib.sha256((tmp_path / "a.png").read_bytes()).hexdigest(),)
    assert (without.input_root, without.input_sha256) == (None, ())
