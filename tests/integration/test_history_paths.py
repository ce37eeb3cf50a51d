"""The history log's two writing paths against a real PostgreSQL, case by case: apply_event
(one transaction per event), import_events with the whole batch (answered from its in-memory
replay) and import_events one event at a time (answered from what the database holds). All
three drive processors.history_apply.apply_step and must give the same outcomes and log."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.metadata import MetadataEvent, parse_event
from sinks import history
from sinks.history import ApplyResult
from tests.integration.test_history import (
    AT_13,
    AT_23,
    RETRIED,
    SCRIPT,
    T,
    event_of,
    republished,
    snapshot,
)

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
Path = Callable[[Conn, Sequence[MetadataEvent], Sequence[datetime] | None], list[ApplyResult]]


def by_apply_event(
    conn: Conn, events: Sequence[MetadataEvent], tx_times: Sequence[datetime] | None = None
) -> list[ApplyResult]:
    return [
        history.apply_event(conn, e, tx_time=None if tx_times is None else tx_times[i]) for i, e in enumerate(events)
    ]


def by_import(
    conn: Conn, events: Sequence[MetadataEvent], tx_times: Sequence[datetime] | None = None
) -> list[ApplyResult]:
    return history.import_events(conn, events, tx_times)


def by_import_each(
    conn: Conn, events: Sequence[MetadataEvent], tx_times: Sequence[datetime] | None = None
) -> list[ApplyResult]:
    return [
        history.import_events(conn, [e], None if tx_times is None else [tx_times[i]])[0] for i, e in enumerate(events)
    ]


PATHS = {"apply_event": by_apply_event, "import_events": by_import, "import_events_each": by_import_each}


@pytest.fixture(params=sorted(PATHS))
def path(request: pytest.FixtureRequest) -> Path:
    return PATHS[request.param]


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[Conn]:
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        history.migrate(c)
        yield c


def outcomes(results: Sequence[ApplyResult]) -> list[tuple[str, str]]:
    return [(r.status, r.rule) for r in results]


def log(conn: Conn, entity: str | None = None, key: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    return [(r["event_id"], r["status"], r["changed"], r["rule"]) for r in history.transactions(conn, entity, key)]


def site(name: Any = "Farm", site_id: str = "s1", event_id: int = 1, **value: Any) -> MetadataEvent:
    return parse_event(
        {
            "event_id": str(uuid.UUID(int=event_id)),
            "entity": "site",
            "key": {"site_id": site_id},
            "op": "upsert",
            "value": {"name": name, **value},
            "author": "alice",
            "comment": "",
            "produced_at": "2025-01-01T00:00:00Z",
        }
    )


# --- the scripted history, and its replay --------------------------------------------------------


def test_script_gives_the_same_outcomes_states_and_log(conn: Conn, path: Path) -> None:
    results = path(conn, [event_of(s) for s in SCRIPT], [T(s[0]) for s in SCRIPT])
    assert outcomes(results) == [(s[7], s[8] if len(s) > 8 else "") for s in SCRIPT]
    assert [r.tx_time for r in results] == [T(s[0]) for s in SCRIPT]
    assert [r.changed for r in results] == [s[7] == "applied" and s[0] != 25 for s in SCRIPT]
    assert snapshot(conn, T(13)) == AT_13
    assert snapshot(conn, T(100)) == AT_23
    assert [(r["tx_time"], r["status"], r["rule"]) for r in history.transactions(conn)] == [
        (T(s[0]), s[7], s[8] if len(s) > 8 else None) for s in SCRIPT
    ]
    # again: applied steps are duplicates, refused ones are tried again
    again = path(conn, [event_of(s) for s in SCRIPT], [T(200 + s[0]) for s in SCRIPT])
    assert outcomes(again) == [RETRIED.get(s[0], ("duplicate", "event.duplicate")) for s in SCRIPT]
    assert snapshot(conn, T(100)) == AT_23
    assert len(history.transactions(conn)) == len(SCRIPT) + len(RETRIED)


def test_republished_is_a_duplicate_other_content_is_id_reused(conn: Conn, path: Path) -> None:
    first = site()
    assert outcomes(path(conn, [first], None)) == [("applied", "")]
    applied_tx = history.transactions(conn)[0]["tx_id"]
    results = path(
        conn,
        [
            republished(first, author="carol", comment="again"),
            republished(first, value={"name": "Elsewhere"}),
            republished(first, op="delete", value=None),
        ],
        None,
    )
    assert outcomes(results) == [
        ("duplicate", "event.duplicate"),
        ("refused", "event.id_reused"),
        ("refused", "event.id_reused"),
    ]
    assert [r.tx_id for r in results] == [applied_tx] * 3
    assert len(history.transactions(conn)) == 1  # nothing recorded


def test_a_refused_id_is_tried_again_and_spent_once_applied(conn: Conn, path: Path) -> None:
    hp9 = event_of(SCRIPT[23])  # equipment at site "nowhere"
    nowhere = site("Nowhere", "nowhere", event_id=99)
    results = path(conn, [hp9, hp9, nowhere, republished(hp9), republished(hp9)], None)
    assert outcomes(results) == [
        ("refused", "reference.missing"),
        ("refused", "reference.missing"),
        ("applied", ""),
        ("applied", ""),
        ("duplicate", "event.duplicate"),
    ]
    assert results[4].tx_id == results[3].tx_id
    assert [r[1] for r in log(conn, "equipment", {"equipment_id": "hp-9"})] == ["refused", "refused", "applied"]
    # a reused id is checked against the refused records too
    other = republished(hp9, value={"site_id": "nowhere", "kind": "boiler"})
    assert outcomes(path(conn, [other], None)) == [("refused", "event.id_reused")]


def test_transaction_time_must_move_forward(conn: Conn, path: Path) -> None:
    results = path(conn, [site("A", event_id=1), site("B", event_id=2), site("C", event_id=3)], [T(5), T(5), T(4)])
    assert outcomes(results) == [
        ("applied", ""),
        ("refused", "tx_time.not_after_last_change"),
        ("refused", "tx_time.not_after_last_change"),
    ]
    assert [r.tx_time for r in results] == [T(5), T(5), T(4)]  # refusals logged at their time
    later = path(conn, [site("B", event_id=2)], None)  # not spent: applies at the clock
    assert outcomes(later) == [("applied", "")] and later[0].tx_time is not None
    assert later[0].tx_time > T(5)


# --- where the two paths disagreed before the apply step was shared -------------------------------


def test_a_constraint_the_rules_do_not_know_is_a_refusal(conn: Conn, path: Path) -> None:
    """A write the database refuses (a race the locks should prevent, or a constraint added by
    hand) is a refusal naming the constraint, in both paths. import_events raised and dropped
    the whole batch."""
    conn.execute(
        "ALTER TABLE history.versions ADD CONSTRAINT no_condemned_sites"
        " CHECK (entity <> 'site' OR value->>'name' IS DISTINCT FROM 'Condemned')"
    )
    events = [
        site("Farm", "s1", 1),
        site("Condemned", "s2", 2),
        site("Barn", "s3", 3),
        site("Condemned", "s1", 4),
        site("Farm House", "s1", 5),
    ]
    results = path(conn, events, [T(1), T(2), T(3), T(4), T(5)])
    refused = ("refused", "constraint.no_condemned_sites")
    assert outcomes(results) == [("applied", ""), refused, ("applied", ""), refused, ("applied", "")]
    assert "refused by the database" in results[1].reason
    assert [r.changed for r in results] == [True, False, True, False, True]
    assert {s.key["site_id"]: s.value["name"] for s in history.state_at(conn, T(10), "site")} == {
        "s1": "Farm House",
        "s3": "Barn",
    }
    assert history.valid_at(conn, "site", {"site_id": "s1"}, T(0), T(4)).value == {  # type: ignore[union-attr]
        "name": "Farm"
    }  # the refused rename closed nothing
    assert [(r[1], r[3]) for r in log(conn)] == [
        ("applied", None),
        (refused[0], refused[1]),
        ("applied", None),
        (refused[0], refused[1]),
        ("applied", None),
    ]
    # the refusal did not spend the id: once the constraint is gone, the event applies
    conn.execute("ALTER TABLE history.versions DROP CONSTRAINT no_condemned_sites")
    assert outcomes(path(conn, [events[1]], None)) == [("applied", "")]


def test_the_same_event_redelivered_with_a_large_float_is_a_duplicate(conn: Conn, path: Path) -> None:
    """jsonb stores 1e23 as the numeric 10**23; apply_event compared what it read back with the
    float and refused a true re-delivery as event.id_reused (a batch of import_events compared
    the two events and said duplicate)."""
    big = site("Farm", area_m2=1e23)
    results = path(conn, [big, republished(big)], None)
    assert outcomes(results) == [("applied", ""), ("duplicate", "event.duplicate")]
    # restating it is no change either, whether the row was read back from jsonb or not
    restated = path(conn, [site("Farm", event_id=2, area_m2=1e23)], None)
    assert [(r.status, r.changed) for r in restated] == [("applied", False)]


def test_numbers_that_differ_beyond_float_precision_are_other_content(conn: Conn, path: Path) -> None:
    """99999999999999991611392 == 1e23 in Python (the float's exact value) but not in JSON or
    jsonb: a batch of import_events took the second for a duplicate, apply_event refused it."""
    big = site("Farm", area_m2=1e23)
    near = site("Farm", area_m2=99999999999999991611392)
    assert outcomes(path(conn, [big, near], None)) == [("applied", ""), ("refused", "event.id_reused")]


def test_true_is_not_the_number_one(conn: Conn, path: Path) -> None:
    """True == 1 in Python: both paths took {"heated": 1} for a re-delivery of {"heated": true}
    (duplicate) and for a restatement of it (no new version)."""
    heated = site("Farm", heated=True)
    assert outcomes(path(conn, [heated, site("Farm", heated=1)], None)) == [
        ("applied", ""),
        ("refused", "event.id_reused"),
    ]
    results = path(conn, [site("Farm", event_id=2, heated=1)], None)
    assert [(r.status, r.changed) for r in results] == [("applied", True)]
    now = history.valid_at(conn, "site", {"site_id": "s1"}, T(0))
    assert now is not None and now.value["heated"] == 1 and now.value["heated"] is not True


# --- the equality the step uses is jsonb's --------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**25), 10**25)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_characters="\x00"), max_size=3),  # jsonb has no \u0000
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    max_leaves=8,
)
# values built to be near each other: the same shapes with numbers of the same magnitudes
near_pairs = st.sampled_from(
    [1, 1.0, True, 0, 0.0, False, None, 1e23, 10**23, 99999999999999991611392, 0.1, 2**53, 2.0**53, 2**53 + 1, "1"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=json_values | near_pairs, b=json_values | near_pairs)
def test_same_json_agrees_with_jsonb_equality(conn: Conn, a: Any, b: Any) -> None:
    from processors.metadata import same_json  # imported here: the module ran on older code too

    row = conn.execute(
        "SELECT %s::jsonb = %s::jsonb", (psycopg.types.json.Jsonb(a), psycopg.types.json.Jsonb(b))
    ).fetchone()
    assert row is not None
    assert same_json(a, b) is row[0], (a, b)
    back = conn.execute("SELECT %s::jsonb", (psycopg.types.json.Jsonb(a),)).fetchone()
    assert back is not None and same_json(a, back[0])


def test_results_are_stamped_with_utc(conn: Conn, path: Path) -> None:
    r = path(conn, [site()], None)[0]
    assert r.tx_time is not None and r.tx_time.utcoffset() == UTC.utcoffset(None)
