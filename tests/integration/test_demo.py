"""The README's first command, ``nanobatch demo``, on the embedded default (no server, no API key).

It runs as a user would run it: a fresh process in an empty folder, with no ``NANOBATCH_*`` setting
and no API key in its environment, so it must bring up its own simulator, SQLite file and
in-process broker, and finish with every image published under its key's name.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from nanobatch.workers.storage import STAGING_DIR, local_path
from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration

SAMPLE_ROWS = 20  # cli/sample/products.csv


def test_the_demo_runs_end_to_end_on_the_embedded_default(tmp_path: Path) -> None:
    # Given a shell with no nanobatch settings and no key, in an empty folder
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NANOBATCH_") and k not in {"GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY"}
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    # When the demo runs
    result = subprocess.run(
        [sys.executable, "-m", "nanobatch.cli", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    # Then it ends well and says where the images are
    assert result.returncode == 0, output
    assert "Traceback" not in output, output
    assert f": {SAMPLE_ROWS} tasks" in output, output
    assert "images: " in output, output
    # And every task's row names a published image whose bytes and size it records
    [database] = list(tmp_path.rglob("*.db"))
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT status, result_uri, result_sha256, width, height FROM generation_tasks"
        ).fetchall()
    assert len(rows) == SAMPLE_ROWS
    assert {status for status, *_ in rows} == {"completed"}
    # (the folder from the rows, not from the printed line, which a narrow console may fold)
    folders = {Path(local_path(uri) or "").parent for _, uri, *_ in rows}
    assert len(folders) == 1, folders
    [folder] = folders
    assert folder.is_relative_to(tmp_path), folder  # everything stays in the folder it ran in
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in {".png", ".jpg", ".jpeg"})
    assert len(images) == SAMPLE_ROWS, sorted(folder.iterdir())
    by_digest = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in images}
    for _, uri, digest, width, height in rows:
        assert STAGING_DIR not in uri, uri
        path = by_digest[digest]
        assert uri.endswith(path.name)
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
            assert image.size == (width, height)
    assert not [p for p in folder.rglob("*") if p.is_file() and STAGING_DIR in p.parts]
