"""The distribution installs one import root, ``nanobatch``, with its data files (issue: one package).

Builds the wheel from this checkout (as pip would for ``pip install .``) and reads its file list.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = out.glob("nanobatch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_only_top_level_name_is_nanobatch(wheel_names: list[str]) -> None:
    tops = {name.split("/")[0] for name in wheel_names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"nanobatch"}
    for package in ("models", "tasks", "workers", "cli", "simulator"):
        assert f"nanobatch/{package}/__init__.py" in wheel_names


def test_data_files_travel_with_the_package(wheel_names: list[str]) -> None:
    names = set(wheel_names)
    assert "nanobatch/models/catalog.toml" in names
    assert "nanobatch/workers/limiter/acquire.lua" in names
    assert "nanobatch/cli/sample/products.csv" in names
    assert any(n.startswith("nanobatch/models/migrations/versions/0001") for n in names)
    assert "nanobatch/tasks/celeryapp/definitions.py" in names
