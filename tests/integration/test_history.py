"""The metadata history log against a real PostgreSQL: a scripted history replayed, then
state-at-T, diff and valid-at answers checked against values written by hand."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from pipeline.history.events import datamodel_events
from processors.binding import Catalog, parse_binding
from processors.datamodel import parse_datamodel
from processors.metadata import Interval, KeyValue, MetadataEvent, key_text, parse_event, value_at
from processors.security_policy import SecurityPolicy, TokenType
from processors.tokens import TOKEN_ENTITY, make_token
from sinks import history
from sinks.history import ApplyResult
from tests.samples import health_model

pytestmark = pytest.mark.integration

QRATING = {
    "version": "1.0.0",
    "max_score": 1000,
    "min_required": {"value": 30, "label": "LOW"},
    "min_desired": {"value": 50, "label": "OK"},
    "ideal": {"value": 70, "label": "IDEAL"},
    "max_desired": {"value": 120, "label": "HIGH"},
    "max_allowed": {"value": 180, "label": "DANGER"},
}
Q1 = {"qrating": QRATING}
Q2 = {
    "qrating": {**QRATING, "version": "2.0.0", "max_allowed": {"value": 200, "label": "DANGER"}},
    "storage": {"period": "DAYS", "total": 90},
}
HEALTH = health_model(QRATING)
SRC: dict[str, KeyValue] = {"node_id": 1, "source_id": "/S1/HP1"}
BIND: dict[str, KeyValue] = {"node_id": 1, "source_pattern": "/S1/**", "valid_from_ms": None}
TPL: dict[str, KeyValue] = {"datamodel": "health", "datastream": "health.heart.rate"}
N1: dict[str, KeyValue] = {"node_id": 1}
ORG: dict[str, KeyValue] = {"org_id": 7}


def d(day: str) -> datetime:
    """A data time (valid time): a date in 2024."""
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


BASE = datetime(2025, 1, 1, tzinfo=UTC)


def T(i: int) -> datetime:
    """Transaction time of script step i: one hour apart."""
    return BASE + timedelta(hours=i)


def iso(x: datetime | None) -> str | None:
    return None if x is None else x.isoformat()


# step -> (entity, key, op, value, valid_from, valid_to, expected status[, rule])
SCRIPT: list[tuple[Any, ...]] = [
    (1, "organization", ORG, "upsert", {"name": "ACME"}, None, None, "applied"),
    (2, "node", N1, "upsert", {"name": "gw-1", "org_id": 7}, None, None, "applied"),
    (3, "site", {"site_id": "s1"}, "upsert", {"name": "Farmhouse"}, None, None, "applied"),
    (
        4,
        "equipment",
        {"equipment_id": "hp-1"},
        "upsert",
        {"site_id": "s1", "kind": "heat_pump", "model": "WF-5"},
        None,
        None,
        "applied",
    ),
    (5, "datamodel", {"identifier": "health"}, "upsert", HEALTH, None, None, "applied"),
    (6, "source", SRC, "upsert", {"equipment_id": "hp-1"}, None, None, "applied"),
    (
        7,
        "source_binding",
        BIND,
        "upsert",
        {"datamodel": "health", "properties": {"rate": "health.heart.rate"}},
        None,
        None,
        "applied",
    ),
    (8, "node_timezone", N1, "set_valid", {"tz": "Europe/Oslo"}, d("2024-01-01"), None, "applied"),
    (9, "datastream_template", TPL, "set_valid", Q1, None, None, "applied"),
    (10, "site", {"site_id": "s1"}, "upsert", {"name": "Farm House"}, None, None, "applied"),
    (11, "organization", ORG, "upsert", {"name": "ACME Corp"}, None, None, "applied"),
    (12, "node_timezone", N1, "close", None, d("2024-01-01"), d("2024-07-01"), "applied"),
    (13, "node_timezone", N1, "set_valid", {"tz": "UTC"}, d("2024-07-01"), None, "applied"),
    (14, "node_timezone", N1, "set_valid", {"tz": "CET"}, d("2024-06-01"), d("2024-08-01"), "refused", "valid.overlap"),
    (15, "source", SRC, "upsert", {"equipment_id": "hp-2"}, None, None, "refused", "static.immutable"),
    (
        16,
        "datamodel",
        {"identifier": "broken"},
        "upsert",
        {"identifier": "broken", "name": "b", "description": "b", "categories": 3},
        None,
        None,
        "refused",
        "datamodel.invalid",
    ),
    (17, "datastream_template", TPL, "replace", Q2, d("2024-03-01"), None, "applied"),
    (18, "source", SRC, "delete", None, None, None, "applied"),
    (19, "source", SRC, "upsert", {"equipment_id": "hp-2"}, None, None, "applied"),
    (
        20,
        "equipment",
        {"equipment_id": "hp-1"},
        "upsert",
        {"site_id": "s1", "kind": "heat_pump", "model": "WF-7"},
        None,
        None,
        "applied",
    ),
    (21, "node_timezone", N1, "correct", {"tz": "Europe/Berlin"}, d("2024-07-01"), None, "applied"),
    (22, "site", {"site_id": "s2"}, "upsert", {"name": "Barn"}, None, None, "applied"),
    (23, "site", {"site_id": "s2"}, "delete", None, None, None, "applied"),
    (
        24,
        "equipment",
        {"equipment_id": "hp-9"},
        "upsert",
        {"site_id": "nowhere", "kind": "heat_pump"},
        None,
        None,
        "refused",
        "reference.missing",
    ),
    (25, "site", {"site_id": "s1"}, "upsert", {"name": "Farm House"}, None, None, "applied"),
]


def event_of(step: tuple[Any, ...]) -> MetadataEvent:
    i, entity, key, op, value, vf, vt = step[:7]
    return parse_event(
        {
            "event_id": str(uuid.UUID(int=i)),
            "entity": entity,
            "key": key,
            "op": op,
            "value": value,
            "valid_from": iso(vf),
            "valid_to": iso(vt),
            "author": "alice" if i % 2 else "bob",
            "comment": f"step {i}",
            "produced_at": iso(T(i) - timedelta(minutes=5)),
        }
    )


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        history.migrate(c)
        yield c


@pytest.fixture
def replayed(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    for step in SCRIPT:
        result = history.apply_event(conn, event_of(step), tx_time=T(step[0]))
        assert result.status == step[7], (step[0], result)
        if result.status == "refused":
            assert result.rule == step[8], (step[0], result)
    return conn


def snapshot(
    conn: psycopg.Connection[Any], at: datetime, entity: str | None = None
) -> dict[tuple[str, str, str | None, str | None], Any]:
    out = {}
    for s in history.state_at(conn, at, entity):
        vf = vt = None
        if s.valid is not None:
            vf, vt = iso(s.valid.start), iso(s.valid.end)
        out[(s.entity, key_text(s.key), vf, vt)] = s.value
    return out


K_ORG, K_N1, K_S1, K_S2 = '{"org_id":7}', '{"node_id":1}', '{"site_id":"s1"}', '{"site_id":"s2"}'
K_HP1, K_DM = '{"equipment_id":"hp-1"}', '{"identifier":"health"}'
K_SRC = '{"node_id":1,"source_id":"/S1/HP1"}'
K_BIND = '{"node_id":1,"source_pattern":"/S1/**","valid_from_ms":null}'
K_TPL = '{"datamodel":"health","datastream":"health.heart.rate"}'
JAN, MAR, JUL = (iso(d(x)) for x in ("2024-01-01", "2024-03-01", "2024-07-01"))
Snapshot = dict[tuple[str, str, str | None, str | None], Any]
ORG_NOW: Snapshot = {("organization", K_ORG, None, None): {"name": "ACME Corp"}}
BINDING = {"datamodel": "health", "properties": {"rate": "health.heart.rate"}}

AT_9: Snapshot = {
    **ORG_NOW,  # master data: the latest state, whatever the time
    ("node", K_N1, None, None): {"name": "gw-1", "org_id": 7},
    ("site", K_S1, None, None): {"name": "Farmhouse"},
    ("equipment", K_HP1, None, None): {"site_id": "s1", "kind": "heat_pump", "model": "WF-5"},
    ("datamodel", K_DM, None, None): HEALTH,
    ("source", K_SRC, None, None): {"equipment_id": "hp-1"},
    ("source_binding", K_BIND, None, None): BINDING,
    ("node_timezone", K_N1, JAN, None): {"tz": "Europe/Oslo"},
    ("datastream_template", K_TPL, None, None): Q1,
}
AT_13 = {
    **{k: v for k, v in AT_9.items() if k[0] not in ("site", "node_timezone")},
    ("site", K_S1, None, None): {"name": "Farm House"},
    ("node_timezone", K_N1, JAN, JUL): {"tz": "Europe/Oslo"},
    ("node_timezone", K_N1, JUL, None): {"tz": "UTC"},
}
AT_17 = {
    **{k: v for k, v in AT_13.items() if k[0] != "datastream_template"},
    ("datastream_template", K_TPL, None, MAR): Q1,
    ("datastream_template", K_TPL, MAR, None): Q2,
}
AT_18 = {k: v for k, v in AT_17.items() if k[0] != "source"}
AT_23 = {
    **{k: v for k, v in AT_18.items() if k[0] not in ("equipment", "node_timezone")},
    ("source", K_SRC, None, None): {"equipment_id": "hp-2"},
    ("equipment", K_HP1, None, None): {"site_id": "s1", "kind": "heat_pump", "model": "WF-7"},
    ("node_timezone", K_N1, JAN, JUL): {"tz": "Europe/Oslo"},
    ("node_timezone", K_N1, JUL, None): {"tz": "Europe/Berlin"},
}


def test_state_at_many_points(replayed: psycopg.Connection[Any]) -> None:
    c = replayed
    assert snapshot(c, T(0)) == ORG_NOW  # before anything: master data only, latest state
    assert snapshot(c, T(1)) == ORG_NOW
    assert snapshot(c, T(2)) == {**ORG_NOW, ("node", K_N1, None, None): AT_9[("node", K_N1, None, None)]}
    assert snapshot(c, T(9)) == AT_9
    assert snapshot(c, T(9) + timedelta(minutes=59)) == AT_9
    assert snapshot(c, T(10))[("site", K_S1, None, None)] == {"name": "Farm House"}
    at_12 = snapshot(c, T(12))
    assert at_12[("node_timezone", K_N1, JAN, JUL)] == {"tz": "Europe/Oslo"}
    assert ("node_timezone", K_N1, JAN, None) not in at_12
    assert snapshot(c, T(13)) == AT_13
    assert snapshot(c, T(16)) == AT_13  # refused steps 14, 15, 16 changed nothing
    assert snapshot(c, T(17)) == AT_17
    assert snapshot(c, T(18)) == AT_18  # static source deleted
    at_19 = snapshot(c, T(19))
    assert at_19[("source", K_SRC, None, None)] == {"equipment_id": "hp-2"}  # re-created
    assert snapshot(c, T(22)) == {**AT_23, ("site", K_S2, None, None): {"name": "Barn"}}
    assert snapshot(c, T(23)) == AT_23
    assert snapshot(c, T(100)) == AT_23  # step 24 refused, step 25 restated a value
    assert snapshot(c, datetime.now(UTC)) == AT_23
    # filtered by entity; known_since is the transaction time of the version
    tz_now = history.state_at(c, T(100), "node_timezone")
    assert [(s.valid, s.known_since) for s in tz_now] == [
        (Interval(d("2024-01-01"), d("2024-07-01")), T(12)),
        (Interval(d("2024-07-01"), None), T(21)),
    ]
    assert [s.value for s in history.state_at(c, T(5), "site", {"site_id": "s1"})] == [{"name": "Farmhouse"}]


def test_diff_between_states(replayed: psycopg.Connection[Any]) -> None:
    c = replayed

    def summary(
        t0: datetime, t1: datetime, entity: str | None = None, key: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        return [
            (
                ch.kind,
                ch.entity,
                key_text(ch.key),
                iso(ch.valid_from),
                None if ch.before is None else ch.before.value,
                None if ch.after is None else ch.after.value,
            )
            for ch in history.diff(c, t0, t1, entity, key)
        ]

    assert summary(T(9), T(13)) == [
        ("changed", "node_timezone", K_N1, JAN, {"tz": "Europe/Oslo"}, {"tz": "Europe/Oslo"}),
        ("added", "node_timezone", K_N1, JUL, None, {"tz": "UTC"}),
        ("changed", "site", K_S1, None, {"name": "Farmhouse"}, {"name": "Farm House"}),
    ]  # the organization's correction at step 11 is master data: never a change
    closed = history.diff(c, T(9), T(13), "node_timezone")[0]
    assert closed.before is not None and closed.after is not None
    assert closed.before.valid == Interval(d("2024-01-01"), None)
    assert closed.after.valid == Interval(d("2024-01-01"), d("2024-07-01"))
    assert summary(T(13), T(16)) == []  # only refusals in between
    assert summary(T(16), T(19)) == [
        ("changed", "datastream_template", K_TPL, None, Q1, Q1),  # trimmed to [-inf, Mar)
        ("added", "datastream_template", K_TPL, MAR, None, Q2),
        ("changed", "source", K_SRC, None, {"equipment_id": "hp-1"}, {"equipment_id": "hp-2"}),
    ]  # delete + re-create of a static entity: net, a changed value
    assert summary(T(17), T(18)) == [("deleted", "source", K_SRC, None, {"equipment_id": "hp-1"}, None)]
    assert summary(T(18), T(19), "source") == [("added", "source", K_SRC, None, None, {"equipment_id": "hp-2"})]
    assert summary(T(21), T(22)) == [("added", "site", K_S2, None, None, {"name": "Barn"})]
    assert summary(T(21), T(23)) == []  # created and deleted in between: no net change
    assert summary(T(20), T(21), "node_timezone") == [
        ("changed", "node_timezone", K_N1, JUL, {"tz": "UTC"}, {"tz": "Europe/Berlin"})
    ]
    assert summary(T(0), T(100), "site", {"site_id": "s1"}) == [
        ("added", "site", K_S1, None, None, {"name": "Farm House"})
    ]
    assert summary(T(0), T(100), "organization") == []
    assert [ch.kind for ch in history.diff(c, T(0), T(100))] == ["added"] * 10  # = AT_23 - org
    assert summary(T(5), T(5)) == []
    with pytest.raises(ValueError):
        history.diff(c, T(5), T(4))


def test_valid_at_data_time_as_known_at(replayed: psycopg.Connection[Any]) -> None:
    c = replayed

    def tz(data: str, known: datetime | None = None) -> str | None:
        s = history.valid_at(c, "node_timezone", N1, d(data), known)
        return None if s is None else str(s.value["tz"])

    assert tz("2024-03-01") == "Europe/Oslo"
    assert tz("2024-08-01") == "Europe/Berlin"  # corrected at step 21
    assert tz("2024-08-01", T(20)) == "UTC"  # as known before the correction
    assert tz("2024-08-01", T(12)) is None  # closed at step 12, the next one came at 13
    assert tz("2024-08-01", T(11)) == "Europe/Oslo"  # open-ended then
    assert tz("2024-03-01", T(7)) is None  # not known yet
    assert tz("2023-12-31") is None  # before any interval
    assert tz("2024-07-01") == "Europe/Berlin"  # half-open: the start belongs to the interval
    assert tz("2024-06-30T23:59:59") == "Europe/Oslo"

    def tpl(data: str, known: datetime | None = None) -> Any:
        s = history.valid_at(c, "datastream_template", TPL, d(data), known)
        return None if s is None else s.value

    assert tpl("2024-01-15") == Q1
    assert tpl("2024-05-01") == Q2
    assert tpl("2024-05-01", T(16)) == Q1
    assert tpl("1999-05-01") == Q1
    site = history.valid_at(c, "site", {"site_id": "s1"}, d("2024-01-01"), T(5))
    assert site is not None and site.value == {"name": "Farmhouse"} and site.known_since == T(3)
    org = history.valid_at(c, "organization", ORG, d("2024-01-01"), T(2))
    assert org is not None and org.value == {"name": "ACME Corp"}  # master: latest
    assert history.valid_at(c, "source", SRC, d("2024-01-01"), T(18)) is None
    # the valid-at lookup is one scan of the GiST index (entity, key, valid, tx)
    plan = c.execute(
        "EXPLAIN SELECT value FROM history.valid_versions WHERE entity = 'node_timezone'"
        " AND key = '{\"node_id\":1}' AND valid @> '2024-08-01'::timestamptz"
        " AND tx @> '2025-01-02'::timestamptz"
    ).fetchall()
    c.execute("SET enable_seqscan = off")  # tiny table: show the index serves the whole filter
    plan = c.execute(
        "EXPLAIN SELECT value FROM history.valid_versions WHERE entity = 'node_timezone'"
        " AND key = '{\"node_id\":1}' AND valid @> '2024-08-01'::timestamptz"
        " AND tx @> '2025-01-02'::timestamptz"
    ).fetchall()
    text = "\n".join(r[0] for r in plan)
    assert "valid_versions_no_overlap" in text and "Filter" not in text, text


def test_refusals_are_recorded_with_reasons(replayed: psycopg.Connection[Any]) -> None:
    log = history.transactions(replayed)
    assert len(log) == len(SCRIPT)
    refused = {r["tx_time"]: (r["status"], r["rule"]) for r in log if r["status"] == "refused"}
    assert refused == {
        T(14): ("refused", "valid.overlap"),
        T(15): ("refused", "static.immutable"),
        T(16): ("refused", "datamodel.invalid"),
        T(24): ("refused", "reference.missing"),
    }
    by_step = {r["tx_time"]: r for r in log}
    assert by_step[T(11)]["author"] == "alice" and by_step[T(11)]["comment"] == "step 11"
    assert by_step[T(25)]["status"] == "applied" and by_step[T(25)]["changed"] is False
    assert "overlaps [2024-01-01T00:00:00Z, 2024-07-01T00:00:00Z)" in by_step[T(14)]["reason"]
    # master data corrections leave an audit row but no history
    org_log = history.transactions(replayed, "organization", ORG)
    assert [r["tx_time"] for r in org_log] == [T(1), T(11)]


# Replaying the script again: applied steps are duplicates; refused steps are tried again
# (only an applied event spends its id) and refused for the same reasons, except step 15,
# whose value the source has since step 19 (static: an unchanged re-statement is applied).
RETRIED = {
    14: ("refused", "valid.overlap"),
    15: ("applied", ""),
    16: ("refused", "datamodel.invalid"),
    24: ("refused", "reference.missing"),
}


def test_replaying_is_idempotent(replayed: psycopg.Connection[Any]) -> None:
    c = replayed
    before = snapshot(c, T(100)), snapshot(c, T(13)), len(history.transactions(c))
    for step in SCRIPT:
        r = history.apply_event(c, event_of(step), tx_time=T(200 + step[0]))
        assert (r.status, r.rule) == RETRIED.get(step[0], ("duplicate", "event.duplicate")), r
        assert not r.changed
    # nothing changed but the log: one row more per retried refusal
    assert (snapshot(c, T(100)), snapshot(c, T(13)), len(history.transactions(c))) == (
        before[0],
        before[1],
        before[2] + len(RETRIED),
    )
    # the same event_id with another body is refused, not silently taken for a duplicate
    other = parse_event({**event_of(SCRIPT[2]).as_dict(), "value": {"name": "Elsewhere"}})
    r = history.apply_event(c, other)
    assert (r.status, r.rule) == ("refused", "event.id_reused")
    assert snapshot(c, datetime.now(UTC)) == AT_23


def test_transaction_time_must_move_forward(replayed: psycopg.Connection[Any]) -> None:
    e = parse_event({**event_of(SCRIPT[2]).as_dict(), "event_id": str(uuid.uuid4()), "value": {"name": "Late"}})
    r = history.apply_event(replayed, e, tx_time=T(10))  # s1 last changed at step 10
    assert (r.status, r.rule) == ("refused", "tx_time.not_after_last_change")
    again = history.apply_event(replayed, e, tx_time=T(9))  # refused again: a second log row
    assert (again.status, again.rule) == ("refused", "tx_time.not_after_last_change")
    assert again.tx_id != r.tx_id
    r = history.apply_event(replayed, e)  # the refusal did not spend the id; now: the clock
    assert r.status == "applied" and r.changed
    assert r.tx_time is not None and r.tx_time > T(100)
    assert history.valid_at(replayed, "site", {"site_id": "s1"}, d("2024-01-01")).value == {  # type: ignore[union-attr]
        "name": "Late"
    }


def test_same_event_from_two_writers_applies_once(conn: psycopg.Connection[Any], pg_dsn: str) -> None:
    history.apply_event(conn, event_of(SCRIPT[2]), tx_time=T(3))
    e = parse_event({**event_of(SCRIPT[9]).as_dict(), "event_id": str(uuid.uuid4())})
    results: list[ApplyResult] = []
    barrier = threading.Barrier(4)

    def write() -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            barrier.wait()
            results.append(history.apply_event(c, e))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(r.status for r in results) == ["applied", "duplicate", "duplicate", "duplicate"]
    assert [s.value for s in history.state_at(conn, datetime.now(UTC), "site")] == [{"name": "Farm House"}]


def test_current_catalog_feeds_the_validators(replayed: psycopg.Connection[Any]) -> None:
    cat = history.current_catalog(replayed)
    assert cat.tx_high_water == history.catalog_version(replayed) > 0
    assert set(cat.datamodels) == {"health"}
    dm = cat.datamodels["health"]
    assert dm.doc == HEALTH and dm.version == "1.2"
    assert [(tv.valid, tv.value) for tv in dm.templates["health.heart.rate"]] == [
        (Interval(None, d("2024-03-01")), Q1),
        (Interval(d("2024-03-01"), None), Q2),
    ]
    assert cat.template_at("health", "health.heart.rate", d("2024-02-01")) == Q1
    assert cat.template_at("health", "health.heart.rate", d("2024-04-01")) == Q2
    assert value_at(cat.node_timezones[1], d("2024-02-01")) == {"tz": "Europe/Oslo"}
    assert value_at(cat.node_timezones[1], d("2024-09-01")) == {"tz": "Europe/Berlin"}
    assert cat.bindings == ({**BIND, **BINDING},)
    # what processors.binding builds its resolver from
    resolver = Catalog(
        [parse_datamodel(m.doc) for m in cat.datamodels.values()], [parse_binding(b) for b in cat.bindings]
    )
    found = resolver.resolve(1, "/S1/HP1")
    assert found is not None and found.datamodel.identifier == "health"


def test_migrations_rerun_and_refuse_edits(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    assert history.migrate(conn) == []
    assert history.migrate(conn) == []
    versions = [r[0] for r in conn.execute("SELECT version FROM history.schema_migrations ORDER BY version")]
    assert versions == [p.name.split("_")[0] for p in history.migration_files()]
    edited = tmp_path / "migrations"
    shutil.copytree(history.MIGRATIONS_DIR, edited)
    first = history.migration_files(edited)[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(history.MigrationError, match="changed after it was applied"):
        history.migrate(conn, edited)


def test_concurrent_migrations_across_databases(postgres_url: str) -> None:
    """Roles are cluster-wide: several fresh databases migrating at once must all succeed."""
    base = postgres_url.rpartition("/")[0]
    names = [f"t_mig_{uuid.uuid4().hex[:8]}" for _ in range(3)]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        for n in names:
            admin.execute(f'CREATE DATABASE "{n}"')
    errors_seen: list[BaseException] = []
    barrier = threading.Barrier(len(names) * 2)

    def run(name: str) -> None:
        try:
            with psycopg.connect(f"{base}/{name}", autocommit=True) as c:
                barrier.wait()
                history.migrate(c)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors_seen.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in names for _ in range(2)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors_seen == []
        for n in names:
            with psycopg.connect(f"{base}/{n}") as c:
                count = c.execute("SELECT count(*) FROM history.schema_migrations").fetchone()
                assert count == (len(history.migration_files()),)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            for n in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')


def test_reader_role_reads_and_cannot_write(replayed: psycopg.Connection[Any]) -> None:
    c = replayed
    c.execute("SET ROLE pipeline_reader")
    try:
        assert snapshot(c, T(13)) == AT_13
        assert history.current_catalog(c).datamodels.keys() == {"health"}
        for statement in (
            "INSERT INTO history.master_data (entity, key, value, tx_id, updated_at)"
            " VALUES ('organization', '{}', '{}', 1, now())",
            "UPDATE history.versions SET value = '{}'",
            "DELETE FROM history.transactions",
            "CREATE TABLE history.sneaky (x int)",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                c.execute(statement)
        e = parse_event(
            {**event_of(SCRIPT[2]).as_dict(), "event_id": str(uuid.uuid4()), "value": {"name": "Reader was here"}}
        )
        with pytest.raises(errors.InsufficientPrivilege):
            history.apply_event(c, e)
    finally:
        c.execute("RESET ROLE")
    assert snapshot(c, datetime.now(UTC)) == AT_23


def _token_rows(c: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows of the security_token entity per history table, as the current role sees them."""
    tables = ("transactions", "versions", "valid_versions", "master_data")
    return {
        t: c.execute(f"SELECT count(*) FROM history.{t} WHERE entity = %s", (TOKEN_ENTITY,)).fetchone()[0]  # type: ignore[index]
        for t in tables
    }


def test_reader_role_cannot_read_token_digests(replayed: psycopg.Connection[Any]) -> None:
    """A token's stored digest signs as its secret would (SNWS2 keys the HMAC with it): the read-only
    role sees every other row of the log, none of a token's; the token reader (the HTTP API) and
    the owner see them. Fails without row-level security (the reader then counts 2 and 1)."""
    c = replayed
    made = make_token(TokenType.READ_NODE_DATA, SecurityPolicy(node_ids=frozenset({1})), lambda a: a[0])
    refused_too = {**made.value, "secret": "x"}  # refused (a secret is never stored), still logged
    for value in (made.value, refused_too):
        e = parse_event(
            {
                "event_id": str(uuid.uuid4()),
                "entity": TOKEN_ENTITY,
                "key": {"token_id": made.token_id},
                "op": "upsert",
                "value": value,
                "author": "test",
                "produced_at": datetime.now(UTC).isoformat(),
            }
        )
        history.apply_event(c, e)
    owner = _token_rows(c)
    assert history.sees_tokens(c)
    assert owner["transactions"] == 2 and owner["versions"] == 1
    assert made.token_id in history.current_tokens(c)
    others = c.execute("SELECT count(*) FROM history.versions WHERE entity <> %s", (TOKEN_ENTITY,)).fetchone()
    try:
        c.execute("SET ROLE pipeline_reader")
        assert _token_rows(c) == dict.fromkeys(owner, 0)
        assert not history.sees_tokens(c)
        with pytest.raises(history.TokensHidden, match="pipeline_token_reader"):
            history.current_tokens(c)  # not an empty list, which would read as "no token exists"
        from pipeline.api.access import _load_tokens

        with pytest.raises(errors.InsufficientPrivilege, match="pipeline_token_reader"):
            _load_tokens(c)  # the API says why, rather than answering every token 401
        assert c.execute("SELECT count(*) FROM history.versions").fetchone() == others
        assert snapshot(c, T(13)) == AT_13
        c.execute("RESET ROLE")
        c.execute("SET ROLE pipeline_token_reader")
        assert _token_rows(c) == owner
        assert made.token_id in history.current_tokens(c)
        assert history.sees_tokens(c)
        assert _load_tokens(c).keys() == {made.token_id}
    finally:
        c.execute("RESET ROLE")


def test_writer_role_appends_but_cannot_erase_history(replayed: psycopg.Connection[Any]) -> None:
    c = replayed
    c.execute("SET ROLE pipeline_writer")
    try:
        e = parse_event(
            {**event_of(SCRIPT[2]).as_dict(), "event_id": str(uuid.uuid4()), "value": {"name": "Written by the writer"}}
        )
        assert history.apply_event(c, e).status == "applied"
        o = parse_event({**event_of(SCRIPT[0]).as_dict(), "event_id": str(uuid.uuid4()), "op": "delete", "value": None})
        assert history.apply_event(c, o).status == "applied"  # master data: really gone
        for statement in (
            "DELETE FROM history.versions",
            "DELETE FROM history.transactions",
            "UPDATE history.versions SET value = '{}'",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                c.execute(statement)
    finally:
        c.execute("RESET ROLE")
    assert snapshot(c, T(13)) == {k: v for k, v in AT_13.items() if k[0] != "organization"}


def test_bulk_import_with_copy_matches_event_by_event(postgres_url: str, replayed: psycopg.Connection[Any]) -> None:
    """import_events (binary COPY, one transaction) gives the same answers as apply_event."""
    base = postgres_url.rpartition("/")[0]
    name = f"t_imp_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(f"{base}/{name}", autocommit=True) as c:
            history.migrate(c)
            events = [event_of(s) for s in SCRIPT]
            results = history.import_events(c, events, [T(s[0]) for s in SCRIPT])
            assert [(r.status, r.rule or None) for r in results] == [
                (s[7], s[8] if len(s) > 8 else None) for s in SCRIPT
            ]
            for i in range(0, 27):
                for probe in (T(i), T(i) + timedelta(minutes=30)):
                    assert snapshot(c, probe) == snapshot(replayed, probe), i
            assert history.diff(c, T(9), T(23)) == history.diff(replayed, T(9), T(23))

            def log(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
                return [
                    (r["event_id"], r["tx_time"], r["status"], r["changed"], r["rule"])
                    for r in history.transactions(conn)
                ]

            assert log(c) == log(replayed)
            again = history.import_events(c, events)
            assert [(r.status, r.rule) for r in again] == [
                RETRIED.get(s[0], ("duplicate", "event.duplicate")) for s in SCRIPT
            ]
            # a later event-by-event change continues from the imported state
            e = parse_event(
                {
                    **event_of(SCRIPT[12]).as_dict(),
                    "event_id": str(uuid.uuid4()),
                    "op": "correct",
                    "value": {"tz": "Asia/Tokyo"},
                }
            )
            assert history.apply_event(c, e).status == "applied"
            now = history.valid_at(c, "node_timezone", N1, d("2024-09-01"))
            assert now is not None and now.value == {"tz": "Asia/Tokyo"}
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_racing_overlapping_intervals_one_wins(conn: psycopg.Connection[Any], pg_dsn: str) -> None:
    """Two writers set overlapping intervals on one key at once: one applies, one is refused."""
    history.apply_event(conn, event_of(SCRIPT[1]), tx_time=T(2))  # node 1
    events = [
        parse_event({**event_of(SCRIPT[7]).as_dict(), "event_id": str(uuid.uuid4()), "value": {"tz": zone}})
        for zone in ("Europe/Oslo", "Europe/Paris", "Asia/Tokyo", "UTC")
    ]
    results: list[ApplyResult] = []
    barrier = threading.Barrier(len(events))

    def write(e: MetadataEvent) -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            barrier.wait()
            results.append(history.apply_event(c, e))

    threads = [threading.Thread(target=write, args=(e,)) for e in events]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted((r.status, r.rule) for r in results) == [("applied", "")] + [("refused", "valid.overlap")] * 3
    assert len(history.state_at(conn, datetime.now(UTC), "node_timezone")) == 1


# --- event ids: spent only by an applied event (issue 12) -------------------------------------


def republished(e: MetadataEvent, **changes: Any) -> MetadataEvent:
    """The event sent again later: same id, a new produced_at (and any other changes)."""
    return parse_event({**e.as_dict(), "produced_at": iso(datetime.now(UTC)), **changes})


def test_binding_refused_for_a_missing_datamodel_applies_once_it_exists(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """The datamodel event was lost (acked while PostgreSQL was down), so the binding was
    refused; `pipeline metadata datamodels DIR` run again must bring both in."""
    for step in SCRIPT[:2]:  # organization and node 1
        assert history.apply_event(conn, event_of(step)).status == "applied"
    model_file, bindings_file = tmp_path / "health.json", tmp_path / "bindings.json"
    model_file.write_text(json.dumps(HEALTH), encoding="utf-8")
    bindings_file.write_text(json.dumps({"bindings": [{**BIND, **BINDING}]}), encoding="utf-8")
    first = [parse_event(doc) for doc in datamodel_events([model_file, bindings_file], "ops", "")]
    model, binding = first
    assert (model.entity, binding.entity) == ("datamodel", "source_binding")

    # the datamodel never arrived: the binding is refused, each delivery logged
    for _ in range(2):
        r = history.apply_event(conn, binding)
        assert (r.status, r.rule) == ("refused", "reference.missing"), r
    assert history.current_catalog(conn).bindings == ()

    # published again: same ids (uuid5 of the content), later produced_at, another comment
    again = [
        parse_event({**doc, "produced_at": iso(datetime.now(UTC) + timedelta(minutes=5))})
        for doc in datamodel_events([model_file, bindings_file], "ops", "re-published")
    ]
    assert [e.event_id for e in again] == [model.event_id, binding.event_id]
    assert [e.produced_at for e in again] != [e.produced_at for e in first]
    assert [(r.status, r.rule) for r in history.apply_events(conn, again)] == [("applied", ""), ("applied", "")]

    catalog = history.current_catalog(conn)
    assert set(catalog.datamodels) == {"health"}
    assert catalog.bindings == ({**BIND, **BINDING},)
    log = history.transactions(conn, "source_binding", BIND)
    assert [(r["event_id"], r["status"], r["rule"], r["comment"]) for r in log] == [
        (binding.event_id, "refused", "reference.missing", ""),
        (binding.event_id, "refused", "reference.missing", ""),
        (binding.event_id, "applied", None, "re-published"),
    ]
    # a third publication is a duplicate of the applied one: nothing more is written
    third = [republished(e) for e in again]
    assert [(r.status, r.rule, r.tx_id) for r in history.apply_events(conn, third)] == [
        ("duplicate", "event.duplicate", history.transactions(conn, "datamodel", {"identifier": "health"})[0]["tx_id"]),
        ("duplicate", "event.duplicate", log[-1]["tx_id"]),
    ]
    assert len(history.transactions(conn, "source_binding", BIND)) == 3


def test_republished_event_is_a_duplicate_other_content_is_id_reused(replayed: psycopg.Connection[Any]) -> None:
    c = replayed
    before = history.transactions(c)
    site = event_of(SCRIPT[2])  # applied at step 3
    tz = event_of(SCRIPT[7])  # time-dependent, applied at step 8
    original = {r["event_id"]: r["tx_id"] for r in before}
    # same content, sent later by someone else with another comment: the same event
    for e in (site, tz):
        again = republished(e, author="carol", comment="sent again")
        r = history.apply_event(c, again)
        assert (r.status, r.rule, r.tx_id) == ("duplicate", "event.duplicate", original[e.event_id]), r
    # another content under a used id: refused, not recorded
    for other in (
        republished(site, value={"name": "Elsewhere"}),
        republished(site, op="delete", value=None),
        republished(tz, valid_from=iso(d("2024-02-01"))),
        republished(event_of(SCRIPT[23]), value={"site_id": "s1", "kind": "heat_pump"}),  # refused
    ):
        r = history.apply_event(c, other)
        assert (r.status, r.rule) == ("refused", "event.id_reused"), (other, r)
    # the bulk path answers the same
    results = history.import_events(c, [republished(site), republished(site, value={"name": "X"})])
    assert [(r.status, r.rule) for r in results] == [("duplicate", "event.duplicate"), ("refused", "event.id_reused")]
    assert history.transactions(c) == before
    assert snapshot(c, datetime.now(UTC)) == AT_23


def test_bulk_import_retries_refused_ids(conn: psycopg.Connection[Any]) -> None:
    """import_events: a refused id is tried again, also twice in one import; one applied row."""
    hp9 = event_of(SCRIPT[23])  # equipment at site "nowhere": refused
    nowhere = parse_event(
        {**event_of(SCRIPT[2]).as_dict(), "event_id": str(uuid.uuid4()), "key": {"site_id": "nowhere"}}
    )
    c = conn
    results = history.import_events(c, [hp9, hp9, nowhere, republished(hp9), republished(hp9)])
    assert [(r.status, r.rule) for r in results] == [
        ("refused", "reference.missing"),
        ("refused", "reference.missing"),
        ("applied", ""),
        ("applied", ""),
        ("duplicate", "event.duplicate"),
    ]
    assert [r["status"] for r in history.transactions(c, "equipment", {"equipment_id": "hp-9"})] == [
        "refused",
        "refused",
        "applied",
    ]
    assert results[4].tx_id == results[3].tx_id
    assert history.apply_event(c, hp9).status == "duplicate"


def _event_id_indexes(c: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    constraints = c.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'history.transactions'::regclass AND contype = 'u' ORDER BY conname"
    ).fetchall()
    indexes = c.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'history'"
        " AND tablename = 'transactions' AND indexdef LIKE '%%(event_id)%%' ORDER BY indexname"
    ).fetchall()
    return [*constraints, *indexes]


def test_event_id_migration_upgrades_and_reruns(pg_dsn: str, tmp_path: Path) -> None:
    """0003 on a database made by 0001-0002 (the UNIQUE (event_id) era), then again by hand."""
    older = tmp_path / "migrations"
    older.mkdir()
    for path in history.migration_files()[:2]:
        shutil.copy(path, older / path.name)
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        assert history.migrate(c, older) == ["0001", "0002"]
        hp9 = event_of(SCRIPT[23])
        assert history.apply_event(c, hp9).rule == "reference.missing"
        later = [p.name.split("_")[0] for p in history.migration_files()[2:]]
        assert history.migrate(c) == later and later[0] == "0003"
        upgraded = _event_id_indexes(c)
        assert upgraded == [
            (
                "transactions_event_id",
                "CREATE INDEX transactions_event_id ON history.transactions USING btree (event_id)",
            ),
            (
                "transactions_event_id_applied",
                "CREATE UNIQUE INDEX transactions_event_id_applied"
                " ON history.transactions USING btree (event_id) WHERE (status = 'applied'::text)",
            ),
        ]
        # applied twice (a worker start, or by hand): nothing changes, nothing fails
        assert history.migrate(c) == []
        sql_text = next(p for p in history.migration_files() if p.name.startswith("0003_"))
        for _ in range(2):
            c.execute(sql_text.read_text(encoding="utf-8"))
        assert _event_id_indexes(c) == upgraded
        # the id refused under the old constraint is free: the site comes, the event applies
        site = parse_event(
            {**event_of(SCRIPT[2]).as_dict(), "event_id": str(uuid.uuid4()), "key": {"site_id": "nowhere"}}
        )
        assert history.apply_event(c, site).status == "applied"
        assert history.apply_event(c, republished(hp9)).status == "applied"
        # and an applied id stays spent, whatever the writer
        with pytest.raises(errors.UniqueViolation, match="transactions_event_id_applied"):
            c.execute(
                "INSERT INTO history.transactions (event_id, tx_time, entity, key, op,"
                " status, author, produced_at, event) SELECT event_id, now(), entity, key,"
                " op, status, author, produced_at, event FROM history.transactions"
                " WHERE event_id = %s AND status = 'applied'",
                (hp9.event_id,),
            )


def test_token_list_on_a_log_never_made_lists_nothing_and_makes_nothing(pg_dsn: str) -> None:
    """`pipeline token list` used to migrate (create) the history log it was asked to read."""
    from tests.integration.helpers import pipeline_cli

    assert pipeline_cli(pg_dsn, "token", "list").strip() == ""
    with psycopg.connect(pg_dsn) as c:
        assert c.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'history'").fetchone() == (0,)
