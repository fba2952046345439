"""Issue #12: real upstream answers through the providers and the retry policy, and waits that end.

Every answer in ``tests/fixtures/upstream/<provider>/`` is a body as a real provider (or relay) sent
it, with its source noted in the file and what nanobatch must make of it in ``expect``: the error
class and code, the action :func:`decide` takes, and the wait (never shorter than asked).
"""

from __future__ import annotations

import base64
import json
import random
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.genai import types as genai_types

from nanobatch.models.catalog import BUNDLED_CATALOG, load_catalog, parse_catalog
from nanobatch.models.status import ErrorCode
from nanobatch.tasks.intake import IntakeError, IntakeOptions, read_rows
from nanobatch.tasks.serve import Job, build_request, wait_bounds
from nanobatch.tasks.settings import Settings
from nanobatch.tasks.submission import SubmitChoices, intake_options
from nanobatch.workers import errors
from nanobatch.workers.errors import DailyQuotaExhausted, ProviderError, RateLimited
from nanobatch.workers.providers.base import ImageRequest, ProviderConfig
from nanobatch.workers.providers.gemini import (
    BLOCK_REASON_CLASSES,
    FINISH_REASONS,
    GeminiProvider,
    NoImage,
    parse_generate_response,
)
from nanobatch.workers.providers.openai_compat import OpenAICompatProvider
from nanobatch.workers.providers.waits import (
    google_retry_after,
    message_delay,
    parse_go_duration,
    reset_headers_delay,
)
from nanobatch.workers.retry import Action, RetryPolicy, WaitBounds, WaitsSoFar, decide

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstream"
POLICY = RetryPolicy(base=2.0, cap=300.0, max_attempts=5)
KEY = "AIzaSyFIXTURE-0123456789abcdefghijklm"


def fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("*/*.json"))


def respond(fixture: dict[str, Any]) -> httpx.Response:
    headers = fixture.get("headers") or {}
    if "body" in fixture:
        return httpx.Response(fixture["status"], json=fixture["body"], headers=headers)
    return httpx.Response(fixture["status"], content=fixture["text"].encode(), headers=headers)


def call(provider: str, fixture: dict[str, Any]) -> Any:
    client = httpx.Client(transport=httpx.MockTransport(lambda request: respond(fixture)))
    if provider == "gemini":
        config = ProviderConfig(base_url="https://gemini.test", api_key=KEY)
        request = ImageRequest(
            model="gemini-3-pro-image", prompt="a mug", aspect_ratio="1:1", image_size="1K"
        )
        return GeminiProvider(config, client).generate(request)
    config = ProviderConfig(kind="openai", base_url="https://relay.test", auth="bearer", api_key=KEY)
    return OpenAICompatProvider(config, client).generate(ImageRequest(model="gpt-image-1", prompt="a mug"))


def test_there_is_a_fixture_for_every_kind_of_answer() -> None:
    names = {path.stem for path in fixtures()}
    assert len(names) >= 35
    for required in (
        "429_prepayment_credits_depleted",
        "429_images_per_minute_limit_zero",
        "200_gemini3_pro_thought_parts_then_image",
    ):
        assert required in names
    for path in fixtures():
        assert json.loads(path.read_text(encoding="utf-8"))["source"], f"{path.name} names no source"


@pytest.mark.parametrize("path", fixtures(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_real_answers_are_classified_and_decided(path: Path) -> None:
    fixture = json.loads(path.read_text(encoding="utf-8"))
    expect = fixture["expect"]
    if expect.get("result") == "image":
        result = call(path.parent.name, fixture)
        assert base64.b64encode(result.data).decode() == expect["image_b64"]  # the final, non-thought image
        assert result.mime_type == expect["mime_type"]
        assert result.text == expect["text"]  # thought text is not the answer's text
        assert result.model_version == expect["model_version"]
        return
    with pytest.raises(ProviderError) as info:
        call(path.parent.name, fixture)
    error = info.value
    assert type(error).__name__ == expect["error"], error
    assert error.code == ErrorCode(expect["code"])
    assert KEY not in str(error)
    for text in expect.get("message_contains", ()):
        assert text in error.message
    if "retry_after" in expect:
        assert isinstance(error, RateLimited) and error.retry_after == pytest.approx(expect["retry_after"])
    decision = decide(error, attempts_so_far=0, policy=POLICY, rng=random.Random(7))
    assert decision.action == Action(expect["action"])
    if decision.action is Action.WAIT:
        assert not decision.count_attempt
        assert expect["wait_at_least"] <= decision.delay <= expect.get("wait_at_most", 1e9)
    if decision.action is Action.FAIL:
        assert decision.code == ErrorCode(expect["code"])


# --- the google-genai enums: every value decided ---------------------------------------------------


def test_every_sdk_finish_reason_is_decided() -> None:
    # A newer google-genai with a new FinishReason fails here until FINISH_REASONS decides it.
    assert {reason.value for reason in genai_types.FinishReason} <= set(FINISH_REASONS)


def test_every_sdk_blocked_reason_is_decided() -> None:
    assert {reason.value for reason in genai_types.BlockedReason} <= set(BLOCK_REASON_CLASSES)


EXPECTED_ERROR = {
    NoImage.BLOCKED: (errors.ContentBlocked, Action.FAIL),
    NoImage.RETRY: (errors.NoImageReturned, Action.RETRY),
    NoImage.INVALID: (errors.InvalidRequest, Action.FAIL),
    NoImage.ACCOUNT: (errors.AccountRestricted, Action.FAIL),
}


@pytest.mark.parametrize("reason", [r.value for r in genai_types.FinishReason])
def test_an_imageless_answer_with_each_finish_reason_gets_its_class(reason: str) -> None:
    body = {"candidates": [{"content": {"role": "model", "parts": [{"text": "no"}]}, "finishReason": reason}]}
    with pytest.raises(ProviderError) as info:
        parse_generate_response(body)
    klass, action = EXPECTED_ERROR[FINISH_REASONS[reason]]
    assert type(info.value) is klass
    assert decide(info.value, attempts_so_far=0, policy=POLICY).action is action


@pytest.mark.parametrize("reason", [r.value for r in genai_types.BlockedReason])
def test_a_blocked_prompt_fails_now_whatever_the_reason(reason: str) -> None:
    with pytest.raises(errors.ContentBlocked) as info:
        parse_generate_response({"promptFeedback": {"blockReason": reason}})
    assert decide(info.value, attempts_so_far=0, policy=POLICY).action is Action.FAIL


def test_safety_reasons_block_and_image_less_stops_retry() -> None:
    for reason in ("SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT", "SPII"):
        assert FINISH_REASONS[reason] is NoImage.BLOCKED
    for reason in ("NO_IMAGE", "IMAGE_OTHER", "OTHER", "STOP", "MAX_TOKENS"):
        assert FINISH_REASONS[reason] is NoImage.RETRY


# --- retry delays are lower bounds ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "delay", "expected"),
    [
        ("Quota exceeded.", "58s", 59.0),  # truncated whole seconds: +1 s
        ("Quota exceeded. Please retry in 58.934310785s.", "58s", 58.934310785),  # the precise figure
        ("Please retry in 513.6ms.", "0s", 0.5136),
        ("slow down", "26.5s", 26.5),  # a fractional delay is not truncated: as is
        ("Please retry in 3.2s.", "5s", 5.0),  # never less than either hint
        ("no hint", None, None),
    ],
)
def test_gemini_retry_delay_is_a_lower_bound(message: str, delay: str | None, expected: float | None) -> None:
    assert google_retry_after(message, delay) == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("message", "seconds"),
    [
        ("Please try again in 2.226s.", 2.226),
        ("You've exceeded the rate limit, please slow down and try again after 51.84 seconds.", 51.84),
        ("Please try again in 1m30s. Visit …", 90.0),
        ("Please try again in 20ms.", 0.02),
        ("Please retry after 1 second.", 1.0),
        ("Please try again in 6m0s", 360.0),
        ("Rate limit reached for requests", None),
    ],
)
def test_openai_message_waits(message: str, seconds: float | None) -> None:
    found = message_delay(message)
    assert found == (pytest.approx(seconds) if seconds is not None else None)


def test_go_durations_and_reset_headers() -> None:
    assert parse_go_duration("6m0s") == 360.0 and parse_go_duration("20ms") == pytest.approx(0.02)
    assert parse_go_duration("1h2m3.5s") == pytest.approx(3723.5) and parse_go_duration("soon") is None
    spent_tokens = {"x-ratelimit-remaining-requests": "12", "x-ratelimit-reset-requests": "6m0s"}
    spent_tokens |= {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1s"}
    assert reset_headers_delay(spent_tokens) == 1.0  # the unspent request limit's reset says nothing
    assert (
        reset_headers_delay({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}) == 360.0
    )


def test_jitter_is_small_and_positive() -> None:
    rng = random.Random(3)
    delays = [
        decide(RateLimited("x", retry_after=59.0), attempts_so_far=0, policy=POLICY, rng=rng).delay
        for _ in range(200)
    ]
    assert all(59.0 <= d <= 60.0 for d in delays) and len(set(delays)) > 100


# --- no wait without an end ----------------------------------------------------------------------

BOUNDS = WaitBounds(max_rate_waits=3, max_rate_wait_seconds=100.0, max_day_parks=2, rate_limit_wait=5.0)


def test_rate_waits_end_at_the_count_bound_with_the_last_message() -> None:
    error = RateLimited("429 from upstream: slow down", retry_after=10.0)
    ok = decide(error, attempts_so_far=0, policy=POLICY, waits=WaitsSoFar(2, 20.0, 0), bounds=BOUNDS)
    assert ok.action is Action.WAIT
    d = decide(error, attempts_so_far=0, policy=POLICY, waits=WaitsSoFar(3, 30.0, 0), bounds=BOUNDS)
    assert (d.action, d.code, d.count_attempt) == (Action.FAIL, ErrorCode.RATE_WAIT_LIMIT, False)
    assert "NANOBATCH_MAX_RATE_WAITS=3" in d.message and "slow down" in d.message
    assert d.delay >= 10.0  # the pool still cools down for what the 429 asked


def test_rate_waits_end_at_the_time_bound() -> None:
    error = RateLimited("slow down", retry_after=30.0)
    d = decide(error, attempts_so_far=0, policy=POLICY, waits=WaitsSoFar(1, 80.0, 0), bounds=BOUNDS)
    assert (d.action, d.code) == (Action.FAIL, ErrorCode.RATE_WAIT_TIME_LIMIT)
    assert "NANOBATCH_MAX_RATE_WAIT_SECONDS=100" in d.message
    long_one = decide(RateLimited("x", retry_after=500.0), attempts_so_far=0, policy=POLICY, bounds=BOUNDS)
    assert long_one.code is ErrorCode.RATE_WAIT_TIME_LIMIT  # one wait past the bound ends at once


def test_day_parks_end_at_their_bound() -> None:
    error = DailyQuotaExhausted("per day", quota_ids=("GenerateRequestsPerDayPerProjectPerModel",))
    assert decide(
        error, attempts_so_far=0, policy=POLICY, waits=WaitsSoFar(0, 0, 1), bounds=BOUNDS
    ).action is (Action.PARK_DAY)
    d = decide(error, attempts_so_far=0, policy=POLICY, waits=WaitsSoFar(0, 0, 2), bounds=BOUNDS)
    assert (d.action, d.code) == (Action.FAIL, ErrorCode.DAY_PARK_LIMIT)
    assert "NANOBATCH_MAX_DAY_PARKS=2" in d.message and "per day" in d.message


def test_an_unrecognised_429_is_a_bounded_wait_that_backs_off() -> None:
    error = RateLimited("unrecognised 429: busy", code=ErrorCode.UNCLASSIFIED_429)
    rng = random.Random(1)
    delays = [
        decide(error, attempts_so_far=0, policy=POLICY, waits=WaitsSoFar(n, 0.0, 0), rng=rng).delay
        for n in range(3)
    ]
    assert 5 <= delays[0] < 6 and 10 <= delays[1] < 11 and 20 <= delays[2] < 21
    last = decide(error, attempts_so_far=0, policy=POLICY, waits=WaitsSoFar(30, 0.0, 0))
    assert last.code is ErrorCode.RATE_WAIT_LIMIT and "busy" in last.message


def test_a_hintless_backoff_stops_doubling_at_the_configured_ceiling() -> None:
    # Given NANOBATCH_RATE_LIMIT_WAIT=0.5 and NANOBATCH_RATE_LIMIT_WAIT_MAX=8 (the chaos run's)
    bounds = wait_bounds(Settings(rate_limit_wait=0.5, rate_limit_wait_max=8.0))
    error = RateLimited("429 without a hint", code=ErrorCode.UNCLASSIFIED_429)
    # When a task that already waited out 4 and 9 hint-less 429s meets another
    fourth, ninth = (
        decide(error, attempts_so_far=0, policy=POLICY, waits=WaitsSoFar(n, 0.0, 0), bounds=bounds).delay
        for n in (4, 9)
    )
    # Then the doubling (0.5 x 2**9 = 256 s) ends at the ceiling, plus at most 10 % jitter
    assert 8.0 <= fourth <= 8.8 and 8.0 <= ninth <= 8.8
    assert Settings().rate_limit_wait_max == 300.0  # the product default is unchanged


def test_settings_carry_the_bounds_with_sane_defaults() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.max_rate_waits, settings.max_rate_wait_seconds, settings.max_day_parks) == (
        30,
        3600.0,
        3,
    )
    assert settings.pool_refused_alert_seconds == 1800.0
    for code in (
        ErrorCode.RATE_WAIT_LIMIT,
        ErrorCode.RATE_WAIT_TIME_LIMIT,
        ErrorCode.DAY_PARK_LIMIT,
        ErrorCode.BILLING,
    ):
        assert code.retryable


# --- the catalog drives what is sent and what is refused -----------------------------------------


def _job(model: str, size: str | None) -> Job:
    return Job(
        id="t",
        token="x",
        batch_id="b",
        batch_name="b",
        key="k",
        prompt="p",
        model=model,
        image_size=size,
        aspect_ratio="1:1",
        output_format="png",
        input_images=(),
        attempts=0,
        error_code=None,
        content_hash=None,
        reuse=False,
    )


def test_the_upstream_id_is_what_goes_in_the_url() -> None:
    override = (
        '[[model]]\nname = "gemini-3-pro-image"\nupstream_id = "gemini-3-pro-image-preview"\nsizes = ["1K"]\n'
        '[model.size.1K]\noutput_tokens = 1120\nprice_usd = 0.134\npixels = { "1:1" = [1024, 1024] }\n'
    )
    catalog = parse_catalog(BUNDLED_CATALOG.read_text(), override)
    request = build_request(_job("gemini-3-pro-image", "1K"), catalog.resolve("gemini-3-pro-image"))
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(
            429, json={"error": {"code": 429, "message": "x", "status": "RESOURCE_EXHAUSTED"}}
        )

    provider = GeminiProvider(
        ProviderConfig(base_url="https://g.test"), httpx.Client(transport=httpx.MockTransport(handler))
    )
    with pytest.raises(RateLimited):
        provider.generate(request)
    assert seen[0].url.path == "/v1beta/models/gemini-3-pro-image-preview:generateContent"


def test_a_row_with_a_retired_model_is_refused_naming_the_replacement() -> None:
    catalog = load_catalog()
    options = IntakeOptions(model="gemini-nano-banana-2.1", today=date(2026, 11, 29))
    rows = [{"key": "A", "prompt": "mug"}, {"key": "B", "prompt": "cup", "model": "gemini-2.5-flash-image"}]
    result = read_rows(rows, catalog, options, base_dir=Path.cwd())
    assert [t.key for t in result.tasks] == ["A"]
    (problem,) = result.errors
    assert (
        problem.field == "model"
        and "shut down" in problem.reason
        and "gemini-nano-banana-2.1" in problem.reason
    )
    allowed = read_rows(
        rows,
        catalog,
        IntakeOptions(model="gemini-nano-banana-2.1", allow_retired_model=True),
        base_dir=Path.cwd(),
    )
    assert not allowed.errors and len(allowed.tasks) == 2
    before = read_rows(
        rows,
        catalog,
        IntakeOptions(model="gemini-nano-banana-2.1", today=date(2026, 10, 1)),
        base_dir=Path.cwd(),
    )
    assert not before.errors


def test_a_retired_default_or_model_option_is_refused_before_any_row() -> None:
    catalog = load_catalog()
    settings = Settings(_env_file=None, default_model="gemini-2.5-flash-image")  # type: ignore[call-arg]
    with pytest.raises(IntakeError, match=r"gemini-nano-banana-2\.1"):
        intake_options(SubmitChoices(), catalog, settings)
    with pytest.raises(IntakeError, match=r"shut down upstream on 2026-10-29"):
        intake_options(SubmitChoices(model="nano-banana-2"), catalog, Settings(_env_file=None))  # type: ignore[call-arg]
    options = intake_options(SubmitChoices(allow_retired_model=True), catalog, settings)
    assert options.model == "gemini-2.5-flash-image" and options.allow_retired_model
