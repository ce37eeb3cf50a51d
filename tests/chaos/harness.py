"""Real components a drill can break: the three services, each restartable on its own port (a
restart comes back where the clients look), a worker process, and the whole embedded stack as
`pipeline up` runs it. Plus the paced sender that drains the planned datums while faults fire."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Producer

from pipeline.embedded import stack
from pipeline.embedded.stack import free_port
from pipeline.history.events import datamodel_events
from pipeline.settings import Settings
from pipeline.wire.producer import DatumProducer, TopicAdmin, producer_config
from processors.datum import Datum
from tests.chaos.plan import DATAMODELS, BadInput, Identity
from tests.procfs import alive

ROOT = Path(__file__).resolve().parents[2]


def drill_settings(kafka_port: int, ch_port: int, pg_port: int, data_dir: Path, **extra: Any) -> Settings:
    """Settings of a drill's clients and workers: small partitions count, quick topic discovery,
    small messages (many per drain, so a fault lands between them)."""
    return Settings.from_env({})._with(
        {
            "kafka_bootstrap": f"127.0.0.1:{kafka_port}",
            # with the writer's credentials once `pipeline up` (or UpStack) made them in data_dir
            "clickhouse_url": stack.embedded_clickhouse_url(data_dir.resolve(), ch_port),
            "postgres_dsn": f"postgresql://postgres@127.0.0.1:{pg_port}/postgres",
            "data_dir": data_dir,
            "app_id": "chaos",
            "metrics_port": free_port(),
            "api_port": 0,
            "topic_partitions": 2,
            "topic_scan_interval_s": 0.5,
            "session_timeout_s": 6.0,  # a group joins in 3 s on Tansu, not 5 (helpers.settings_for)
            "producer_batch_datums": 25,
            "producer_linger_ms": 5,
            **extra,
        }
    )


def _with_us() -> Callable[[], None] | None:
    """Children that die with the drill (pipeline.embedded.stack's PR_SET_PDEATHSIG, where it has it): an
    interrupted drill leaves no worker or stack behind."""
    dies_with_parent = getattr(stack, "dies_with_parent", None)
    return dies_with_parent(signal.SIGTERM) if dies_with_parent is not None else None


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(10)


@dataclass
class Services:
    """Broker, ClickHouse endpoint and PostgreSQL of one drill, on ports fixed for its life."""

    root: Path
    kafka_port: int = field(default_factory=free_port)
    ch_port: int = field(default_factory=free_port)
    pg_port: int = field(default_factory=free_port)
    kafka: stack.Service | None = None
    clickhouse: stack.Service | None = None
    postgres: stack.Service | None = None

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def settings(self, **extra: Any) -> Settings:
        return drill_settings(self.kafka_port, self.ch_port, self.pg_port, self.root / "worker", **extra)

    def start(self) -> None:
        self.start_kafka()
        self.start_postgres()
        self.start_clickhouse()

    def start_kafka(self) -> None:
        self.kafka = stack.start_tansu(self.kafka_port, log_dir=self.logs)

    def start_clickhouse(self) -> None:
        self.clickhouse = stack.start_clickhouse(self.root / "clickhouse", self.ch_port, log_dir=self.logs)

    def kill_clickhouse(self) -> None:
        """SIGKILL: no drain, no flush, as a crash or the OOM killer would."""
        if self.clickhouse is not None:
            _kill(self.clickhouse.proc)

    def start_postgres(self) -> None:
        self.postgres = stack.start_postgres(self.root / "postgres", self.pg_port)

    def stop_postgres_immediately(self) -> None:
        """pg_ctl's immediate mode: every backend gone at once, recovery on the next start."""
        subprocess.run(
            [
                str(stack._pg_bin() / "pg_ctl"),
                "-D",
                str((self.root / "postgres").resolve()),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            check=False,
            **stack._as_pg_user(),
        )  # type: ignore[call-overload]
        proc = self.postgres.proc if self.postgres is not None else None
        if proc is not None:  # our child when it runs in the foreground: reap it (a zombie holds its pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)

    def stop(self) -> None:
        for svc in (self.clickhouse, self.postgres, self.kafka):
            if svc is not None:
                with contextlib.suppress(Exception):
                    svc.stop()


class WorkerProcess:
    """`pipeline worker` in a child process, restartable; each start appends to one log."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, **self.settings.as_env()}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(f"\n==== chaos: worker start {self.starts + 1} ====\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "worker"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                preexec_fn=_with_us(),
            )
        self.starts += 1

    def kill(self) -> None:
        _kill(self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                _kill(self.proc)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _children_of(pid: int) -> list[int]:
    """Every live descendant of pid, from /proc (start_new_session does not hide them)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def processes_mentioning(needle: str) -> list[int]:
    """Pids whose command line names `needle` (a drill's own data directory): to find what a
    killed `pipeline up` left behind. Only ever our own drill's processes match."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            out.append(int(entry.name))
    return out


class UpStack:
    """The whole embedded stack as users run it: `pipeline up` on a data directory and ports of
    its own, with no API (port 0) to spare the two cores."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        # the endpoint's users, made before `up` so the drill's own clients know them (up keeps them)
        stack.clickhouse_credentials(self.data_dir.resolve())
        self.kafka_port, self.ch_port, self.pg_port = free_port(), free_port(), free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "up.log"
        self.starts = 0

    def settings(self) -> Settings:
        return drill_settings(
            self.kafka_port, self.ch_port, self.pg_port, self.data_dir, metrics_port=self.metrics_port
        )

    @property
    def worker_log(self) -> Path:
        return self.data_dir / "logs" / "worker-0.log"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
        # only ports and tuning: `up` starts the embedded services when no URL is given
        env |= {
            k: v
            for k, v in self.settings().as_env().items()
            if k not in ("PIPELINE_KAFKA_BOOTSTRAP", "PIPELINE_CLICKHOUSE_URL", "PIPELINE_POSTGRES_DSN")
        }
        env |= {
            "PIPELINE_KAFKA_PORT": str(self.kafka_port),
            "PIPELINE_CLICKHOUSE_PORT": str(self.ch_port),
            "PIPELINE_POSTGRES_PORT": str(self.pg_port),
        }
        return env

    def second_up(self, timeout: float = 60.0) -> tuple[int | None, str]:
        """Another `pipeline up` on the same data directory while this one runs: (exit code or None
        if it was still running after `timeout` (then killed), its last line of output)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "up"],
            env=self._env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            code = None
        lines = [
            ln
            for ln in out.decode(errors="replace").splitlines()
            if ln.strip() and "Warning" not in ln and "runtime_dir" not in ln
        ]
        return code, (lines[-1] if lines else "")[:200]

    def start(self, timeout: float = 180.0) -> None:
        env = self._env()
        self.root.mkdir(parents=True, exist_ok=True)
        before = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            out.write(f"\n==== chaos: up start {self.starts + 1} ====\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "up"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_with_us(),
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as fh:
                fh.seek(before)
                if b"pipeline is up" in fh.read():
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"pipeline up exited with {self.proc.returncode}: {self.tail()}")
            time.sleep(0.25)
        raise TimeoutError(f"pipeline up not up within {timeout:.0f}s: {self.tail()}")

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "postgres" / "postmaster.pid").read_text().splitlines()[0])
        return None

    def kill_everything(self) -> int:
        """SIGKILL `up`, everything it started and PostgreSQL (daemonised by pg_ctl, so not its
        child): the whole embedded stack dies at once, as in a power cut. Returns processes killed."""
        pids = [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []
        if self.proc is not None:
            pids += _children_of(self.proc.pid)
        pg = self.postmaster_pid()
        if pg is not None:
            pids += [pg, *_children_of(pg)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        # Gone for good before anything starts again: PostgreSQL refuses to start while the pid in
        # its socket lock file exists, and a zombie exists until init reaps it (here PID 1 takes
        # seconds to reap).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for pid in [p for p in pids if alive(p)] + self.leftovers():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not any(Path(f"/proc/{p}").exists() for p in pids):
                break
            time.sleep(0.25)
        return len(pids)

    def kill_up_group(self, grace_s: float = 30.0) -> list[str]:
        """SIGKILL `up`'s process group only (what a terminal or a service manager does). Returns
        the command lines of the drill's processes still alive `grace_s` later (time enough for a
        graceful stop): orphans, if `up` does not take its children down with it."""
        if self.proc is None:
            return []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        deadline = time.monotonic() + grace_s
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.5)
        out = []
        for pid in self.leftovers():
            with contextlib.suppress(OSError):
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160])
        return out

    def broker_pids(self) -> list[int]:
        """The drill's running Tansu broker (whoever started it)."""
        return [p for p in processes_mentioning(f"tcp://127.0.0.1:{self.kafka_port}") if alive(p)]

    def leftovers(self) -> list[int]:
        left = set(processes_mentioning(str(self.data_dir.resolve())))
        left |= set(processes_mentioning(f"127.0.0.1:{self.kafka_port}"))
        pg = self.postmaster_pid()
        if pg is not None and alive(pg):
            left.add(pg)
        return sorted(p for p in left if alive(p))

    def kill_leftovers(self) -> None:
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.kill_everything()
        self.kill_leftovers()


def publish_datamodels(settings: Settings) -> int:
    """The sample datamodels and bindings through the metadata topic, as `pipeline metadata
    datamodels` sends them. Returns the number of bindings a worker must apply."""
    events = datamodel_events(sorted(DATAMODELS.glob("*.json")), "chaos", "fault drill")
    producer = DatumProducer(settings)
    for e in events:
        producer.send_raw(producer.topics.metadata, json.dumps(e).encode())
    producer.flush()
    return sum(1 for e in events if e["entity"] == "source_binding")


def bindings_applied(dsn: str) -> int:
    from sinks import history

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
            return len(history.current_catalog(conn).bindings)
    except psycopg.Error:
        return 0


def wait_until(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.25,
    fail_fast: type[Exception] | None = None,
) -> Any:
    """Until check() is truthy; its exceptions count as "not yet", except `fail_fast` ones."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:
            if fail_fast is not None and isinstance(exc, fail_fast):
                raise
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last={last!r}")


# ------------------------------------------------------------------------------------------------
# The producer side: what the broker acknowledged, what the pipeline confirmed


def tracking_producer(settings: Settings) -> DatumProducer:
    """DatumProducer(track=True) when it has it (pipeline/wire/producer.py, issue 12); otherwise one
    that records the identities of every delivered message from its delivery callbacks."""
    if "track" in inspect.signature(DatumProducer.__init__).parameters:
        return DatumProducer(settings, track=True)  # type: ignore[call-arg]
    return _CallbackTracker(settings)


class _CallbackTracker(DatumProducer):
    """Fallback until DatumProducer tracks identities: broker-acked identities only."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._delivered: set[Identity] = set()
        self._lock = threading.Lock()

    def send(self, datums: Any) -> int:
        chunk = list(datums)
        ids = [d.key for d in chunk]

        def done(err: KafkaError | None, _msg: object) -> None:
            if err is None:
                with self._lock:
                    self._delivered.update(ids)
            else:
                self._failures.append(str(err))

        from pipeline.wire.codec import CURRENT, SCHEMA_HEADER, encode_batch
        from pipeline.wire.topics import stream_key

        node, src = chunk[0].node_id, chunk[0].source_id
        topic = self.topics.source(src)
        self.admin.ensure([topic])
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=encode_batch(chunk),
                    key=stream_key(node, src),
                    headers=[(SCHEMA_HEADER, CURRENT.encode())],
                    on_delivery=done,
                )
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)
        self.datums_sent += len(chunk)
        return len(chunk)

    def delivered_identities(self) -> set[Identity]:
        self._producer.poll(0)
        with self._lock:
            return set(self._delivered)

    def check_confirmations(self, min_interval_s: float = 1.0) -> Any:
        self._producer.poll(0)
        return None


class BadSender:
    """Sends the bad inputs with its own producer and remembers where each landed (its origin),
    which is how its dead letter is recognised."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = Producer(producer_config(settings))
        self._admin = TopicAdmin(settings)
        self.sent: list[tuple[BadInput, tuple[str, int, int] | None]] = []
        self._errors: list[str] = []

    def send(self, bad: BadInput, timeout: float = 60.0) -> tuple[str, int, int] | None:
        self._admin.ensure([bad.topic])
        where: list[tuple[str, int, int]] = []

        def done(err: KafkaError | None, msg: Any) -> None:
            if err is None:
                where.append((msg.topic(), msg.partition(), msg.offset()))
            else:
                self._errors.append(str(err))

        self._producer.produce(bad.topic, value=bad.value, key=bad.key, headers=list(bad.headers), on_delivery=done)
        self._producer.flush(timeout)
        origin = where[0] if where else None
        self.sent.append((bad, origin))
        return origin


# ------------------------------------------------------------------------------------------------
# The paced drain


class Drain:
    """Sends the planned messages at an even pace on its own thread. A fault may add messages (sent
    next), or pause the drain and swap in a new producer (the broker was replaced)."""

    def __init__(self, producer: DatumProducer, messages: Sequence[list[Datum]], duration_s: float) -> None:
        self.producer = producer
        self.messages = list(messages)
        self.duration_s = duration_s
        self.next_index = 0
        self.extras: list[list[Datum]] = []
        self.extra_sent: list[list[Datum]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._running.set()
        self._stop = False
        self._paused_ack = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos-drain", daemon=True)
        self.done = threading.Event()
        self._finish = threading.Event()
        self._hold = threading.Event()

    def start(self) -> None:
        self.t_start = time.monotonic()
        self.thread.start()

    def add(self, messages: Sequence[list[Datum]]) -> None:
        with self._lock:
            self.extras += messages

    def hold(self, held: bool = True) -> None:
        """Hold the planned messages (a quiet moment); messages a fault adds still go out."""
        if held:
            self._hold.set()
        else:
            self._hold.clear()

    def pause(self) -> None:
        """Stop between messages; returns once the sender thread is idle."""
        self._running.clear()
        self._paused_ack.wait(60)

    def resume(self, producer: DatumProducer | None = None, resend: Sequence[list[Datum]] = ()) -> None:
        if producer is not None:
            self.producer = producer
        with self._lock:
            self.extras = list(resend) + self.extras
        self._paused_ack.clear()
        self._running.set()

    def sent_messages(self) -> list[list[Datum]]:
        return self.messages[: self.next_index] + self.extra_sent

    def _send(self, msg: list[Datum]) -> bool:
        try:
            self.producer.send(msg)
            check = getattr(self.producer, "check_confirmations", None)
            if check is not None:
                check()
            return True
        except Exception as exc:  # the broker is gone: wait for the fault to resume us
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return False

    def _idle_while_paused(self) -> None:
        while not self._running.is_set() and not self._stop:
            self._paused_ack.set()
            self._running.wait(0.2)

    def _run(self) -> None:
        try:
            n = len(self.messages)
            while not self._stop:
                self._idle_while_paused()
                with self._lock:
                    extra = self.extras.pop(0) if self.extras else None
                if extra is not None:
                    if self._send(extra):
                        self.extra_sent.append(extra)
                    else:
                        with self._lock:
                            self.extras.insert(0, extra)
                        self._running.wait(0.5)
                    continue
                if self._hold.is_set():
                    self._running.wait(0.1)  # planned messages held; a fault's own still go
                    continue
                if self.next_index >= n:
                    if self._finish.is_set():
                        break
                    self._finish.wait(0.1)  # a fault may still add messages
                    continue
                due = self.t_start + self.duration_s * self.next_index / n
                wait = due - time.monotonic()
                if wait > 0:  # read once: a second reading may already be past `due`
                    time.sleep(min(0.05, wait))
                    continue
                if self._send(self.messages[self.next_index]):
                    self.next_index += 1
                else:
                    self._running.wait(0.5)
            # the last messages out of librdkafka's queue
            while not self._stop:
                try:
                    self.producer.flush(30)
                    break
                except Exception as exc:
                    self.errors.append(f"flush: {exc}")
                    self._idle_while_paused()
                    time.sleep(0.5)
        finally:
            self._paused_ack.set()
            self.done.set()

    def finish(self) -> None:
        """No fault will add messages any more: flush and end once everything is sent."""
        self._finish.set()

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return self.done.is_set()

    def stop(self) -> None:
        self._stop = True
        self._running.set()
        self.thread.join(30)
