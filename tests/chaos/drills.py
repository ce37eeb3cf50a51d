"""The faults, and one drill: start real components, drain the planned datums, fire a fault when
`point` of them are stored, recover, wait until caught up, and ask the oracle."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition

from pipeline.embedded.stack import port_open
from pipeline.settings import Settings
from pipeline.wire.codec import CURRENT, SCHEMA_HEADER, encode_batch
from pipeline.wire.producer import DatumProducer, TopicAdmin
from pipeline.wire.topics import Topics, stream_key
from processors.datum import Datum
from sinks.clickhouse import connect
from tests.chaos import oracle
from tests.chaos.harness import (
    BadSender,
    Drain,
    Services,
    UpStack,
    WorkerProcess,
    bindings_applied,
    publish_datamodels,
    tracking_producer,
    wait_until,
)
from tests.chaos.plan import BadInput, DrainPlan, Identity, make_plan, new_source_messages, pulse_datastreams
from tests.samples import metadata_event

log = logging.getLogger(__name__)
POINTS = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Size:
    nodes: int = 2
    datums: int = 3000
    drain_s: float = 12.0
    down_s: float = 8.0  # how long a killed service stays down
    stall_s: float = 45.0  # give up waiting for catch-up after this long without progress
    max_wait_s: float = 240.0


REDUCED = Size(stall_s=45.0)
FULL = Size(nodes=3, datums=9000, drain_s=25.0, down_s=10.0, stall_s=60.0, max_wait_s=420.0)


@dataclass
class Row:
    fault: str
    point: float
    expected: int = 0
    stored: int = 0
    lost: int = 0
    duplicates: int = 0
    rollups_wrong: int = 0
    rollups_checked: int = 0
    letters: str = ""
    recovery_s: float | None = None
    exact: bool = False
    notes: list[str] = field(default_factory=list)
    data: oracle.DataVerdict | None = None
    letter_verdict: oracle.LetterVerdict | None = None

    def cells(self) -> list[str]:
        return [
            self.fault,
            f"{self.point:.0%}",
            str(self.expected),
            str(self.stored),
            str(self.lost),
            str(self.duplicates),
            f"{self.rollups_wrong}/{self.rollups_checked}",
            self.letters,
            "-" if self.recovery_s is None else f"{self.recovery_s:.1f}",
            "yes" if self.exact else "NO",
        ]


HEADER = [
    "fault",
    "at",
    "expected",
    "stored",
    "lost",
    "dup visible",
    "rollups wrong",
    "dead letters",
    "recovery s",
    "exact",
]


def table(rows: Sequence[Row]) -> str:
    cells = [HEADER] + [r.cells() for r in rows]
    widths = [max(len(c[k]) for c in cells) for k in range(len(HEADER))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    notes = [f"- {r.fault} at {r.point:.0%}: {'; '.join(r.notes)}" for r in rows if r.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


# ------------------------------------------------------------------------------------------------


@dataclass
class Drill:
    """What a fault can touch."""

    fault: Fault
    point: float
    size: Size
    root: Path
    plan: DrainPlan
    settings: Settings
    services: Services | None = None
    worker: WorkerProcess | None = None
    up: UpStack | None = None
    drain: Drain | None = None
    bad: BadSender | None = None
    notes: list[str] = field(default_factory=list)
    bad_inputs: list[tuple[BadInput, tuple[str, int, int] | None]] = field(default_factory=list)
    # identities acknowledged by a broker that was then lost, and confirmed before it was
    confirmed_before_crash: set[Identity] | None = None
    # checked while waiting for the catch-up (part of "recovered"), and once-only findings
    extra_checks: list[Callable[[], tuple[bool, str]]] = field(default_factory=list)
    findings: list[tuple[bool, str]] = field(default_factory=list)
    phantom: list[Datum] = field(default_factory=list)  # negative control: "acked" but never sent

    @property
    def topics(self) -> Topics:
        return Topics.of_settings(self.settings)

    def send_bad(self, bad: BadInput) -> None:
        assert self.bad is not None
        origin = self.bad.send(bad)
        if origin is None:
            self.notes.append(f"{bad.name}: the broker refused it")
        self.bad_inputs.append((bad, origin))

    def log_text(self) -> str:
        if self.worker is not None:
            return self.worker.log_text()
        if self.up is not None and self.up.worker_log.exists():
            return self.up.worker_log.read_text(errors="replace")
        return ""


class Fault:
    name = "none"
    description = "no fault: the baseline"
    whole_stack = False

    def fire(self, drill: Drill) -> None:
        """Break something at the drill's point, and bring it back (the drain goes on meanwhile)."""


def meter_stream(plan: DrainPlan) -> tuple[int, str]:
    return next((d.node_id, d.source_id) for d in plan.datums if "/B1/M1" in d.source_id)


def bad_datum(name: str, topic: str, key: bytes, datum: Datum, rules: tuple[str, ...]) -> BadInput:
    """A datum message built with the codec, so the producer's own checks cannot stop it."""
    return BadInput(
        name, topic, key, encode_batch([datum], compiled=False), ((SCHEMA_HEADER, CURRENT.encode()),), rules, datum.key
    )


class Poison(Fault):
    name = "poison datum"
    description = "a negative nodeId with an accumulating sample on a bound meter's partition"

    def fire(self, drill: Drill) -> None:
        node, src = meter_stream(drill.plan)
        t = drill.plan.t0 + 17 * 60_000 + 123
        drill.send_bad(
            bad_datum(
                "negative nodeId",
                drill.topics.source(src),
                stream_key(node, src),
                Datum(-1, src, t, a={"wattHours": 5.0}),
                ("internal.", "node_id.", "envelope."),
            )
        )


class ClickHouseKilled(Fault):
    name = "clickhouse killed"
    description = (
        "the ClickHouse endpoint SIGKILLed in a quiet moment (the worker idle), restarted on its "
        "port; only datums of brand-new sources sent while it is down"
    )

    def fire(self, drill: Drill) -> None:
        assert drill.services is not None and drill.drain is not None
        drill.drain.hold()
        quiet = _wait_quiet(drill)
        drill.services.kill_clickhouse()
        t0 = time.monotonic()
        fresh = new_source_messages(int(drill.point * 100) + 7, 1, 60, drill.plan.t0)
        drill.drain.add(fresh)
        drill.notes.append(
            f"{sum(len(m) for m in fresh)} datums of 2 new sources sent while it was down"
            + ("" if quiet else " (the worker was not idle when it was killed)")
        )
        time.sleep(max(0.0, drill.size.down_s - (time.monotonic() - t0)))
        drill.services.start_clickhouse()
        drill.drain.hold(False)


class ClickHouseKilledBusy(Fault):
    name = "clickhouse killed, worker restart"
    description = (
        "the ClickHouse endpoint SIGKILLed mid-drain and the worker restarted while it is down (every "
        "agent's first ClickHouse access fails), new sources among the datums; then it comes back"
    )

    def fire(self, drill: Drill) -> None:
        assert drill.services is not None and drill.drain is not None and drill.worker is not None
        drill.services.kill_clickhouse()
        t0 = time.monotonic()
        drill.worker.kill()
        drill.worker.start()
        fresh = new_source_messages(int(drill.point * 100) + 11, 2, 60, drill.plan.t0)
        drill.drain.add(fresh)
        drill.notes.append(f"{sum(len(m) for m in fresh)} datums of 2 new sources among them")
        # longer than a worker's start: its agents start with ClickHouse away
        time.sleep(max(0.0, max(20.0, drill.size.down_s) - (time.monotonic() - t0)))
        if drill.worker.proc is not None and drill.worker.proc.poll() is not None:
            drill.notes.append(f"the worker exited ({drill.worker.proc.returncode}) while ClickHouse was down")
        drill.services.start_clickhouse()


def _wait_quiet(drill: Drill, timeout: float = 20.0) -> bool:
    """Until every message sent so far is stored (the worker has nothing in hand)."""
    store = Store(drill.settings.clickhouse_url)
    assert drill.drain is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        sent = {d.key for m in drill.drain.sent_messages() for d in m}
        with contextlib.suppress(Exception):
            if store.run(stored_identities) >= len(sent):
                time.sleep(1.5)  # the rollup agent's marks too
                return True
    return False


class PostgresDownWorkerRestart(Fault):
    name = "postgres down, worker restart"
    description = "PostgreSQL stopped (immediate), metadata published and the worker restarted meanwhile"

    def fire(self, drill: Drill) -> None:
        assert drill.services is not None and drill.worker is not None
        drill.services.stop_postgres_immediately()
        events = [
            metadata_event(
                "node", {"node_id": 900 + k}, "upsert", {"name": f"chaos {k}"}, author="chaos", comment="fault drill"
            )
            for k in range(3)
        ]
        producer = DatumProducer(drill.settings)
        for e in events:
            producer.send_raw(producer.topics.metadata, json.dumps(e).encode())
        producer.flush()
        # a restart (SIGTERM: it leaves the group, so the new one is assigned partitions at once)
        drill.worker.stop()
        since = len(drill.log_text())
        drill.worker.start()
        # the new worker must have come up, partitions assigned, and run a while with PostgreSQL away
        with contextlib.suppress(TimeoutError):
            wait_until(
                lambda: "Worker ready" in drill.log_text()[since:] or drill.worker.proc.poll() is not None,
                60,
                "the restarted worker ready",
            )  # type: ignore[union-attr]
        time.sleep(max(10.0, drill.size.down_s))
        if drill.worker.proc is not None and drill.worker.proc.poll() is not None:
            drill.notes.append(f"the worker exited ({drill.worker.proc.returncode}) while PostgreSQL was down")
        drill.services.start_postgres()
        ids = [e["event_id"] for e in events]
        dsn = drill.settings.postgres_dsn

        def applied() -> tuple[bool, str]:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                got = conn.execute(
                    "SELECT count(*) FROM history.transactions WHERE status = 'applied' AND event_id::text = ANY(%s)",
                    (ids,),
                ).fetchone()
            n = int(got[0]) if got else 0
            return n == len(ids), f"metadata published while PostgreSQL was down: {n}/{len(ids)} applied"

        drill.extra_checks.append(applied)


class WorkerKilled(Fault):
    name = "worker SIGKILL"
    description = "the worker SIGKILLed and started again"

    def fire(self, drill: Drill) -> None:
        assert drill.worker is not None
        drill.worker.kill()
        drill.worker.start()


class StackKilled(Fault):
    name = "whole stack killed"
    description = (
        "`pipeline up` and everything it runs SIGKILLed at once, then `pipeline up` again; "
        "the producer resends what the pipeline had not confirmed"
    )
    whole_stack = True

    def fire(self, drill: Drill) -> None:
        assert drill.up is not None
        up = drill.up
        _crash_and_restart(drill, lambda: f"{up.kill_everything()} processes killed")


class UpKilled(Fault):
    name = "up killed as a group"
    description = (
        "a second `pipeline up` on the data directory in use (must refuse, touching nothing), then "
        "`pipeline up`'s process group SIGKILLed (nothing may survive it), then `pipeline up` again"
    )
    whole_stack = True

    def fire(self, drill: Drill) -> None:
        assert drill.up is not None
        up = drill.up
        code, said = up.second_up()
        drill.findings.append(
            (code not in (None, 0), f"a second up on the directory in use: exit {code}, said {said!r}")
        )

        def kill() -> str:
            orphans = up.kill_up_group()
            drill.findings.append(
                (
                    not orphans,
                    f"{len(orphans)} process(es) outlived up's group by 30 s" + (f": {orphans}" if orphans else ""),
                )
            )
            up.kill_leftovers()
            return f"up's group killed, {len(orphans)} orphan(s)"

        _crash_and_restart(drill, kill)


class BrokerKilled(Fault):
    name = "broker killed"
    description = (
        "the embedded broker (it keeps nothing) SIGKILLed under a running `pipeline up`, which must "
        "restart it; the workers carry on against the empty broker; the producer resends what was "
        "not confirmed"
    )
    whole_stack = True

    def fire(self, drill: Drill) -> None:
        assert drill.up is not None
        up = drill.up

        def kill() -> str:
            pids = up.broker_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return f"broker killed ({len(pids)} process)"

        def back() -> None:
            # up's supervision brings it back on its port (or nothing does: the drill says so)
            wait_until(
                lambda: up.broker_pids() and port_open("127.0.0.1", up.kafka_port),
                90,
                "the broker restarted by pipeline up",
            )

        _crash_and_restart(drill, kill, back)


def _restart_up(drill: Drill) -> None:
    assert drill.up is not None
    since = len(drill.log_text())
    drill.up.start()
    wait_until(lambda: "catalog version" in drill.log_text()[since:], 180, "the worker's catalog after restart")


def _crash_and_restart(drill: Drill, kill: Callable[[], str], restart: Callable[[], None] | None = None) -> None:
    """The broker dies with its data: the producer keeps what was confirmed before, and resends
    everything else to the restarted stack (as `pipeline ingest` would be told to)."""
    assert drill.up is not None and drill.drain is not None
    old = drill.drain.producer
    # which bad inputs the pipeline had taken (committed past) before the crash
    taken = [b for b in drill.bad_inputs if b[1] is not None and committed_past(drill.settings, b[1])]
    what = kill()
    drill.drain.pause()
    check = getattr(old, "check_confirmations", None)
    # the last confirmation the producer had (no new request: the broker is gone)
    conf = check(1e9) if check is not None else None
    confirmed: set[Identity] = set(conf.confirmed) if conf is not None else set()
    delivered = old.delivered_identities()
    with contextlib.suppress(Exception):
        old._producer.purge()  # what it still holds would go to the new, empty broker
    with contextlib.suppress(Exception):
        old.close()  # type: ignore[attr-defined]
    drill.confirmed_before_crash = confirmed
    (restart or (lambda: _restart_up(drill)))()
    # what a producer that trusted the broker's acks alone would have lost
    stored = set(Store(drill.settings.clickhouse_url).run(stored_identity_set))
    fresh = tracking_producer(drill.settings)
    resend = [d for m in drill.drain.sent_messages() for d in m if d.key not in confirmed]
    drill.drain.resume(fresh, _chunks(resend, drill.settings.producer_batch_datums))
    drill.bad = BadSender(drill.settings)
    kept = [b for b in drill.bad_inputs if b in taken]
    for b, _origin in [b for b in drill.bad_inputs if b not in taken]:
        kept.append((b, drill.bad.send(b)))  # not taken before the crash: sent again, as anything unconfirmed
    drill.bad_inputs = kept
    drill.notes.append(
        f"{what}; broker had acked {len(delivered)} datums, {len(confirmed)} confirmed before the crash, "
        f"{len(delivered - confirmed)} told not taken; {len(delivered - stored)} acked but not stored after the "
        f"restart (lost unless resent); resent {len(resend)}"
        + (
            f"; {len(taken)} bad input(s) dead-lettered before the crash (not resent: their letters must outlive "
            "the broker)"
            if taken
            else ""
        )
    )


def _chunks(datums: Sequence[Datum], size: int) -> list[list[Datum]]:
    by_stream: dict[tuple[int, str], list[Datum]] = {}
    for d in datums:
        by_stream.setdefault(d.stream, []).append(d)
    return [ds[k : k + size] for ds in by_stream.values() for k in range(0, len(ds), size)]


def committed_past(settings: Settings, origin: tuple[str, int, int]) -> bool:
    topic, partition, offset = origin
    c = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.app_id, "enable.auto.commit": False}
    )
    try:
        (tp,) = c.committed([TopicPartition(topic, partition)], timeout=10)
        return int(tp.offset) > offset
    except Exception:
        return False
    finally:
        c.close()


class BigCorrupt(Fault):
    name = "7.9 MB corrupt message"
    description = "7.9 MB of garbage with a datum schema header, on a bound inverter's partition"

    def fire(self, drill: Drill) -> None:
        node, src = next((d.node_id, d.source_id) for d in drill.plan.datums if "/INV" in d.source_id)
        garbage = random.Random(79).randbytes(7_900_000)
        drill.send_bad(
            BadInput(
                "7.9 MB corrupt",
                drill.topics.source(src),
                stream_key(node, src),
                garbage,
                ((SCHEMA_HEADER, CURRENT.encode()),),
                ("envelope.",),
            )
        )


class HugeValues(Fault):
    name = "huge values (1e308)"
    description = "two finite 1.6e308 readings in one half hour of an unbound stream: their sum overflows"

    def fire(self, drill: Drill) -> None:
        node, src = next((d.node_id, d.source_id) for d in drill.plan.datums if d.source_id.startswith("/free/"))
        base = next(d.created_ms for d in drill.plan.datums if d.stream == (node, src))
        for k in range(2):
            d = Datum(node, src, base + 60_000 * k + 7, i={"x": 1.6e308})
            drill.send_bad(bad_datum(f"huge value {k}", drill.topics.source(src), stream_key(node, src), d, ()))


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Poison(),
        ClickHouseKilled(),
        ClickHouseKilledBusy(),
        PostgresDownWorkerRestart(),
        WorkerKilled(),
        StackKilled(),
        UpKilled(),
        BrokerKilled(),
        BigCorrupt(),
        HugeValues(),
    )
}
BASELINE = Fault()


# ------------------------------------------------------------------------------------------------


def stored_identities(client: Any) -> int:
    return int(client.command("SELECT count(DISTINCT node_id, source_id, created) FROM datum WHERE node_id > 0"))


def stored_identity_set(client: Any) -> list[Identity]:
    rows = client.query("SELECT DISTINCT node_id, source_id, toUnixTimestamp64Milli(created) FROM datum").result_rows
    return [(int(n), str(s), int(c)) for n, s, c in rows]


def _fresh_client(url: str) -> Any:
    return connect(url, connect_timeout=3, send_receive_timeout=60)


class Store:
    """The drill's ClickHouse reader: reconnects after any failure (the endpoint may be down)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Any = None

    def run(self, fn: Callable[[Any], Any]) -> Any:
        try:
            if self._client is None:
                self._client = _fresh_client(self.url)
            return fn(self._client)
        except Exception:
            self._client = None
            raise


def start_components(drill: Drill) -> None:
    """Services and a worker (or `pipeline up`), then the sample datamodels, applied and loaded."""
    # The planned sources' topics exist before the drain, as a fleet's would: the drill measures
    # the fault, not topic discovery (the new sources of "clickhouse killed" exercise that).
    streams = {d.source_id for d in drill.plan.datums}
    if drill.up is not None:
        drill.up.start()
        TopicAdmin(drill.settings).ensure(drill.topics.source(s) for s in streams)
    else:
        assert drill.services is not None
        drill.services.start()
        TopicAdmin(drill.settings).ensure(drill.topics.source(s) for s in streams)
        drill.worker = WorkerProcess(drill.settings, drill.root / "worker.log")
        drill.worker.start()
    bindings = publish_datamodels(drill.settings)

    def applied() -> bool:
        if drill.worker is not None and drill.worker.proc is not None and drill.worker.proc.poll() is not None:
            raise RuntimeError(f"the worker exited while starting: {drill.log_text()[-1500:]}")
        return bindings_applied(drill.settings.postgres_dsn) >= bindings

    wait_until(applied, 180, "the sample bindings applied", fail_fast=RuntimeError)
    # the worker validates with a catalog loaded after the bindings (its log names the version)
    from sinks import history

    with psycopg.connect(drill.settings.postgres_dsn, autocommit=True) as conn:
        version = history.catalog_version(conn)
    wait_until(lambda: f"catalog version {version}:" in drill.log_text(), 120, f"the worker's catalog {version}")


def stop_components(drill: Drill) -> None:
    if drill.drain is not None:
        drill.drain.stop()
    if drill.worker is not None:
        drill.worker.stop()
    if drill.services is not None:
        drill.services.stop()
    if drill.up is not None:
        drill.up.stop()


def run_drill(
    fault: Fault, point: float, size: Size, root: Path, seed: int = 1, sabotage: Callable[[Drill], None] | None = None
) -> Row:
    """One row of the table. `sabotage` (the negative control) runs after catch-up, before the
    final verdict: it loses data on purpose."""
    root.mkdir(parents=True, exist_ok=True)
    plan = make_plan(seed, size.nodes, size.datums)
    services, up = (None, UpStack(root)) if fault.whole_stack else (Services(root), None)
    settings = up.settings() if up is not None else services.settings()  # type: ignore[union-attr]
    drill = Drill(fault, point, size, root, plan, settings, services=services, up=up)
    row = Row(fault.name, point)
    try:
        start_components(drill)
        _drain_with_fault(drill, row, sabotage)
    finally:
        stop_components(drill)
    return row


def _drain_with_fault(drill: Drill, row: Row, sabotage: Callable[[Drill], None] | None) -> None:
    settings, plan, size = drill.settings, drill.plan, drill.size
    producer = tracking_producer(settings)
    drill.drain = Drain(producer, plan.messages, size.drain_s)
    drill.bad = BadSender(settings)
    pulse = pulse_datastreams()
    total = len({d.key for d in plan.datums})
    drill.drain.start()
    # one ordinary bad input in every drain: a datum from before 2000
    node, src = meter_stream(plan)
    drill.send_bad(
        bad_datum(
            "created before 2000",
            drill.topics.source(src),
            stream_key(node, src),
            Datum(node, src, 915_148_800_000, i={"watts": 1.0}),
            ("created.",),
        )
    )
    store = Store(settings.clickhouse_url)
    target = int(total * drill.point)
    deadline = time.monotonic() + size.drain_s * 3 + 120
    at = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            at = store.run(stored_identities)
            if at >= target:
                break
        time.sleep(0.2)
    else:
        drill.notes.append(f"fault point never reached: {at} of {target} stored; fired anyway")
    t_fault = time.monotonic()
    drill.fault.fire(drill)
    drill.drain.finish()
    if not drill.drain.join(size.drain_s * 2 + 180):
        drill.notes.append("the drain did not finish sending")
    # what the producer was told: acknowledged by the broker (and, after a broker loss, confirmed before)
    sent = {d.key for m in drill.drain.sent_messages() for d in m}
    acked = set(drill.drain.producer.delivered_identities())
    if drill.confirmed_before_crash is not None:
        acked |= drill.confirmed_before_crash
    bad_ids = {b.identity for b, _ in drill.bad_inputs if b.identity is not None}
    acked -= bad_ids
    datums = plan.datums + [d for m in drill.drain.extra_sent for d in m]
    expected = oracle.expected_samples(datums, acked)
    # catch-up: until data and rollups are exact, or nothing changes for stall_s
    verdict: oracle.DataVerdict | None = None
    state: tuple[int, ...] | None = None
    changed = time.monotonic()
    end = time.monotonic() + size.max_wait_s
    while time.monotonic() < end:
        try:
            verdict = store.run(lambda c: oracle.check_data(c, expected, bad_ids, sent, pulse))
        except Exception as exc:
            log.info("oracle read failed (%s); retrying", exc)
            time.sleep(1.0)
            continue
        if verdict.exact and all(ok for ok, _ in _extra_checks(drill)):
            row.recovery_s = time.monotonic() - t_fault
            break
        if verdict.state() != state:
            state, changed = verdict.state(), time.monotonic()
        elif time.monotonic() - changed > size.stall_s:
            break
        time.sleep(1.0)
    confirmed, reason = _confirmation(drill)
    if sabotage is not None:
        sabotage(drill)
        # the sabotage may have changed what the producer was told
        phantom = {d.key for d in drill.phantom}
        expected = oracle.expected_samples(datums + drill.phantom, acked | phantom)
        verdict = store.run(lambda c: oracle.check_data(c, expected, bad_ids, sent, pulse))
    try:
        letters = oracle.check_letters(store.run(oracle.stored_letters), drill.bad_inputs)
    except Exception as exc:
        letters = oracle.check_letters([], drill.bad_inputs)
        drill.notes.append(f"the stored dead letters could not be read: {exc}")
    checks = _extra_checks(drill) + drill.findings
    _fill(row, verdict, letters, checks, drill, confirmed, reason, len(acked))


def _extra_checks(drill: Drill) -> list[tuple[bool, str]]:
    out = []
    for check in drill.extra_checks:
        try:
            out.append(check())
        except Exception as exc:
            out.append((False, f"check failed: {type(exc).__name__}: {exc}"))
    return out


def _confirmation(drill: Drill) -> tuple[set[Identity] | None, str | None]:
    assert drill.drain is not None
    confirm = getattr(drill.drain.producer, "confirm", None)
    if confirm is None:
        return None, None
    try:
        result = confirm(30.0)
    except Exception as exc:
        return None, f"confirm failed: {exc}"
    return set(result.confirmed), result.reason


def _fill(
    row: Row,
    verdict: oracle.DataVerdict | None,
    letters: oracle.LetterVerdict,
    checks: list[tuple[bool, str]],
    drill: Drill,
    confirmed: set[Identity] | None,
    reason: str | None,
    acked: int,
) -> None:
    row.notes = drill.notes
    row.letter_verdict = letters
    extra = f" +{letters.duplicated} dup" if letters.duplicated else ""
    row.letters = f"{letters.exactly_one}/{letters.expected}{extra}"
    if verdict is None:
        row.notes.append("the store could not be read")
        return
    row.data = verdict
    row.expected, row.stored, row.lost = verdict.expected, verdict.stored, verdict.lost + verdict.wrong
    row.duplicates = verdict.duplicates
    row.rollups_wrong = verdict.rollups_wrong + verdict.rollups_nonfinite
    row.rollups_checked = verdict.rollups_checked
    row.exact = verdict.exact and letters.exact and all(ok for ok, _ in checks)
    if verdict.wrong:
        row.notes.append(f"{verdict.wrong} stored with samples missing or changed")
    if verdict.bad_stored:
        row.notes.append(f"{verdict.bad_stored} bad input(s) stored")
    if verdict.rollups_nonfinite:
        row.notes.append(f"{verdict.rollups_nonfinite} non-finite rollup rows")
    if verdict.unacked_stored:
        row.notes.append(f"{verdict.unacked_stored} stored without an ack (allowed)")
    if confirmed is not None and drill.confirmed_before_crash is None:
        missing = acked - len(confirmed)
        if missing > 0 or reason:
            row.notes.append(f"confirm: {len(confirmed)} of {acked} confirmed" + (f" ({reason})" if reason else ""))
    row.notes += [msg for _ok, msg in checks]
    row.notes += verdict.examples[:3] + letters.examples[:3]
    if drill.worker is not None and drill.worker.proc is not None and drill.worker.proc.poll() is not None:
        row.notes.append(f"the worker had exited ({drill.worker.proc.returncode}) at the end")
    if "Traceback" in drill.log_text():
        row.notes.append(f"worker log has {drill.log_text().count('Traceback')} traceback(s)")
    if row.recovery_s is None and not row.exact:
        row.notes.append("never caught up")
