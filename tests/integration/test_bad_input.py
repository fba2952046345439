"""Bad and hostile input at every door: ``nanobatch submit``, ``nanobatch limits``, configuration, the API.

Customers' exports are messy and sometimes hostile. Every input that is refused must be refused
with a message naming the problem, the documented exit code (2: the invocation, the file as a whole
or the configuration is unusable; 1: rows are invalid, nothing written), no traceback — and no side
effect: the database (every table's rows, hashed), the output directory listing and the stack's
Redis keys are compared before and after. Inputs that are valid by design (a UTF-8 BOM, text that
looks like SQL or shell, a key that looks like a path) go through a real worker instead, and are
checked for being stored verbatim and harmlessly.

Real PostgreSQL and Redis (the shared fixtures: own database, own key prefix) and the CLI as a
subprocess, the way an operator runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from PIL import Image
from sqlalchemy import select, text

from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.simulator.server import RunningSimulator
from nanobatch.tasks.intake import IntakeError, IntakeOptions, read_file
from nanobatch.tasks.producer import BatchOptions, SubmitError, submit
from nanobatch.workers.limiter import PoolLimits
from tests.integration.conftest import DEFAULT_MODEL, REPO, Stack, write_csv

pytestmark = pytest.mark.integration

FLASH = DEFAULT_MODEL
#: Peak RSS allowed for validating a 100 MB file: a resource ceiling, not a timing assertion.
MEMORY_CEILING_BYTES = 1024**3


# -- observing "nothing changed" -------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Everything a refused input must leave untouched."""

    tables: dict[str, tuple[int, str]]  # table -> (row count, md5 of every row as text)
    files: tuple[str, ...]
    redis_keys: tuple[str, ...]


def snapshot(s: Stack) -> Snapshot:
    tables: dict[str, tuple[int, str]] = {}
    with s.runtime.db.session() as session:
        names = session.scalars(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        ).all()
        for name in names:
            count, digest = session.execute(
                text(
                    f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') "
                    f'FROM "{name}" t'
                )
            ).one()
            tables[name] = (int(count), str(digest))
    files = tuple(sorted(str(p.relative_to(s.output_dir)) for p in s.output_dir.rglob("*")))
    prefix = s.env["NANOBATCH_LIMITER_PREFIX"]
    keys = tuple(sorted(k.decode() for k in s.runtime.redis.scan_iter(f"{prefix}*", count=1000)))
    return Snapshot(tables, files, keys)


@pytest.fixture
def seeded(simulator: Callable[..., RunningSimulator], stack: Callable[..., Stack], tmp_path: Path) -> Stack:
    """A stack that already holds a batch, queued messages and an image, so "unchanged" means something."""
    s = stack(simulator())
    s.submit_file(write_csv(tmp_path / "existing.csv", "key,prompt", "E1,mug", "E2,cup"), "existing")
    (s.output_dir / "existing").mkdir(parents=True)
    (s.output_dir / "existing" / "E0.png").write_bytes(b"an image from an earlier run")
    return s


def assert_refused(result: subprocess.CompletedProcess[str], code: int, *says: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == code, f"exit {result.returncode}, expected {code}:\n{output}"
    assert "Traceback" not in output, output
    for fragment in says:
        assert fragment in output, f"{fragment!r} not in:\n{output}"


# -- refused inputs --------------------------------------------------------------------------------

Build = Callable[[Path], list[str]]


def _file(name: str, content: str | bytes) -> Build:
    def build(tmp: Path) -> list[str]:
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return ["submit", str(path)]

    return build


def _with(build: Build, *extra: str) -> Build:
    return lambda tmp: [*build(tmp), *extra]


def _image_row(ref: str, prepare: Callable[[Path], None]) -> Build:
    def build(tmp: Path) -> list[str]:
        prepare(tmp)
        return _file("images.csv", f"key,prompt,input_images\nA,edit this photo,{ref}\n")(tmp)

    return build


def _outside_image(tmp: Path) -> Path:
    outside = tmp.parent / f"outside-{tmp.name}"
    outside.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(outside / "real.png")
    return outside / "real.png"


def _touch(path: Path, content: str) -> None:
    path.write_text(content, encoding="utf-8")


def _symlink_outside(tmp: Path) -> None:
    (tmp / "link.png").symlink_to(_outside_image(tmp))


def _real_images(count: int) -> Callable[[Path], None]:
    def prepare(tmp: Path) -> None:
        for i in range(count):
            Image.new("RGB", (8, 8), "blue").save(tmp / f"img{i}.png")

    return prepare


OK_CSV = "key,prompt\nA,mug\n"
NOTHING_WRITTEN = "nothing was written"

REFUSED: list[tuple[str, Build, int, tuple[str, ...]]] = [
    (
        "csv-unterminated-quote",
        _file("quote.csv", 'key,prompt\nA,"unterminated\nB,ok\n'),
        1,
        ("line 2", "not valid CSV", NOTHING_WRITTEN),
    ),
    (
        "csv-wrong-column-count",
        _file("cols.csv", "key,prompt\nA,mug,extra\n"),
        1,
        ("line 2", "expected 2 columns, found 3", NOTHING_WRITTEN),
    ),
    (
        "csv-cell-over-1mb",
        _file("huge.csv", "key,prompt\nA," + "x" * (1024 * 1024 + 10) + "\n"),
        1,
        ("line 2", "field larger than field limit", NOTHING_WRITTEN),
    ),
    (
        "jsonl-huge-prompt",
        _file("huge.jsonl", '{"key": "A", "prompt": "' + "y" * 2_000_000 + '"}\n'),
        1,
        ("line 1", "prompt", "at most 32000 characters"),
    ),
    (
        "invalid-utf8-row",
        _file("latin1.csv", b"key,prompt\nA,caf\xe9 mug\n"),
        1,
        ("line 2", "not valid UTF-8", NOTHING_WRITTEN),
    ),
    (
        "invalid-utf8-header",
        _file("latin1h.csv", b"k\xe9y,prompt\nA,mug\n"),
        2,
        (
            "line 1",
            "not valid UTF-8",
        ),
    ),
    (
        "duplicate-keys",
        _file("dup.csv", "key,prompt\nA,mug\nB,cup\nA,plate\n"),
        1,
        ("line 4", "duplicate key 'A' (first on line 2)", NOTHING_WRITTEN),
    ),
    ("empty-file", _file("empty.csv", ""), 2, ("the file is empty",)),
    ("header-only", _file("header.csv", "key,prompt\n"), 2, ("the file has no rows",)),
    ("no-key-column", _file("nokey.csv", "name,prompt\nA,mug\n"), 2, ("no 'key' column", "--key COLUMN")),
    (
        "empty-key-and-prompt",
        _file("blank.csv", "key,prompt,title\n,mug,t\nB,,t\n"),
        1,
        ("line 2: key", "line 3: prompt", NOTHING_WRITTEN),
    ),
    (
        "control-character-key",
        _file("ctrl.csv", 'key,prompt\n"A\x1bB",mug\n'),
        1,
        ("key must not contain control characters",),
    ),
    (
        "prompt-too-long",
        _file("long.csv", "key,prompt\nA," + "p" * 32_001 + "\n"),
        1,
        ("at most 32000 characters",),
    ),
    (
        "jsonl-non-object-line",
        _file("arr.jsonl", '{"key": "A", "prompt": "mug"}\n[1, 2]\n"text"\n'),
        1,
        ("line 2", "each line must be a JSON object", "line 3"),
    ),
    ("jsonl-broken-json", _file("broken.jsonl", '{"key": "A", "prompt": \n'), 1, ("not valid JSON",)),
    ("wrong-extension", _file("products.xml", OK_CSV), 2, ("expected a .csv, .tsv or .jsonl file",)),
    ("excel-workbook", _file("products.xlsx", OK_CSV), 2, ("an Excel workbook", "save it as CSV UTF-8")),
    ("missing-file", lambda tmp: ["submit", str(tmp / "nope.csv")], 2, ("no such file",)),
    (
        "unknown-model-flag",
        _with(_file("ok.csv", OK_CSV), "--model", "gemini-9-ultra"),
        2,
        ("unknown model 'gemini-9-ultra'",),
    ),
    (
        "unknown-model-row",
        _file("model.csv", "key,prompt,model\nA,mug,gemini-9-ultra\n"),
        1,
        ("line 2: model", "unknown model 'gemini-9-ultra'"),
    ),
    (
        "bad-aspect-and-size",
        _file("ratio.csv", "key,prompt,aspect_ratio,image_size\nA,mug,7:3,\nB,mug,1:1,8K\n"),
        1,
        ("aspect ratio '7:3' is not one of", "supports sizes 1K, 2K, 4K (got '8K')"),
    ),
    (
        "bad-output-format",
        _with(_file("ok.csv", OK_CSV), "--format", "gif"),
        2,
        ("--format 'gif': must be png or jpeg",),
    ),
    (
        "input-image-not-an-image",
        _image_row("fake.png", lambda t: _touch(t / "fake.png", "hello")),
        1,
        ("fake.png: not a readable image",),
    ),
    ("input-image-missing", _image_row("gone.png", lambda t: None), 1, ("gone.png: no such file",)),
    (
        "input-image-symlink-outside",
        _image_row("link.png", _symlink_outside),
        1,
        ("link.png: outside the allowed directory",),
    ),
    (
        "input-image-dotdot-outside",
        _image_row("../outside/real.png", lambda t: None),
        1,
        ("outside the allowed directory",),
    ),
    (
        "too-many-input-images",
        _image_row("|".join(f"img{i}.png" for i in range(15)), _real_images(15)),
        1,
        ("accepts at most 14 images",),
    ),
    (
        "template-missing-column",
        _with(_file("tpl.csv", "key,title\nA,mug\n"), "--template", "Studio photo of {title} in {color}"),
        2,
        ("template uses column(s) color not in the header",),
    ),
    (
        "template-positional-field",
        _with(_file("tpl2.csv", "key,title\nA,mug\n"), "--template", "{0}"),
        2,
        ("must name a column",),
    ),
    (
        "negative-budget",
        _with(_file("ok.csv", OK_CSV), "--budget-usd", "-5"),
        2,
        ("--budget-usd must be greater than 0",),
    ),
    (
        "zero-budget",
        _with(_file("ok.csv", OK_CSV), "--budget-usd", "0"),
        2,
        ("--budget-usd must be greater than 0",),
    ),
    (
        "window-hour-25",
        _with(_file("ok.csv", OK_CSV), "--window", "25:00-01:00"),
        2,
        ("expected HH:MM (24-hour), got '25:00'",),
    ),
    (
        "window-empty",
        _with(_file("ok.csv", OK_CSV), "--window", "02:00-02:00"),
        2,
        ("must not start and end at the same time",),
    ),
    ("at-7pm", _with(_file("ok.csv", OK_CSV), "--at", "7pm"), 2, ("expected HH:MM (24-hour), got '7pm'",)),
    (
        "limits-rpm-zero",
        lambda tmp: ["limits", "set", "--pool", FLASH, "--rpm", "0"],
        2,
        ("Invalid value for '--rpm'", "greater than or equal to 1"),
    ),
    (
        "limits-rpm-absurd",
        lambda tmp: ["limits", "set", "--pool", FLASH, "--rpm", str(10**12)],
        2,
        ("Invalid value for '--rpm'", "less than or equal to"),
    ),
    (
        "limits-concurrency-negative",
        lambda tmp: ["limits", "set", "--pool", FLASH, "--concurrency", "-3"],
        2,
        ("Invalid value for '--concurrency'",),
    ),
    (
        "limits-pool-with-braces",
        lambda tmp: ["limits", "set", "--pool", "{x}", "--rpm", "5"],
        2,
        ("invalid pool name",),
    ),
    ("limits-nothing-to-do", lambda tmp: ["limits", "set", "--pool", FLASH], 2, ("nothing to do",)),
    ("status-unknown-batch", lambda tmp: ["status", "no-such-batch"], 1, ("no batch named 'no-such-batch'",)),
]


@pytest.mark.parametrize(("build", "code", "says"), [pytest.param(b, c, s, id=n) for n, b, c, s in REFUSED])
def test_refused_input_says_why_and_changes_nothing(
    seeded: Stack, tmp_path: Path, build: Build, code: int, says: tuple[str, ...]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    args = build(inputs)
    before = snapshot(seeded)
    result = seeded.cli(*args)
    assert_refused(result, code, *says)
    assert snapshot(seeded) == before


@pytest.mark.parametrize(
    ("variable", "value", "names"),
    [
        ("NANOBATCH_CONCURRENCY", "-1", "concurrency"),
        ("NANOBATCH_LIMITS", "not json", "limits"),
        ("NANOBATCH_LIMITS", '{"gemini-2.5-flash-image": {"rpm": 0}}', "rpm"),
        ("NANOBATCH_REQUEST_TIMEOUT", "soon", "request_timeout"),
        ("NANOBATCH_PROVIDER", "midjourney", "provider"),
    ],
)
def test_invalid_configuration_is_a_clear_error(
    seeded: Stack, tmp_path: Path, variable: str, value: str, names: str
) -> None:
    """Settings are read lazily (tasks.celeryconfig), so the CLI reports them: exit 2, no traceback."""
    path = write_csv(tmp_path / "ok.csv", "key,prompt", "A,mug")
    before = snapshot(seeded)
    result = subprocess.run(
        [sys.executable, "-m", "nanobatch.cli", "submit", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **seeded.env, variable: value},
        timeout=120,
    )
    assert_refused(result, 2, "configuration error")
    assert names in (result.stdout + result.stderr).lower(), result.stderr
    assert snapshot(seeded) == before


def test_a_100mb_file_is_validated_streaming_within_a_memory_ceiling(seeded: Stack, tmp_path: Path) -> None:
    # Given a 100 MB product export (~650k rows) whose very last row repeats the first key
    path = tmp_path / "big.csv"
    rows = _write_big_csv(path, 100 * 1024 * 1024)
    before = snapshot(seeded)
    # When it is submitted
    result, peak = _run_measuring_peak_rss(["submit", str(path)], seeded.env)
    print(f"\n100 MB file: {rows:,} rows, peak RSS of nanobatch submit {peak / 2**20:,.0f} MiB")
    # Then the whole file was read (the duplicate on the last line is found), nothing was written,
    # and memory stayed under the ceiling
    assert_refused(result, 1, f"line {rows + 2}", "duplicate key 'SKU-00000000'", NOTHING_WRITTEN)
    assert snapshot(seeded) == before
    assert 0 < peak < MEMORY_CEILING_BYTES, f"peak RSS {peak / 2**20:.0f} MiB"


def _write_big_csv(path: Path, size: int) -> int:
    prompt = "Studio photo of a handmade ceramic mug with a matte glaze on a white background, item "
    written = rows = 0
    with path.open("w", encoding="utf-8") as out:
        out.write("key,prompt\n")
        while written < size:
            line = f'SKU-{rows:08d},"{prompt}{rows}"\n'
            out.write(line)
            written += len(line)
            rows += 1
        out.write("SKU-00000000,the first key again\n")
    return rows


def _run_measuring_peak_rss(
    args: list[str], env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the CLI and return its peak RSS in bytes (``/usr/bin/time -v``; psutil polling without it)."""
    cmd = [sys.executable, "-m", "nanobatch.cli", *args]
    full_env = {**os.environ, **env}
    if Path("/usr/bin/time").is_file():
        result = subprocess.run(
            ["/usr/bin/time", "-v", *cmd], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=900
        )
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
        assert match, result.stderr[-2000:]
        return result, int(match.group(1)) * 1024
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), peak


# -- the Python API ---------------------------------------------------------------------------------


def test_api_refuses_a_directory_and_a_non_positive_budget(seeded: Stack, tmp_path: Path) -> None:
    rt = seeded.runtime
    options = IntakeOptions(model=FLASH)
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(IntakeError, match="no such file"):
        read_file(folder, rt.catalog, options)
    intake = read_file(write_csv(tmp_path / "ok.csv", "key,prompt", "A,mug"), rt.catalog, options)
    before = snapshot(seeded)
    for budget in (0.0, -1.0):
        with pytest.raises(SubmitError, match="greater than 0"):
            submit(
                rt.db,
                rt.dispatcher,
                intake,
                BatchOptions(name="api", budget_usd=budget),
                intake_options=options,
            )
    assert snapshot(seeded) == before


def test_api_writes_nothing_for_a_file_with_bad_rows_unless_told_to(seeded: Stack, tmp_path: Path) -> None:
    rt = seeded.runtime
    options = IntakeOptions(model=FLASH)
    intake = read_file(
        write_csv(tmp_path / "mixed.csv", "key,prompt", "A,mug", "A,again", "B,cup"), rt.catalog, options
    )
    assert [str(e) for e in intake.errors] == ["line 3: key: duplicate key 'A' (first on line 2)"]
    before = snapshot(seeded)
    report = submit(rt.db, rt.dispatcher, intake, BatchOptions(name="mixed"), intake_options=options)
    assert not report.written and snapshot(seeded) == before
    report = submit(
        rt.db, rt.dispatcher, intake, BatchOptions(name="mixed"), intake_options=options, skip_invalid=True
    )
    assert (report.written, report.new) == (True, 2)


def test_api_refuses_impossible_limits(seeded: Stack) -> None:
    before = snapshot(seeded)
    impossible = (
        lambda: PoolLimits(rpm=0),
        lambda: PoolLimits(rpm=-5),
        lambda: PoolLimits(concurrency=10**12),
    )
    for make in impossible:
        with pytest.raises(ValueError):
            make()
    with pytest.raises(ValueError, match="invalid pool name"):
        seeded.runtime.limiter.set_limits("{x}", PoolLimits(rpm=5))
    assert snapshot(seeded) == before


# -- accepted by design: processed verbatim and harmlessly -------------------------------------------


def test_bom_sql_shell_and_path_like_strings_are_stored_verbatim_and_harmless(
    simulator: Callable[..., RunningSimulator], stack: Callable[..., Stack], tmp_path: Path
) -> None:
    # Given a file saved by Excel (UTF-8 BOM) whose keys and prompts look like SQL, shell and paths
    canary = Path(f"/tmp/nbcanary-{uuid.uuid4().hex}")
    escape = f"../../../../../../tmp/nbescape-{uuid.uuid4().hex}"
    rows = {
        "'; DROP TABLE batches; --": "Robert'); DROP TABLE generation_tasks;-- mug",
        "$(rm -rf /)": f"mug $(touch {canary}) and `touch {canary}`",
        "`id`;|&>x": "cup; rm -rf / # && echo pwned > /etc/passwd",
        escape: "a mug that wants to leave its folder",
        "..": "dot dot",
        "C:\\Windows\\System32\\evil": "backslashes",
        "Tasse-ß-✓-\u202e": "unicode key with a right-to-left override",
    }
    lines = ["key,prompt", *(",".join('"' + v.replace('"', '""') + '"' for v in kv) for kv in rows.items())]
    path = tmp_path / "hostile.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode("utf-8"))
    sim = simulator()
    s = stack(sim)
    s.start_worker(concurrency=2)
    # When it is submitted and processed
    result = s.cli("submit", str(path), "--batch", "hostile")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = s.wait_terminal("hostile")
    # Then every row completed, with key and prompt stored exactly as written (the BOM is not part of
    # the first column name), and the tables the "SQL" names still exist
    assert summary.counts["completed"] == len(rows), summary.counts
    with s.runtime.db.session() as session:
        stored = {
            t.key: t
            for t in session.scalars(select(GenerationTask).join(Batch).where(Batch.name == "hostile"))
        }
        assert session.scalar(select(Batch.id).where(Batch.name == "hostile"))
    assert {k: t.prompt for k, t in stored.items()} == rows
    # and the upstream received the prompts verbatim
    seen = {r["prompt"] for r in sim.requests(limit=100)}
    assert {p[:80] for p in rows.values()} <= seen
    # and every image sits inside the output directory, one per key, nothing was executed or escaped
    root = s.output_dir.resolve()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) == len(rows)
    for task in stored.values():
        assert task.result_uri is not None
        stored_path = Path(task.result_uri.removeprefix("file://")).resolve()
        assert root in stored_path.parents and stored_path.is_file()
    assert not canary.exists()
    assert not list(Path("/tmp").glob(escape.rsplit("/", 1)[-1] + "*"))
