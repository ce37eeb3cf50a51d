"""`python -m tests.chaos`: every fault at 10%, 50% and 90% of a drain, then the table.

Exit status 1 when any row is not exact. `--fault` picks faults by a part of their name.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tests.chaos.drills import BASELINE, FAULTS, FULL, POINTS, REDUCED, Row, run_drill, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        help="a part of a fault's name (repeatable); default: all of them. Faults: "
        + ", ".join(FAULTS)
        + ", none (the baseline)",
    )
    parser.add_argument(
        "--point",
        action="append",
        type=float,
        default=[],
        help="where in the drain to fire, 0..1 (repeatable); default 0.1 0.5 0.9",
    )
    parser.add_argument("--reduced", action="store_true", help="the smaller drain the test suite uses")
    parser.add_argument("--dir", type=Path, help="keep every drill's services, logs and data here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    faults = (
        [BASELINE]
        if args.fault == ["none"]
        else [f for name, f in FAULTS.items() if not args.fault or any(p.lower() in name.lower() for p in args.fault)]
    )
    if not faults:
        parser.error(f"no fault matches {args.fault}")
    points = args.point or list(POINTS)
    size = REDUCED if args.reduced else FULL
    base = args.dir or Path(tempfile.mkdtemp(prefix="chaos-"))
    rows: list[Row] = []
    t0 = time.monotonic()
    for fault in faults:
        for point in points:
            root = base / f"{re.sub(r'[^a-z0-9]+', '-', fault.name.lower()).strip('-')}-{int(point * 100)}"
            print(f"== {fault.name} at {point:.0%} ({root})", flush=True)
            started = time.monotonic()
            try:
                row = run_drill(fault, point, size, root)
            except Exception as exc:  # a drill that could not run is a row too
                traceback.print_exc()
                row = Row(fault.name, point, notes=[f"drill failed: {type(exc).__name__}: {exc}"])
            rows.append(row)
            print(table([row]), flush=True)
            print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
            if args.dir is None:
                shutil.rmtree(root, ignore_errors=True)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nfault table ({size.datums} datums over {size.nodes} nodes, drained in {size.drain_s:.0f} s; "
        f"{time.monotonic() - t0:.0f} s in all; load average now {load}):\n"
    )
    print(table(rows))
    return 0 if all(r.exact for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
