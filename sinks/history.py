"""PostgreSQL adapter of the metadata history log (psycopg 3).

The rules live in processors.metadata (pure); this module loads the current rows of an entity
key, asks `decide()` and writes the plan, inside one transaction per event. Tables, time travel
and diff semantics: docs/history.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import errors, sql
from psycopg.types.json import Jsonb
from psycopg.types.range import Range

from processors.metadata import (
    ENTITY_CLASSES,
    Change,
    CurrentRow,
    DatamodelEntry,
    EntityState,
    Interval,
    KeyValue,
    MetadataCatalog,
    MetadataEvent,
    Plan,
    Refusal,
    TimedValue,
    decide,
    key_from_text,
    key_text,
    references,
    spec_for,
)

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x6D65_7461_6869_7374  # "metahist": one migrator per database at a time
SCHEMA = "history"
ONE_MICROSECOND = timedelta(microseconds=1)

Status = Literal["applied", "duplicate", "refused"]


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ApplyResult:
    status: Status
    reason: str = ""
    rule: str = ""
    tx_id: int | None = None
    tx_time: datetime | None = None
    changed: bool = False  # False for an applied event that re-states the current value


# ---------------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------------


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def migrate(conn: Conn, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not yet applied; safe to re-run and to run concurrently.

    Returns the versions applied now. A migration applied earlier whose file changed since is
    an error: migrations are append-only, a fix is a new file.
    """
    applied_now: list[str] = []
    was_autocommit = conn.autocommit
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise MigrationError("migrate() needs a connection outside a transaction")
    conn.autocommit = True
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            with conn.transaction():
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                conn.execute(
                    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (
                        version    text PRIMARY KEY,
                        name       text NOT NULL,
                        checksum   text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"""
                )
            done = dict(
                conn.execute(f"SELECT version, checksum FROM {SCHEMA}.schema_migrations").fetchall()
            )
            for path in migration_files(directory):
                version = path.name.split("_", 1)[0]
                text = path.read_text(encoding="utf-8")
                checksum = hashlib.sha256(text.encode()).hexdigest()
                if version in done:
                    if done[version] != checksum:
                        raise MigrationError(
                            f"migration {path.name} changed after it was applied; add a new one"
                        )
                    continue
                with conn.transaction():
                    conn.execute(text)  # no parameters: several statements in one go
                    conn.execute(
                        f"INSERT INTO {SCHEMA}.schema_migrations (version, name, checksum)"
                        " VALUES (%s, %s, %s)",
                        (version, path.name, checksum),
                    )
                log.info("applied migration %s", path.name)
                applied_now.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    finally:
        conn.autocommit = was_autocommit
    return applied_now


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _range(iv: Interval) -> Range[datetime]:
    return Range(iv.start, iv.end, "[)")


def _interval(r: Range[datetime]) -> Interval:
    return Interval(r.lower, r.upper)


def _table(cls: str) -> str:
    return {"master": "master_data", "time_dependent": "valid_versions"}.get(cls, "versions")


def _current_rows(conn: Conn, entity: str, ktext: str) -> list[CurrentRow]:
    cls = ENTITY_CLASSES[entity].cls
    if cls == "master":
        rows = conn.execute(
            "SELECT value FROM history.master_data WHERE entity = %s AND key = %s",
            (entity, ktext),
        ).fetchall()
        return [CurrentRow(r[0]) for r in rows]
    if cls == "time_dependent":
        rows = conn.execute(
            "SELECT version_id, value, valid FROM history.valid_versions"
            " WHERE entity = %s AND key = %s AND upper_inf(tx) ORDER BY lower(valid) NULLS FIRST",
            (entity, ktext),
        ).fetchall()
        return [CurrentRow(r[1], _interval(r[2]), r[0]) for r in rows]
    rows = conn.execute(
        "SELECT version_id, value FROM history.versions"
        " WHERE entity = %s AND key = %s AND upper_inf(tx)",
        (entity, ktext),
    ).fetchall()
    return [CurrentRow(r[1], None, r[0]) for r in rows]


def _exists_now(conn: Conn, entity: str, key: Mapping[str, KeyValue]) -> bool:
    table = _table(ENTITY_CLASSES[entity].cls)
    current = "" if table == "master_data" else " AND upper_inf(tx)"
    row = conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM history.{} WHERE entity = %s AND key = %s{})").format(
            sql.Identifier(table), sql.SQL(current)
        ),
        (entity, key_text(key)),
    ).fetchone()
    return bool(row and row[0])


def _missing_reference(conn: Conn, event: MetadataEvent) -> Refusal | None:
    for target, key in references(event):
        if not _exists_now(conn, target, key):
            return Refusal(
                "reference.missing",
                f"{event.entity} {event.key_text} refers to {target} {key_text(key)}, "
                "which does not exist",
            )
    return None


def _lock_key(conn: Conn, entity: str, ktext: str) -> None:
    # One writer per entity key: decide() must see the rows it changes.
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{entity}|{ktext}",))


def _record(conn: Conn, event: MetadataEvent, tx_time: datetime, status: str,
            refusal: Refusal | None = None, changed: bool = False) -> int:
    row = conn.execute(
        """INSERT INTO history.transactions
             (event_id, tx_time, entity, key, op, status, changed, rule, reason,
              author, comment, produced_at, event)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING tx_id""",
        (event.event_id, tx_time, event.entity, event.key_text, event.op, status, changed,
         refusal.rule if refusal else None, refusal.message if refusal else None,
         event.author, event.comment, event.produced_at, Jsonb(event.as_dict())),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _write_plan(conn: Conn, event: MetadataEvent, plan: Plan, tx_id: int, now: datetime) -> None:
    cls = event.spec.cls
    ktext = event.key_text
    if cls == "master":
        if plan.insert:
            conn.execute(
                """INSERT INTO history.master_data (entity, key, value, tx_id, updated_at)
                   VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (entity, key) DO UPDATE
                   SET value = EXCLUDED.value, tx_id = EXCLUDED.tx_id,
                       updated_at = EXCLUDED.updated_at""",
                (event.entity, ktext, Jsonb(plan.insert[-1].value), tx_id, now),
            )
        elif plan.close:
            conn.execute(
                "DELETE FROM history.master_data WHERE entity = %s AND key = %s",
                (event.entity, ktext),
            )
        return
    table = sql.Identifier(_table(cls))
    ids = [r.row_id for r in plan.close]
    if ids:
        conn.execute(
            sql.SQL("UPDATE history.{} SET tx = tstzrange(lower(tx), %s, '[)'), ended_tx = %s"
                    " WHERE version_id = ANY(%s) AND upper_inf(tx)").format(table),
            (now, tx_id, ids),
        )
    open_tx = Range(now, None, "[)")
    for new in plan.insert:
        if cls == "time_dependent":
            assert new.valid is not None
            conn.execute(
                "INSERT INTO history.valid_versions (entity, key, value, valid, tx, created_tx)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (event.entity, ktext, Jsonb(new.value), _range(new.valid), open_tx, tx_id),
            )
        else:
            conn.execute(
                "INSERT INTO history.versions (entity, key, value, tx, created_tx)"
                " VALUES (%s, %s, %s, %s, %s)",
                (event.entity, ktext, Jsonb(new.value), open_tx, tx_id),
            )


def apply_event(conn: Conn, event: MetadataEvent, *, tx_time: datetime | None = None) -> ApplyResult:
    """Apply one event in one transaction; record it (applied or refused) in `transactions`.

    Idempotent on event_id: a second delivery returns "duplicate" and changes nothing.
    tx_time: the transaction time to record; default now (the database clock). An explicit
    one (replaying an export, tests) must be later than the key's last change.
    """
    ktext = event.key_text
    with conn.transaction():
        _lock_key(conn, event.entity, ktext)
        seen = conn.execute(
            "SELECT tx_id, status, event FROM history.transactions WHERE event_id = %s",
            (event.event_id,),
        ).fetchone()
        if seen is not None:
            if seen[2] != json.loads(json.dumps(event.as_dict())):
                log.error("event_id %s reused for a different event", event.event_id)
                return ApplyResult("refused", f"event_id {event.event_id} was used by another "
                                   f"event (tx {seen[0]})", "event.id_reused", seen[0])
            return ApplyResult("duplicate", f"already recorded as tx {seen[0]} ({seen[1]})",
                               "event.duplicate", seen[0])
        row = conn.execute(
            "SELECT clock_timestamp(), (SELECT max(tx_time) FROM history.transactions"
            " WHERE entity = %s AND key = %s AND status = 'applied')",
            (event.entity, ktext),
        ).fetchone()
        assert row is not None
        clock, last = row
        refusal: Refusal | None = None
        if tx_time is None:
            now = clock if last is None or clock > last else last + ONE_MICROSECOND
        else:
            now = tx_time.astimezone(UTC)
            if last is not None and now <= last:
                refusal = Refusal(
                    "tx_time.not_after_last_change",
                    f"transaction time {now.isoformat()} is not after the key's last change "
                    f"{last.isoformat()}",
                )
        if refusal is None:
            outcome = decide(event, _current_rows(conn, event.entity, ktext))
            refusal = (
                outcome if isinstance(outcome, Refusal) else _missing_reference(conn, event)
            )
        if refusal is not None:
            tx_id = _record(conn, event, now, "refused", refusal)
            log.warning("refused event %s (%s): %s [%s]", event.event_id, event.op,
                        refusal.message, refusal.rule)
            return ApplyResult("refused", refusal.message, refusal.rule, tx_id, now)
        assert isinstance(outcome, Plan)
        tx_id = _record(conn, event, now, "applied", changed=not outcome.unchanged)
        try:
            with conn.transaction():  # savepoint: a constraint refusal keeps the tx row
                _write_plan(conn, event, outcome, tx_id, now)
        except (errors.ExclusionViolation, errors.UniqueViolation, errors.CheckViolation) as e:
            reason = f"refused by the database: {e.diag.message_primary}"
            rule = f"constraint.{e.diag.constraint_name or type(e).__name__}"
            conn.execute(
                "UPDATE history.transactions SET status = 'refused', changed = false, rule = %s,"
                " reason = %s WHERE tx_id = %s",
                (rule, reason, tx_id),
            )
            log.warning("refused %s %s %s: %s", event.op, event.entity, ktext, reason)
            return ApplyResult("refused", reason, rule, tx_id, now)
        return ApplyResult("applied", "" if not outcome.unchanged else "unchanged",
                           "", tx_id, now, not outcome.unchanged)


def apply_events(conn: Conn, events: Iterable[MetadataEvent]) -> list[ApplyResult]:
    return [apply_event(conn, e) for e in events]


# ---------------------------------------------------------------------------------------------
# Reading: time travel, diffs, valid-at
# ---------------------------------------------------------------------------------------------

INFINITY = "infinity"  # 'infinity'::timestamptz lies inside every tx range still open


def _filters(entity: str | None, key: Mapping[str, KeyValue] | None,
             alias: str = "") -> tuple[str, dict[str, Any]]:
    """' AND ...' clauses with named parameters %(entity)s, %(key)s."""
    p = f"{alias}." if alias else ""
    where = ""
    params: dict[str, Any] = {}
    if entity is not None:
        spec_for(entity)
        where += f" AND {p}entity = %(entity)s"
        params["entity"] = entity
    if key is not None:
        if entity is None:
            raise ValueError("a key needs its entity")
        where += f" AND {p}key = %(key)s"
        params["key"] = key_text(key)
    return where, params


def _classes(entity: str | None) -> set[str]:
    return {spec_for(entity).cls} if entity is not None else {
        "master", "static", "history", "time_dependent"}


def state_at(conn: Conn, at: datetime, entity: str | None = None,
             key: Mapping[str, KeyValue] | None = None) -> list[EntityState]:
    """The metadata as it was at transaction time `at` (EBAS --state).

    Master data shows its latest state whatever `at` is: it has no history.
    Rows are ordered by entity, key and (time-dependent) valid_from.
    """
    where, params = _filters(entity, key)
    classes = _classes(entity)
    out: list[EntityState] = []
    if "master" in classes:
        for e, k, v in conn.execute(
            f"SELECT entity, key, value FROM history.master_data WHERE true{where}", params
        ):
            out.append(EntityState(e, key_from_text(k), v))
    if classes & {"static", "history"}:
        for e, k, v, since in conn.execute(
            f"SELECT entity, key, value, lower(tx) FROM history.versions"
            f" WHERE tx @> %(at)s::timestamptz{where}", {"at": at, **params},
        ):
            out.append(EntityState(e, key_from_text(k), v, None, since))
    if "time_dependent" in classes:
        for e, k, v, valid, since in conn.execute(
            f"SELECT entity, key, value, valid, lower(tx) FROM history.valid_versions"
            f" WHERE tx @> %(at)s::timestamptz{where}", {"at": at, **params},
        ):
            out.append(EntityState(e, key_from_text(k), v, _interval(valid), since))
    out.sort(key=_state_order)
    return out


def _state_order(s: EntityState) -> tuple[str, str, int, datetime]:
    start = s.valid.start if s.valid is not None else None
    return (s.entity, key_text(s.key), 0 if start is None else 1,
            start or datetime.min.replace(tzinfo=UTC))


def diff(conn: Conn, t_from: datetime, t_to: datetime, entity: str | None = None,
         key: Mapping[str, KeyValue] | None = None) -> list[Change]:
    """What differs between the states at t_from and t_to (EBAS --diff): net changes only.

    A change undone before t_to does not show. Master data never shows (it has no history).
    Time-dependent rows are compared per (key, valid_from).
    """
    if t_to < t_from:
        raise ValueError("t_to is before t_from")
    where, params = _filters(entity, key, "v")
    classes = _classes(entity)
    # Only keys with a version boundary inside (t_from, t_to] can differ; the GiST index on tx
    # finds them without reading every version.
    touched = (
        "SELECT DISTINCT v.entity, v.key FROM history.{t} v"
        " WHERE v.tx && tstzrange(%(f)s, %(t)s, '(]')"
        " AND NOT (v.tx @> %(f)s::timestamptz AND v.tx @> %(t)s::timestamptz){w}"
    )
    named = {"f": t_from, "t": t_to, **params}
    w = where
    before: dict[tuple[str, str, datetime | None], EntityState] = {}
    after: dict[tuple[str, str, datetime | None], EntityState] = {}
    if classes & {"static", "history"}:
        q = (
            f"WITH touched AS ({touched.format(t='versions', w=w)})"
            " SELECT v.tx @> %(f)s::timestamptz, v.tx @> %(t)s::timestamptz,"
            " v.entity, v.key, v.value, lower(v.tx)"
            " FROM history.versions v JOIN touched USING (entity, key)"
            " WHERE v.tx @> %(f)s::timestamptz OR v.tx @> %(t)s::timestamptz"
        )
        for in_from, in_to, e, k, v, since in conn.execute(q, named):
            s = EntityState(e, key_from_text(k), v, None, since)
            if in_from:
                before[(e, k, None)] = s
            if in_to:
                after[(e, k, None)] = s
    if "time_dependent" in classes:
        q = (
            f"WITH touched AS ({touched.format(t='valid_versions', w=w)})"
            " SELECT v.tx @> %(f)s::timestamptz, v.tx @> %(t)s::timestamptz,"
            " v.entity, v.key, v.value, v.valid, lower(v.tx)"
            " FROM history.valid_versions v JOIN touched USING (entity, key)"
            " WHERE v.tx @> %(f)s::timestamptz OR v.tx @> %(t)s::timestamptz"
        )
        for in_from, in_to, e, k, v, valid, since in conn.execute(q, named):
            iv = _interval(valid)
            s = EntityState(e, key_from_text(k), v, iv, since)
            if in_from:
                before[(e, k, iv.start)] = s
            if in_to:
                after[(e, k, iv.start)] = s
    changes: list[Change] = []
    for ident in sorted(before.keys() | after.keys(), key=_ident_order):
        b, a = before.get(ident), after.get(ident)
        if b is not None and a is not None:
            if b.value == a.value and b.valid == a.valid:
                continue
            kind: Literal["added", "changed", "deleted"] = "changed"
        else:
            kind = "added" if b is None else "deleted"
        some = a if a is not None else b
        assert some is not None
        changes.append(Change(kind, some.entity, some.key, b, a, ident[2]))
    return changes


def _ident_order(i: tuple[str, str, datetime | None]) -> tuple[str, str, int, datetime]:
    return (i[0], i[1], 0 if i[2] is None else 1, i[2] or datetime.min.replace(tzinfo=UTC))


def valid_at(conn: Conn, entity: str, key: Mapping[str, KeyValue], data_time: datetime,
             known_at: datetime | None = None) -> EntityState | None:
    """The value that held for data time `data_time`, as known at transaction time `known_at`
    (default: as known now). One query on the GiST index (entity, key, valid, tx).

    For entities without valid time, data_time does not matter: the version known at known_at
    (master data: the latest state).
    """
    cls = spec_for(entity).cls
    ktext = key_text(key)
    known: datetime | str = INFINITY if known_at is None else known_at
    if cls == "time_dependent":
        row = conn.execute(
            "SELECT value, valid, lower(tx) FROM history.valid_versions"
            " WHERE entity = %s AND key = %s AND valid @> %s::timestamptz"
            " AND tx @> %s::timestamptz",
            (entity, ktext, data_time, known),
        ).fetchone()
        return None if row is None else EntityState(entity, dict(key), row[0],
                                                    _interval(row[1]), row[2])
    if cls == "master":
        row = conn.execute(
            "SELECT value FROM history.master_data WHERE entity = %s AND key = %s",
            (entity, ktext),
        ).fetchone()
        return None if row is None else EntityState(entity, dict(key), row[0])
    row = conn.execute(
        "SELECT value, lower(tx) FROM history.versions"
        " WHERE entity = %s AND key = %s AND tx @> %s::timestamptz",
        (entity, ktext, known),
    ).fetchone()
    return None if row is None else EntityState(entity, dict(key), row[0], None, row[1])


def transactions(conn: Conn, entity: str | None = None,
                 key: Mapping[str, KeyValue] | None = None) -> list[dict[str, Any]]:
    """The transaction log (applied and refused), oldest first: who, when, why."""
    where, params = _filters(entity, key)
    cur = conn.execute(
        "SELECT tx_id, event_id, tx_time, entity, key, op, status, changed, rule, reason,"
        f" author, comment FROM history.transactions WHERE true{where} ORDER BY tx_id", params,
    )
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


# ---------------------------------------------------------------------------------------------
# The catalog for running validators
# ---------------------------------------------------------------------------------------------


def catalog_version(conn: Conn) -> int:
    """The latest applied transaction id: reload the catalog when this moves."""
    row = conn.execute(
        "SELECT coalesce(max(tx_id), 0) FROM history.transactions WHERE status = 'applied'"
    ).fetchone()
    return int(row[0]) if row else 0


def current_catalog(conn: Conn) -> MetadataCatalog:
    """Datamodels with their templates, bindings and node time zones, as known now.

    Read in one REPEATABLE READ snapshot so the parts agree with each other.
    """
    fresh = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        if fresh:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        as_of: datetime = row[0]
        high = catalog_version(conn)
        templates: dict[str, dict[str, list[TimedValue]]] = defaultdict(lambda: defaultdict(list))
        for k, v, valid in conn.execute(
            "SELECT key, value, valid FROM history.valid_versions"
            " WHERE entity = 'datastream_template' AND upper_inf(tx)"
            " ORDER BY key, lower(valid) NULLS FIRST"
        ):
            kd = key_from_text(k)
            templates[str(kd["datamodel"])][str(kd["datastream"])].append(
                TimedValue(_interval(valid), v))
        datamodels: dict[str, DatamodelEntry] = {}
        for k, v in conn.execute(
            "SELECT key, value FROM history.versions WHERE entity = 'datamodel' AND upper_inf(tx)"
        ):
            ident = str(key_from_text(k)["identifier"])
            datamodels[ident] = DatamodelEntry(
                ident, v, {ds: tuple(tvs) for ds, tvs in templates.get(ident, {}).items()})
        bindings = tuple(
            {**key_from_text(k), **v}
            for k, v in conn.execute(
                "SELECT key, value FROM history.versions"
                " WHERE entity = 'source_binding' AND upper_inf(tx) ORDER BY key"
            )
        )
        zones: dict[int, list[TimedValue]] = defaultdict(list)
        for k, v, valid in conn.execute(
            "SELECT key, value, valid FROM history.valid_versions WHERE entity = 'node_timezone'"
            " AND upper_inf(tx) ORDER BY key, lower(valid) NULLS FIRST"
        ):
            zones[int(key_from_text(k)["node_id"] or 0)].append(TimedValue(_interval(valid), v))
    return MetadataCatalog(as_of, high, datamodels, bindings,
                           {n: tuple(tvs) for n, tvs in zones.items()})


__all__ = [
    "ApplyResult", "MigrationError", "apply_event", "apply_events", "catalog_version",
    "current_catalog", "diff", "migrate", "migration_files", "state_at", "transactions",
    "valid_at",
]
