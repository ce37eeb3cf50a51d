"""Line-protocol throughput on realistic oTherm uploads: prints figures, asserts nothing.

    .venv/bin/python benchmarks/bench_line_protocol.py [--lines N] [--slow-lines M]

Generates N lines in memory the way oTherm's writer does (`otherm-data,equipment=<uuid>
field=value,... <epoch seconds>`, NaN written as -999) and times, on one core:
fast-path parse, parse + map to datums, and the full (reference-transcription) parser.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections.abc import Callable
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors.line_protocol import LineError, parse_lines  # noqa: E402
from processors.lp_mapping import LineProtocolMapping, map_batch  # noqa: E402

# oTherm's field dictionary (gshp-analysis db_tools/influx_lp_writer.py).
FIELDS = (
    "heatpump_power", "heatpump_aux", "source_supplytemp", "source_returntemp",
    "source_tempdiff", "sourcefluid_flowrate", "sourcefluid_pump_power", "load_pumpsfans",
    "load_supplytemp", "load_returntemp", "load_tempdiff", "tstat_set", "tstat_temp",
    "compressor_stage", "outdoor_temperature", "heat_flow_rate", "loadside_heat",
    "sourceside_heat",
)


def otherm_lines(n: int, seed: int = 7, equipment: int = 50) -> list[bytes]:
    """n lines as a binary file would yield them: bytes with a trailing newline."""
    rnd = random.Random(seed)
    uuids = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(equipment)]
    start = 1_577_836_800  # 2020-01-01, epoch seconds like oTherm's writer
    out: list[bytes] = []
    for i in range(n):
        values = []
        for name in FIELDS:
            if rnd.random() < 0.04:
                values.append(f"{name}=-999")  # the writer's NaN
            elif name == "compressor_stage":
                values.append(f"{name}={rnd.randint(0, 2)}")
            else:
                values.append(f"{name}={round(rnd.uniform(-20.0, 4000.0), rnd.randint(1, 4))}")
        line = f"otherm-data,equipment={uuids[i % equipment]} {','.join(values)} {start + 60 * i}\n"
        out.append(line.encode())
    return out


def timed(label: str, n: int, run: Callable[[], int]) -> float:
    # CPU time of this process: what one core delivers, even on a busy shared machine.
    t0 = time.process_time()
    produced = run()
    dt = time.process_time() - t0
    rate = n / dt
    print(f"{label:<28} {n:>10,} lines {dt:8.2f} s {rate:>12,.0f} lines/s  ({produced:,} out)")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000, help="lines to generate (1,000,000)")
    ap.add_argument(
        "--slow-lines",
        type=int,
        default=None,
        help="lines for the full parser (default: the same lines, all of them)",
    )
    args = ap.parse_args()
    lines = otherm_lines(args.lines)
    slow = lines if args.slow_lines is None else lines[: args.slow_lines]
    avg = sum(map(len, lines)) / len(lines)
    print(f"python {sys.version.split()[0]}; {len(lines):,} oTherm lines, {avg:.0f} bytes each")
    # A yardstick for comparing machines: the per-field floor of any Python parser.
    reps = 200_000
    t0 = time.process_time()
    for _ in range(reps):
        float("4298.332")
    print(f"calibration: float('4298.332') takes {(time.process_time() - t0) / reps * 1e9:.0f} ns")
    print(lines[0].decode().rstrip())
    mapping = LineProtocolMapping(node_id=1)

    def fast() -> int:
        return sum(1 for r in parse_lines(lines, "s") if not isinstance(r, LineError))

    def fast_map() -> int:
        # Batches of 10,000 as an ingest would hand them on; holding a million datums at once
        # would mostly measure the garbage collector.
        points = parse_lines(lines, "s")
        made = 0
        while batch := list(islice(points, 10_000)):
            made += len(map_batch(batch, mapping).datums)
        return made

    def full() -> int:
        points = parse_lines(slow, "s", use_fast_path=False)
        return sum(1 for r in points if not isinstance(r, LineError))

    r_fast = timed("parse (fast path)", len(lines), fast)
    r_map = timed("parse + map to datums", len(lines), fast_map)
    r_full = timed("parse (full parser only)", len(slow), full)
    print(f"fast path / full parser: {r_fast / r_full:.1f}x; parse+map / parse: {r_map / r_fast:.2f}")


if __name__ == "__main__":
    main()
