"""Prompt templates a shop can write (issue 15): column names as written or normalised, the original
``{column}`` form with Python format specs, Jinja2 in a sandbox, and one clear error per mistake."""

from __future__ import annotations

import pytest

from nanobatch.tasks.templates import RowValueError, Template, TemplateError, normalise, strip_html

SHOPIFY = ["Handle", "Title", "Body (HTML)", "Option1 Name", "Option1 Value", "Variant Price"]
ROW = {
    "Handle": "classic-tee",
    "Title": "Classic Tee",
    "Body (HTML)": "<p>Soft <strong>organic</strong> cotton &amp; more.</p>",
    "Option1 Name": "Color",
    "Option1 Value": "Black",
    "Variant Price": "19",
}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Body (HTML)", "body_html"),
        ("Option1 Value", "option1_value"),
        ("Attribute 1 value(s)", "attribute_1_value_s"),
    ],
)
def test_normalised_names(name: str, expected: str) -> None:
    assert normalise(name) == expected


@pytest.mark.parametrize(
    "source",
    [
        "{Title} in {Option1 Value}: {Body (HTML)}",
        "{title} in {option1_value}: {body_html}",
        "{TITLE} in {Option1_Value}: {body (html)}",
        "{{ title }} in {{ option1_value }}: {{ body_html }}",
        "{{ Title }} in {{ Option1 Value }}: {{ Body (HTML) }}",
        '{{ row["Title"] }} in {{ row["Option1 Value"] }}: {{ row["Body (HTML)"] }}',
    ],
)
def test_any_column_by_its_name_as_written_or_normalised_and_html_never_reaches_the_prompt(
    source: str,
) -> None:
    assert Template(source, SHOPIFY).render(ROW) == "Classic Tee in Black: Soft organic cotton & more."


def test_python_format_specs_on_the_column_form() -> None:
    template = Template("{title:.7} for {variant_price:.2f} USD ({Option1 Value!r})", SHOPIFY)
    assert template.render(ROW) == "Classic for 19.00 USD ('Black')"
    with pytest.raises(RowValueError, match=r"\{variant_price:.2f\} needs a number, got 'call us'"):
        template.render({**ROW, "Variant Price": "call us"})


def test_an_empty_cell_in_the_column_form_is_a_row_error() -> None:
    with pytest.raises(RowValueError, match="row has no value for Option1 Value"):
        Template("{Title} in {Option1 Value}", SHOPIFY).render({"Title": "Tee"})


def test_jinja_optional_parts_defaults_truncation_and_filters() -> None:
    source = (
        "{{ title }}{% if option1_value %} in {{ option1_value | lower }}{% endif %}"
        "{% if vendor %} by {{ vendor }}{% endif %}, {{ option2_value | default('one size') }}. "
        "{{ body_html | truncate(20) }}"
    )
    template = Template(source, [*SHOPIFY, "Vendor", "Option2 Value"])
    assert template.render(ROW) == "Classic Tee in black, one size. Soft organic..."
    assert template.render({**ROW, "Option1 Value": "", "Vendor": "Acme"}).startswith("Classic Tee by Acme, ")


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("{price:.2q}", "format spec '.2q' is not valid"),
        ("Photo of {title!x}", "{title!x}: conversion must be !r, !s or !a"),
        ("Photo of {colour}", "template uses column(s) colour not in the header"),
        ("{0}", "must name a column"),
        ("Photo of {title", "is not valid"),
        ("No fields at all", "uses no column"),
        ("{{ title }", "is not valid Jinja2"),
        ("{{ colour }}", "template uses column(s) colour not in the header"),
        ("{% include 'secrets.txt' %}", "include is not allowed (templates cannot read files)"),
        ("{% import 'macros' as m %}{{ title }}", "import is not allowed"),
        ("{% extends 'base' %}", "extends is not allowed"),
    ],
)
def test_every_template_mistake_is_one_clear_error_naming_template_and_columns(
    source: str, says: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        Template(source, [*SHOPIFY, "price"])
    message = str(caught.value)
    assert says in message and repr(source) in message
    assert "columns: Handle, Title, Body (HTML)" in message


@pytest.mark.parametrize(
    "source",
    [
        "{{ title.__class__.__mro__ }}",
        "{{ title.upper() }}",
        "{{ row.__class__ }}",
        "{{ ''.__class__.__subclasses__() }}",
        "{{ cycler }}{{ title }}",
        "{{ lipsum() }}{{ title }}",
    ],
)
def test_the_sandbox_allows_no_attribute_global_or_file_access(source: str) -> None:
    with pytest.raises(TemplateError) as caught:
        Template(source, SHOPIFY).render(ROW)
    assert "template" in str(caught.value)


def test_strip_html_keeps_text_and_separates_blocks() -> None:
    html = "<div><h2>Tote</h2><p>Heavy canvas,<br>inside pocket.</p><script>x()</script></div>"
    assert strip_html(html) == "Tote Heavy canvas, inside pocket."
    assert strip_html("3 < 4 and plain") == "3 < 4 and plain"


def test_without_a_header_names_resolve_per_row() -> None:
    template = Template("{{ title }}{% if color %} in {{ color }}{% endif %}", None)
    assert template.render({"Title": "Mug"}) == "Mug"
    assert template.missing_everywhere({"Title", "Color"}) == []
    assert template.missing_everywhere({"Title"}) == ["color"]
