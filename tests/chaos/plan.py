"""The known set of datums a drill drains, and the bad inputs it sends among them.

Streams are bound to the sample datamodels (schemas/datamodels) where a binding exists, so every
datum is validated and scored on the way, and each carries an accumulating sample so rollups
matter: meters and inverters (watts, wattHours, a status), weather stations (temperature and a
PULSE rain count, which rolls up as a sum), and unbound sources stored unvalidated.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from processors.datum import Datum

ROOT = Path(__file__).resolve().parents[2]
DATAMODELS = ROOT / "schemas" / "datamodels"
MIN = 60_000
HOUR = 60 * MIN
Identity = tuple[int, str, int]


def pulse_datastreams() -> frozenset[str]:
    """Datastreams whose instantaneous samples roll up as sums (OpenGate PULSE)."""
    out: set[str] = set()
    for path in DATAMODELS.glob("*.json"):
        doc = json.loads(path.read_text())
        for model in doc if isinstance(doc, list) else [doc]:
            for cat in model.get("categories", []) if isinstance(model, dict) else []:
                out |= {d["identifier"] for d in cat["datastreams"] if d.get("period") == "PULSE"}
    return frozenset(out)


def stream_kinds(node: int) -> list[tuple[str, str]]:
    """(source, kind) of one node's streams: kinds are meter, inverter, weather, free."""
    return [
        (f"/S{node}/B1/M1", "meter"),
        (f"/S{node}/INV1", "inverter"),
        (f"/S{node}/WX1", "weather"),
        (f"/free/{node}", "free"),
    ]


def sample(rng: random.Random, kind: str, t: int, counter: float) -> Datum:
    """One reading of a stream of `kind` at t; `counter` is the meter's accumulating value."""
    if kind == "meter":
        return Datum(
            0,
            "",
            t,
            i={"watts": round(rng.uniform(0, 5000), 3), "current": round(rng.uniform(0, 40), 3)},
            a={"wattHours": round(counter, 3)},
            s={"mode": rng.choice(["auto", "manual", "off"])},
        )
    if kind == "inverter":
        return Datum(
            0,
            "",
            t,
            i={"watts": round(rng.uniform(0, 9000), 3)},
            a={"wattHours": round(counter, 3)},
            s={"state": rng.choice(["mppt", "throttled", "sleeping"])},
        )
    if kind == "weather":
        # no cumulative datastream here: the PULSE rain count is what rolls up as a sum
        return Datum(
            0,
            "",
            t,
            i={
                "temperature": round(rng.uniform(-10, 35), 2),
                "humidity": round(rng.uniform(0, 100), 1),
                "rain": float(rng.randrange(0, 4)),
            },
        )
    return Datum(
        0, "", t, i={"x": round(rng.uniform(-100, 100), 4)}, a={"y": round(counter, 3)}, s={"z": rng.choice(["a", "b"])}
    )


def gen_stream(rng: random.Random, node: int, source: str, kind: str, n: int, t0: int) -> list[Datum]:
    """n readings about a minute apart, now and then a gap longer than the clock tolerance (1 h)."""
    out: list[Datum] = []
    t = t0 + rng.randrange(0, 10 * MIN)
    counter = rng.uniform(0, 1000)
    for _ in range(n):
        counter += rng.uniform(0, 30)
        d = sample(rng, kind, t, counter)
        out.append(Datum(node, source, t, d.i, d.a, d.s))
        t += 2 * HOUR if rng.random() < 0.01 else rng.randrange(40_000, 80_000)
    return out


@dataclass
class DrainPlan:
    """Messages of datums in the order a fleet of gateways would send them (roughly by time, every
    stream interleaved), each message one stream's chunk."""

    messages: list[list[Datum]]
    t0: int

    @property
    def datums(self) -> list[Datum]:
        return [d for m in self.messages for d in m]


def make_plan(seed: int, nodes: int, datums: int, chunk: int = 25, t0: int | None = None) -> DrainPlan:
    """About `datums` datums over `nodes` nodes of four streams each. Times start two days ago
    (inside every sample datastream's storage period, so no row expires on arrival)."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    t0 = t0 if t0 is not None else now - 2 * 24 * HOUR - now % HOUR
    streams = [(node, src, kind) for node in range(1, nodes + 1) for src, kind in stream_kinds(node)]
    per = max(1, datums // len(streams))
    chunks: list[list[Datum]] = []
    for node, src, kind in streams:
        data = gen_stream(rng, node, src, kind, per, t0)
        chunks += [data[k : k + chunk] for k in range(0, len(data), chunk)]
    chunks.sort(key=lambda m: (m[0].created_ms, m[0].node_id, m[0].source_id))
    return DrainPlan(chunks, t0)


def new_source_messages(seed: int, node: int, n: int, t0: int, chunk: int = 25) -> list[list[Datum]]:
    """Datums of sources no worker has seen yet (new topics): one bound meter, one unbound."""
    rng = random.Random(seed)
    out: list[list[Datum]] = []
    for src, kind in [(f"/S{node}/B7/M{seed % 100}", "meter"), (f"/new/{node}/{seed}", "free")]:
        data = gen_stream(rng, node, src, kind, n, t0)
        out += [data[k : k + chunk] for k in range(0, len(data), chunk)]
    return out


@dataclass(frozen=True)
class BadInput:
    """One message that must end as exactly one dead letter. `origin` (topic, partition, offset)
    is filled in when the broker acknowledges it; `rules` are the acceptable rule prefixes."""

    name: str
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    rules: tuple[str, ...]
    identity: Identity | None = None
