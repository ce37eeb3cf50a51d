"""HTTP ingest's publish step under concurrent gateways: requests answered per second, one request
at a time (`http_ingest_group_requests` 1, as before the group commit) against groups (the
default), alternating in one run against one embedded Tansu broker.

    python benchmarks/bench_http_ingest.py [--gateways 32] [--requests 100] [--sources 4]
                                           [--rounds 2] [--group 500]

Each gateway is a thread with its own Node token (one node) posting `--requests` bodies one after
the other, each body a datum of each of its node's `--sources` sources (a gateway's minute of
readings), through `HttpIngest.post`: token checks, the body's parse and rules, publish, and the
broker's acknowledgement, which the answer waits for. The HTTP server and SNWS2 signature check
in front of it are the same in both modes and left out. Prints requests/s, datums/s, answer
latency p50/p99 and groups flushed per mode and round, then the ratio of the modes. Prints
figures; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.api.http_ingest import HttpIngest  # noqa: E402
from pipeline.embedded import stack  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from processors import security_policy as sp  # noqa: E402


def bodies(node: int, requests: int, sources: int, base_ms: int) -> list[bytes]:
    return [
        json.dumps(
            [
                {
                    "nodeId": node,
                    "sourceId": f"/gw/{s}",
                    "created": base_ms + k * 60_000,
                    "samples": {"i": {"watts": float(k + s)}, "a": {"wattHours": 1000.0 + k}},
                }
                for s in range(sources)
            ]
        ).encode()
        for k in range(requests)
    ]


def run(ingest: HttpIngest, work: list[tuple[sp.Token, list[bytes]]]) -> tuple[float, list[float], list[int]]:
    """Every gateway's bodies posted, a thread per gateway: (seconds, answer latencies, statuses)."""
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    go = threading.Barrier(len(work) + 1)

    def gateway(token: sp.Token, mine: list[bytes]) -> None:
        go.wait()
        for body in mine:
            t0 = time.perf_counter()
            status, _ = ingest.post(token, body)
            with lock:
                latencies.append(time.perf_counter() - t0)
                statuses.append(status)

    threads = [threading.Thread(target=gateway, args=w) for w in work]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies, statuses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=32, help="concurrent gateways (threads), a node each")
    ap.add_argument("--requests", type=int, default=100, help="requests per gateway per round")
    ap.add_argument("--sources", type=int, default=4, help="sources per node: datums per request")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each mode, alternating")
    ap.add_argument("--group", type=int, default=Settings().http_ingest_group_requests, help="group size compared")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = stack.start_tansu(log_dir=Path(tmp))
        try:
            base = Settings.from_env({})._with(
                {"kafka_bootstrap": broker.url, "topic_prefix": f"b{uuid.uuid4().hex[:8]}."}
            )
            tokens = [
                sp.Token(f"gw{g}", sp.TokenType.NODE, sp.SecurityPolicy(node_ids=frozenset({1000 + g})))
                for g in range(args.gateways)
            ]
            base_ms = int(time.time() * 1000) - 86_400_000
            print(
                f"{args.gateways} gateways x {args.requests} requests x {args.sources} datums, Tansu broker;"
                f" group of 1 (one request at a time) against groups of up to {args.group}, alternating"
            )
            rates: dict[int, list[float]] = {1: [], args.group: []}
            for r in range(args.rounds):
                for group in (1, args.group):
                    ingest = HttpIngest(base._with({"http_ingest_group_requests": group}))
                    try:
                        # topics made and a producer opened before the clock starts
                        ingest.post(tokens[0], bodies(1000, 1, args.sources, base_ms - 3_600_000)[0])
                        offset = (r * 2 + (group != 1)) * args.requests * 60_000
                        work = [
                            (tok, bodies(1000 + g, args.requests, args.sources, base_ms + offset))
                            for g, tok in enumerate(tokens)
                        ]
                        seconds, latencies, statuses = run(ingest, work)
                        groups = ingest.commits.groups - 1
                    finally:
                        ingest.close()
                    bad = sum(1 for s in statuses if s != 200)
                    n = len(statuses)
                    q = statistics.quantiles(latencies, n=100)
                    rates[group].append(n / seconds)
                    print(
                        f"round {r}, group {group:>4}: {n / seconds:8,.0f} requests/s, "
                        f"{n * args.sources / seconds:9,.0f} datums/s; answer p50 {q[49] * 1000:6.1f} ms,"
                        f" p99 {q[98] * 1000:6.1f} ms; {groups:,} flushes for {n:,} requests"
                        + (f"; {bad} NOT answered 200" if bad else "")
                    )
            for r in range(args.rounds):
                print(f"round {r}: groups / one at a time = {rates[args.group][r] / rates[1][r]:.1f}")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
