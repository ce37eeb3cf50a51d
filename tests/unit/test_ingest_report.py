"""`pipeline ingest`'s counting (pure logic): what the report says equals what was sent and what
was dead-lettered. A recording stand-in takes the producer's place; the real broker path is in
tests/integration/test_bad_input.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from pipeline.gateway.ingest import IngestReport, ingest_json, ingest_lp
from pipeline.wire.codec import DeadLetter
from pipeline.wire.producer import DatumProducer
from processors.datum import Datum
from processors.lp_mapping import LineProtocolMapping

NOW = 1_700_000_000_000
UUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


class Recorder:
    """Keeps what ingest hands to the producer."""

    def __init__(self) -> None:
        self.sent: list[Datum] = []
        self.letters: list[DeadLetter] = []

    def send(self, datums: list[Datum]) -> int:
        self.sent += datums
        return len(datums)

    def send_dead_letter(self, letter: DeadLetter) -> None:
        json.loads(letter.to_json())
        self.letters.append(letter)

    def check_confirmations(self, *_: Any) -> None:  # the lead's confirming producer asks this
        return None


def rules(rec: Recorder) -> list[tuple[int | None, str]]:
    return sorted((x.line, r.rule) for x in rec.letters for r in x.reasons)


def test_lp_values_beyond_the_bound_are_refused_and_counted(tmp_path: Path) -> None:
    # the mapped fast path skipped the envelope rules: a 1e308 field went out as a sample
    path = tmp_path / "o.lp"
    path.write_text(
        "\n".join(
            [
                f"otherm-data,equipment={UUID} power=1.5,huge=1e308 1600000000",
                f"otherm-data,equipment={UUID} power=2.5 1600000001",
                f"otherm-data,equipment={UUID} huge=-9.1e15 1600000002",  # its only field: no datum left
            ]
        )
        + "\n"
    )
    rec = Recorder()
    report = IngestReport()
    ingest_lp(cast(DatumProducer, rec), [path], report, LineProtocolMapping(node_id=7), "s", now_ms=NOW)
    assert [dict(d.i) for d in rec.sent] == [{"power": 1.5}, {"power": 2.5}]
    assert (report.lines_read, report.samples_rejected, report.datums_refused) == (3, 1, 1)
    assert report.rejected_by_rule == {"sample.out_of_range": 2}
    assert [r.rule for x in rec.letters for r in x.reasons] == ["sample.out_of_range"] * 2


def test_json_datums_without_samples_are_refused_not_sent(tmp_path: Path) -> None:
    lines = [
        {"nodeId": 1, "sourceId": "/S", "created": NOW - 5},
        {"nodeId": 1, "sourceId": "/S", "created": NOW - 4, "samples": {"t": ["x"]}},
        {"nodeId": 1, "sourceId": "/S", "created": NOW - 3, "samples": {"i": {}, "a": {}, "s": {}}},
        {"nodeId": 1, "sourceId": "/S", "created": NOW - 2, "samples": {"i": {"w": 1}}},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rec = Recorder()
    report = IngestReport()
    ingest_json(cast(DatumProducer, rec), [path], report, now_ms=NOW)
    assert [d.created_ms for d in rec.sent] == [NOW - 2] and report.datums_sent == 1
    assert (report.lines_rejected, report.without_samples) == (3, 3)
    assert rules(rec) == [(1, "datum.no_samples"), (2, "datum.no_samples"), (3, "datum.no_samples")]
    assert "without samples 3 (among the rejected: nothing to store)" in report.summary()
