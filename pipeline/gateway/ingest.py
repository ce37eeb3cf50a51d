"""`pipeline ingest`: stream files of datums to their per-source topics in constant memory."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from math import hypot
from pathlib import Path
from typing import BinaryIO

from pipeline.gateway.expiry import ExpiryReport
from pipeline.progress import Progress
from pipeline.settings import Settings
from pipeline.wire.codec import DeadLetter
from pipeline.wire.producer import DatumProducer
from processors.auxiliary import AuxChange
from processors.datum import (
    CREATED_FUTURE_SLACK_MS,
    CREATED_MIN_MS,
    SAMPLE_ABS_MAX,
    Datum,
    LineRejection,
    Rejection,
    check_envelope,
)
from processors.lp_mapping import LineProtocolMapping, map_lines
from processors.solarnetwork_json import parse_line

CHUNK = 5000  # datums handed to the producer at a time: bounded memory on any file size


@dataclass
class IngestReport:
    lines_read: int = 0
    datums_sent: int = 0
    # of datums_sent: stored or dead-lettered by the pipeline (its consumer group committed past
    # them), and what it did not confirm in time (None: not asked, --no-confirm)
    datums_confirmed: int | None = None
    datums_unconfirmed: int = 0
    unconfirmed_reason: str | None = None
    lines_rejected: int = 0
    samples_rejected: int = 0
    datums_refused: int = 0  # mapped, then refused by the envelope rules (e.g. created too old)
    auxiliary_sent: int = 0  # Reset markers stored, moved or deleted (JSON only)
    auxiliary_unconfirmed: int = 0  # of auxiliary_sent, what the pipeline did not confirm in time
    letters_sent: int = 0  # dead letters of the refusals above, each kept in the store by a worker
    letters_unconfirmed: int = 0
    seconds: float = 0.0
    rejected_by_rule: dict[str, int] = field(default_factory=dict)
    expiry: ExpiryReport | None = None  # datums already past their storage period (with a catalog)

    @property
    def without_samples(self) -> int:
        """Lines and datums refused for having no sample (counted in the rejected figures): the
        workers would store nothing of them, so they are never counted as sent."""
        return self.rejected_by_rule.get("datum.no_samples", 0) + self.rejected_by_rule.get("lp.no_samples", 0)

    def count(self, reasons: Iterable[Rejection]) -> None:
        for r in reasons:
            self.rejected_by_rule[r.rule] = self.rejected_by_rule.get(r.rule, 0) + 1

    def summary(self) -> str:
        rate = self.lines_read / self.seconds if self.seconds > 0 else 0.0
        rules = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected_by_rule.items()))
        if self.datums_confirmed is None:
            taken = f"datums sent {self.datums_sent} (not confirmed)"
        else:
            taken = f"datums sent {self.datums_sent}, stored or dead-lettered {self.datums_confirmed}"
            if self.datums_unconfirmed:
                taken += f", NOT CONFIRMED {self.datums_unconfirmed} ({self.unconfirmed_reason})"
            if self.auxiliary_unconfirmed:
                taken += f", auxiliary records NOT CONFIRMED {self.auxiliary_unconfirmed} of {self.auxiliary_sent}"
            if self.letters_unconfirmed:
                taken += f", dead letters NOT CONFIRMED {self.letters_unconfirmed} of {self.letters_sent}"
        expired = self.expiry.summary() if self.expiry is not None else ""
        if expired:
            taken += f", {expired}"
        return (
            f"lines read {self.lines_read}, {taken}, "
            f"lines rejected {self.lines_rejected}, samples rejected {self.samples_rejected}, "
            f"datums refused {self.datums_refused}"
            + (
                f", without samples {self.without_samples} (among the rejected: nothing to store)"
                if self.without_samples
                else ""
            )
            + (f", auxiliary records sent {self.auxiliary_sent}" if self.auxiliary_sent else "")
            + " "
            f"in {self.seconds:.2f}s ({rate:,.0f} lines/s)" + (f" [{rules}]" if rules else "")
        )


def _send_chunk(producer: DatumProducer, chunk: list[Datum], report: IngestReport, progress: Progress | None) -> None:
    """Hand a chunk to the producer and empty it, so memory stays bounded on any file size."""
    if chunk:
        if report.expiry is not None:
            report.expiry.see(chunk)
        report.datums_sent += producer.send(chunk)
        chunk.clear()
        # learn what is stored while sending: if the broker dies later, its commits die with it
        producer.check_confirmations()
    if progress is not None:
        progress.update(report.lines_read - progress.n)
        progress.set_postfix(sent=report.datums_sent, rejected=report.lines_rejected)


def _lines(path: Path) -> Iterator[bytes]:
    if str(path) == "-":
        yield from sys.stdin.buffer
        return
    with path.open("rb") as fh:
        yield from fh


def ingest_json(
    producer: DatumProducer,
    files: Iterable[Path],
    report: IngestReport,
    now_ms: int | None = None,
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
            if isinstance(parsed, AuxChange):
                producer.send_auxiliary(parsed)
                report.auxiliary_sent += 1
                continue
            kept, problems = check_envelope(parsed, now)
            if kept is None:
                _reject(
                    producer, report, str(path), line_no, raw.decode("utf-8", "replace").rstrip("\n"), problems, parsed
                )
                continue
            if problems:  # some samples refused, the datum goes on with the rest
                report.samples_rejected += len(problems)
                letter = DeadLetter(problems, None, datum=parsed, stage="ingest", file=str(path), line=line_no)
                producer.send_dead_letter(letter)
                report.count(problems)
            chunk.append(kept)
            if len(chunk) >= CHUNK:
                _send_chunk(producer, chunk, report, progress)
    _send_chunk(producer, chunk, report, progress)


# Rules that drop the whole line; the others drop one field and the datum goes on.
LP_LINE_RULES = frozenset(
    {
        "lp.syntax",
        "lp.measurement_unmapped",
        "lp.source_tag_missing",
        "lp.template_tag_missing",
        "lp.node_id_invalid",
        "lp.no_samples",
        "created.missing",
    }
)


class _CountedLines:
    """The lines of a binary file, counted into the report as they are read. map_lines reads them
    in blocks through readlines(hint) rather than one by one."""

    def __init__(self, fh: BinaryIO, report: IngestReport) -> None:
        self._fh = fh
        self._report = report

    def __iter__(self) -> Iterator[bytes]:
        for line in self._fh:
            self._report.lines_read += 1
            yield line

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = self._fh.readlines(hint)
        self._report.lines_read += len(lines)
        return lines


def ingest_lp(
    producer: DatumProducer,
    files: Iterable[Path],
    report: IngestReport,
    mapping: LineProtocolMapping,
    precision: str = "ns",
    now_ms: int | None = None,
    progress: Progress | None = None,
) -> None:
    """Line protocol, streamed: constant memory whatever the file size."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    chunk: list[Datum] = []
    for path in files:
        with nullcontext(sys.stdin.buffer) if str(path) == "-" else path.open("rb") as fh:
            _ingest_lp_file(producer, path, _CountedLines(fh, report), report, mapping, precision, now, chunk, progress)
    _send_chunk(producer, chunk, report, progress)


def _ingest_lp_file(
    producer: DatumProducer,
    path: Path,
    lines: _CountedLines,
    report: IngestReport,
    mapping: LineProtocolMapping,
    precision: str,
    now: int,
    chunk: list[Datum],
    progress: Progress | None,
) -> None:
    # A mapped datum already meets every envelope rule but the `created` range and the sample
    # bound (the mapping checks the node id and the sourceId, and keeps only finite floats and
    # text), so a datum inside both needs no check_envelope; any other gets the full check.
    created_max = now + CREATED_FUTURE_SLACK_MS
    keep = chunk.append
    rejected_lines: set[int] = set()  # bounded by the bad lines of one file
    for item in map_lines(lines, mapping, precision):
        # hypot >= every |value| (and is NaN or inf for such values): one C call, ~0.25 µs a line;
        # a datum it does not clear (rare) gets the exact check below
        if (
            type(item) is Datum
            and CREATED_MIN_MS <= item.created_ms <= created_max
            and hypot(*item.i.values()) <= SAMPLE_ABS_MAX
            and (not item.a or hypot(*item.a.values()) <= SAMPLE_ABS_MAX)
        ):
            keep(item)
            if len(chunk) >= CHUNK:
                _send_chunk(producer, chunk, report, progress)
            continue
        if isinstance(item, LineRejection):
            rule = item.reason.rule
            report.count([item.reason])
            if rule in LP_LINE_RULES:
                rejected_lines.add(item.line_no)
            else:
                report.samples_rejected += 1
            producer.send_dead_letter(
                DeadLetter([item.reason], None, stage="ingest", file=str(path), line=item.line_no)
            )
            continue
        kept, problems = check_envelope(item, now)
        if problems:
            report.count(problems)
            producer.send_dead_letter(DeadLetter(problems, None, datum=item, stage="ingest", file=str(path)))
            if kept is None:
                report.datums_refused += 1
            else:
                report.samples_rejected += len(problems)
        if kept is None:
            continue
        keep(kept)
        if len(chunk) >= CHUNK:
            _send_chunk(producer, chunk, report, progress)
    report.lines_rejected += len(rejected_lines)


def _reject(
    producer: DatumProducer,
    report: IngestReport,
    file: str,
    line_no: int,
    text: str,
    reasons: list[Rejection],
    datum: Datum | None,
) -> None:
    report.lines_rejected += 1
    report.count(reasons)
    producer.send_dead_letter(
        DeadLetter(reasons, None, datum=datum, stage="ingest", file=file, line=line_no, text=text)
    )


def ingest_files(
    settings: Settings,
    files: list[Path],
    fmt: str,
    progress: Progress | None = None,
    mapping: LineProtocolMapping | None = None,
    precision: str = "ns",
    confirm: bool = False,
) -> IngestReport:
    """Send the files' datums; unless `confirm` is off, wait (settings.confirm_timeout_s) until the
    pipeline has stored or dead-lettered every one, so what the report calls taken survives any
    crash of the broker or the workers."""
    report = IngestReport(expiry=ExpiryReport.from_dsn(settings.postgres_dsn) if settings.postgres_dsn else None)
    t0 = time.perf_counter()
    producer = DatumProducer(settings, confirming=confirm)
    if fmt == "json":
        ingest_json(producer, files, report, progress=progress)
    elif fmt == "lp":
        ingest_lp(producer, files, report, mapping or LineProtocolMapping(node_id=1), precision, progress=progress)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    producer.flush()
    if confirm and settings.confirm_timeout_s > 0:
        if progress is not None:
            progress.set_postfix(sent=report.datums_sent, waiting="pipeline to store")
        outcome = producer.confirm(settings.confirm_timeout_s)
        report.datums_confirmed = outcome.confirmed_datums
        report.datums_unconfirmed = outcome.unconfirmed_datums
        report.auxiliary_unconfirmed = outcome.unconfirmed_changes
        report.letters_unconfirmed = outcome.unconfirmed_letters
        report.unconfirmed_reason = outcome.reason
    report.letters_sent = producer.letters_sent
    producer.close()
    report.seconds = time.perf_counter() - t0
    return report
