"""PostgreSQL adapter of the metadata history log (psycopg 3).

The rules live in processors.history_apply and processors.metadata (pure). Both writing paths
here drive the same apply step and only do its I/O: apply_event answers its questions with
queries, one transaction per event; import_events from an in-memory copy of a batch's keys,
written with COPY. Tables, time travel and diff semantics: docs/history.md.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import hashlib
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import errors, sql
from psycopg.types.json import Jsonb
from psycopg.types.range import Range

from processors.history_apply import (
    ONE_MICROSECOND,
    Applied,
    AskClock,
    AskExists,
    AskRecord,
    AskRows,
    Clock,
    Duplicate,
    IdRecord,
    Need,
    Outcome,
    Refused,
    Violation,
    Write,
    apply_step,
    drive,
)
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
    TimedValue,
    key_from_text,
    key_text,
    references,
    spec_for,
)
from sinks.base import Sink, SinkBackpressure

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x6D65_7461_6869_7374  # "metahist": one migrator per database at a time
SCHEMA = "history"

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
            done = dict(conn.execute(f"SELECT version, checksum FROM {SCHEMA}.schema_migrations").fetchall())
            for path in migration_files(directory):
                version = path.name.split("_", 1)[0]
                text = path.read_text(encoding="utf-8")
                checksum = hashlib.sha256(text.encode()).hexdigest()
                if version in done:
                    if done[version] != checksum:
                        raise MigrationError(f"migration {path.name} changed after it was applied; add a new one")
                    continue
                with conn.transaction():
                    conn.execute(text)  # no parameters: several statements in one go
                    conn.execute(
                        f"INSERT INTO {SCHEMA}.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
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


def _current_rows(conn: Conn, entity: str, ktext: str, window: Interval | None = None) -> list[CurrentRow]:
    cls = ENTITY_CLASSES[entity].cls
    if cls == "master":
        rows = conn.execute(
            "SELECT value FROM history.master_data WHERE entity = %s AND key = %s",
            (entity, ktext),
        ).fetchall()
        return [CurrentRow(r[0]) for r in rows]
    if cls == "time_dependent":
        # only the intervals the rules look at: an index range scan, not the key's history
        rows = conn.execute(
            "SELECT version_id, value, valid FROM history.valid_versions"
            " WHERE entity = %s AND key = %s AND valid && %s AND tx @> 'infinity'::timestamptz"
            " ORDER BY lower(valid) NULLS FIRST",
            (entity, ktext, _range(window or Interval())),
        ).fetchall()
        return [CurrentRow(r[1], _interval(r[2]), r[0]) for r in rows]
    rows = conn.execute(
        "SELECT version_id, value FROM history.versions WHERE entity = %s AND key = %s AND upper_inf(tx)",
        (entity, ktext),
    ).fetchall()
    return [CurrentRow(r[1], None, r[0]) for r in rows]


def _exists_now(conn: Conn, entity: str, ktext: str) -> bool:
    table = _table(ENTITY_CLASSES[entity].cls)
    current = "" if table == "master_data" else " AND upper_inf(tx)"
    row = conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM history.{} WHERE entity = %s AND key = %s{})").format(
            sql.Identifier(table), sql.SQL(current)
        ),
        (entity, ktext),
    ).fetchone()
    return bool(row and row[0])


def _lock_key(conn: Conn, event: MetadataEvent) -> None:
    # One writer per event id (its deliveries see each other's records, whatever key a reused id
    # names), then one writer per entity key (decide() must see the rows it changes). Always in
    # this order: no two writers wait on each other crosswise.
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0)), pg_advisory_xact_lock(hashtextextended(%s, 0))",
        (f"event|{event.event_id}", f"{event.entity}|{event.key_text}"),
    )


# What a write may meet although the rules allowed it: a race the locks should prevent, or a
# constraint the rules do not know. The apply step makes it a refusal (constraint.<name>).
CONSTRAINT_ERRORS = (errors.ExclusionViolation, errors.UniqueViolation, errors.CheckViolation)


def _violation(e: psycopg.Error) -> Violation:
    return Violation(e.diag.constraint_name or type(e).__name__, e.diag.message_primary or str(e))


def _record(
    conn: Conn,
    event: MetadataEvent,
    tx_time: datetime,
    status: str,
    rule: str | None = None,
    reason: str | None = None,
    changed: bool = False,
) -> int:
    row = conn.execute(
        """INSERT INTO history.transactions
             (event_id, tx_time, entity, key, op, status, changed, rule, reason,
              author, comment, produced_at, event)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING tx_id""",
        (
            event.event_id,
            tx_time,
            event.entity,
            event.key_text,
            event.op,
            status,
            changed,
            rule,
            reason,
            event.author,
            event.comment,
            event.produced_at,
            Jsonb(event.as_dict()),
        ),
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
            sql.SQL(
                "UPDATE history.{} SET tx = tstzrange(lower(tx), %s, '[)'), ended_tx = %s"
                " WHERE version_id = ANY(%s) AND upper_inf(tx)"
            ).format(table),
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
                "INSERT INTO history.versions (entity, key, value, tx, created_tx) VALUES (%s, %s, %s, %s, %s)",
                (event.entity, ktext, Jsonb(new.value), open_tx, tx_id),
            )


def _result(event: MetadataEvent, outcome: Outcome, tx_id: int | None) -> ApplyResult:
    """The caller's view of an outcome; tx_id: the log row written for it, if any."""
    if isinstance(outcome, Applied):
        return ApplyResult(
            "applied", "" if outcome.changed else "unchanged", "", tx_id, outcome.tx_time, outcome.changed
        )
    if isinstance(outcome, Duplicate):
        return ApplyResult("duplicate", outcome.reason, outcome.rule, outcome.tx_id)
    if not outcome.recorded:  # event.id_reused: a producer bug, not a metadata refusal
        log.error("event_id %s reused for a different event (tx %s)", event.event_id, outcome.earlier_tx)
        return ApplyResult("refused", outcome.reason, outcome.rule, outcome.earlier_tx)
    return ApplyResult("refused", outcome.reason, outcome.rule, tx_id, outcome.tx_time)


class _Database:
    """apply_event's I/O: answers an apply step's needs with queries, and writes what it
    decides (processors/history_apply.py holds the rules)."""

    def __init__(self, conn: Conn, event: MetadataEvent, clock: datetime | None = None) -> None:
        self.conn = conn
        self.event = event
        self.clock = clock  # None: the database's clock_timestamp()
        self.tx_id: int | None = None  # the log row the Write recorded

    def answer(self, need: Need) -> object:
        conn = self.conn
        if isinstance(need, AskRecord):
            # the applied delivery if there is one, else the first refused one
            seen = conn.execute(
                "SELECT tx_id, status, event FROM history.transactions WHERE event_id = %s"
                " ORDER BY status = 'applied' DESC, tx_id LIMIT 1",
                (need.event_id,),
            ).fetchone()
            return None if seen is None else IdRecord(seen[0], seen[1] == "applied", seen[2])
        if isinstance(need, AskClock):
            row = conn.execute(
                "SELECT clock_timestamp(), (SELECT max(tx_time) FROM history.transactions"
                " WHERE entity = %s AND key = %s AND status = 'applied')",
                (need.entity, need.key_text),
            ).fetchone()
            assert row is not None
            return Clock(self.clock or row[0], row[1])
        if isinstance(need, AskRows):
            return _current_rows(conn, need.entity, need.key_text, need.window)
        if isinstance(need, AskExists):
            return _exists_now(conn, need.entity, need.key_text)
        return self._write(need)

    def _write(self, need: Write) -> Violation | None:
        event = self.event
        self.tx_id = _record(self.conn, event, need.tx_time, "applied", changed=not need.plan.unchanged)
        try:
            with self.conn.transaction():  # savepoint: a constraint refusal keeps the log row
                _write_plan(self.conn, event, need.plan, self.tx_id, need.tx_time)
        except CONSTRAINT_ERRORS as e:
            return _violation(e)
        return None

    def settle(self, outcome: Outcome) -> ApplyResult:
        """Record a refusal the step decided (a write's refusal turns its applied row)."""
        event = self.event
        if isinstance(outcome, Refused) and outcome.recorded:
            assert outcome.tx_time is not None
            if self.tx_id is None:
                self.tx_id = _record(self.conn, event, outcome.tx_time, "refused", outcome.rule, outcome.reason)
            else:
                self.conn.execute(
                    "UPDATE history.transactions SET status = 'refused', changed = false,"
                    " rule = %s, reason = %s WHERE tx_id = %s",
                    (outcome.rule, outcome.reason, self.tx_id),
                )
        return _result(event, outcome, self.tx_id)


def _apply_here(
    conn: Conn, event: MetadataEvent, tx_time: datetime | None, clock: datetime | None = None
) -> ApplyResult:
    """One event inside the caller's transaction: the apply step driven by queries."""
    db = _Database(conn, event, clock)
    return db.settle(drive(apply_step(event, tx_time), db.answer))


def apply_event(conn: Conn, event: MetadataEvent, *, tx_time: datetime | None = None) -> ApplyResult:
    """Apply one event in one transaction; record it (applied or refused) in `transactions`.

    The rules are processors.history_apply.apply_step's (pure); this asks the database what it
    needs and writes what it decides. Idempotent on event_id: a delivery of an event already
    *applied* returns "duplicate" and changes nothing. Only an applied event spends its id: one
    refused earlier (or whose apply failed and rolled back) is tried again, and each refused
    attempt keeps its own log row. The same content re-published (new produced_at, author or
    comment) is the same event; other content under a used id is refused (event.id_reused)
    and not recorded. A constraint the database raises on the write is a refusal
    (constraint.<name>), recorded.
    tx_time: the transaction time to record; default now (the database clock). An explicit
    one (replaying an export, tests) must be later than the key's last change.
    """
    with conn.transaction():
        _lock_key(conn, event)
        result = _apply_here(conn, event, tx_time)
    if result.status == "refused" and result.rule != "event.id_reused":
        log.warning(
            "refused event %s (%s %s %s): %s [%s]",
            event.event_id,
            event.op,
            event.entity,
            event.key_text,
            result.reason,
            result.rule,
        )
    return result


def apply_events(conn: Conn, events: Iterable[MetadataEvent]) -> list[ApplyResult]:
    """One transaction per event: for a live stream. For volume, use import_events."""
    return [apply_event(conn, e) for e in events]


class HistorySink(Sink[Sequence[MetadataEvent], list[ApplyResult]]):
    """The history log as the workers write it: each event of a batch applied in order, one
    transaction each (`apply_event`); idempotent by event id, so a batch written again after a
    failure half-way answers "duplicate" for what it had applied. PostgreSQL away is
    backpressure; a refusal is an answer (ApplyResult), never an exception."""

    def __init__(self, connect: Callable[[], Conn]) -> None:
        self._connect = connect
        self._conn: Conn | None = None
        self._lock = threading.Lock()  # one psycopg connection: one thread at a time

    def setup(self) -> None:
        try:
            with self._connect() as conn:
                migrate(conn)
        except psycopg.OperationalError as exc:
            raise SinkBackpressure(f"history log migration: {exc}") from exc

    def write(self, batch: Sequence[MetadataEvent]) -> list[ApplyResult]:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = self._connect()
                return [apply_event(self._conn, event) for event in batch]
            except psycopg.OperationalError as exc:
                self.close()
                raise SinkBackpressure(f"history log: {exc}") from exc

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


@dataclass
class _MemRow:
    """A row of the in-memory replay: one already in the database (version_id) or a new one."""

    value: Mapping[str, Any]
    valid: Interval | None
    version_id: int | None = None  # set for rows loaded from the database
    new_index: int | None = None  # set for rows this import adds


@dataclass
class _NewVersion:
    entity: str
    key: str
    value: Mapping[str, Any]
    valid: Interval | None
    lower: datetime
    created_tx: int
    upper: datetime | None = None
    ended_tx: int | None = None


class _Replay:
    """import_events' I/O: answers the apply step's needs from an in-memory copy of the keys a
    batch touches, read once, and buffers what it decides for one COPY at the end."""

    def __init__(self, conn: Conn, events: Sequence[MetadataEvent]) -> None:
        # per event id already recorded, as apply_event sees it: the applied record if there
        # is one, else the first refused; with its content, or (recorded by this import) its
        # event, whose content is made only if the id comes again
        self.seen: dict[Any, tuple[int, bool, Mapping[str, Any] | MetadataEvent]] = {
            r[0]: (r[1], r[2] == "applied", r[3])
            for r in conn.execute(
                "SELECT DISTINCT ON (event_id) event_id, tx_id, status, event"
                " FROM history.transactions WHERE event_id = ANY(%s)"
                " ORDER BY event_id, status = 'applied' DESC, tx_id",
                ([e.event_id for e in events],),
            )
        }
        wanted: set[tuple[str, str]] = set()
        for e in events:
            wanted.add((e.entity, e.key_text))
            wanted.update((t, key_text(k)) for t, k in references(e))
        self.state, self.last = _load_state(conn, wanted)
        self.ids: list[int] = [
            r[0]
            for r in conn.execute(
                "SELECT nextval(pg_get_serial_sequence('history.transactions', 'tx_id')) FROM generate_series(1, %s)",
                (len(events),),
            )
        ]
        self.tx_rows: list[tuple[Any, ...]] = []
        self.new_rows: list[_NewVersion] = []
        self.closes: dict[str, list[tuple[int, datetime, int]]] = {"versions": [], "valid_versions": []}
        self.master: dict[tuple[str, str], tuple[Mapping[str, Any] | None, int, datetime]] = {}
        # the event being replayed: its tx_id, default transaction time, key and row window
        self.event: MetadataEvent | None = None
        self.tx_id = 0
        self.clock = _MIN
        self.ident = ("", "")
        self.rows: list[_MemRow] = []
        self.lo = self.hi = 0

    def apply(self, i: int, event: MetadataEvent, tx_time: datetime | None, clock: datetime) -> ApplyResult:
        self.event, self.tx_id, self.clock = event, self.ids[i], clock
        self.ident = (event.entity, event.key_text)
        outcome = drive(apply_step(event, tx_time), self.answer)
        if isinstance(outcome, Applied):
            status, rule, reason, at = "applied", None, None, outcome.tx_time
            self.last[self.ident] = at  # as apply_event: any applied event moves the key's clock
        elif isinstance(outcome, Refused) and outcome.tx_time is not None:
            status, rule, reason, at = "refused", outcome.rule, outcome.reason, outcome.tx_time
        else:  # a duplicate, or another event's id: nothing recorded
            return _result(event, outcome, None)
        if status == "applied" or event.event_id not in self.seen:  # the applied one, or the first
            self.seen[event.event_id] = (self.tx_id, status == "applied", event)
        self.tx_rows.append(
            (
                self.tx_id,
                event.event_id,
                at,
                event.entity,
                event.key_text,
                event.op,
                status,
                isinstance(outcome, Applied) and outcome.changed,
                rule,
                reason,
                event.author,
                event.comment,
                event.produced_at,
                Jsonb(event.as_dict()),
            )
        )
        return _result(event, outcome, self.tx_id)

    def answer(self, need: Need) -> object:
        if isinstance(need, AskRecord):
            earlier = self.seen.get(need.event_id)
            if earlier is None:
                return None
            tx_id, applied, content = earlier
            return IdRecord(tx_id, applied, content.as_dict() if isinstance(content, MetadataEvent) else content)
        if isinstance(need, AskClock):
            return Clock(self.clock, self.last.get(self.ident))
        if isinstance(need, AskRows):
            rows = self.rows = self.state.setdefault(self.ident, [])
            lo, hi = self.lo, self.hi = _window(rows, need.window)
            return [CurrentRow(rows[n].value, rows[n].valid, n) for n in range(lo, hi)]
        if isinstance(need, AskExists):
            return bool(self.state.get((need.entity, need.key_text)))
        self._write(need)
        return None  # a constraint the rules do not know fails the COPY: see import_events

    def _write(self, need: Write) -> None:
        plan, now, tx_id, rows = need.plan, need.tx_time, self.tx_id, self.rows
        event = self.event
        assert event is not None
        if plan.unchanged:
            return
        cls = event.spec.cls
        closed = {c.row_id for c in plan.close}
        if cls == "master":
            self.master[self.ident] = (plan.insert[-1].value if plan.insert else None, tx_id, now)
        else:
            for n in closed:
                assert n is not None
                r = rows[n]
                if r.new_index is not None:
                    self.new_rows[r.new_index].upper = now
                    self.new_rows[r.new_index].ended_tx = tx_id
                else:
                    assert r.version_id is not None
                    self.closes[_table(cls)].append((r.version_id, now, tx_id))
        # Every row the plan touches lies in rows[lo:hi]; rebuild just that window.
        kept = [rows[n] for n in range(self.lo, self.hi) if n not in closed]
        for new in plan.insert:
            kept.append(_MemRow(new.value, new.valid, None, len(self.new_rows)))
            if cls != "master":
                self.new_rows.append(_NewVersion(event.entity, event.key_text, new.value, new.valid, now, tx_id))
        kept.sort(key=_start_of)
        rows[self.lo : self.hi] = kept

    def copy_out(self, conn: Conn) -> None:
        _copy_out(conn, self.tx_rows, self.new_rows, self.closes, self.master)


def import_events(
    conn: Conn, events: Sequence[MetadataEvent], tx_times: Sequence[datetime] | None = None
) -> list[ApplyResult]:
    """Apply many events in ONE transaction, writing with binary COPY.

    The same apply step as apply_event on each event in order (processors.history_apply),
    answered from an in-memory copy of the affected keys, at a fraction of the round trips:
    for bulk loads and replays. Holds a lock that pauses concurrent apply_event calls until it
    commits. If the database refuses the COPY for a constraint the rules did not foresee, the
    batch is applied again event by event in the same transaction, as apply_event does, so the
    event that breaks it is refused (constraint.<name>) and the others apply.
    tx_times: one transaction time per event (ascending per key); default the clock + 1 us each.
    """
    if tx_times is not None and len(tx_times) != len(events):
        raise ValueError("one tx_time per event")
    asked = list(tx_times) if tx_times is not None else [None] * len(events)
    with conn.transaction():
        # SHARE ROW EXCLUSIVE conflicts with the ROW EXCLUSIVE every apply_event takes: the
        # in-memory replay below stays true to the database until commit.
        conn.execute("LOCK TABLE history.transactions IN SHARE ROW EXCLUSIVE MODE")
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        clock: datetime = row[0]
        try:
            with conn.transaction():  # savepoint: a failed COPY leaves the lock held
                replay = _Replay(conn, events)
                results = [replay.apply(i, e, asked[i], clock + ONE_MICROSECOND * i) for i, e in enumerate(events)]
                replay.copy_out(conn)
        except CONSTRAINT_ERRORS as e:
            # COPY cannot say which event broke the constraint: one at a time, as apply_event
            log.warning(
                "import: the database refused the batch (%s); applying it event by event", _violation(e).constraint
            )
            results = [_apply_here(conn, ev, asked[i], clock + ONE_MICROSECOND * i) for i, ev in enumerate(events)]
    refused = [r for r in results if r.status == "refused"]
    if refused:
        log.warning(
            "import: %d of %d events refused, first: %s [%s]",
            len(refused),
            len(events),
            refused[0].reason,
            refused[0].rule,
        )
    return results


_MIN = datetime.min.replace(tzinfo=UTC)
_MAX = datetime.max.replace(tzinfo=UTC)


def _start_of(r: _MemRow) -> datetime:
    return _MIN if r.valid is None or r.valid.start is None else r.valid.start


def _end_of(r: _MemRow) -> datetime:
    return _MAX if r.valid is None or r.valid.end is None else r.valid.end


def _window(rows: list[_MemRow], iv: Interval | None) -> tuple[int, int]:
    """rows[lo:hi]: the rows overlapping iv. Intervals of a key never overlap, so sorted by
    start they are sorted by end too, and two bisections find them."""
    if iv is None or not rows:
        return 0, len(rows)
    lo = bisect.bisect_right(rows, iv.start or _MIN, key=_end_of)
    hi = bisect.bisect_left(rows, iv.end or _MAX, key=_start_of)
    return lo, max(lo, hi)


def _load_state(
    conn: Conn, wanted: set[tuple[str, str]]
) -> tuple[dict[tuple[str, str], list[_MemRow]], dict[tuple[str, str], datetime]]:
    """Current rows and last change time of the wanted keys, through one temp table."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS _import_keys (entity text, key text) ON COMMIT DROP")
    with conn.cursor().copy("COPY _import_keys (entity, key) FROM STDIN (FORMAT BINARY)") as cp:
        cp.set_types(["text", "text"])
        for ident in wanted:
            cp.write_row(ident)
    conn.execute("ANALYZE _import_keys")
    state: dict[tuple[str, str], list[_MemRow]] = defaultdict(list)
    for e, k, v in conn.execute(
        "SELECT m.entity, m.key, m.value FROM history.master_data m JOIN _import_keys USING (entity, key)"
    ):
        state[(e, k)].append(_MemRow(v, None))
    for e, k, v, vid in conn.execute(
        "SELECT v.entity, v.key, v.value, v.version_id FROM history.versions v"
        " JOIN _import_keys USING (entity, key) WHERE upper_inf(v.tx)"
    ):
        state[(e, k)].append(_MemRow(v, None, vid))
    for e, k, v, valid, vid in conn.execute(
        "SELECT v.entity, v.key, v.value, v.valid, v.version_id FROM history.valid_versions v"
        " JOIN _import_keys USING (entity, key) WHERE upper_inf(v.tx)"
        " ORDER BY lower(v.valid) NULLS FIRST"
    ):
        state[(e, k)].append(_MemRow(v, _interval(valid), vid))  # ordered by start: see _window
    last = {
        (e, k): t
        for e, k, t in conn.execute(
            "SELECT t.entity, t.key, max(t.tx_time) FROM history.transactions t"
            " JOIN _import_keys USING (entity, key) WHERE t.status = 'applied'"
            " GROUP BY t.entity, t.key"
        )
    }
    return dict(state), last


def _copy_out(
    conn: Conn,
    tx_rows: list[tuple[Any, ...]],
    new_rows: list[_NewVersion],
    closes: dict[str, list[tuple[int, datetime, int]]],
    master: dict[tuple[str, str], tuple[Mapping[str, Any] | None, int, datetime]],
) -> None:
    cur = conn.cursor()
    with cur.copy(
        "COPY history.transactions (tx_id, event_id, tx_time, entity, key, op, status, changed,"
        " rule, reason, author, comment, produced_at, event) FROM STDIN (FORMAT BINARY)"
    ) as cp:
        cp.set_types(
            [
                "bigint",
                "uuid",
                "timestamptz",
                "text",
                "text",
                "text",
                "text",
                "bool",
                "text",
                "text",
                "text",
                "text",
                "timestamptz",
                "jsonb",
            ]
        )
        for r in tx_rows:
            cp.write_row(r)
    # Close database rows before the new ones arrive: the exclusion constraints check each row.
    for table, rows in closes.items():
        if not rows:
            continue
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _import_closes"
            " (version_id bigint, upper timestamptz, ended_tx bigint) ON COMMIT DROP"
        )
        conn.execute("TRUNCATE _import_closes")
        with cur.copy("COPY _import_closes FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["bigint", "timestamptz", "bigint"])
            for c in rows:
                cp.write_row(c)
        conn.execute(
            sql.SQL(
                "UPDATE history.{} v SET tx = tstzrange(lower(v.tx), c.upper, '[)'),"
                " ended_tx = c.ended_tx FROM _import_closes c WHERE v.version_id = c.version_id"
            ).format(sql.Identifier(table))
        )
    plain = [n for n in new_rows if n.valid is None]
    timed = [n for n in new_rows if n.valid is not None]
    if plain:
        with cur.copy(
            "COPY history.versions (entity, key, value, tx, created_tx, ended_tx) FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.set_types(["text", "text", "jsonb", "tstzrange", "bigint", "bigint"])
            for n in plain:
                cp.write_row((n.entity, n.key, Jsonb(n.value), Range(n.lower, n.upper, "[)"), n.created_tx, n.ended_tx))
    if timed:
        with cur.copy(
            "COPY history.valid_versions (entity, key, value, valid, tx, created_tx,"
            " ended_tx) FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.set_types(["text", "text", "jsonb", "tstzrange", "tstzrange", "bigint", "bigint"])
            for n in timed:
                assert n.valid is not None
                cp.write_row(
                    (
                        n.entity,
                        n.key,
                        Jsonb(n.value),
                        _range(n.valid),
                        Range(n.lower, n.upper, "[)"),
                        n.created_tx,
                        n.ended_tx,
                    )
                )
    for (entity, ktext), (value, tx_id, now) in master.items():
        if value is None:
            conn.execute("DELETE FROM history.master_data WHERE entity = %s AND key = %s", (entity, ktext))
        else:
            conn.execute(
                """INSERT INTO history.master_data (entity, key, value, tx_id, updated_at)
                   VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (entity, key) DO UPDATE
                   SET value = EXCLUDED.value, tx_id = EXCLUDED.tx_id,
                       updated_at = EXCLUDED.updated_at""",
                (entity, ktext, Jsonb(value), tx_id, now),
            )


# ---------------------------------------------------------------------------------------------
# Reading: time travel, diffs, valid-at
# ---------------------------------------------------------------------------------------------

INFINITY = "infinity"  # 'infinity'::timestamptz lies inside every tx range still open


def _filters(entity: str | None, key: Mapping[str, KeyValue] | None, alias: str = "") -> tuple[str, dict[str, Any]]:
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
    return {spec_for(entity).cls} if entity is not None else {"master", "static", "history", "time_dependent"}


def _ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).astimezone(UTC)


class _Times(dict[str | None, datetime | None]):
    """Parsed timestamps of one result: rows written by one transaction share their text."""

    def __missing__(self, text: str | None) -> datetime | None:
        value = self[text] = _ts(text)
        return value


_new = object.__new__
_set = object.__setattr__


def _state(e: str, k: Any, v: Any, valid: Interval | None, since: datetime | None) -> EntityState:
    """EntityState without the frozen dataclass's __init__ (five object.__setattr__ calls through
    its guard): the same object, a fifth of a full-state read cheaper on 100k rows."""
    state = _new(EntityState)
    _set(state, "entity", e)
    _set(state, "key", k)
    _set(state, "value", v)
    _set(state, "valid", valid)
    _set(state, "known_since", since)
    return state


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Building 100k small dicts trips the cyclic GC over and over (none of them is cyclic):
    pausing it halves the time of a full-state read."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _json_rows(conn: Conn, query: str, params: Mapping[str, Any]) -> list[list[Any]]:
    """Rows shipped as ONE json_agg document: one json.loads in C beats per-row jsonb and
    tstzrange loaders by 3-5x on 100k rows."""
    with conn.transaction():
        # the ORDER BY inside json_agg sorts every row: keep it in memory, not on disk
        conn.execute("SET LOCAL work_mem = '64MB'")
        # and let parallel workers scan, build the rows and sort (a Gather Merge feeds the
        # aggregate): PostgreSQL's default costs keep a 100k-row query on one core
        conn.execute("SET LOCAL parallel_setup_cost = 0")
        conn.execute("SET LOCAL parallel_tuple_cost = 0")
        conn.execute("SET LOCAL min_parallel_table_scan_size = 0")
        row = conn.execute(query, params).fetchone()
    return json.loads(row[0]) if row and row[0] else []


def state_at(
    conn: Conn, at: datetime, entity: str | None = None, key: Mapping[str, KeyValue] | None = None
) -> list[EntityState]:
    """The metadata as it was at transaction time `at` (EBAS --state).

    Master data shows its latest state whatever `at` is: it has no history.
    Rows are ordered by entity, key and (time-dependent) valid_from.
    """
    where, params = _filters(entity, key)
    classes = _classes(entity)
    parts: list[str] = []
    if "master" in classes:
        parts.append(
            "SELECT entity AS e, key AS k, NULL::timestamptz AS vs,"
            " json_build_array(entity, key::json, value, NULL, NULL, NULL, false) AS j"
            f" FROM history.master_data WHERE true{where}"
        )
    if classes & {"static", "history"}:
        parts.append(
            "SELECT entity AS e, key AS k, NULL::timestamptz AS vs,"
            " json_build_array(entity, key::json, value, NULL, NULL, lower(tx), false) AS j"
            f" FROM history.versions WHERE tx @> %(at)s::timestamptz{where}"
        )
    if "time_dependent" in classes:
        parts.append(
            "SELECT entity AS e, key AS k, lower(valid) AS vs,"
            " json_build_array(entity, key::json, value, lower(valid), upper(valid), lower(tx),"
            f" true) AS j FROM history.valid_versions WHERE tx @> %(at)s::timestamptz{where}"
        )
    query = (
        'SELECT json_agg(j ORDER BY e COLLATE "C", k COLLATE "C", vs NULLS FIRST)::text'
        f" FROM ({' UNION ALL '.join(parts)}) s"
    )
    times = _Times()
    with _no_gc():
        return [
            _state(e, k, v, Interval(times[lo], times[hi]) if timed else None, times[since])
            for e, k, v, lo, hi, since, timed in _json_rows(conn, query, {"at": at, **params})
        ]


def diff(
    conn: Conn, t_from: datetime, t_to: datetime, entity: str | None = None, key: Mapping[str, KeyValue] | None = None
) -> list[Change]:
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
        " AND NOT (v.tx @> %(f)s::timestamptz AND v.tx @> %(t)s::timestamptz)" + where
    )
    parts: list[str] = []
    if classes & {"static", "history"}:
        parts.append(
            f"(WITH touched AS ({touched.format(t='versions')})"
            " SELECT json_build_array(v.entity, v.key, v.value, NULL, NULL, lower(v.tx), false,"
            " v.tx @> %(f)s::timestamptz, v.tx @> %(t)s::timestamptz) AS j"
            " FROM history.versions v JOIN touched USING (entity, key)"
            " WHERE v.tx @> %(f)s::timestamptz OR v.tx @> %(t)s::timestamptz)"
        )
    if "time_dependent" in classes:
        parts.append(
            f"(WITH touched AS ({touched.format(t='valid_versions')})"
            " SELECT json_build_array(v.entity, v.key, v.value, lower(v.valid), upper(v.valid),"
            " lower(v.tx), true, v.tx @> %(f)s::timestamptz, v.tx @> %(t)s::timestamptz) AS j"
            " FROM history.valid_versions v JOIN touched USING (entity, key)"
            " WHERE v.tx @> %(f)s::timestamptz OR v.tx @> %(t)s::timestamptz)"
        )
    if not parts:
        return []  # master data only: it has no history to differ
    query = f"SELECT json_agg(j)::text FROM ({' UNION ALL '.join(parts)}) s"
    with _no_gc():
        return _diff_rows(_json_rows(conn, query, {"f": t_from, "t": t_to, **params}))


def _diff_rows(rows: list[list[Any]]) -> list[Change]:
    Ident = tuple[str, str, bool, str | None]
    before: dict[Ident, EntityState] = {}
    after: dict[Ident, EntityState] = {}
    keys: dict[str, dict[str, KeyValue]] = {}
    for e, k, v, lo, hi, since, timed, in_from, in_to in rows:
        kd = keys.get(k)
        if kd is None:
            kd = keys[k] = key_from_text(k)
        s = EntityState(e, kd, v, Interval(_ts(lo), _ts(hi)) if timed else None, _ts(since))
        ident = (e, k, timed, lo)
        if in_from:
            before[ident] = s
        if in_to:
            after[ident] = s
    changes: list[tuple[tuple[str, str, int, datetime], Change]] = []
    for ident in before.keys() | after.keys():
        b, a = before.get(ident), after.get(ident)
        if b is not None and a is not None:
            if b.value == a.value and b.valid == a.valid:
                continue
            kind: Literal["added", "changed", "deleted"] = "changed"
        else:
            kind = "added" if b is None else "deleted"
        some = a if a is not None else b
        assert some is not None
        start = some.valid.start if some.valid is not None else None
        order = (ident[0], ident[1], 0 if start is None else 1, start or _MIN)
        changes.append((order, Change(kind, some.entity, some.key, b, a, start)))
    changes.sort(key=lambda oc: oc[0])
    return [c for _, c in changes]


def valid_at(
    conn: Conn, entity: str, key: Mapping[str, KeyValue], data_time: datetime, known_at: datetime | None = None
) -> EntityState | None:
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
        return None if row is None else EntityState(entity, dict(key), row[0], _interval(row[1]), row[2])
    if cls == "master":
        row = conn.execute(
            "SELECT value FROM history.master_data WHERE entity = %s AND key = %s",
            (entity, ktext),
        ).fetchone()
        return None if row is None else EntityState(entity, dict(key), row[0])
    row = conn.execute(
        "SELECT value, lower(tx) FROM history.versions WHERE entity = %s AND key = %s AND tx @> %s::timestamptz",
        (entity, ktext, known),
    ).fetchone()
    return None if row is None else EntityState(entity, dict(key), row[0], None, row[1])


def transactions(
    conn: Conn, entity: str | None = None, key: Mapping[str, KeyValue] | None = None
) -> list[dict[str, Any]]:
    """The transaction log (applied and refused), oldest first: who, when, why."""
    where, params = _filters(entity, key)
    cur = conn.execute(
        "SELECT tx_id, event_id, tx_time, entity, key, op, status, changed, rule, reason,"
        f" author, comment FROM history.transactions WHERE true{where} ORDER BY tx_id",
        params,
    )
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


# ---------------------------------------------------------------------------------------------
# The catalog for running validators
# ---------------------------------------------------------------------------------------------


def catalog_version(conn: Conn) -> int:
    """The latest applied transaction id: reload the catalog when this moves."""
    row = conn.execute("SELECT coalesce(max(tx_id), 0) FROM history.transactions WHERE status = 'applied'").fetchone()
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
            templates[str(kd["datamodel"])][str(kd["datastream"])].append(TimedValue(_interval(valid), v))
        datamodels: dict[str, DatamodelEntry] = {}
        for k, v in conn.execute(
            "SELECT key, value FROM history.versions WHERE entity = 'datamodel' AND upper_inf(tx)"
        ):
            ident = str(key_from_text(k)["identifier"])
            datamodels[ident] = DatamodelEntry(
                ident, v, {ds: tuple(tvs) for ds, tvs in templates.get(ident, {}).items()}
            )
        bindings = tuple(
            {**key_from_text(k), **v}
            for k, v in conn.execute(
                "SELECT key, value FROM history.versions WHERE entity = 'source_binding' AND upper_inf(tx) ORDER BY key"
            )
        )
        zones: dict[int, list[TimedValue]] = defaultdict(list)
        for k, v, valid in conn.execute(
            "SELECT key, value, valid FROM history.valid_versions WHERE entity = 'node_timezone'"
            " AND upper_inf(tx) ORDER BY key, lower(valid) NULLS FIRST"
        ):
            zones[int(key_from_text(k)["node_id"] or 0)].append(TimedValue(_interval(valid), v))
    return MetadataCatalog(as_of, high, datamodels, bindings, {n: tuple(tvs) for n, tvs in zones.items()})


def sees_tokens(conn: Conn) -> bool:
    """Whether the connected role sees security tokens' rows (0004_token_rows.sql hides them from
    pipeline_reader): a superuser, the tables' owner, a member of pipeline_token_reader or
    pipeline_writer, or any role while row-level security is off (a log not yet migrated)."""
    row = conn.execute(
        """SELECT NOT c.relrowsecurity OR r.rolsuper OR r.rolbypassrls
                  OR pg_has_role(current_user, c.relowner, 'MEMBER')
                  OR EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname IN ('pipeline_token_reader', 'pipeline_writer')
                             AND pg_has_role(current_user, g.oid, 'MEMBER'))
           FROM pg_class c, pg_roles r
           WHERE c.oid = 'history.versions'::regclass AND r.rolname = current_user"""
    ).fetchone()
    return bool(row and row[0])


class TokensHidden(errors.InsufficientPrivilege):
    """The connected role does not see security tokens' rows: an empty list would read as "no
    token exists" (every signed request refused as unknown), so `current_tokens` says so instead."""


def current_tokens(conn: Conn) -> dict[str, dict[str, Any]]:
    """token id -> stored value of every security token not revoked (processors/tokens.py).
    Raises TokensHidden when the role does not see them (`sees_tokens`)."""
    if not sees_tokens(conn):
        raise TokensHidden(
            "this role does not see security tokens (row-level security of the history log):"
            " make it a member of pipeline_token_reader"
        )
    return {
        str(key_from_text(k)["token_id"]): v
        for k, v in conn.execute(
            "SELECT key, value FROM history.versions WHERE entity = 'security_token' AND upper_inf(tx) ORDER BY key"
        )
    }


__all__ = [
    "ApplyResult",
    "current_tokens",
    "sees_tokens",
    "TokensHidden",
    "MigrationError",
    "apply_event",
    "apply_events",
    "catalog_version",
    "import_events",
    "current_catalog",
    "diff",
    "migrate",
    "migration_files",
    "state_at",
    "transactions",
    "valid_at",
]
