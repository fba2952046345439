"""Every stored image is true, and the worker path is bounded (issue #11; docs/integrity.md).

Each test drives the real worker path — Celery worker processes or ``serve`` in this process — against
real PostgreSQL, Redis and loopback HTTP servers that send exactly the hostile thing under test.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlparse

import psycopg
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import func, select, text, update

from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.tasks import serve
from nanobatch.tasks.inbox import process_inbox
from nanobatch.tasks.metrics import MetricsSources, NanobatchCollector
from nanobatch.tasks.sweep import sweep
from nanobatch.workers.storage import local_path
from tests.integration.conftest import REPO, Stack, write_csv
from tests.integration.hostile import TcpProxy, Upstream, gemini_answer, png_bytes, send

pytestmark = pytest.mark.integration
T = TypeVar("T")

FLASH_1K = (1024, 1024)  # gemini-2.5-flash-image at 1:1, the default of these tests


# -- helpers -----------------------------------------------------------------------------------------


def wait_for(check: Callable[[], T | None], timeout: float, what: str, logs: Callable[[], str] = str) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` (and the logs) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs()}")
        time.sleep(0.05)


def tasks(s: Stack, batch: str) -> dict[str, GenerationTask]:
    with s.runtime.db.session() as session:
        rows = session.scalars(select(GenerationTask).join(Batch).where(Batch.name == batch))
        return {t.key: t for t in rows}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored_file(task: GenerationTask) -> Path:
    assert task.result_uri, f"{task.key} has no result"
    return Path(local_path(task.result_uri) or "")


def assert_true_image(task: GenerationTask) -> bytes:
    """The row's file exists, is the bytes the row records, and decodes completely."""
    path = stored_file(task)
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == task.result_sha256, f"{task.key}: file is not the row's image"
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (task.width, task.height)
    return data


def staged_leftovers(s: Stack) -> list[Path]:
    return [p for p in s.output_dir.rglob("*") if p.is_file() and ".staged" in p.parts]


def prompt_of(body: bytes) -> str:
    return str(json.loads(body)["contents"][0]["parts"][0]["text"])


def image_answer(image: bytes) -> Callable[[int, BaseHTTPRequestHandler, bytes], None]:
    return lambda n, handler, body: send(handler, 200, gemini_answer(image))


def psycopg_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def with_port(url: str, port: int) -> str:
    """``url`` pointing at ``port`` on loopback instead of its own port."""
    parsed = urlparse(url)
    user = f"{parsed.username}@" if parsed.username else ""
    return parsed._replace(netloc=f"{user}127.0.0.1:{port}").geturl()


@pytest.fixture
def upstreams() -> Iterator[Callable[..., Upstream]]:
    made: list[Upstream] = []

    def make(respond: Callable[[int, BaseHTTPRequestHandler, bytes], None]) -> Upstream:
        made.append(Upstream(respond))
        return made[-1]

    yield make
    for up in made:
        up.stop()


@pytest.fixture
def proxies() -> Iterator[Callable[[int], TcpProxy]]:
    made: list[TcpProxy] = []

    def make(port: int) -> TcpProxy:
        made.append(TcpProxy("127.0.0.1", port))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


# -- 1. a stale writer never replaces the new owner's image ------------------------------------------


def test_a_stale_claim_finishing_late_never_replaces_the_new_owners_image(upstreams, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given an upstream whose first answer to a prompt is large (slow to write: the stale worker's window)
    # and whose later answers are small, both true 1024x1024 images
    big, small = png_bytes(*FLASH_1K, noise=True), png_bytes(*FLASH_1K)
    answered: dict[str, int] = {}

    def respond(n: int, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        prompt = prompt_of(body)
        answered[prompt] = answered.get(prompt, 0) + 1
        send(handler, 200, gemini_answer(big if answered[prompt] == 1 else small))

    s = stack(upstreams(respond))
    worker = s.start_worker(concurrency=1)
    watch = psycopg.connect(psycopg_dsn(s.env["NANOBATCH_DATABASE_URL"]), autocommit=True)
    try:
        # The pause below must land while the worker stores its answer; on a loaded machine the worker can
        # record before the signal arrives, which stages nothing: then the scenario runs again on a fresh row
        for attempt in range(5):
            if _stale_claim_race(s, worker.pid, watch, tmp_path, f"race{attempt}", (big, small)):
                return
        pytest.fail("in 5 tries the worker always recorded its answer before the pause landed")
    finally:
        watch.close()


def _stale_claim_race(
    s: Stack,
    pid: int,
    watch: psycopg.Connection[Any],
    tmp_path: Path,
    batch: str,
    images: tuple[bytes, bytes],
) -> bool:
    """One run of the stale-claim scenario on a new row; False if the pause landed after the record."""
    s.submit_file(write_csv(tmp_path / f"{batch}.csv", "key,prompt", f"A,mug for {batch}"), batch)
    task_id = tasks(s, batch)["A"].id

    def state() -> tuple[str, Any, str | None]:
        row = watch.execute(
            "SELECT status, lease_expires_at, celery_task_id FROM generation_tasks WHERE id = %s", (task_id,)
        ).fetchone()
        assert row is not None
        return row[0], row[1], row[2]

    def files_of_batch() -> bool:
        # (a batch's folder is its name and a hash: "race0-a07a5b4786f63395")
        return any(
            p.is_file() and p.relative_to(s.output_dir).parts[0].startswith(f"{batch}-")
            for p in s.output_dir.rglob("*")
        )

    # When that worker has its answer and is about to store it — right after renewing its claim (the
    # old check-then-write), or as it starts writing (a claim-specific staging write) — it is paused
    _, lease, celery_id = wait_for(
        lambda: (st := state())[0] == "processing" and st, 60, "the claim", s.worker_logs
    )
    deadline = time.monotonic() + 60
    while state()[1] == lease and not files_of_batch():
        assert time.monotonic() < deadline, s.worker_logs()
    os.kill(pid, signal.SIGSTOP)
    try:
        if state()[0] != "processing":
            return False  # recorded before the pause: there is no stale claim to test on this row
        # and meanwhile its lease runs out, the sweeper hands the row on, and a new owner completes it
        with s.runtime.db.session() as session:
            session.execute(
                update(GenerationTask)
                .where(GenerationTask.id == task_id)
                .values(lease_expires_at=GenerationTask.created_at)
            )

        # (the paused worker's sweeper thread may hold the sweep lock until it times out: sweep again
        # until a pass runs and the row is handed back)
        def reclaimed() -> bool:
            sweep(s.runtime)
            return state()[0] == "pending"

        wait_for(reclaimed, 60, "the reclaim", s.worker_logs)
        assert serve.serve(s.runtime, task_id).value in {"completed", "recovered"}
        owner = tasks(s, batch)["A"]
        owner_image = assert_true_image(owner)
    finally:
        os.kill(pid, signal.SIGCONT)
    # and the stale worker then finishes its delivery
    log = s.output_dir.parent / "worker0.log"
    wait_for(lambda: f"{celery_id}] succeeded" in log.read_text(errors="replace"), 60, "the stale delivery")
    # Then the file is still the one the row records, byte for byte, and nothing is left staged
    final = tasks(s, batch)["A"]
    assert (final.status, final.result_sha256, final.result_uri) == (
        "completed",
        owner.result_sha256,
        owner.result_uri,
    )
    assert assert_true_image(final) == owner_image
    assert owner_image in images
    assert staged_leftovers(s) == []
    return True


# -- 2. no two keys share a file ---------------------------------------------------------------------


def test_keys_that_once_shared_a_file_get_their_own(simulator, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given two keys the old naming mapped to one file: "a/b" → "a_b-c14cddc033", and that very name
    s = stack(simulator())
    s.start_worker()
    s.submit_file(
        write_csv(tmp_path / "p.csv", "key,prompt", "a/b,red mug", "a_b-c14cddc033,blue mug"), "names"
    )
    # When both are generated
    assert s.wait_terminal("names").counts["completed"] == 2
    # Then each row's file is its own image
    rows = tasks(s, "names")
    first, second = rows["a/b"], rows["a_b-c14cddc033"]
    assert stored_file(first) != stored_file(second)
    assert assert_true_image(first) != assert_true_image(second)


# -- 3. every image is decoded in full and checked before it counts -----------------------------------


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose (valid) header declares ``width`` x ``height``, with a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def gif_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "blue").save(buffer, "GIF")
    return buffer.getvalue()


def test_truncated_foreign_huge_or_wrongly_sized_images_never_count(upstreams, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = png_bytes(*FLASH_1K, noise=True)
    answers = {
        "truncated": good[: len(good) // 2],
        "no-tail": good[:-12],  # everything but the IEND chunk: Pillow alone decodes it happily
        "wrong-size": png_bytes(512, 512),
        "too-many-pixels": header_only_png(8000, 6000),  # 48 Mpx declared, over the 40 Mpx cap
        "gif": gif_bytes(*FLASH_1K),
    }
    seen: dict[str, int] = {}

    def respond(n: int, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        prompt = prompt_of(body)
        seen[prompt] = seen.get(prompt, 0) + 1
        if prompt == "flaky":  # truncated once, then a good image
            send(handler, 200, gemini_answer(answers["truncated"] if seen[prompt] == 1 else good))
        else:
            send(handler, 200, gemini_answer(answers[prompt]))

    # Given an upstream that answers 200 with a broken image of each kind (and one that recovers)
    s = stack(upstreams(respond), NANOBATCH_MAX_ATTEMPTS="2")
    s.start_worker()
    rows = [f"{name},{name}" for name in [*answers, "flaky"]]
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", *rows), "bad-images")
    # When the batch runs
    s.wait_terminal("bad-images")
    result = tasks(s, "bad-images")
    # Then no broken image was ever stored: each is a bounded-retry upstream fault, then failed
    for name in answers:
        task = result[name]
        assert (task.status, task.error_code, task.result_uri) == ("failed", "bad_image", None), (
            name,
            task.error_message,
        )
        assert seen[name] == 2  # the attempt cap
    assert "truncated" in (result["truncated"].error_message or "").lower()
    assert "512x512" in (result["wrong-size"].error_message or "")
    assert "pixels" in (result["too-many-pixels"].error_message or "")
    # and a truncated answer followed by a good one ends with the good one, recorded as decoded
    flaky = result["flaky"]
    assert (flaky.status, flaky.attempts, flaky.width, flaky.height) == ("completed", 1, *FLASH_1K)
    assert assert_true_image(flaky) == good
    published = [p for p in s.output_dir.rglob("*") if p.is_file() and ".staged" not in p.parts]
    assert published == [stored_file(flaky)]


# -- 4. a paid result is never thrown away because bookkeeping failed --------------------------------


def test_a_redis_blip_after_the_call_does_not_cost_the_paid_image(
    upstreams, proxies, stack, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    # Given a worker that reaches Redis (broker, limiter, telemetry) through a proxy, and an upstream
    # whose answer arrives just after Redis went away
    redis_proxy = proxies(6379)
    image = png_bytes(*FLASH_1K)

    def respond(n: int, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        redis_proxy.cut()
        send(handler, 200, gemini_answer(image))

    up = upstreams(respond)
    s = stack(up)
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "A,mug"), "blip")
    s.start_worker(concurrency=1, NANOBATCH_REDIS_URL=f"redis://127.0.0.1:{redis_proxy.port}/0")

    # When the call succeeds and releasing the limiter slot then fails
    def settled() -> GenerationTask | None:
        task = tasks(s, "blip")["A"]
        return task if task.status == "completed" or task.attempts or up.calls > 1 else None

    wait_for(settled, 60, "the paid call to settle", s.worker_logs)
    redis_proxy.restore()
    # Then the image is stored and recorded, and it was bought once
    task = s.wait_terminal("blip", timeout=90) and tasks(s, "blip")["A"]
    assert (task.status, task.attempts, up.calls) == ("completed", 0, 1), s.worker_logs()
    assert assert_true_image(task) == image


@pytest.mark.parametrize("deadline", ["900", "2"], ids=["keeps-retrying", "gives-up-then-recovered"])
def test_a_long_database_outage_after_the_call_does_not_cost_the_paid_image(  # type: ignore[no-untyped-def]
    upstreams, proxies, stack, tmp_path, deadline
) -> None:
    # Given a worker that reaches PostgreSQL through a proxy, and an upstream whose answer arrives just
    # after the database went away for longer than the old ~30 s write budget
    outage = 33.0
    image = png_bytes(*FLASH_1K)

    def respond(n: int, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        pg_proxy.cut()
        threading.Timer(outage, pg_proxy.restore).start()
        send(handler, 200, gemini_answer(image))

    pg_proxy = proxies(5432)
    up = upstreams(respond)
    s = stack(up, NANOBATCH_REQUEST_TIMEOUT="5", NANOBATCH_MAX_INLINE_WAIT="1", NANOBATCH_LEASE_SECONDS="8")
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "A,mug"), "outage")
    proxied = with_port(s.env["NANOBATCH_DATABASE_URL"], pg_proxy.port)
    assert str(pg_proxy.port) in proxied
    # (keeps-retrying: the lease must outlive the outage, as a worker extends nothing while it is down)
    lease = "60" if deadline == "900" else "8"
    s.start_worker(
        concurrency=1,
        NANOBATCH_DATABASE_URL=proxied,
        NANOBATCH_RESULT_WRITE_DEADLINE=deadline,
        NANOBATCH_LEASE_SECONDS=lease,
    )
    # When the outage ends
    s.wait_terminal("outage", timeout=outage + 60)
    # Then the image it paid for is the row's result, bought once
    task = tasks(s, "outage")["A"]
    assert (task.status, up.calls) == ("completed", 1), s.worker_logs()
    assert assert_true_image(task) == image
    assert staged_leftovers(s) == []
    if deadline == "2":  # it gave up, left the image staged, and the next delivery recorded it
        log = (s.output_dir.parent / "worker0.log").read_text(errors="replace")
        assert "stays staged" in log and "'recovered'" in log and task.attempts == 1


# -- 5. an answer's size is capped while it streams --------------------------------------------------


def test_an_oversized_answer_is_cut_off_while_it_streams(upstreams, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    total = 40 << 20
    sent: dict[str, list[int]] = {}

    def respond(n: int, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        prompt = prompt_of(body)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        chunked = prompt == "streamed"
        handler.send_header(
            "Transfer-Encoding" if chunked else "Content-Length", "chunked" if chunked else str(total)
        )
        handler.end_headers()
        count, block = 0, b'{"pad": "' + b"x" * 65536
        try:
            while count < total:
                piece = block[: total - count]
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                count += len(piece)
            if chunked:
                handler.wfile.write(b"0\r\n\r\n")
        finally:
            sent.setdefault(prompt, []).append(count)

    # Given an upstream answering 40 MB of JSON, declared or streamed, and a 1 MiB answer limit
    s = stack(upstreams(respond), NANOBATCH_MAX_RESPONSE_BYTES=str(1 << 20), NANOBATCH_MAX_ATTEMPTS="2")
    s.start_worker()
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "D,declared", "S,streamed"), "huge")
    # When the batch runs
    s.wait_terminal("huge", timeout=120)
    # Then both fail as a bounded-retry upstream fault, and the worker stopped reading early
    for key in ("D", "S"):
        task = tasks(s, "huge")[key]
        assert (task.status, task.error_code) == ("failed", "response_too_large"), task.error_message
        assert "NANOBATCH_MAX_RESPONSE_BYTES" in (task.error_message or "")
    for prompt in ("declared", "streamed"):
        assert len(sent[prompt]) == 2 and max(sent[prompt]) < total // 2, sent


# -- 6. one deadline bounds the whole call; the sweep is never starved --------------------------------


def test_a_byte_trickling_upstream_is_cut_off_at_the_request_timeout(upstreams, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    held: dict[str, float] = {}

    def respond(n: int, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        prompt = prompt_of(body)
        started = time.monotonic()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        trickle = head + b"{" + b" " * 99_998 + b"}" if prompt == "head" else b"{" + b" " * 99_998 + b"}"
        if prompt == "body":
            handler.wfile.write(head)
        try:
            for i in range(len(trickle)):  # one byte every 0.25 s: each read is quick, the whole is endless
                handler.wfile.write(trickle[i : i + 1])
                handler.wfile.flush()
                if time.monotonic() - started > 120:
                    break
                time.sleep(0.25)
        except OSError:
            pass
        finally:
            held[prompt] = time.monotonic() - started

    # Given an upstream that sends its status line or its body one byte at a time, and a 2 s timeout
    s = stack(upstreams(respond), NANOBATCH_REQUEST_TIMEOUT="2", NANOBATCH_MAX_ATTEMPTS="1")
    s.start_worker()
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "H,head", "B,body"), "trickle")
    # When the batch runs
    s.wait_terminal("trickle", timeout=40)
    # Then both calls ended at the deadline as timeouts, not one read timeout at a time
    for key in ("H", "B"):
        task = tasks(s, "trickle")[key]
        assert (task.status, task.error_code) == ("failed", "timeout"), task.error_message
    wait_for(lambda: len(held) == 2, 10, "the server to see both hang-ups")
    assert max(held.values()) < 4.0, held


def test_the_sweep_runs_while_every_worker_thread_is_stuck_in_a_call(upstreams, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    image = png_bytes(*FLASH_1K)

    def respond(n: int, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        up.release.wait(60)
        send(handler, 200, gemini_answer(image))

    # Given a worker (with beat) whose only thread is held by a slow call
    up = upstreams(respond)
    s = stack(up, NANOBATCH_REQUEST_TIMEOUT="60")
    s.start_worker(concurrency=1, beat=True)
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "SLOW,mug"), "busy")
    wait_for(lambda: up.calls == 1, 60, "the slow call", s.worker_logs)
    # When another worker dies holding a task (its row is processing, its lease expired)
    s.submit_file(write_csv(tmp_path / "q.csv", "key,prompt", "DEAD,cup"), "orphan")
    dead = tasks(s, "orphan")["DEAD"].id
    with s.runtime.db.session() as session:
        session.execute(
            update(GenerationTask)
            .where(GenerationTask.id == dead)
            .values(
                status="processing", claim_token=str(uuid.uuid4()), lease_expires_at=GenerationTask.created_at
            )
        )

    # Then the worker's sweep reclaims it anyway, while its thread is still stuck
    def reclaimed() -> bool:
        task = tasks(s, "orphan")["DEAD"]
        return task.status == "pending" and task.error_code == "lease_expired"

    try:
        wait_for(reclaimed, 15, "the sweep to reclaim the dead worker's task", s.worker_logs)
        assert tasks(s, "busy")["SLOW"].status == "processing"
    finally:
        up.release.set()


# -- 7. input images are re-checked where the worker reads them ---------------------------------------


def test_input_images_swapped_after_submit_are_refused_where_they_are_read(
    upstreams, stack, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    # Given four rows editing photos that were valid at submit
    folder, outside = tmp_path / "in", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    photos = {name: png_bytes(64, 64, colour=(i * 40, 20, 20)) for i, name in enumerate("abcd", start=1)}
    for name, data in photos.items():
        (folder / f"{name}.png").write_bytes(data)
    secret = png_bytes(64, 64, colour=(1, 2, 3))
    (outside / "secret.png").write_bytes(secret)
    bodies: list[bytes] = []

    def respond(n: int, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        bodies.append(body)
        send(handler, 200, gemini_answer(png_bytes(*FLASH_1K)))

    up = upstreams(respond)
    s = stack(up, NANOBATCH_MAX_INPUT_IMAGE_BYTES=str(1 << 20))
    rows = ["PLANTED,edit,a.png", "SWAPPED,edit,b.png", "CHANGED,edit,c.png", "GOOD,edit,d.png"]
    s.submit_file(write_csv(folder / "p.csv", "key,prompt,input_images", *rows), "inputs")
    # When, before a worker reads them, one becomes a symlink to a file outside the folder, one a 5 MB
    # file, one another image
    (folder / "a.png").unlink()
    (folder / "a.png").symlink_to(outside / "secret.png")
    (folder / "b.png").write_bytes(b"\0" * (5 << 20))
    (folder / "c.png").write_bytes(png_bytes(64, 64, colour=(9, 9, 9)))
    s.start_worker()
    s.wait_terminal("inputs")
    # Then those tasks fail as invalid, saying why, and nothing of theirs went upstream
    result = tasks(s, "inputs")
    expected = {"PLANTED": "symlink", "SWAPPED": "NANOBATCH_MAX_INPUT_IMAGE_BYTES", "CHANGED": "changed"}
    for key, says in expected.items():
        task = result[key]
        assert (task.status, task.error_code) == ("failed", "invalid_task"), (key, task.error_message)
        assert says in (task.error_message or ""), (key, task.error_message)
    assert result["GOOD"].status == "completed" and up.calls == 1
    sent = json.loads(bodies[0])["contents"][0]["parts"][1]["inlineData"]
    assert sent == {"mimeType": "image/png", "data": base64.b64encode(photos["d"]).decode()}


# -- 8. control characters are a row error, never a failed submit -------------------------------------


def test_a_nul_byte_is_a_row_error_with_skip_invalid(stack, simulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"key": "A", "prompt": "a red mug\\non a table"}\n'
        '{"key": "B", "prompt": "a bad\\u0000mug"}\n'
        '{"key": "C", "prompt": "a cup", "note": "x\\u0000y"}\n',
        encoding="utf-8",
    )
    result = s.cli("submit", str(path), "--batch", "nul", "--skip-invalid")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in output, output
    assert "line 2: prompt: contains a NUL byte" in output and "line 3: note: contains a NUL byte" in output
    assert sorted(tasks(s, "nul")) == ["A"]
    assert tasks(s, "nul")["A"].prompt == "a red mug\non a table"  # newlines in prompts are fine


def test_an_inbox_file_with_a_nul_byte_is_rejected_with_its_errors(stack, simulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    s = stack(simulator(), NANOBATCH_INBOX_DIR=str(inbox), NANOBATCH_TIMEZONE="UTC")
    (inbox / "nul.csv").write_bytes(b"key,prompt\nA,red mug\nB,bad\x00mug\n")
    counts = process_inbox(s.runtime, settle_seconds=0)
    assert (counts["rejected"], counts["errors"]) == (1, 0), counts
    assert not (inbox / "nul.csv").exists() and (inbox / "rejected" / "nul.csv").exists()
    errors = (inbox / "rejected" / "nul.csv.errors.txt").read_text(encoding="utf-8")
    assert "line 3: prompt: contains a NUL byte" in errors


# -- 9. CSV exports cannot carry formulas into a spreadsheet ------------------------------------------


def test_csv_export_neutralises_formulas_and_jsonl_stays_exact(stack, simulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = stack(simulator())
    path = tmp_path / "p.jsonl"
    hostile = {  # key → a product column's value (keys cannot hold tab or CR: intake refuses them)
        '=HYPERLINK("http://x","y")': "=1+1",
        "+SKU": "+1+2",
        "-SKU": "-2+3",
        "@SKU": "@SUM(A1:A9)",
        "TAB": "\tcell",
        "CR": "\rcell",
        "plain": "-5",  # a plain number stays a number
    }
    lines = [json.dumps({"key": k, "prompt": "p", "note": v, "=cmd": "x"}) for k, v in hostile.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    s.cli("submit", str(path), "--batch", "formulas", check=True)
    csv_path, jsonl_path = tmp_path / "out.csv", tmp_path / "out.jsonl"
    s.cli("export", "formulas", "--format", "csv", "--output", str(csv_path), check=True)
    s.cli("export", "formulas", "--format", "jsonl", "--output", str(jsonl_path), check=True)
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        cells = {row[0]: row[header.index("note")] for row in reader}
    assert "'=cmd" in header
    formula = ("=", "+", "-", "@")
    expected = {
        ("'" + k if k.startswith(formula) else k): ("'" + v if k != "plain" else v)
        for k, v in hostile.items()
    }
    assert cells == expected
    exact = {row["key"]: row["note"] for row in map(json.loads, jsonl_path.read_text().splitlines())}
    assert exact == hostile


# -- 10. an echoed key is redacted in every field we keep ---------------------------------------------

ECHO_KEY = "nbRelayKey/Secret+0123456789=ABCDEFGHIJ"
NEEDLES = (ECHO_KEY.lower(), quote(ECHO_KEY, safe="").lower(), "secret+0123456789", "secret%2b0123456789")


def test_a_key_echoed_by_the_upstream_is_kept_nowhere(upstreams, stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    image = png_bytes(*FLASH_1K)

    def respond(n: int, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        key = handler.headers.get("x-goog-api-key") or ""
        if n == 1:  # a 429 whose quota id carries the key, lower-cased
            error = {
                "error": {
                    "code": 429,
                    "status": "RESOURCE_EXHAUSTED",
                    "message": f"quota exceeded for {key.lower()}",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                            "violations": [{"quotaId": f"PerMinute-{key.lower()}", "quotaValue": "10"}],
                        },
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.2s"},
                    ],
                }
            }
            send(handler, 429, json.dumps(error).encode())
        else:  # a 200 whose modelVersion carries it percent-encoded
            send(
                handler,
                200,
                gemini_answer(image, model_version=f"gemini-2.5-flash-image/{quote(key, safe='')}"),
            )

    up = upstreams(respond)
    s = stack(up, NANOBATCH_API_KEY=ECHO_KEY)
    s.start_worker()
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt", "A,mug"), "echo")
    assert s.wait_terminal("echo").counts["completed"] == 1
    assert up.calls == 2 and up.requests[0]["x-goog-api-key"] == ECHO_KEY  # the key really was echoed
    # Everything kept: every row of every table, both exports, the metrics page, the worker's log
    with s.runtime.db.session() as session:
        names = session.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).all()
        tables = "\n".join(
            str(
                session.execute(
                    text(f"SELECT coalesce(string_agg(t::text, chr(10)), '') FROM \"{n}\" t")
                ).scalar()
            )
            for n in names
        )
    exports = "".join(
        s.cli("export", "echo", "--format", fmt, "--output", str(tmp_path / f"e.{fmt}"), check=True).stdout
        + (tmp_path / f"e.{fmt}").read_text()
        for fmt in ("csv", "jsonl")
    )
    registry = CollectorRegistry(auto_describe=False)
    sources = MetricsSources.from_settings(s.settings)
    registry.register(NanobatchCollector(sources))
    metrics = generate_latest(registry).decode()
    sources.close()
    assert "nanobatch_rate_limited_total" in metrics and "gemini-2.5-flash-image/" in tables  # not vacuous
    for where, content in {
        "database": tables,
        "export": exports,
        "metrics": metrics,
        "log": s.worker_logs(),
    }.items():
        for needle in NEEDLES:
            assert needle not in content.lower(), f"the key leaked into the {where}"


# -- concurrent submits of one new batch -------------------------------------------------------------

SUBMITTER = r"""
import pathlib, sys, time
from sqlalchemy import text
from nanobatch.cli.context import runtime_for
from nanobatch.tasks.intake import IntakeOptions, read_file
from nanobatch.tasks.producer import BatchOptions, submit
from nanobatch.tasks.settings import Settings

path, batch, ready, go = sys.argv[1:5]
rt = runtime_for(Settings())
options = IntakeOptions(model="gemini-3-pro-image")
intake = read_file(pathlib.Path(path), rt.catalog, options)
with rt.db.session() as session:
    session.execute(text("SELECT 1"))  # connected before the start line
pathlib.Path(ready).touch()
deadline = time.monotonic() + 60
while not pathlib.Path(go).exists():
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.001)
print("NEW", submit(rt.db, rt.dispatcher, intake, BatchOptions(name=batch), intake_options=options).new)
"""


def test_several_processes_submitting_one_new_batch_at_once_all_succeed(stack, simulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given six processes ready to submit the same new batch of 2,000 rows
    s = stack(simulator())
    rows = [f"K{i},mug {i}" for i in range(2000)]
    path = write_csv(tmp_path / "p.csv", "key,prompt", *rows)
    go = tmp_path / "go"
    env = {
        **os.environ,
        **s.env,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, str(path), "together", str(tmp_path / f"ready{i}"), str(go)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    wait_for(lambda: all((tmp_path / f"ready{i}").exists() for i in range(6)), 120, "every submitter")
    # When they start at the same moment
    go.touch()
    outputs = [proc.communicate(timeout=120) for proc in procs]
    # Then every one succeeds, and the rows exist once
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    news = [int(out.split("NEW", 1)[1]) for out, _ in outputs]
    assert sum(news) == 2000
    assert len(tasks(s, "together")) == 2000
    with s.runtime.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Batch).where(Batch.name == "together")) == 1
