"""Shared plumbing for the benchmarks: private infrastructure, real worker processes, tables, results.

Every benchmark runs inside one :class:`Bench`, which owns everything it creates and removes it on the
way out — also on Ctrl-C or SIGTERM:

- a private PostgreSQL database ``nbbench_<hex>`` per :meth:`Bench.database` (migrated with
  ``models.db.Database(url).upgrade()``, dropped ``WITH (FORCE)`` afterwards);
- a private Redis key prefix and queue per :meth:`Bench.namespace` (every key under the prefix, the
  kombu bindings of its queues and its entries in kombu's shared ``unacked`` hash are deleted);
- real ``celery worker -P threads`` processes per :meth:`Bench.start_worker` (each in its own session,
  so a terminal Ctrl-C reaches only this process; stopped with SIGTERM, then SIGKILL, by pid);
- simulators per :meth:`Bench.simulator` (a thread of this process, stopped afterwards);
- a temporary directory (worker logs, output images), deleted afterwards unless ``--keep``.

Services are loopback only: a non-loopback Redis or PostgreSQL URL is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
#: This folder: worker subprocesses import the benchmark apps (``baseline_app``…) from it.
BENCH_DIR = REPO / "bench"
#: Worker subprocesses import the bench apps (siblings) and *this checkout's* nanobatch: without REPO
#: they would run whatever nanobatch is installed (another checkout's code, measured silently).
SUBPROCESS_PYTHONPATH = os.pathsep.join([str(BENCH_DIR), str(REPO)])

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
REDIS_URL = os.environ.get("NANOBATCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get(
    "NANOBATCH_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

console = Console(width=None if sys.stdout.isatty() else 160)
_LOAD_AT_START = os.getloadavg()


def require_loopback(url: str) -> None:
    host = urlparse(url.replace("+psycopg", "")).hostname or "127.0.0.1"
    if host not in LOOPBACK:
        raise SystemExit(f"benchmarks only talk to loopback services, not {host!r} ({url})")


# -- small helpers ---------------------------------------------------------------------------------


def wait_until(
    probe: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def rate_in_window(stamps: Sequence[float], start: float, end: float) -> float:
    """Events per minute among ``stamps`` (epoch seconds) in ``[start, end)``."""
    if end <= start:
        return 0.0
    return sum(1 for s in stamps if start <= s < end) * 60.0 / (end - start)


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        if abs(value) < 10:
            return f"{value:.3f}"
        return f"{value:,.{digits if abs(value) < 1000 else 0}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str | None = None
) -> str:
    """Print a rich table and return it as plain text (for BENCHMARKS.md)."""
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for index, name in enumerate(columns):
        table.add_column(name, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*[fmt(cell) for cell in row])
    console.print(table)
    plain = Console(width=200, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    plain.print(table)
    return plain.export_text()


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """The facts a reader needs to judge the numbers (no host names, no addresses)."""
    import celery
    import kombu
    import redis
    import sqlalchemy

    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "loadavg_at_start": [round(x, 2) for x in _LOAD_AT_START],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_total_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(REDIS_URL)
        info["redis_server"] = client.info("server")["redis_version"]
        client.close()
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(_dsn(PG_ADMIN_URL), autocommit=True) as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    with contextlib.suppress(Exception):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tasks", "workers", "models", "simulator"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
        info["git_head"] = head
        info["uncommitted_engine_files"] = sorted(line[3:] for line in dirty if line.strip())
    return info


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    document = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        **payload,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    console.print(f"[dim]results written to {path.relative_to(REPO)}[/dim]")
    return path


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(_dsn(PG_ADMIN_URL), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


# -- the private world of one run ------------------------------------------------------------------


@dataclass
class Namespace:
    """A Redis key prefix and the Celery queue(s) living under it."""

    prefix: str
    queue: str

    @property
    def control_queue(self) -> str:
        return f"{self.queue}.control"


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ready_file: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Bench:
    """Owns every resource of one benchmark run; ``with Bench("x", args) as bench:`` cleans up."""

    name: str
    keep: bool = False
    tmp: Path = field(init=False)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _cleanups: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    _workers: list[Worker] = field(default_factory=list)
    _old_handlers: dict[int, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_loopback(REDIS_URL)
        require_loopback(PG_ADMIN_URL)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"nbbench-{self.name}-"))

    # context management -------------------------------------------------------------------------

    def __enter__(self) -> Bench:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        try:
            self.close()
        finally:
            signal.signal(signal.SIGINT, previous)
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)

    def on_close(self, what: str, fn: Callable[[], None]) -> None:
        self._cleanups.append((what, fn))

    def close(self) -> None:
        self.stop_workers()
        while self._cleanups:
            what, fn = self._cleanups.pop()
            try:
                fn()
            except Exception as exc:  # keep cleaning the rest
                console.print(f"[yellow]cleanup of {what} failed: {exc}[/yellow]")
        if self.keep:
            console.print(f"[dim]kept {self.tmp}[/dim]")
        else:
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)

    # PostgreSQL ---------------------------------------------------------------------------------

    def database(self) -> str:
        """A fresh, migrated PostgreSQL database; dropped at close. Returns its SQLAlchemy URL."""
        from nanobatch.models.db import Database

        name = f"nbbench_{uuid.uuid4().hex[:12]}"
        _admin(f'CREATE DATABASE "{name}"')
        self.on_close(f"database {name}", lambda: _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        db = Database(url)
        try:
            db.upgrade()
        finally:
            db.dispose()
        return url

    # Redis --------------------------------------------------------------------------------------

    def redis(self) -> Any:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        self.on_close("redis client", client.close)
        return client

    def namespace(self, label: str = "") -> Namespace:
        """A unique Redis prefix and queue; every key of it is deleted at close."""
        prefix = f"nbbench:{self.name}:{self.run_id}{':' + label if label else ''}:{uuid.uuid4().hex[:6]}"
        ns = Namespace(prefix=prefix, queue=f"{prefix}:q")
        self.on_close(f"redis keys {prefix}", lambda: delete_namespace(ns))
        return ns

    # Simulator ----------------------------------------------------------------------------------

    def simulator(self, **config: Any) -> Any:
        from nanobatch.simulator.config import SimulatorConfig
        from nanobatch.simulator.server import start_simulator

        sim = start_simulator(SimulatorConfig(**config), host="127.0.0.1", port=0)
        self.on_close(f"simulator {sim.url}", sim.stop)
        return sim

    # Workers ------------------------------------------------------------------------------------

    def start_worker(
        self,
        *,
        app: str,
        queues: Sequence[str],
        concurrency: int,
        env: dict[str, str],
        label: str,
        beat: bool = False,
        loglevel: str = "warning",
    ) -> Worker:
        """One real ``celery worker -P threads`` process (via bench/celery_worker.py for readiness)."""
        number = len(self._workers)
        name = f"{label}{number}-{self.run_id}"
        ready = self.tmp / f"{name}.ready"
        log = self.tmp / f"{name}.log"
        cmd = [
            sys.executable,
            str(REPO / "bench" / "celery_worker.py"),
            "--app",
            app,
            "--ready-file",
            str(ready),
            "--",
            "worker",
            "-P",
            "threads",
            "-c",
            str(concurrency),
            "-Q",
            ",".join(queues),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            loglevel,
            "-n",
            f"{name}@%h",
        ]
        if beat:
            cmd += ["-B", "-s", str(self.tmp / f"{name}-beat-schedule")]
        clean_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NANOBATCH_", "BENCH_")) and k not in {"GEMINI_API_KEY"}
        }
        full_env = {**clean_env, "PYTHONPATH": SUBPROCESS_PYTHONPATH, "PYTHONUNBUFFERED": "1", **env}
        handle = log.open("wb")
        proc = subprocess.Popen(
            cmd, cwd=self.tmp, env=full_env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()
        worker = Worker(name, proc, log, ready)
        self._workers.append(worker)
        return worker

    def wait_ready(self, workers: Sequence[Worker], timeout: float = 60.0) -> None:
        def all_ready() -> bool:
            for w in workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"worker {w.name} exited with {w.proc.returncode}:\n{tail(w.log)}")
            return all(w.ready_file.exists() for w in workers)

        wait_until(all_ready, timeout=timeout, interval=0.1, what="workers to be ready")

    def stop_workers(self, workers: Sequence[Worker] | None = None) -> None:
        targets = list(workers if workers is not None else self._workers)
        for w in targets:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)
        for w in targets:
            try:
                w.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGKILL)  # the session this process leads: ours
                w.proc.wait()
            if w in self._workers:
                self._workers.remove(w)

    # Subprocesses that are not workers -----------------------------------------------------------

    def run_process(
        self, cmd: Sequence[str], *, timeout: float, log_name: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        log = self.tmp / log_name
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                list(cmd),
                cwd=self.tmp,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": SUBPROCESS_PYTHONPATH, **(env or {})},
                start_new_session=True,
            )
            try:
                proc.wait(timeout=timeout)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[1] if len(cmd) > 1 else cmd[0]} exited {proc.returncode}:\n{tail(log)}")
        return subprocess.CompletedProcess(list(cmd), proc.returncode)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def delete_namespace(ns: Namespace) -> None:
    """Delete every key of ``ns`` plus kombu's traces of its queues (bindings, unacked entries)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=_glob_escape(ns.prefix) + "*", count=1000))
        for queue in (ns.queue, ns.control_queue):
            for kind in ("_kombu.binding.", "_kombu.binding_permanent."):
                keys += list(client.scan_iter(match=kind + _glob_escape(queue) + "*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        # kombu keeps delivered-but-unacked messages of every queue in one shared hash: drop ours.
        ours = []
        for tag, raw in client.hscan_iter("unacked", count=1000):
            with contextlib.suppress(Exception):
                _message, _exchange, routing_key = json.loads(raw)
                if str(routing_key).startswith(ns.prefix):
                    ours.append(tag)
        if ours:
            client.hdel("unacked", *ours)
            client.zrem("unacked_index", *ours)
        # Worker mailboxes (remote control) are named after the node; ours carry the prefix's run id.
        run_id = ns.prefix.split(":")[2]
        for key in (b"_kombu.binding.celery.pidbox",):
            for member in client.smembers(key):
                if run_id.encode() in member:
                    client.srem(key, member)
    finally:
        client.close()


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


# -- nanobatch specifics ---------------------------------------------------------------------------


def nanobatch_env(db_url: str, ns: Namespace, sim_url: str, output_dir: Path, **extra: Any) -> dict[str, str]:
    env = {
        "NANOBATCH_DATABASE_URL": db_url,
        "NANOBATCH_REDIS_URL": REDIS_URL,
        "NANOBATCH_LIMITER_PREFIX": ns.prefix,
        "NANOBATCH_QUEUE": ns.queue,
        "NANOBATCH_OUTPUT_DIR": str(output_dir),
        "NANOBATCH_PROVIDER_BASE_URL": sim_url,
        # benchmarks may serve thumbnails (same aspect, smaller): hold answers to the ratio only
        "NANOBATCH_IMAGE_SIZE_CHECK": "aspect",
    }
    env.update({f"NANOBATCH_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def nanobatch_runtime(bench: Bench, env: dict[str, str]) -> Any:
    """A producer-side runtime (this process) on the same settings the workers get."""
    from nanobatch.cli.context import runtime_for
    from nanobatch.tasks.settings import Settings

    settings = Settings(**{k.removeprefix("NANOBATCH_").lower(): v for k, v in env.items()})
    runtime = runtime_for(settings)
    bench.on_close("runtime", runtime.close)
    return runtime


def write_products_csv(
    path: Path,
    rows: int,
    *,
    model: str | None = None,
    image_size: str | None = None,
    aspect_ratio: str | None = None,
    seed: int = 7,
) -> Path:
    """A product export like a shop's: key, title, colour, material, prompt (+ optional model columns)."""
    import csv
    import random

    rnd = random.Random(seed)
    colours = ["red", "navy", "olive", "sand", "black", "white", "teal", "coral"]
    materials = ["cotton", "linen", "wool", "leather", "canvas", "denim"]
    kinds = ["shirt", "tote bag", "jacket", "scarf", "sneaker", "cap", "backpack"]
    header = ["key", "title", "colour", "material", "prompt"]
    extra = [
        (name, value)
        for name, value in (("model", model), ("image_size", image_size), ("aspect_ratio", aspect_ratio))
        if value
    ]
    header += [name for name, _ in extra]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in range(rows):
            colour, material, kind = rnd.choice(colours), rnd.choice(materials), rnd.choice(kinds)
            title = f"{colour.title()} {material} {kind} #{i}"
            prompt = (
                f"Studio product photo of a {colour} {material} {kind}, soft light, white background, "
                f"catalogue style, item {i}"
            )
            writer.writerow([f"SKU-{i:07d}", title, colour, material, prompt, *[v for _, v in extra]])
    return path


def submit_csv(
    runtime: Any,
    path: Path,
    batch: str,
    *,
    model: str = "gemini-2.5-flash-image",
    image_size: str | None = None,
    aspect_ratio: str = "1:1",
) -> Any:
    from nanobatch.tasks.intake import IntakeOptions, read_file
    from nanobatch.tasks.producer import BatchOptions, submit

    # The bench model (gemini-2.5-flash-image) is past its shutdown date; the simulator still serves it,
    # and keeping it keeps new runs comparable with the results in BENCHMARKS.md.
    options = IntakeOptions(
        model=model, image_size=image_size, aspect_ratio=aspect_ratio, allow_retired_model=True
    )
    intake = read_file(path, runtime.catalog, options)
    if intake.errors:
        raise RuntimeError(f"{len(intake.errors)} invalid rows, first: {intake.errors[0]}")
    return submit(runtime.db, runtime.dispatcher, intake, BatchOptions(name=batch), intake_options=options)


def status_counts(engine: Any) -> dict[str, int]:
    from sqlalchemy import text

    with engine.connect() as conn:
        return {
            s: int(n)
            for s, n in conn.execute(text("SELECT status, count(*) FROM generation_tasks GROUP BY status"))
        }


def finished_times(engine: Any, status: str = "completed") -> list[float]:
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT finished_at FROM generation_tasks WHERE status = :s AND finished_at IS NOT NULL"),
            {"s": status},
        )
        return sorted(_epoch(r[0]) for r in rows)


def _epoch(value: Any) -> float:
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


def set_pool_limits(redis_client: Any, prefix: str, pool: str, **limits: int) -> None:
    from nanobatch.workers.limiter import PoolLimits, RateLimiter

    RateLimiter(redis_client, prefix=prefix).set_limits(pool, PoolLimits(**limits))


@contextlib.contextmanager
def phase(label: str) -> Iterator[None]:
    console.print(f"[bold cyan]»[/bold cyan] {label}")
    started = time.monotonic()
    yield
    console.print(f"  [dim]{label}: {time.monotonic() - started:.1f}s[/dim]")


def peak_rss_tree(pid: int) -> int:
    """Resident set size (bytes) of ``pid`` and its children, now."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def vm_hwm(pid: int) -> int | None:
    """The kernel's peak RSS (VmHWM) of one process, bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
