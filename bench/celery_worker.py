"""Start a real Celery worker for a benchmark and say when it is ready (a file appears).

    python bench/celery_worker.py --app tasks --ready-file /tmp/x.ready -- worker -P threads -c 8 -Q q

Identical to ``python -m celery -A <app> worker …`` (it calls the app's own ``worker_main``) except
that a ``worker_ready`` handler touches ``--ready-file``, so the benchmark can start its clock when
every worker is consuming rather than guessing with a sleep or parsing logs.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", required=True, help="module holding the Celery app as `app`")
    parser.add_argument("--ready-file", required=True, type=Path)
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv

    from celery.signals import worker_ready

    module = importlib.import_module(args.app)
    app = module.app

    @worker_ready.connect(weak=False)
    def _ready(**_: Any) -> None:
        args.ready_file.write_text("ready\n")

    app.worker_main(argv)


if __name__ == "__main__":
    main()
