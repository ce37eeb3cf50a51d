"""`pipeline up` with its embedded services supervises what it starts: nothing outlives it (even
a SIGKILL), a second `up` cannot take its data directory, and what dies under it comes back on
the same port. Each test runs its own `up` on a private data directory and free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from pipeline.embedded.stack import free_port, port_open
from tests.integration.helpers import ROOT, wait_for
from tests.procfs import alive

pytestmark = pytest.mark.integration


def up_env(data_dir: Path, api: bool = False, metrics: bool = False) -> dict[str, str]:
    """Embedded services only (no URL from the caller's environment), on free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    return {
        **env,
        "PIPELINE_DATA_DIR": str(data_dir),
        "PIPELINE_KAFKA_PORT": str(free_port()),
        "PIPELINE_CLICKHOUSE_PORT": str(free_port()),
        "PIPELINE_POSTGRES_PORT": str(free_port()),
        "PIPELINE_API_PORT": str(free_port() if api else 0),
        "PIPELINE_METRICS_PORT": str(free_port() if metrics else 0),
    }


def start_up(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "up", *args], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: "pipeline is up" in log.read_text() or proc.poll() is not None, 120, "the banner")
    except BaseException:
        proc.kill()
        raise
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc


def up_in(
    tmp_path: Path, workers: int, api: bool = False, metrics: bool = False
) -> tuple[Path, dict[str, str], Path, subprocess.Popen[bytes]]:
    """`pipeline up --workers N` on tmp_path/data and free ports: (data_dir, env, log, process)."""
    data_dir = tmp_path / "data"
    env = up_env(data_dir, api, metrics)
    log = tmp_path / "up.log"
    return data_dir, env, log, start_up(env, log, "--workers", str(workers))


def pg_admin_dsn(env: dict[str, str]) -> str:
    """The embedded PostgreSQL of an `up` started with env, as its superuser."""
    return f"postgresql://postgres@127.0.0.1:{env['PIPELINE_POSTGRES_PORT']}/postgres"


def stop_up(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(120)
    assert code == 0, log.read_text()[-3000:]
    assert "pipeline: stopped" in log.read_text()


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(pid: int) -> dict[int, str]:
    """Every live process below pid, with its command line."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found and alive(child):
                found[child] = cmdline(child)
                frontier.append(child)
    return found


def child_named(proc: subprocess.Popen[bytes], marker: str, timeout: float = 30) -> int:
    """The pid of `up`'s direct child whose command line contains marker (waiting for it
    while it is down between a death and its restart)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
            if marker in cmdline(int(line)) and alive(int(line)):
                return int(line)
        time.sleep(0.1)
    raise AssertionError(f"no child of `up` runs {marker!r}: {descendants(proc.pid)}")


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pg_answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


def ch_pings(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_sigkilled_up_leaves_no_process_behind(tmp_path: Path) -> None:
    data_dir, env, log, up = up_in(tmp_path, 1, api=True, metrics=True)
    pg = postmaster_pid(data_dir)
    started = descendants(up.pid)
    if pg is not None:  # pg_ctl daemonizes: then PostgreSQL is no descendant of `up`
        started |= {pg: cmdline(pg), **descendants(pg)}
    try:
        everything = " ".join(started.values())
        for part in ("tansu", "postgres -D", "pipeline.embedded.chserver", "pipeline.cli worker", "pipeline.cli api"):
            assert part in everything, (part, started)
        up.kill()  # no chance to stop anything itself
        up.wait(10)
        t0 = time.monotonic()
        deadline = t0 + 15
        while any(alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = {p: c for p, c in started.items() if alive(p)}
        assert not left, f"outlived a SIGKILLed `pipeline up`: {left}"
        print(f"all {len(started)} processes gone {time.monotonic() - t0:.1f}s after the SIGKILL")
    finally:
        for pid in started:  # only on failure: the processes this test started
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    # the data directory, its ports and PostgreSQL's files are free for the next `up`
    log2 = tmp_path / "up2.log"
    again = start_up(env, log2, "--workers", "0")
    try:
        assert pg_answers(pg_admin_dsn(env))
        assert ch_pings(env["PIPELINE_CLICKHOUSE_PORT"])
    finally:
        stop_up(again, log2)


def test_a_second_up_on_a_data_dir_in_use_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    data_dir, env, log, first = up_in(tmp_path, 0)
    try:
        pg = postmaster_pid(data_dir)
        assert pg is not None
        second_env = up_env(data_dir)  # other ports: only the data directory is shared
        second = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "up", "--workers", "0"],
            env=second_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode != 0
        assert "in use" in second.stderr and f"pid {first.pid}" in second.stderr, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        # nothing of the first was touched, nothing of the second was started
        assert postmaster_pid(data_dir) == pg
        for name in ("KAFKA", "CLICKHOUSE", "POSTGRES"):
            assert not port_open("127.0.0.1", int(second_env[f"PIPELINE_{name}_PORT"])), name
        assert pg_answers(pg_admin_dsn(env))
        assert first.poll() is None
    finally:
        stop_up(first, log)


def test_what_dies_under_up_is_restarted_on_the_same_port(tmp_path: Path) -> None:
    _, env, log, up = up_in(tmp_path, 1)
    pg_dsn = pg_admin_dsn(env)
    probes = {  # the worker first: a broker that goes away makes it exit (and be restarted) too
        "worker-0": ("pipeline.cli worker", None),
        "clickhouse": ("pipeline.embedded.chserver", lambda: ch_pings(env["PIPELINE_CLICKHOUSE_PORT"])),
        "kafka": ("tansu", lambda: port_open("127.0.0.1", int(env["PIPELINE_KAFKA_PORT"]))),
        "postgres": ("postgres -D", lambda: pg_answers(pg_dsn)),
    }
    try:
        for name, (marker, answers) in probes.items():
            victim = child_named(up, marker)
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda n=name: f"{n} restarted (pid" in log.read_text(), 30, f"{name} restarted")
            text = log.read_text()
            assert f"{name} exited with -9; restarting in 0.5s (log: " in text, text[-3000:]
            if answers is not None:
                wait_for(answers, 60, f"{name} answering again on its port")
                wait_for(lambda n=name: f"{n} is back at" in log.read_text(), 10, f"{name} back")
            assert child_named(up, marker) != victim
            print(f"{name}: answering again {time.monotonic() - t0:.1f}s after the SIGKILL")
        # a second death soon after: the backoff has grown
        os.kill(child_named(up, "pipeline.embedded.chserver"), signal.SIGKILL)
        wait_for(lambda: "clickhouse exited with -9; restarting in 1.0s" in log.read_text(), 30, "a longer delay")
        wait_for(lambda: ch_pings(env["PIPELINE_CLICKHOUSE_PORT"]), 60, "clickhouse back again")
        everything = descendants(up.pid)
    except BaseException:
        up.kill()
        raise
    stop_up(up, log)
    left = {p: c for p, c in everything.items() if alive(p)}
    assert not left, f"outlived `pipeline up`: {left}"


def test_postgres_refuses_a_data_dir_whose_postgres_runs_and_leaves_it_alone(tmp_path: Path) -> None:
    """The live server's postmaster.pid was deleted (an error swallowed), and PostgreSQL shut
    itself down a minute later; now the refusal is loud and nothing is touched."""
    from pipeline.embedded import stack

    pg_dir = tmp_path / "postgres"
    first = stack.start_postgres(pg_dir)
    try:
        pid = postmaster_pid(tmp_path)
        with pytest.raises(stack.StackError, match=f"PostgreSQL \\(pid {pid}\\) already runs on"):
            stack.start_postgres(pg_dir, wait_for_old_s=0.5)
        assert postmaster_pid(tmp_path) == pid
        assert pg_answers(first.url)
    finally:
        first.stop()
    assert first.proc is not None and first.proc.returncode == 0  # SIGINT: a fast, clean shutdown
    # a crash leaves postmaster.pid behind, and its pid may belong to another process by now
    other = subprocess.Popen(["sleep", "30"])
    try:
        (pg_dir / "postmaster.pid").write_text(f"{other.pid}\n{pg_dir}\n")
        again = stack.start_postgres(pg_dir)
        assert pg_answers(again.url)
        again.stop()
    finally:
        other.kill()
        other.wait()
