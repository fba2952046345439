"""The long chaos run, one command: ``python bench/chaos.py --tasks 1000`` (``--help`` for the rest).

The scenario lives with the chaos tests (``tests/chaos/scenario.py``, the same one ``pytest -m chaos``
runs at 150 tasks); its command line is ``tests/chaos/cli.py``. This launcher runs it from the
repository root as ``python -m tests.chaos.cli``, so neither needs to edit ``sys.path``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    command = [sys.executable, "-m", "tests.chaos.cli", *sys.argv[1:]]
    sys.exit(subprocess.run(command, cwd=REPO, check=False).returncode)
