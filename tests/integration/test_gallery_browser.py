"""The HTML report as a real browser renders it: headless Chromium, no network, a screenshot kept.

The screenshot is saved as ``test-artifacts/gallery.png`` (gitignored) so a person can look at the
page a CI run produced. Without Chromium the test skips on a laptop and fails under ``CI=true``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from nanobatch.workers.storage import safe_name
from tests.conftest import IN_CI
from tests.integration.conftest import REPO, write_csv

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
ARTIFACT = REPO / "test-artifacts" / "gallery.png"
HOSTILE_PROMPT = "<script>document.title='pwned'</script> studio photo of a mug"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found:
        return found
    message = "headless Chromium is not installed (apt-get install -y chromium)"
    if IN_CI:
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


def run_chromium(binary: str, profile: Path, page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--window-size=1280,2000",
        *extra,
        page.resolve().as_uri(),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_report_renders_in_a_browser(simulator, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    binary = chromium()
    # Given a finished batch: six images of different shapes, one blocked prompt, one hostile prompt
    s = stack(simulator(block_words=("forbidden",)))
    s.start_worker()
    rows = [
        "MUG-RED,studio photo of a red ceramic mug on white,,1:1",
        "MUG-BLUE,studio photo of a blue enamel mug,,4:3",
        "POSTER-1,minimalist travel poster of a mountain lake at dawn,,2:3",
        "BANNER-1,wide banner of a kitchen shelf with mugs,,21:9",
        "PHONE-1,phone wallpaper of a coffee cup,,9:16",
        f'"<b>XSS-1</b>","{HOSTILE_PROMPT}",,16:9',
        "BAD-1,forbidden product photo,,1:1",
    ]
    s.submit_file(write_csv(tmp_path / "p.csv", "key,prompt,model,aspect_ratio", *rows), "browser")
    summary = s.wait_terminal("browser")
    assert (summary.counts["completed"], summary.counts["failed"]) == (6, 1)
    # When its report is rendered by headless Chromium
    s.cli("report", "browser", check=True)
    page = s.output_dir / safe_name("browser") / "report.html"
    shot = tmp_path / "gallery.png"
    run_chromium(binary, tmp_path / "profile-shot", page, f"--screenshot={shot}")
    dom = run_chromium(binary, tmp_path / "profile-dom", page, "--dump-dom").stdout
    # Then every completed task has a thumbnail that is an embedded image
    assert len(re.findall(r'<img[^>]+src="data:image/jpeg;base64,', dom)) == 6
    assert not re.search(r'<img[^>]+src="(?!data:)', dom)
    # And the hostile prompt and key are shown as text: no script ran, no element was injected
    assert "<title>nanobatch report · browser</title>" in dom and "pwned" not in dom.split("</title>")[0]
    assert "&lt;b&gt;XSS-1&lt;/b&gt;" in dom and "<b>XSS-1</b>" not in dom
    assert "blocked" in dom and "BAD-1" in dom
    # And the screenshot is a real page, not a blank or single-colour one
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 1000, "the screenshot looks blank"
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
