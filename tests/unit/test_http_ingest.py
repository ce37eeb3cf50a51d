"""HTTP ingest bodies (processors/http_ingest.py): the three shapes, and every problem named."""

from __future__ import annotations

import json

from processors.http_ingest import parse_body

NOW = 1_764_547_200_000


def datum(k: int, **over: object) -> dict[str, object]:
    return {"nodeId": 1, "sourceId": "/a", "created": NOW - k * 1000, "samples": {"i": {"w": float(k)}}, **over}


def test_an_object_an_array_and_json_lines_give_the_same_datums() -> None:
    one = parse_body(json.dumps(datum(1), indent=2).encode(), NOW)  # pretty-printed, over lines
    array = parse_body(json.dumps([datum(1), datum(2)]).encode(), NOW)
    lines = parse_body("\n".join(json.dumps(datum(k)) for k in (1, 2)).encode(), NOW)
    assert not (one.problems or array.problems or lines.problems)
    assert [d.created_ms for d in one.datums] == [NOW - 1000]
    assert array.datums == lines.datums and len(array.datums) == 2


def test_every_bad_line_is_named_with_its_rule() -> None:
    body = "\n".join([json.dumps(datum(1)), "{oops", json.dumps(datum(3, sourceId="")), "[1]"]).encode()
    got = parse_body(body, NOW)
    assert {(p.line, p.rule) for p in got.problems} == {
        (2, "json.syntax"),
        (3, "source_id.empty"),
        (4, "json.not_object"),
    }
    assert parse_body(b"  \n", NOW).problems[0].rule == "body.empty"
    assert parse_body(b"\xff", NOW).problems[0].rule == "json.syntax"


def test_a_lone_surrogate_in_an_array_element_is_refused_as_in_a_line() -> None:
    """An array is decoded whole; its elements must meet the same rules as lines, the lone
    surrogate escape included (the element was re-encoded without its escape before, and passed)."""
    bad = '{"nodeId": 1, "sourceId": "/a\\ud800", "created": ' + str(NOW) + ', "samples": {"i": {"w": 1}}}'
    assert [p.rule for p in parse_body(bad.encode(), NOW).problems] == ["json.lone_surrogate"]
    assert [(p.line, p.rule) for p in parse_body(f"[{json.dumps(datum(1))}, {bad}]".encode(), NOW).problems] == [
        (2, "json.lone_surrogate")
    ]
