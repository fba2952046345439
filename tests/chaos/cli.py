"""The long chaos run, one command: ``python bench/chaos.py --tasks 1000``.

``--plan no-beat`` (a worker SIGKILLed while the broker is FLUSHDBed, two workers, no replacement)
and ``--plan paused`` (a worker SIGSTOPped mid-call, then SIGCONTed) run the liveness plans of
``pytest -m chaos`` at any size.

Same scenario as ``pytest -m chaos`` (tests/chaos/scenario.py): a batch against a simulator serving
30 % 429s, 5 % 5xx and 1 % timeouts, while three workers are SIGKILLed, Redis is wiped and
PostgreSQL restarted — on private Redis/PostgreSQL servers started here on free loopback ports, so
the shared services of other engineers are never touched. Prints the figures as a table and exits
1 when a guarantee was violated (a task lost or stored twice, a fault not recovered within 2 min).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.scenario import NO_BEAT_PLAN, PAUSED_PLAN, ChaosPlan, run_chaos

PLANS = {"main": ChaosPlan(), "no-beat": NO_BEAT_PLAN, "paused": PAUSED_PLAN}


def main(argv: list[str] | None = None) -> int:
    defaults = ChaosPlan()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plan", choices=sorted(PLANS), default="main", help="which faults (main)")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks in the batch (default 1000)")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="worker processes")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="threads per worker")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="simulator seed")
    parser.add_argument(
        "--redispatch-after",
        type=float,
        default=defaults.redispatch_after,
        help="NANOBATCH_REDISPATCH_AFTER for the workers; 0 = the product default (600 s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (kept on failure)")
    args = parser.parse_args(argv)
    if args.tasks < 20:
        parser.error("--tasks must be at least 20 (faults are injected at 10 %..70 % progress)")
    base = PLANS[args.plan]
    plan = dataclasses.replace(
        base,
        tasks=args.tasks,
        workers=args.workers if args.workers != defaults.workers else base.workers,
        threads=args.threads if args.threads != defaults.threads else base.threads,
        seed=args.seed if args.seed != defaults.seed else base.seed,
        redispatch_after=args.redispatch_after or None,
    )
    workdir = Path(tempfile.mkdtemp(prefix="nbchaos-"))
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)

    report = run_chaos(plan, workdir, log)
    print()
    print(report.table())
    failed = bool(report.problems())
    if args.keep or failed:
        print(f"\nwork directory kept (worker logs, images): {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
