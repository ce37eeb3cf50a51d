"""Line-protocol throughput on realistic oTherm uploads: prints figures, asserts nothing.

    .venv/bin/python benchmarks/bench_line_protocol.py [--lines N] [--slow-lines M] [--send-lines K]

Generates N lines in memory the way oTherm's writer does (`otherm-data,equipment=<uuid>
field=value,... <epoch seconds>`, NaN written as -999) and measures, in one run:

* parse, pure Python (`parse_lines(compiled=False)`: the Python fast path + full parser)
* parse, compiled (`parse_lines`, processors/_lpfast.c)
* parse + map to datums (`map_lines`, compiled)
* parse + map + encode (`map_lines`, grouped per stream into Avro batch envelopes of
  `producer_batch_datums`, as DatumProducer.send does)
* parse and send: `pipeline ingest`'s own code (`ingest_files --format lp`) on a file of K lines,
  to an embedded Tansu broker started here (or PIPELINE_KAFKA_BOOTSTRAP), flush included

The first four are CPU time of this process (one core). The send figure is wall-clock time, with the
CPU time of the main thread (ours) and of the whole process (librdkafka's threads compress and send
messages beside it) shown too. Each figure is printed with its ratio to the target.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.settings import Settings  # noqa: E402
from pipeline.wire.codec import encode_batch, group_streams  # noqa: E402
from processors.line_protocol import COMPILED, LineError, parse_lines  # noqa: E402
from processors.lp_mapping import LineProtocolMapping, map_batch, map_lines  # noqa: E402
from tests.samples import OTHERM_FIELDS  # noqa: E402  (oTherm's field dictionary)

PARSE_TARGET = 200_000  # lines/s, one core
SEND_TARGET = 100_000  # lines/s, parse and send


def otherm_lines(n: int, seed: int = 7, equipment: int = 50) -> list[bytes]:
    """n lines as a binary file would yield them: bytes with a trailing newline."""
    rnd = random.Random(seed)
    uuids = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(equipment)]
    start = 1_577_836_800  # 2020-01-01, epoch seconds like oTherm's writer
    out: list[bytes] = []
    for i in range(n):
        values = []
        for name in OTHERM_FIELDS:
            if rnd.random() < 0.04:
                values.append(f"{name}=-999")  # the writer's NaN
            elif name == "compressor_stage":
                values.append(f"{name}={rnd.randint(0, 2)}")
            else:
                values.append(f"{name}={round(rnd.uniform(-20.0, 4000.0), rnd.randint(1, 4))}")
        line = f"otherm-data,equipment={uuids[i % equipment]} {','.join(values)} {start + 60 * i}\n"
        out.append(line.encode())
    return out


def timed(label: str, n: int, run: Callable[[], int], target: int) -> float:
    # CPU time of this process: what one core delivers, even on a busy shared machine.
    t0 = time.process_time()
    produced = run()
    dt = time.process_time() - t0
    rate = n / dt
    print(
        f"{label:<34} {n:>10,} lines {dt:7.2f} s {rate:>10,.0f} lines/s  x{rate / target:5.2f} of target"
        f"  ({produced:,} out)"
    )
    return rate


def send_run(lines: list[bytes], mapping: LineProtocolMapping) -> None:
    """pipeline ingest --format lp on a file of these lines, to a real broker."""
    from pipeline.embedded import stack
    from pipeline.gateway.ingest import ingest_files

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "otherm.lp"
        path.write_bytes(b"".join(lines))
        kafka = os.environ.get("PIPELINE_KAFKA_BOOTSTRAP")
        broker = None
        if not kafka:
            broker = stack.start_tansu(log_dir=work)
            kafka = broker.url
        try:
            settings = Settings(kafka_bootstrap=kafka, topic_prefix=f"lpbench{uuid.uuid4().hex[:8]}.")
            # warm-up: creates the 50 source topics, so that the timed run measures throughput
            warm = work / "warm.lp"
            warm.write_bytes(b"".join(lines[:1000]))
            ingest_files(settings, [warm], "lp", mapping=mapping, precision="s")
            load0 = os.getloadavg()[0]
            b0 = _cpu_seconds(broker.proc.pid) if broker else 0.0
            t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
            report = ingest_files(settings, [path], "lp", mapping=mapping, precision="s")
            wall = time.perf_counter() - t0
            cpu, main = time.process_time() - c0, time.thread_time() - m0
            brokered = _cpu_seconds(broker.proc.pid) - b0 if broker else float("nan")
            load = max(load0, os.getloadavg()[0])
        finally:
            if broker is not None:
                broker.stop()
    n = len(lines)
    rate = n / wall
    print(
        f"{'parse and send (ingest, broker)':<34} {n:>10,} lines {wall:7.2f} s {rate:>10,.0f} lines/s  "
        f"x{rate / SEND_TARGET:5.2f} of target  ({report.datums_sent:,} sent, wall clock)"
    )
    print(
        f"{'  main thread (parse, map, encode)':<34} {n:>10,} lines {main:7.2f} s {n / main:>10,.0f} lines/s  "
        f"x{n / main / SEND_TARGET:5.2f} of target  (CPU time: the one core of ours)"
    )
    print(
        f"{'':<34} CPU beside it: librdkafka threads (compression, I/O) {cpu - main:.2f} s, "
        f"broker {brokered:.2f} s; {os.cpu_count()} CPUs, load average up to {load:.1f}"
    )


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc), e.g. the broker's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000, help="lines to generate (1,000,000)")
    ap.add_argument("--slow-lines", type=int, default=200_000, help="lines for the pure-Python figures (200,000)")
    ap.add_argument("--send-lines", type=int, default=500_000, help="lines for parse and send (500,000; 0 skips it)")
    args = ap.parse_args()
    lines = otherm_lines(args.lines)
    slow = lines[: args.slow_lines]
    avg = sum(map(len, lines)) / len(lines)
    print(
        f"python {sys.version.split()[0]}; {len(lines):,} oTherm lines, {avg:.0f} bytes each; "
        f"compiled fast path {'built' if COMPILED else 'NOT BUILT'}"
    )
    # A yardstick for comparing machines: the per-field floor of any pure-Python parser.
    reps = 200_000
    t0 = time.process_time()
    for _ in range(reps):
        float("4298.332")
    print(f"calibration: float('4298.332') takes {(time.process_time() - t0) / reps * 1e9:.0f} ns")
    print(lines[0].decode().rstrip())
    mapping = LineProtocolMapping(node_id=1)
    per_message = Settings().producer_batch_datums

    def count(items: object) -> int:
        return sum(1 for r in items if not isinstance(r, LineError))  # type: ignore[attr-defined]

    def pure() -> int:
        return count(parse_lines(slow, "s", compiled=False))

    def compiled() -> int:
        return count(parse_lines(lines, "s"))

    def pure_map() -> int:
        # batches of 10,000, as before the compiled path
        points = parse_lines(slow, "s", compiled=False)
        made = 0
        while batch := list(islice(points, 10_000)):
            made += len(map_batch(batch, mapping).datums)
        return made

    def parse_map() -> int:
        # chunks of 5,000 datums held at a time, as `pipeline ingest` hands them to the producer
        datums = map_lines(lines, mapping, "s")
        made = 0
        while chunk := list(islice(datums, 5_000)):
            made += len(chunk)
        return made

    def parse_map_encode() -> int:
        datums = map_lines(lines, mapping, "s")
        size = 0
        while chunk := list(islice(datums, 5_000)):
            for items in group_streams(chunk).values():  # type: ignore[arg-type]
                for start in range(0, len(items), per_message):
                    size += len(encode_batch(items[start : start + per_message]))
        return size

    timed("parse, pure Python", len(slow), pure, PARSE_TARGET)
    timed("parse, compiled", len(lines), compiled, PARSE_TARGET)
    timed("parse + map, pure Python", len(slow), pure_map, SEND_TARGET)
    timed("parse + map, compiled", len(lines), parse_map, SEND_TARGET)
    timed("parse + map + encode (bytes out)", len(lines), parse_map_encode, SEND_TARGET)
    if args.send_lines:
        send_run(lines[: args.send_lines], mapping)


if __name__ == "__main__":
    main()
