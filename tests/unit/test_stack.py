"""The pieces of `pipeline up`'s supervision that need no service: the restart policy, the
data directory lock, stale PostgreSQL lock files, and the supervisor on tiny real processes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.embedded import stack
from tests.procfs import alive


def test_backoff_doubles_from_half_a_second_up_to_thirty() -> None:
    policy = stack.RestartPolicy()
    delays = [policy.delay_after_exit(ran_for_s=1.0) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_backoff_starts_over_after_a_run_that_lasted() -> None:
    policy = stack.RestartPolicy(initial_s=0.5, max_s=30.0, stable_s=60.0)
    for _ in range(4):
        policy.delay_after_exit(ran_for_s=2.0)
    assert policy.delay_after_exit(ran_for_s=59.9) == 8.0  # not long enough
    assert policy.delay_after_exit(ran_for_s=60.0) == 0.5
    assert policy.delay_after_exit(ran_for_s=0.1) == 1.0


def test_a_data_directory_is_locked_once_and_names_its_holder(tmp_path: Path) -> None:
    first = stack.DataDirLock(tmp_path).acquire()
    with pytest.raises(stack.DataDirInUse, match=f"pid {os.getpid()}"):
        stack.DataDirLock(tmp_path).acquire()
    first.release()
    stack.DataDirLock(tmp_path).acquire().release()  # free again once released


def test_a_lock_file_left_by_a_dead_holder_is_no_obstacle(tmp_path: Path) -> None:
    (tmp_path / stack.LOCK_NAME).write_text("999999\n")  # as a SIGKILLed `up` leaves it
    lock = stack.DataDirLock(tmp_path).acquire()
    assert (tmp_path / stack.LOCK_NAME).read_text() == f"{os.getpid()}\n"
    lock.release()


def test_postmaster_pid_of_a_dead_or_foreign_process_is_removed(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "30"])  # alive, but no PostgreSQL: a reused pid
    try:
        (tmp_path / "postmaster.pid").write_text(f"{other.pid}\n{tmp_path}\n")
        (tmp_path / ".s.PGSQL.5433.lock").write_text("999999\n")  # dead
        removed = stack.clear_stale_postgres_locks(tmp_path, wait_s=0)
        assert {p.name for p in removed} == {"postmaster.pid", ".s.PGSQL.5433.lock"}
        assert not (tmp_path / "postmaster.pid").exists()
        assert other.poll() is None  # only the file was touched
    finally:
        other.kill()
        other.wait()


def test_a_postgres_of_another_data_dir_is_not_this_ones(tmp_path: Path) -> None:
    assert not stack.postgres_of(os.getpid(), tmp_path)
    assert not stack.postgres_of(999999, tmp_path)


def _sh(script: str, log_file: Path) -> stack.Service:
    svc = stack.Service(
        log_file.stem, "", spawn=lambda: stack.spawn_process(["sh", "-c", script], log_file), log_file=log_file
    )
    return svc.start()


def test_supervisor_restarts_with_growing_delays_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.embedded.stack")
    sup = stack.Supervisor(policy=lambda: stack.RestartPolicy(initial_s=0.1, max_s=0.4, stable_s=60))
    crashing = sup.add(_sh("exit 3", tmp_path / "crashing.log"))
    steady = sup.add(_sh("sleep 30", tmp_path / "steady.log"))
    once = sup.add(_sh("exit 0", tmp_path / "once.log"), restart=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and caplog.text.count("crashing exited with 3") < 4:
        sup.check()
        time.sleep(0.01)
    sup.stop([])
    delays = [
        r.getMessage().split("restarting in ")[1].split("s ")[0]
        for r in caplog.records
        if r.getMessage().startswith("crashing exited with 3; restarting in")
    ]
    assert delays[:4] == ["0.1", "0.2", "0.4", "0.4"]
    assert f"(log: {tmp_path / 'crashing.log'})" in caplog.text
    assert caplog.text.count("crashing restarted (pid") >= 3
    assert "once exited with 0; not restarted" in caplog.text
    assert once.proc is not None and once.proc.returncode == 0
    assert "steady exited" not in caplog.text
    assert steady.proc is not None and steady.proc.returncode is not None  # stopped by stop()
    assert crashing.proc is not None and crashing.proc.poll() is not None


def test_supervisor_stops_group_after_group(tmp_path: Path) -> None:
    """Workers drain before the services they write to go away: each group has exited before
    the next is signalled."""
    order = tmp_path / "order"
    script = f"trap 'sleep 0.2; echo $0 >> {order}; exit 0' TERM; while :; do sleep 0.05; done"

    def member(name: str) -> stack.Service:
        svc = stack.Service(
            name,
            "",
            log_file=tmp_path / f"{name}.log",
            spawn=lambda: stack.spawn_process(["sh", "-c", script, name], tmp_path / f"{name}.log"),
        )
        return svc.start()

    sup = stack.Supervisor()
    kafka, clickhouse = sup.add(member("kafka")), sup.add(member("clickhouse"))
    workers = [sup.add(member("worker-0")), sup.add(member("worker-1"))]
    api = sup.add(member("api"))
    time.sleep(0.2)  # the traps are set
    sup.stop([workers, [api], [clickhouse], [kafka]], timeout=10)
    lines = order.read_text().split()
    assert sorted(lines[:2]) == ["worker-0", "worker-1"]
    assert lines[2:] == ["api", "clickhouse", "kafka"]


def test_children_die_with_their_parent_even_on_sigkill(tmp_path: Path) -> None:
    """A parent SIGKILLed cannot stop anything: the kernel signals its children for it."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from pipeline.embedded import stack\n"
            f"p = stack.spawn_process(['sleep', '60'], Path({str(tmp_path / 'sleep.log')!r}))\n"
            "print(p.pid, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.kill()
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child), "the child outlived its SIGKILLed parent"
