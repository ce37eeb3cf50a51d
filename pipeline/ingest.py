"""`pipeline ingest`: stream files of datums to their per-source topics in constant memory."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.codec import DeadLetter
from pipeline.producer import DatumProducer
from pipeline.progress import Progress
from pipeline.settings import Settings
from processors.datum import Datum, check_envelope
from processors.solarnetwork_json import LineRejection, parse_line

CHUNK = 5000  # datums handed to the producer at a time: bounded memory on any file size


@dataclass
class IngestReport:
    lines_read: int = 0
    datums_sent: int = 0
    lines_rejected: int = 0
    samples_rejected: int = 0
    seconds: float = 0.0
    rejected_by_rule: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        rate = self.lines_read / self.seconds if self.seconds > 0 else 0.0
        rules = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected_by_rule.items()))
        return (
            f"lines read {self.lines_read}, datums sent {self.datums_sent}, "
            f"lines rejected {self.lines_rejected}, samples rejected {self.samples_rejected} "
            f"in {self.seconds:.2f}s ({rate:,.0f} lines/s)" + (f" [{rules}]" if rules else "")
        )


def _lines(path: Path) -> Iterator[bytes]:
    if str(path) == "-":
        yield from sys.stdin.buffer
        return
    with path.open("rb") as fh:
        yield from fh


def ingest_json(
    producer: DatumProducer, files: Iterable[Path], report: IngestReport, now_ms: int | None = None,
    progress: Progress | None = None,
) -> None:
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    chunk: list[Datum] = []
    for path in files:
        for line_no, raw in enumerate(_lines(path), start=1):
            report.lines_read += 1
            parsed = parse_line(raw, line_no)
            if parsed is None:
                continue
            if isinstance(parsed, LineRejection):
                _reject(producer, report, str(path), line_no, parsed.text, [parsed.reason], None)
                continue
            kept, problems = check_envelope(parsed, now)
            if kept is None:
                _reject(producer, report, str(path), line_no, raw.decode("utf-8", "replace").rstrip("\n"),
                        problems, parsed)
                continue
            if problems:  # some samples refused, the datum goes on with the rest
                report.samples_rejected += len(problems)
                letter = DeadLetter(problems, None, datum=parsed, stage="ingest", file=str(path), line=line_no)
                producer.send_dead_letter(letter)
                for p in problems:
                    report.rejected_by_rule[p.rule] = report.rejected_by_rule.get(p.rule, 0) + 1
            chunk.append(kept)
            if len(chunk) >= CHUNK:
                report.datums_sent += producer.send(chunk)
                chunk = []
                if progress is not None:
                    progress.update(report.lines_read - progress.n)
                    progress.set_postfix(sent=report.datums_sent, rejected=report.lines_rejected)
    if chunk:
        report.datums_sent += producer.send(chunk)


def _reject(producer: DatumProducer, report: IngestReport, file: str, line_no: int, text: str,
            reasons: list, datum: Datum | None) -> None:  # type: ignore[type-arg]
    report.lines_rejected += 1
    for r in reasons:
        report.rejected_by_rule[r.rule] = report.rejected_by_rule.get(r.rule, 0) + 1
    producer.send_dead_letter(
        DeadLetter(reasons, None, datum=datum, stage="ingest", file=file, line=line_no, text=text)
    )


def ingest_files(settings: Settings, files: list[Path], fmt: str, progress: Progress | None = None) -> IngestReport:
    report = IngestReport()
    t0 = time.perf_counter()
    producer = DatumProducer(settings)
    if fmt == "json":
        ingest_json(producer, files, report, progress=progress)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    producer.flush()
    report.seconds = time.perf_counter() - t0
    return report
