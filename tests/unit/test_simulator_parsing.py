"""Request parsing: Gemini camelCase/snake_case and validation, OpenAI fields, multipart."""

from __future__ import annotations

import base64
import json

import pytest

from nanobatch.models.catalog import ModelSpec, load_catalog
from nanobatch.simulator.gemini_request import build_job, read_body
from nanobatch.simulator.multipart import parse_multipart
from nanobatch.simulator.openai_request import build_job as openai_job
from nanobatch.simulator.protocol import Rejected

PRO = load_catalog().resolve("gemini-3-pro-image")
FLASH = load_catalog().resolve("gemini-2.5-flash-image")
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()


def _error(exc: pytest.ExceptionInfo[Rejected]) -> dict:
    return json.loads(exc.value.reply.body)["error"]


def test_snake_case_request_is_read_like_camel_case() -> None:
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "put the logo on the mug"},
                    {"inline_data": {"mime_type": "image/png", "data": PNG}},
                    {"inline_data": {"mime_type": "image/jpeg", "data": PNG}},
                ],
            }
        ],
        "generation_config": {
            "response_modalities": ["IMAGE"],
            "image_config": {"aspect_ratio": "4:3", "image_size": "2K"},
        },
    }
    job = build_job(PRO, read_body(json.dumps(body).encode()), "jpeg")
    assert (job.width, job.height, job.fmt) == (2400, 1792, "jpeg")
    assert job.input_mime_types == ("image/png", "image/jpeg")
    assert job.prompt == "put the logo on the mug"
    assert job.prompt_tokens == PRO.estimate_prompt_tokens(job.prompt, 2)


@pytest.mark.parametrize(
    ("model", "image_config", "fragment"),
    [
        (PRO, {"aspectRatio": "7:3"}, "aspect ratio"),
        (PRO, {"imageSize": "2k"}, "image size"),
        (PRO, {"imageSize": "8K"}, "image size"),
        (FLASH, {"imageSize": "1K"}, "imageSize is not supported"),
        (PRO, {"aspectRatoi": "1:1"}, "Unknown name"),
    ],
)
def test_bad_image_config_is_invalid_argument(model: ModelSpec, image_config: dict, fragment: str) -> None:
    body = {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"imageConfig": image_config}}
    with pytest.raises(Rejected) as exc:
        build_job(model, read_body(json.dumps(body).encode()), "png")
    assert exc.value.reply.status == 400
    assert _error(exc)["status"] == "INVALID_ARGUMENT"
    assert fragment.lower() in _error(exc)["message"].lower()


@pytest.mark.parametrize(
    ("config_key", "image_key"),
    [
        ("generationConfig", "outputMimeType"),
        ("generation_config", "output_mime_type"),
        ("generationConfig", "outputCompressionQuality"),
    ],
)
def test_vertex_only_image_fields_are_unknown_names(config_key: str, image_key: str) -> None:
    body = {"contents": [{"parts": [{"text": "x"}]}], config_key: {"imageConfig": {image_key: "image/jpeg"}}}
    with pytest.raises(Rejected) as exc:
        read_body(json.dumps(body).encode())
    error = _error(exc)
    expected = (
        f'Invalid JSON payload received. Unknown name "{image_key}" at '
        "'generation_config.image_config': Cannot find field."
    )
    assert (exc.value.reply.status, error["status"], error["message"]) == (400, "INVALID_ARGUMENT", expected)
    assert error["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "generation_config.image_config", "description": expected}],
        }
    ]


def test_every_unknown_name_is_listed_top_level_without_a_location() -> None:
    body = {"contents": [], "foo": 1, "generationConfig": {"imageConfig": {"outputMimeType": "image/png"}}}
    with pytest.raises(Rejected) as exc:
        read_body(json.dumps(body).encode())
    violations = _error(exc)["details"][0]["fieldViolations"]
    assert violations[0] == {
        "description": 'Invalid JSON payload received. Unknown name "foo": Cannot find field.'
    }
    assert [v.get("field") for v in violations] == [None, "generation_config.image_config"]
    assert _error(exc)["message"].count("\n") == 1


@pytest.mark.parametrize("key", ["responseModalities", "response_modalities"])
def test_response_modalities_exist_on_v1beta_only(key: str) -> None:
    raw = json.dumps(
        {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {key: ["IMAGE"]}}
    ).encode()
    assert read_body(raw, "v1beta")
    with pytest.raises(Rejected) as exc:
        read_body(raw, "v1")
    assert _error(exc)["message"] == (
        f"Invalid JSON payload received. Unknown name \"{key}\" at 'generation_config': Cannot find field."
    )


@pytest.mark.parametrize("key", ["systemInstruction", "system_instruction"])
def test_flash_image_has_no_developer_instruction(key: str) -> None:
    body = {"contents": [{"parts": [{"text": "x"}]}], key: {"parts": [{"text": "be terse"}]}}
    with pytest.raises(Rejected) as exc:
        build_job(FLASH, read_body(json.dumps(body).encode()), "png")
    assert _error(exc)["message"] == "Developer instruction is not enabled for models/gemini-2.5-flash-image"
    assert _error(exc)["status"] == "INVALID_ARGUMENT"
    assert build_job(PRO, body, "png").prompt == "x"  # 3 Pro takes one


def test_too_many_input_images_for_the_model() -> None:
    parts = [{"text": "x"}] + [{"inlineData": {"mimeType": "image/png", "data": PNG}}] * 4
    with pytest.raises(Rejected) as exc:
        build_job(FLASH, {"contents": [{"parts": parts}]}, "png")
    assert "at most 3" in _error(exc)["message"]
    assert len(build_job(PRO, {"contents": [{"parts": parts}]}, "png").input_mime_types) == 4


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"contents": []},
        {"contents": [{"parts": []}]},
        {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "%%%"}}]}]},
        {"contents": [{"parts": [{"inlineData": {"mimeType": "text/plain", "data": PNG}}]}]},
        {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"responseModalities": ["TEXT"]}},
    ],
)
def test_malformed_contents_are_invalid_argument(body: dict) -> None:
    with pytest.raises(Rejected) as exc:
        build_job(PRO, read_body(json.dumps(body).encode()), "png")
    assert exc.value.reply.status == 400


def test_unknown_top_level_field_and_bad_json_are_refused() -> None:
    for raw in (b'{"contents": [], "foo": 1}', b"{not json", b"[1]"):
        with pytest.raises(Rejected):
            read_body(raw)


def test_openai_size_is_rendered_as_asked_or_catalog_square_for_auto() -> None:
    gpt = load_catalog().resolve("gpt-image-1")
    assert (openai_job(gpt, {"prompt": "p", "size": "1536x1024"}, [], "png").width) == 1536
    job = openai_job(PRO, {"prompt": "p", "size": "auto"}, [], "png")
    assert (job.width, job.height, job.aspect_ratio) == (*PRO.dimensions(None, "1:1"), "1:1")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": "p", "size": "1000x1000"}, "size"),
        ({"prompt": "p", "size": "16384x16"}, "size"),
        ({"prompt": "p", "size": "big"}, "size"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "p", "n": 0}, "n"),
        ({"prompt": "p", "n": 11}, "n"),
        ({"prompt": "p", "response_format": "file"}, "response_format"),
        ({"prompt": "p", "output_format": "gif"}, "output_format"),
        ({"prompt": "p", "quality": "ultra"}, "quality"),
    ],
)
def test_openai_bad_fields_name_the_param(fields: dict, param: str) -> None:
    with pytest.raises(Rejected) as exc:
        openai_job(PRO, fields, [], "png")
    assert exc.value.reply.status == 400
    assert _error(exc)["param"] == param


def test_multipart_keeps_binary_files_byte_for_byte() -> None:
    payload = b"\x89PNG\r\n\x1a\n\r\n--not-the-boundary\r\n\x00\xff"
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhello\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="image[]"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + payload + b"\r\n--XyZ--\r\n"
    )
    parts = parse_multipart("multipart/form-data; boundary=XyZ", body)
    assert [(p.name, p.filename) for p in parts] == [("prompt", None), ("image[]", "a.png")]
    assert parts[0].text == "hello"
    assert parts[1].data == payload


def test_non_multipart_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_multipart("application/json", b"{}")
