"""End-to-end throughput: datums/s from producer to queryable in ClickHouse, and in the same run
the raw consume+decode ceiling (a plain aiokafka consumer decoding every batch, no Faust, no store).

    python benchmarks/bench_e2e.py [--datums 200000] [--sources 20]

Starts its own embedded stack in a temp dir unless PIPELINE_KAFKA_BOOTSTRAP and
PIPELINE_CLICKHOUSE_URL are set. Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer  # noqa: E402

from pipeline import stack  # noqa: E402
from pipeline.codec import decode_batch  # noqa: E402
from pipeline.producer import DatumProducer  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from processors.datum import Datum  # noqa: E402
from sinks.clickhouse import connect, ensure_schema  # noqa: E402
from tests.integration.helpers import settings_for, worker_process  # noqa: E402


def make_datums(n: int, sources: int, base: int = 1_700_000_000_000) -> list[Datum]:
    return [
        Datum(1 + k % 5, f"/S{k % sources}/M1", base + (k // sources) * 1000,
              {"watts": float(k % 5000), "voltage": 230.0 + (k % 7)}, {"wattHours": float(k)}, {"mode": "auto"})
        for k in range(n)
    ]


async def consume_ceiling(settings: Settings, topics: list[str], expect: int) -> float:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=settings.max_message_bytes,
                                fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    got = 0
    t0 = time.perf_counter()
    try:
        while got < expect:
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            for msgs in batches.values():
                for msg in msgs:
                    got += len(decode_batch(msg.value))
    finally:
        await consumer.stop()
    return got / (time.perf_counter() - t0)


def run(n: int, sources: int, kafka: str, clickhouse: str, workdir: Path) -> None:
    prefix = f"b{uuid.uuid4().hex[:8]}."
    admin = connect(clickhouse)
    db = prefix.rstrip(".")
    admin.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    settings = settings_for(kafka, clickhouse, db, prefix, topic_partitions=4)
    client = connect(settings.clickhouse_url)
    ensure_schema(client)
    datums = make_datums(n, sources)

    t0 = time.perf_counter()
    producer = DatumProducer(settings)
    producer.send(datums)
    producer.flush()
    produce_s = time.perf_counter() - t0
    print(f"produce:            {n / produce_s:>12,.0f} datums/s  ({producer.messages_sent} messages)")

    topics = sorted({producer.topics.source(d.source_id) for d in datums})
    ceiling = asyncio.run(consume_ceiling(settings, topics, n))
    print(f"consume+decode:     {ceiling:>12,.0f} datums/s  (aiokafka getmany + fastavro, no store)")

    t1 = time.perf_counter()
    with worker_process(settings, workdir / "worker.log"):
        first = None
        while True:
            stored = int(client.command("SELECT count(DISTINCT node_id, source_id, created) FROM datum"))
            if stored and first is None:
                first = time.perf_counter()
            if stored >= n:
                break
            if time.perf_counter() - t1 > 900:
                raise SystemExit(f"only {stored} of {n} datums stored after 900 s")
            time.sleep(0.2)
        done = time.perf_counter()
        # The durable default, against a running worker: n more datums stored as a gateway that
        # trusts broker acks sees it (poll the store), then n more through a producer that waits
        # until the workers have committed past every message (stored or dead-lettered).
        def later(k: int) -> list[Datum]:
            return make_datums(n, sources, base=1_700_000_000_000 + k * 10 * n * 1000)

        t2 = time.perf_counter()
        plain = DatumProducer(settings)
        plain.send(later(1))
        plain.flush()
        while int(client.command("SELECT count(DISTINCT node_id, source_id, created) FROM datum")) < 2 * n:
            time.sleep(0.1)
        plain_s = time.perf_counter() - t2
        t3 = time.perf_counter()
        confirming = DatumProducer(settings)
        confirming.send(later(2))
        confirming.flush()
        acked_s = time.perf_counter() - t3
        outcome = confirming.confirm(900)
        confirmed_s = time.perf_counter() - t3
        confirming.close()
    e2e = n / (done - t1)
    steady = n / (done - first) if first else float("nan")
    print(f"end to end:         {e2e:>12,.0f} datums/s  (worker start, group join and store included)")
    print(f"end to end steady:  {steady:>12,.0f} datums/s  (from the first stored batch)")
    print(f"rows stored:        {int(client.command('SELECT count() FROM datum')):>12,}  (4 samples per datum)")
    print(f"ratio steady/ceiling: {steady / ceiling:.3f}")
    print(f"stored, broker acks: {n / plain_s:>11,.0f} datums/s  (a running worker; sent, then polled until queryable)")
    print(f"stored, confirmed:  {outcome.confirmed_datums / confirmed_s:>12,.0f} datums/s  (the same, the producer "
          f"waiting for the commits: broker-acked after {acked_s:.1f}s, all confirmed after {confirmed_s:.1f}s; "
          f"{outcome.unconfirmed_datums} unconfirmed)")
    print(f"ratio confirmed/broker acks: {(outcome.confirmed_datums / confirmed_s) / (n / plain_s):.3f}"
          "  (the cost of the durable default: the wait for the next offset commit)")
    admin.command(f"DROP DATABASE IF EXISTS {db}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datums", type=int, default=200_000)
    ap.add_argument("--sources", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        kafka, ch = os.environ.get("PIPELINE_KAFKA_BOOTSTRAP"), os.environ.get("PIPELINE_CLICKHOUSE_URL")
        services = []
        if not kafka:
            services.append(stack.start_tansu(log_dir=work))
            kafka = services[-1].url
        if not ch:
            services.append(stack.start_clickhouse(work / "ch", log_dir=work))
            ch = services[-1].url
        try:
            run(args.datums, args.sources, kafka, ch, work)
        finally:
            for svc in services:
                svc.stop()


if __name__ == "__main__":
    main()
