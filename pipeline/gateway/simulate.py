"""`pipeline simulate`: a fleet of gateways publishing datums, for demos and load."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from types import FrameType

from pipeline.progress import Progress
from pipeline.settings import Settings
from pipeline.wire.producer import DatumProducer
from processors.simulate import Fleet, FleetSpec, default_tmy_path, load_tmy

CHUNK_MS = 3_600_000  # generate and send an hour of fleet time at a time


@dataclass
class SimulateReport:
    datums_sent: int = 0
    seconds: float = 0.0
    weather: str = ""

    def summary(self) -> str:
        rate = self.datums_sent / self.seconds if self.seconds else 0.0
        return f"datums sent {self.datums_sent} in {self.seconds:.1f}s ({rate:,.0f} datums/s); weather: {self.weather}"


def simulate(
    settings: Settings, spec: FleetSpec, backfill_ms: int, realtime: bool, now_ms: int | None = None
) -> SimulateReport:
    """Send the fleet's datums from now - backfill to now as fast as possible, then, if realtime,
    each new tick as the clock reaches it, until SIGINT/SIGTERM."""
    stop = False

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    report = SimulateReport()
    tmy = default_tmy_path()
    fleet = Fleet(spec, load_tmy(tmy) if tmy is not None else None)
    report.weather = f"pvlib TMY {tmy.name}" if tmy else "synthetic (pvlib not installed)"
    producer = DatumProducer(settings, confirming=False)  # runs for ever with --realtime
    t_start = time.perf_counter()
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    t0 = max(spec.start_ms, now - backfill_ms)
    per_ms = len(fleet.source_ids) / spec.interval_ms
    with Progress(int((now - t0) * per_ms), unit="datums", description="backfill") as bar:
        t = t0
        while t < now and not stop:
            t1 = min(now, t + CHUNK_MS)
            n = producer.send(fleet.datums_between(t, t1))
            report.datums_sent += n
            bar.update(n)
            t = t1
        producer.flush()
    if realtime and not stop:
        with Progress(None, unit="datums", description="live") as bar:
            while not stop:
                now = int(time.time() * 1000)
                if now > t:
                    n = producer.send(fleet.datums_between(t, now))
                    producer.flush()
                    report.datums_sent += n
                    bar.update(n)
                    t = now
                time.sleep(min(1.0, spec.interval_s / 4))
    producer.flush()
    report.seconds = time.perf_counter() - t_start
    return report
