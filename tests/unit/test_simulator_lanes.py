"""Simulator pieces of issue 16 that need no server: tiers, batch settings, uploads, job documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanobatch.cli.simulator_cmd import build_config
from nanobatch.simulator import google_errors
from nanobatch.simulator.batches import BatchJob, BatchState, InlineArray, _splice
from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.faults import FaultPlan
from nanobatch.simulator.gemini_request import read_service_tier
from nanobatch.simulator.protocol import Rejected
from nanobatch.simulator.uploads import FileBook, UploadError, Workspace


def test_tier_factors_scale_latency_and_standard_is_unchanged() -> None:
    config = SimulatorConfig(
        latency=(2.0, 2.0), time_scale=0.5, flex_latency_factor=4, priority_latency_factor=0.25
    )
    plan = FaultPlan(config)
    assert plan.draw_latency() == pytest.approx(1.0)
    assert plan.draw_latency("standard") == pytest.approx(1.0)
    assert plan.draw_latency("flex") == pytest.approx(4.0)
    assert plan.draw_latency("priority") == pytest.approx(0.25)


def test_flex_capacity_errors_hit_flex_requests_only() -> None:
    plan = FaultPlan(SimulatorConfig(flex_fail_rates={503: 1.0}, seed=3))
    assert plan.draw_fault("standard") is None
    fault = plan.draw_fault("flex")
    assert fault is not None and (fault.label, fault.error_status) == ("flex_503", 503)


def test_ordinary_faults_still_win_for_flex_requests() -> None:
    plan = FaultPlan(SimulatorConfig(fail_rates={500: 1.0}, flex_fail_rates={429: 1.0}))
    fault = plan.draw_fault("flex")
    assert fault is not None and fault.label == "500"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"flex_fail_rates": {500: 0.1}}, "capacity"),
        ({"flex_fail_rates": {503: 0.7, 429: 0.6}}, "add up"),
        ({"flex_latency_factor": 0}, "flex_latency_factor"),
        ({"priority_latency_factor": 1000}, "priority_latency_factor"),
        ({"batch_turnaround": -1}, "batch_turnaround"),
        ({"batch_request_fail_rate": 1.5}, "batch_request_fail_rate"),
        ({"batch_fail_rate": 0.6, "batch_expire_rate": 0.6}, "add up"),
        ({"batch_inline_limit_bytes": 0}, "batch_inline_limit_bytes"),
    ],
)
def test_bad_lane_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulatorConfig(**settings)  # type: ignore[arg-type]


def test_cli_flags_reach_the_config() -> None:
    config = build_config(
        flex_latency_factor=5,
        flex_fail_rate="503=0.2,429=0.1",
        priority_latency_factor=0.2,
        batch_turnaround=30,
        batch_request_fail_rate=0.1,
        batch_fail_rate=0.05,
        batch_expire_rate=0.01,
        batch_inline_limit=1000,
        batch_dir="/tmp/x",
    )
    assert config.flex_fail_rates == {503: 0.2, 429: 0.1}
    assert (config.flex_latency_factor, config.priority_latency_factor) == (5, 0.2)
    assert (config.batch_turnaround, config.batch_inline_limit_bytes, config.batch_dir) == (
        30,
        1000,
        "/tmp/x",
    )
    assert "flex x5 fail 429=0.1,503=0.2" in config.describe()
    assert "batch 30s request-fail 0.1 fail 0.05 expire 0.01" in config.describe()


def test_batch_turnaround_is_scaled_like_latency() -> None:
    assert SimulatorConfig(batch_turnaround=100, time_scale=0.01).batch_turnaround_seconds == pytest.approx(
        1.0
    )


@pytest.mark.parametrize(("value", "tier"), [(None, "standard"), ("FLEX", "flex"), ("priority", "priority")])
def test_service_tier_is_read_case_insensitively(value: str | None, tier: str) -> None:
    body = {} if value is None else {"serviceTier": value}
    assert read_service_tier(body) == tier
    assert read_service_tier({"service_tier": "unspecified"}) == "standard"


def test_unknown_service_tier_is_a_400() -> None:
    with pytest.raises(Rejected) as caught:
        read_service_tier({"serviceTier": "turbo"})
    assert caught.value.reply.status == 400 and b"turbo" in caught.value.reply.body


def test_embedded_status_uses_rpc_codes_without_details() -> None:
    assert google_errors.rpc_status("RESOURCE_EXHAUSTED", "x") == {"code": 8, "message": "x"}
    reply = google_errors.invalid_argument("bad ratio")
    assert google_errors.embedded_status(reply) == {"code": 3, "message": "bad ratio"}


def book(tmp_path: Path) -> FileBook:
    return FileBook(Workspace(str(tmp_path)), clock=lambda: 1_700_000_000.0)


def test_resumable_upload_in_chunks_checks_offsets_and_size(tmp_path: Path) -> None:
    files = book(tmp_path)
    upload = files.start("in", "application/jsonl", 10)
    assert files.upload(upload.id, "upload", "0", b"12345") == ("active", None)
    with pytest.raises(UploadError, match="Offset"):
        files.upload(upload.id, "upload", "0", b"67890")
    status, stored = files.upload(upload.id, "upload, finalize", "5", b"67890")
    assert status == "final" and stored is not None
    assert stored.path.read_bytes() == b"1234567890"
    resource = stored.resource("http://sim")
    assert (
        resource["sizeBytes"] == "10" and resource["source"] == "UPLOADED" and "downloadUri" not in resource
    )
    with pytest.raises(UploadError) as gone:
        files.upload(upload.id, "upload", "10", b"")
    assert gone.value.status == 404


def test_finalize_short_of_the_declared_size_is_refused(tmp_path: Path) -> None:
    files = book(tmp_path)
    upload = files.start(None, "application/jsonl", 4)
    with pytest.raises(UploadError, match="declared"):
        files.upload(upload.id, "upload, finalize", "0", b"12")
    with pytest.raises(UploadError, match="larger"):
        files.upload(upload.id, "upload", "2", b"345")


def test_cancelled_upload_leaves_nothing(tmp_path: Path) -> None:
    files = book(tmp_path)
    upload = files.start(None, "application/jsonl", None)
    files.upload(upload.id, "upload", "0", b"abc")
    assert files.upload(upload.id, "cancel", None, b"") == ("cancelled", None)
    assert not upload.path.exists()


def test_generated_files_are_downloadable_resources(tmp_path: Path) -> None:
    files = book(tmp_path)
    with files.produce("out", "application/jsonl") as sink:
        sink.write(b'{"key":"a"}\n')
    (stored,) = files.all()
    assert (
        stored.resource("http://sim")["downloadUri"] == f"http://sim/v1beta/{stored.name}:download?alt=media"
    )
    assert files.delete(stored.name) and files.get(stored.id) is None and not stored.path.exists()


def test_owned_workspace_is_removed_on_close() -> None:
    workspace = Workspace(None)
    folder = workspace.path()
    (folder / "x").write_bytes(b"1")
    workspace.close()
    assert not folder.exists()


def test_inline_results_splice_into_valid_json_twice(tmp_path: Path) -> None:
    results = tmp_path / "out.jsonl"
    results.write_bytes(
        b'{"metadata":{"key":"a"},"response":{}}\n{"metadata":{"key":"b"},"error":{"code":13}}\n'
    )
    job = BatchJob(
        id="abc",
        model="gemini-2.5-flash-image",
        version="v1beta",
        display_name="d",
        input_path=tmp_path / "in.jsonl",
        request_count=2,
        inline=True,
        planned=BatchState.SUCCEEDED,
        created=1_700_000_000.0,
        started=0.0,
        state=BatchState.SUCCEEDED,
        succeeded=1,
        failed=1,
        output_path=results,
    )
    parts = job.operation(inline_output=True)
    body = b"".join(p if isinstance(p, bytes) else b"".join(p.chunks(block=7)) for p in parts)
    length = sum(len(p) if isinstance(p, bytes) else p.length for p in parts)
    operation = json.loads(body)
    assert len(body) == length
    keys = [r["metadata"]["key"] for r in operation["response"]["inlinedResponses"]["inlinedResponses"]]
    assert keys == ["a", "b"] and operation["metadata"]["output"] == {
        k: v for k, v in operation["response"].items() if k != "@type"
    }
    assert operation["done"] is True
    assert operation["metadata"]["batchStats"] == {
        "requestCount": "2",
        "completedRequestCount": "2",
        "successfulRequestCount": "1",
        "failedRequestCount": "1",
    }
    listed = json.loads(b"".join(p for p in job.operation(inline_output=False) if isinstance(p, bytes)))
    assert "output" not in listed["metadata"] and "response" not in listed


def test_an_empty_results_file_is_an_empty_array(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert InlineArray(empty).length == 0 and list(InlineArray(empty).chunks()) == []
    assert _splice(b'{"a":"@@inlined-responses@@"}', empty)[0] == b'{"a":'
