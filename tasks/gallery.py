"""``nanobatch report``: one self-contained HTML page that shows what a batch produced and what failed.

Self-contained means it can be mailed, attached to a ticket or opened from a USB stick: thumbnails
are small JPEG data URIs, the styles are inline, there is no script and no external URL, and a
Content-Security-Policy allows nothing else (so even a mistake in escaping could not load or run
anything). Keys, prompts and error messages come from customers' files and from the upstream, so
every one of them is HTML-escaped. Big batches show the first ``max_images`` completed images (the
page says so), which keeps the file to a few megabytes.

Images are read through the image store (docs/storage.md), so the page can be made on any host:
``embed`` (default) reads each image from the store and embeds its thumbnail; ``signed`` embeds
nothing and links each tile to a time-limited signed URL of the full image instead (a small page,
but it needs the store to be reachable from where it is opened, until the links expire); the CSP
then allows images from the store's origin only.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

from PIL import Image
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from nanobatch.models.base import utcnow
from nanobatch.models.queries import BatchSummary, batch_summaries
from nanobatch.models.status import TaskStatus
from nanobatch.models.tables import Batch, GenerationTask
from nanobatch.tasks.estimate import human_duration
from nanobatch.tasks.export import atomic_text_file, reason_counts
from nanobatch.workers.storage import local_path, safe_name
from nanobatch.workers.store import StorageError, Store

MAX_IMAGES = 1000
THUMB_PX = 256
THUMB_QUALITY = 78
THUMB_THREADS = 4  # decoding a 4K PNG takes ~70 MB; a few at a time keeps memory modest
MAX_SOURCE_BYTES = 64 << 20  # an image read for its thumbnail (a 4K PNG is ~30 MB)
FAILURES_LISTED = 200  # per reason
PROMPT_SHOWN = 140
STATUS_ORDER = ("completed", "failed", "processing", "pending", "cancelled")
#: Nothing may load or run: images only from data URIs, styles only inline, no scripts at all.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class Tile:
    """One completed image in the grid; ``thumbnail`` is a data URI, ``None`` if the file is unreadable."""

    key: str
    status: str
    prompt: str
    cost_usd: float | None
    width: int | None
    height: int | None
    path: str | None
    thumbnail: str | None = None


@dataclass(frozen=True)
class FailureGroup:
    code: str
    count: int
    items: list[tuple[str, str]]  # (key, message), at most FAILURES_LISTED


@dataclass(frozen=True)
class ReportData:
    summary: BatchSummary
    started_at: datetime | None
    finished_at: datetime | None
    tiles: list[Tile]
    failures: list[FailureGroup]
    generated_at: datetime
    source: str | None = None  # the submitted file's name
    model: str | None = None  # the batch's default model

    @property
    def capped(self) -> bool:
        return len(self.tiles) < self.summary.counts[TaskStatus.COMPLETED]


# --- Reading the batch -------------------------------------------------------------------------


def default_report_path(output_dir: Path | Store | str, batch: str) -> Path:
    """``<output_dir>/<batch>/report.html``: next to the images, in the batch's own folder; with an
    object store, ``<batch>-report.html`` in the current directory."""
    if isinstance(output_dir, Path):
        return output_dir / safe_name(batch) / "report.html"
    if isinstance(output_dir, str):
        from nanobatch.workers.store import open_store

        output_dir = open_store(output_dir)
    if output_dir.is_local:
        return Path(output_dir.location) / safe_name(batch) / "report.html"
    return Path(f"{safe_name(batch)}-report.html")


def collect(session: Session, batch: Batch, *, max_images: int = MAX_IMAGES) -> ReportData:
    """Everything the page shows except the thumbnails (see :func:`with_thumbnails`)."""
    started, finished = session.execute(
        select(func.min(GenerationTask.started_at), func.max(GenerationTask.finished_at)).where(
            GenerationTask.batch_id == batch.id
        )
    ).one()
    return ReportData(
        summary=batch_summaries(session, batch.name)[0],
        started_at=started,
        finished_at=finished,
        tiles=_tiles(session, batch.id, max_images),
        failures=_failures(session, batch.id),
        generated_at=utcnow(),
        source=Path(batch.source).name if batch.source else None,
        model=batch.model,
    )


def _tiles(session: Session, batch_id: str, limit: int) -> list[Tile]:
    rows = session.execute(
        select(
            GenerationTask.key,
            GenerationTask.status,
            GenerationTask.prompt,
            GenerationTask.cost_usd,
            GenerationTask.width,
            GenerationTask.height,
            GenerationTask.result_uri,
        )
        .where(GenerationTask.batch_id == batch_id, GenerationTask.status == TaskStatus.COMPLETED.value)
        .order_by(GenerationTask.key)
        .limit(limit)
    )
    return [
        Tile(r.key, r.status, r.prompt, r.cost_usd, r.width, r.height, local_path(r.result_uri)) for r in rows
    ]


def _failures(session: Session, batch_id: str) -> list[FailureGroup]:
    groups = []
    failed = and_(GenerationTask.batch_id == batch_id, GenerationTask.status == TaskStatus.FAILED.value)
    for code, count in reason_counts(session, batch_id).items():
        column = GenerationTask.error_code
        rows = session.execute(
            select(GenerationTask.key, GenerationTask.error_message)
            .where(failed, column.is_(None) if code == "unknown" else column == code)
            .order_by(GenerationTask.key)
            .limit(FAILURES_LISTED)
        )
        groups.append(FailureGroup(code, count, [(key, message or "") for key, message in rows]))
    return groups


# --- Thumbnails ---------------------------------------------------------------------------------


def thumbnail_data_uri(path: str | Path | bytes | None, max_px: int = THUMB_PX) -> str | None:
    """A JPEG data URI of the image (a file or its bytes) scaled to fit ``max_px`` square; ``None``
    if it cannot be read."""
    if not path:
        return None
    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as image:
            image.draft("RGB", (max_px, max_px))  # JPEG sources decode at a reduced scale: much faster
            image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            _on_white(image).save(buffer, "JPEG", quality=THUMB_QUALITY, optimize=True)
    except Exception:  # Pillow raises many unrelated types for missing or damaged files
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _on_white(image: Image.Image) -> Image.Image:
    """JPEG has no alpha: flatten transparent images onto white instead of black."""
    if image.mode in {"RGBA", "LA", "P"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def stored_thumbnail(store: Store | None, where: str | None) -> str | None:
    """The thumbnail of a result read through the store (a local path when it is not in it)."""
    key = store.key_of(where) if store is not None and where else None
    if store is None or key is None:
        return thumbnail_data_uri(None if where and "://" in where else where)
    try:
        return thumbnail_data_uri(store.read(key, MAX_SOURCE_BYTES))
    except (OSError, StorageError):
        return None


def signed_link(store: Store, where: str | None, seconds: int) -> str | None:
    key = store.key_of(where) if where else None
    if key is None:
        return None
    try:
        return store.sign(key, seconds) if store.size(key) is not None else None
    except (OSError, StorageError):
        return None


def with_thumbnails(
    data: ReportData,
    threads: int = THUMB_THREADS,
    *,
    store: Store | None = None,
    signed_seconds: int | None = None,
) -> ReportData:
    """The same report with every tile's thumbnail made (in a few threads: Pillow decodes without the GIL),
    or with ``signed_seconds``, every tile linked to a signed URL of its image."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        if store is not None and signed_seconds:
            thumbs = list(pool.map(lambda t: signed_link(store, t.path, signed_seconds), data.tiles))
        else:
            thumbs = list(pool.map(lambda t: stored_thumbnail(store, t.path), data.tiles))
    tiles = [dataclasses.replace(tile, thumbnail=t) for tile, t in zip(data.tiles, thumbs, strict=True)]
    return dataclasses.replace(data, tiles=tiles)


def write_report(data: ReportData, path: Path) -> int:
    """Render and write atomically (a reader never sees half a page); returns the file size."""
    content = render_html(data)
    with atomic_text_file(path) as handle:
        handle.write(content)
    return len(content.encode("utf-8"))


# --- Rendering ----------------------------------------------------------------------------------


def esc(value: object) -> str:
    """HTML-escape anything for text *and* attribute positions (quotes included)."""
    return html.escape(str(value), quote=True)


def shorten(text: str, limit: int = PROMPT_SHOWN) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.3f}"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def render_html(data: ReportData) -> str:
    """The whole page as a string; pure (no I/O), so it is unit-tested directly."""
    s = data.summary
    return PAGE.substitute(
        csp=csp_for(data),  # single quotes only, inside a double-quoted attribute
        title=esc(f"nanobatch report · {s.name}"),
        batch=esc(s.name),
        batch_status=esc(s.status),
        subtitle=esc(" · ".join(_subtitle(data))),
        cards=_cards(data),
        span=_span_line(data),
        bar=_status_bar(s.counts, s.total),
        images=_images_section(data),
        failures=_failures_section(data.failures, s.counts[TaskStatus.FAILED]),
    )


def csp_for(data: ReportData) -> str:
    """:data:`CSP`, plus the origins of signed image links (only those: still no scripts)."""
    origins = sorted(
        {
            f"{parts.scheme}://{parts.netloc}"
            for tile in data.tiles
            if tile.thumbnail and not tile.thumbnail.startswith("data:")
            for parts in [urlsplit(tile.thumbnail)]
            if parts.scheme in {"https", "http"} and parts.netloc and "'" not in parts.netloc
        }
    )
    return CSP.replace("img-src data:", " ".join(["img-src data:", *origins])) if origins else CSP


def _subtitle(data: ReportData) -> list[str]:
    parts = ["nanobatch report"]
    if data.source:
        parts.append(f"source {data.source}")
    if data.model:
        parts.append(f"model {data.model}")
    return [*parts, f"generated {_when(data.generated_at)}"]


def _cards(data: ReportData) -> str:
    s = data.summary
    span = "—"
    if data.started_at and data.finished_at:
        span = human_duration((data.finished_at - data.started_at).total_seconds())
    cards = [("Tasks", f"{s.total:,}", "")]
    cards += [(name.capitalize(), f"{s.counts[name]:,}", name) for name in STATUS_ORDER]
    cards += [("Cost", money(s.cost_usd), ""), ("Time span", span, "")]
    return "".join(
        f'<div class="card {esc(kind)}"><div class="label">{esc(label)}</div>'
        f'<div class="value">{esc(value)}</div></div>'
        for label, value, kind in cards
    )


def _span_line(data: ReportData) -> str:
    budget = f" · budget {money(data.summary.budget_usd)}" if data.summary.budget_usd is not None else ""
    line = f"First start {_when(data.started_at)} · last finish {_when(data.finished_at)}{budget}"
    return f'<p class="span">{esc(line)}</p>'


def _status_bar(counts: dict[str, int], total: int) -> str:
    if not total:
        return '<div class="bar empty"></div>'
    segments = "".join(
        f'<span class="seg {name}" style="width:{counts[name] / total * 100:.3f}%" '
        f'title="{name}: {counts[name]:,}"></span>'
        for name in STATUS_ORDER
        if counts[name]
    )
    return f'<div class="bar">{segments}</div>'


def _images_section(data: ReportData) -> str:
    completed = data.summary.counts[TaskStatus.COMPLETED]
    if not data.tiles:
        return '<p class="muted">No completed images yet.</p>'
    note = (
        f'<p class="note">Showing the first {len(data.tiles):,} of {completed:,} completed images (by key). '
        "Use <code>nanobatch export</code> for the full list.</p>"
        if data.capped
        else f'<p class="muted">{completed:,} completed image{"s" if completed != 1 else ""}, by key.</p>'
    )
    return note + '<div class="grid">' + "".join(_tile(tile) for tile in data.tiles) + "</div>"


def _tile(tile: Tile) -> str:
    if tile.thumbnail:
        picture = f'<img src="{esc(tile.thumbnail)}" alt="{esc(tile.key)}" decoding="async">'
    else:
        picture = '<div class="missing">image file missing</div>'
    dims = f"{tile.width}\u00d7{tile.height}" if tile.width and tile.height else "—"
    return (
        '<figure class="tile">'
        f'<div class="thumb">{picture}</div>'
        "<figcaption>"
        f'<div class="row"><span class="key" title="{esc(tile.key)}">{esc(tile.key)}</span>'
        f'<span class="badge {esc(tile.status)}">{esc(tile.status)}</span></div>'
        f'<p class="prompt" title="{esc(tile.prompt)}">{esc(shorten(tile.prompt))}</p>'
        f'<div class="meta"><span>{esc(dims)}</span><span>{esc(money(tile.cost_usd))}</span></div>'
        f"{_full_prompt(tile.prompt)}"
        "</figcaption></figure>"
    )


def _full_prompt(prompt: str) -> str:
    """Long prompts: the full text in a native disclosure widget (the title is hard to read or copy)."""
    if len(prompt) <= PROMPT_SHOWN:
        return ""
    return f"<details><summary>Full prompt</summary><p>{esc(prompt)}</p></details>"


def _failures_section(groups: Sequence[FailureGroup], failed: int) -> str:
    if not groups:
        return ""
    blocks = []
    for group in groups:
        rows = "".join(f'<tr><td class="key">{esc(k)}</td><td>{esc(m)}</td></tr>' for k, m in group.items)
        more = group.count - len(group.items)
        tail = f'<p class="muted">… and {more:,} more.</p>' if more > 0 else ""
        blocks.append(
            f'<details class="reason" open><summary><span class="code">{esc(group.code)}</span>'
            f'<span class="count">{group.count:,}</span></summary>'
            f"<table><thead><tr><th>Key</th><th>Message</th></tr></thead><tbody>{rows}</tbody></table>{tail}"
            "</details>"
        )
    return f'<section><h2>Failed <span class="count">{failed:,}</span></h2>{"".join(blocks)}</section>'


PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="$csp">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
:root { --ink:#0f172a; --muted:#64748b; --line:#e2e8f0; --bg:#f8fafc;
  --completed:#16a34a; --completed-bg:#dcfce7; --failed:#dc2626; --failed-bg:#fee2e2;
  --pending:#64748b; --pending-bg:#f1f5f9; --processing:#2563eb; --processing-bg:#dbeafe;
  --cancelled:#d97706; --cancelled-bg:#fef3c7; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: #0f172a; color: #f8fafc; padding: 28px 40px 24px; }
header h1 { margin: 0; font-size: 24px; font-weight: 650; letter-spacing: -0.01em; }
header .sub { margin-top: 6px; color: #94a3b8; font-size: 13px; }
header .state { display: inline-block; margin-left: 10px; padding: 2px 10px; border-radius: 999px;
  background: #1e293b; color: #e2e8f0; font-size: 12px; font-weight: 600; vertical-align: middle;
  text-transform: uppercase; letter-spacing: 0.04em; }
main { max-width: 1400px; margin: 0 auto; padding: 24px 40px 48px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(120px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px;
  border-top: 3px solid #cbd5e1; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: 0.05em; }
.card .value { font-size: 22px; font-weight: 650; margin-top: 2px; font-variant-numeric: tabular-nums; }
.card.completed { border-top-color: var(--completed); } .card.failed { border-top-color: var(--failed); }
.card.pending { border-top-color: var(--pending); } .card.processing { border-top-color: var(--processing); }
.card.cancelled { border-top-color: var(--cancelled); }
.span { color: var(--muted); margin: 10px 0 0; font-size: 13px; }
.bar { display: flex; height: 10px; border-radius: 999px; overflow: hidden; background: var(--line);
  margin: 16px 0 8px; }
.bar .seg { display: block; height: 100%; }
.seg.completed { background: var(--completed); } .seg.failed { background: var(--failed); }
.seg.pending { background: #94a3b8; } .seg.processing { background: var(--processing); }
.seg.cancelled { background: var(--cancelled); }
h2 { font-size: 18px; margin: 32px 0 12px; }
h2 .count, summary .count { display: inline-block; margin-left: 8px; padding: 1px 9px; border-radius: 999px;
  background: var(--failed-bg); color: var(--failed); font-size: 13px; font-weight: 650; }
.muted, .note { color: var(--muted); margin: 0 0 14px; }
.note { background: #fffbeb; border: 1px solid #fde68a; color: #92400e; padding: 8px 12px;
  border-radius: 8px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 16px; }
.tile { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 12px; overflow: hidden;
  box-shadow: 0 1px 2px rgba(15, 23, 42, 0.04); display: flex; flex-direction: column; }
.thumb { aspect-ratio: 1 / 1; background: #f1f5f9; display: flex; align-items: center;
  justify-content: center; border-bottom: 1px solid var(--line); overflow: hidden; padding: 8px; }
.thumb img { width: 100%; height: 100%; object-fit: contain; display: block; }
.missing { color: var(--muted); font-size: 12px; }
figcaption { padding: 10px 12px 12px; display: flex; flex-direction: column; gap: 6px; min-width: 0; }
.row { display: flex; align-items: center; gap: 8px; justify-content: space-between; min-width: 0; }
.key { font: 600 13px/1.3 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  overflow: hidden; text-overflow: ellipsis; white-space: nowrap; min-width: 0; }
.badge { flex: none; font-size: 11px; font-weight: 650; padding: 1px 8px; border-radius: 999px;
  text-transform: uppercase; letter-spacing: 0.04em; }
.badge.completed { background: var(--completed-bg); color: var(--completed); }
.badge.failed { background: var(--failed-bg); color: var(--failed); }
.badge.pending { background: var(--pending-bg); color: var(--pending); }
.badge.processing { background: var(--processing-bg); color: var(--processing); }
.badge.cancelled { background: var(--cancelled-bg); color: var(--cancelled); }
.prompt { margin: 0; color: #334155; font-size: 13px; display: -webkit-box; -webkit-line-clamp: 3;
  -webkit-box-orient: vertical; overflow: hidden; overflow-wrap: anywhere; }
.meta { display: flex; justify-content: space-between; color: var(--muted); font-size: 12px;
  font-variant-numeric: tabular-nums; }
figcaption details { font-size: 12px; color: var(--muted); }
figcaption details p { margin: 6px 0 0; color: #334155; overflow-wrap: anywhere; }
.reason { background: #fff; border: 1px solid var(--line); border-left: 4px solid var(--failed);
  border-radius: 10px; padding: 10px 14px; margin-bottom: 12px; }
.reason summary { cursor: pointer; font-weight: 650; }
.reason .code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
table { width: 100%; border-collapse: collapse; margin-top: 10px; font-size: 13px; }
th { text-align: left; color: var(--muted); font-weight: 600; border-bottom: 1px solid var(--line);
  padding: 6px 8px; }
td { border-bottom: 1px solid #f1f5f9; padding: 6px 8px; vertical-align: top; overflow-wrap: anywhere; }
td.key { width: 22%; white-space: normal; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 0 0 32px; }
</style>
</head>
<body>
<header>
<h1>$batch<span class="state">$batch_status</span></h1>
<div class="sub">$subtitle</div>
</header>
<main>
<section class="cards">$cards</section>
$span
$bar
<section><h2>Images</h2>$images</section>
$failures
</main>
<footer>Self-contained report: thumbnails are embedded; full-size files stay in the output folder.</footer>
</body>
</html>
""")
