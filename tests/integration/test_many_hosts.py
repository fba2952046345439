"""Images for many hosts: workers, submit, report and export in separate directories, one bucket.

Each process runs in a working directory of its own with no shared output folder — stand-ins for
separate hosts — and ``NANOBATCH_OUTPUT_DIR=s3://…`` on an S3-compatible server on loopback (moto).
Also: bad storage configuration is one line and exit 2 at ``worker``/``submit`` start, and a store
outage mid-batch is waited out without losing or double-paying anything.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.workers.storage import STAGING_DIR
from nanobatch.workers.store import open_store
from tests.integration.conftest import REPO, Stack
from tests.s3server import S3Server, aws_env

pytestmark = pytest.mark.integration


def tasks_of(s: Stack, batch: str) -> list[GenerationTask]:
    with s.runtime.db.session() as session:
        return list(session.scalars(select(GenerationTask).join(Batch).where(Batch.name == batch)))


def host(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


def photo(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def wait_until(condition, timeout: float, message: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.2)


def test_workers_on_separate_hosts_share_one_bucket(simulator, stack, s3_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator(), **s3_env)
    store = open_store(s3_env["NANOBATCH_OUTPUT_DIR"])
    # Given a product file with an edit task whose input image is on the submitting host only
    submitter = host(tmp_path, "submitter")
    original = photo(submitter / "mug.png")
    rows = ["key,prompt,input_images", "EDIT,make it blue,mug.png"] + [f"K{i},mug {i}," for i in range(11)]
    (submitter / "products.csv").write_text("\n".join(rows) + "\n")
    s.cli("submit", "products.csv", "--batch", "hosts", cwd=submitter, check=True)
    (submitter / "mug.png").unlink()  # workers must read it from the store, never from this disk
    [edit] = [t for t in tasks_of(s, "hosts") if t.key == "EDIT"]
    digest = hashlib.sha256(original).hexdigest()
    assert edit.input_images == [store.uri(f"inputs/{digest}.png")]
    # When two workers on two other "hosts" run the batch
    for name in ("worker-a", "worker-b"):
        s.start_worker(concurrency=4, cwd=host(tmp_path, name))
    summary = s.wait_terminal("hosts", timeout=120)
    # Then every task completed, each with exactly one published object whose bytes the row records
    assert summary.counts["completed"] == 12, s.worker_logs()
    # (a row is recorded on its staged object first and published right after: wait for that step)
    wait_until(
        lambda: (
            not [k for k in store.list("") if f"/{STAGING_DIR}/" in k]
            and not [t for t in tasks_of(s, "hosts") if f"/{STAGING_DIR}/" in (t.result_uri or "")]
        ),
        30,
        "every recorded result published under its key's name",
    )
    tasks = tasks_of(s, "hosts")
    published = [k for k in store.list("") if not k.startswith("inputs/") and f"/{STAGING_DIR}/" not in k]
    assert sorted(published) == sorted(store.key_of(t.result_uri or "") or "?" for t in tasks)
    assert not [k for k in store.list("") if f"/{STAGING_DIR}/" in k]
    for task in tasks:
        key = store.key_of(task.result_uri or "")
        assert key is not None and hashlib.sha256(store.read(key, 1 << 26)).hexdigest() == task.result_sha256
    assert {t.worker.split(":")[0] for t in tasks if t.worker}  # claimed by the workers
    assert not any(p.is_file() for name in ("worker-a", "worker-b") for p in (tmp_path / name).rglob("*.png"))
    # And export and report, run from a third directory that never held an image, are complete
    office = host(tmp_path, "office")
    s.cli(
        "export", "hosts", "--format", "csv", "-o", "out.csv", "--signed-urls", "600", cwd=office, check=True
    )
    exported = list(csv.DictReader((office / "out.csv").open(encoding="utf-8")))
    assert len(exported) == 12
    for row in exported:
        assert row["path"] == row["image_uri"] and row["image_uri"].startswith("s3://")
        with urllib.request.urlopen(row["signed_url"], timeout=10) as response:
            assert hashlib.sha256(response.read()).hexdigest() == row["sha256"]
    s.cli("report", "hosts", cwd=office, check=True)
    [page] = list(office.glob("*-report.html"))
    text = page.read_text(encoding="utf-8")
    assert text.count('src="data:image/jpeg;base64,') == 12 and "image file missing" not in text
    s.cli("report", "hosts", "--images", "signed", "-o", "signed.html", cwd=office, check=True)
    signed = (office / "signed.html").read_text(encoding="utf-8")
    assert signed.count('src="http://127.0.0.1:') == 12
    assert f"img-src data: http://127.0.0.1:{s3_env['AWS_ENDPOINT_URL'].rsplit(':', 1)[1]}" in signed
    # And purge removes the batch's images on this backend too (inputs are shared: kept)
    result = s.cli("purge", "hosts", "--images", cwd=office)
    assert result.returncode == 1 and "--yes" in result.stderr
    s.cli("purge", "hosts", "--images", "--yes", cwd=office, check=True)
    assert store.list("") == [f"inputs/{digest}.png"]


def test_reuse_copies_an_earlier_image_inside_the_bucket(simulator, stack, s3_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = simulator()
    s = stack(sim, **s3_env)
    here = host(tmp_path, "h")
    (here / "p.csv").write_text("key,prompt\nA,mug\nB,cup\n")
    s.start_worker(cwd=host(tmp_path, "w"))
    s.cli("submit", "p.csv", "--batch", "first", cwd=here, check=True)
    s.wait_terminal("first")
    calls = sim.stats()["requests"]
    s.cli("submit", "p.csv", "--batch", "again", "--reuse", cwd=here, check=True)
    summary = s.wait_terminal("again")
    assert summary.counts["completed"] == 2 and summary.cost_usd == 0, s.worker_logs()
    assert sim.stats()["requests"] == calls
    assert all((t.result_uri or "").startswith("s3://") for t in tasks_of(s, "again"))


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanobatch.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("scheme", r"unknown storage scheme 'ftp://'"),
        ("bucket", r"the bucket 'no-such-bucket' does not exist"),
        ("unreachable", r"the endpoint cannot be reached"),
        ("credentials", r"the credentials were refused"),
    ],
)
def test_bad_storage_configuration_is_one_line_at_worker_and_submit_start(  # type: ignore[no-untyped-def]
    s3_server: S3Server, tmp_path: Path, case: str, expected: str, pg_url: str, request: pytest.FixtureRequest
) -> None:
    import os

    env = {**os.environ, **aws_env(s3_server), "NANOBATCH_DATABASE_URL": pg_url, "PYTHONPATH": str(REPO)}
    env["NANOBATCH_PROVIDER_BASE_URL"] = "http://127.0.0.1:9"  # never called: the store check comes first
    env["NANOBATCH_OUTPUT_DIR"] = {
        "scheme": "ftp://host/images",
        "bucket": "s3://no-such-bucket/images",
        "unreachable": "s3://some-bucket/images",
        "credentials": "s3://some-bucket/images",
    }[case]
    if case == "unreachable":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{_closed_port()}"
    if case == "credentials":
        env["AWS_ENDPOINT_URL"] = request.getfixturevalue("s3_auth_server")
    (tmp_path / "p.csv").write_text("key,prompt\nA,mug\n")
    for args in (("worker",), ("submit", str(tmp_path / "p.csv"), "--batch", "b")):
        result = _cli(env, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and re.search(expected, lines[0]), result.stderr
        assert "Traceback" not in result.stderr and "testing-secret" not in result.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_store_outage_mid_batch_is_waited_out_and_loses_nothing(  # type: ignore[no-untyped-def]
    simulator, stack, s3_env, s3_server: S3Server, tmp_path: Path
) -> None:
    # Slow calls and two threads: the batch takes at least 12 s, so the store goes away while most of
    # it is still to do however fast or slow this machine is (0.3 s calls could all finish first).
    sim = simulator(latency=(2.0, 2.0))
    s = stack(sim, **s3_env)
    (tmp_path / "p.csv").write_text("key,prompt\n" + "".join(f"K{i},mug {i}\n" for i in range(12)))
    s.cli("submit", str(tmp_path / "p.csv"), "--batch", "outage", check=True)
    s.start_worker(concurrency=2)
    wait_until(lambda: s.summary("outage").counts["completed"] >= 1, 60, "nothing completed")
    # (a call must be in flight: a task that starts during the outage waits before its call instead)
    wait_until(lambda: sim.stats()["current_concurrency"] >= 1, 60, "no call in flight")
    s3_server.stop()  # the store goes away while calls are in flight
    try:
        wait_until(
            lambda: "image store unavailable" in s.worker_logs() or "storage_unavailable" in s.worker_logs(),
            60,
            "no worker noticed the outage",
        )
    finally:
        s3_server.start()
    summary = s.wait_terminal("outage", timeout=120)
    assert summary.counts["completed"] == 12, s.worker_logs()
    assert sim.stats()["requests"] == 12  # every image paid once: none lost to the outage
    log = (s.output_dir.parent / "worker0.log").read_text(errors="replace")
    assert "staging again" in log  # a paid image met the outage and was kept until the store was back
    store = open_store(s3_env["NANOBATCH_OUTPUT_DIR"])
    for task in tasks_of(s, "outage"):
        key = store.key_of(task.result_uri or "")
        assert key is not None and hashlib.sha256(store.read(key, 1 << 26)).hexdigest() == task.result_sha256
