"""The HTTP ingest's group commit (`pipeline.api.http_ingest.GroupCommit`) with a fake publisher:
what is sent, flushed and answered, in which order, and what a failure answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from pipeline.api.http_ingest import GroupCommit
from processors.auxiliary import AuxChange
from processors.datum import Datum

WAIT_S = 10.0


def datum(k: int) -> Datum:
    return Datum(1, "/m", 1_700_000_000_000 + k, i={"watts": float(k)})


class Fake:
    """Records sends and flushes in one log; a flush waits for `release` when `hold` is set, and
    fails while `fail_flush` is set; a send of a datum in `poison` fails."""

    def __init__(self, log: list[str], name: str = "p") -> None:
        self.log = log
        self.name = name
        self.hold = False
        self.release = threading.Event()
        self.flushing = threading.Event()
        self.fail_flush = False
        self.poison: set[int] = set()
        self.sends = 0  # send calls

    def send(self, datums: Sequence[Datum]) -> int:
        self.sends += 1
        for d in datums:
            if d.created_ms in self.poison:
                raise ValueError("cannot encode")
        self.log += [f"send {d.created_ms % 1000}" for d in datums]
        return len(datums)

    def send_auxiliary(self, change: AuxChange) -> None:
        self.log.append("aux")

    def close(self) -> None:
        self.log.append(f"close {self.name}")

    def flush(self, timeout: float = 60.0) -> None:
        self.log.append(f"flush {self.name}")
        self.flushing.set()
        if self.hold:
            assert self.release.wait(WAIT_S)
        if self.fail_flush:
            raise RuntimeError("broker away")


Results = dict[int, BaseException | None]


def start(commits: GroupCommit, ks: Sequence[int], results: Results) -> threading.Thread:
    """Publish the datums `ks` as one request in a thread; its answer lands in results[ks[0]]."""

    def run() -> None:
        try:
            commits.publish([datum(k) for k in ks], [])
            results[ks[0]] = None
        except Exception as exc:
            results[ks[0]] = exc

    t = threading.Thread(target=run)
    t.start()
    return t


def until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def held_flush(log: list[str], k: int, max_requests: int = 500) -> tuple[Fake, GroupCommit, Results, threading.Thread]:
    """A group commit whose first request (datum k) is in a flush that waits for `release`."""
    fake = Fake(log)
    fake.hold = True
    commits = GroupCommit(lambda: fake, max_requests, 5.0)
    results: Results = {}
    first = start(commits, [k], results)
    assert fake.flushing.wait(WAIT_S)
    return fake, commits, results, first


@pytest.fixture
def log() -> list[str]:
    return []


def test_requests_arriving_during_a_flush_are_one_group_answered_after_its_flush(log: list[str]) -> None:
    fake, commits, results, first = held_flush(log, 1)
    later = [start(commits, [k], results) for k in (2, 3, 4)]
    time.sleep(0.05)
    # the first group's flush has not returned: nobody is answered, nothing more is sent
    assert results == {}
    assert log == ["send 1", "flush p"]
    fake.hold = False
    fake.release.set()
    for t in [first, *later]:
        t.join(WAIT_S)
    assert results == {1: None, 2: None, 3: None, 4: None}
    # one send and one flush for the three that waited
    assert log[:2] == ["send 1", "flush p"]
    assert sorted(log[2:5]) == ["send 2", "send 3", "send 4"] and log[5:] == ["flush p"]
    assert commits.groups == 2 and fake.sends == 2
    commits.close()


def test_no_request_is_answered_before_its_group_flush_returns(log: list[str]) -> None:
    fake, commits, results, t = held_flush(log, 7)
    time.sleep(0.05)
    assert 7 not in results
    fake.release.set()
    t.join(WAIT_S)
    assert results == {7: None}
    commits.close()


def test_a_group_holds_at_most_max_requests(log: list[str]) -> None:
    fake, commits, results, first = held_flush(log, 0, max_requests=2)
    threads = [first]
    threads += [start(commits, [k], results) for k in (1, 2, 3, 4, 5)]
    until(lambda: len(commits._queue) == 5)
    fake.hold = False
    fake.release.set()
    for t in threads:
        t.join(WAIT_S)
    assert all(v is None for v in results.values()) and len(results) == 6
    flushes = [i for i, e in enumerate(log) if e.startswith("flush")]
    sends_between = [b - a - 1 for a, b in zip([-1, *flushes], flushes, strict=False)]
    assert sends_between == [1, 2, 2, 1]
    commits.close()


def test_a_failed_send_answers_that_request_alone(log: list[str]) -> None:
    fake, commits, results, first = held_flush(log, 0)
    threads = [first]
    fake.poison = {1_700_000_000_002}
    for k in (1, 2, 3):
        threads.append(start(commits, [k], results))
        until(lambda k=k: len(commits._queue) == k)  # type: ignore[misc]
    fake.hold = False
    fake.release.set()
    for t in threads:
        t.join(WAIT_S)
    assert results[0] is None and results[1] is None and results[3] is None
    assert isinstance(results[2], ValueError)
    # 1 flushed with its group; 3, after the poison, went back and flushed in the next
    assert log == ["send 0", "flush p", "send 1", "flush p", "send 3", "flush p"]
    commits.close()


def test_a_failed_flush_answers_its_whole_group_not_taken_and_opens_a_new_publisher(log: list[str]) -> None:
    made: list[Fake] = []

    def open_publisher() -> Fake:
        made.append(Fake(log, f"p{len(made)}"))
        made[-1].fail_flush = len(made) == 1
        return made[-1]

    commits = GroupCommit(open_publisher, 500, 5.0)
    results: Results = {}
    start(commits, [1, 2], results).join(WAIT_S)
    assert isinstance(results[1], RuntimeError)
    start(commits, [3], results).join(WAIT_S)
    assert results[3] is None
    assert log == ["send 1", "send 2", "flush p0", "close p0", "send 3", "flush p1"]
    commits.close()
    assert log[-1] == "close p1"


def test_a_publisher_that_cannot_be_opened_answers_not_taken(log: list[str]) -> None:
    def open_publisher() -> Fake:
        raise ConnectionError("no broker")

    commits = GroupCommit(open_publisher, 500, 5.0)
    with pytest.raises(ConnectionError):
        commits.publish([datum(1)], [])
    commits.close()
    with pytest.raises(RuntimeError, match="closing"):
        commits.publish([datum(2)], [])
