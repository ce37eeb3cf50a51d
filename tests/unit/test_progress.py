from __future__ import annotations

import io

import pytest

from pipeline.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_non_tty_logs_at_most_every_interval_and_summarises() -> None:
    out = io.StringIO()
    clock = FakeClock()
    with Progress(1000, "datums", "replay", out, clock=clock, log_every_s=5) as bar:
        assert not bar.tty
        for _ in range(10):
            clock.t += 1.0
            bar.update(50)  # 50 datums/s
        bar.set_postfix(ok=480, rejected=20)
        clock.t += 1.0
        bar.update(500)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "replay: 25.0% 250/1,000 datums in 5.0s 50.0 datums/s ETA 15s"
    assert lines[1].startswith("replay: 50.0% 500/1,000 datums in 10s 50.0 datums/s ETA 10s")
    assert lines[-1] == "replay: done 1,000 datums in 11s (90.9 datums/s) | ok=480 rejected=20"
    assert len(lines) == 3


def test_non_tty_unknown_total_and_custom_interval() -> None:
    out = io.StringIO()
    clock = FakeClock()
    with Progress(None, "msgs", "ingest", out, clock=clock, log_every_s=2) as bar:
        for _ in range(6):
            clock.t += 1.0
            bar.update(1000)
    lines = out.getvalue().splitlines()
    assert lines[:3] == [
        "ingest: 2,000 msgs in 2.0s 1,000 msgs/s",
        "ingest: 4,000 msgs in 4.0s 1,000 msgs/s",
        "ingest: 6,000 msgs in 6.0s 1,000 msgs/s",
    ]
    assert lines[3] == "ingest: done 6,000 msgs in 6.0s (1,000 msgs/s)"
    assert "%" not in out.getvalue() and "ETA" not in out.getvalue()


def test_tty_redraws_one_line_with_bar_rate_and_eta() -> None:
    out = FakeTTY()
    clock = FakeClock()
    with Progress(400, "datums", "simulate", out, clock=clock, width=200) as bar:
        assert bar.tty
        clock.t += 0.5
        bar.update(100)
        clock.t += 0.01
        bar.update(1)  # too soon: no redraw
        clock.t += 0.49
        bar.update(99)
    text = out.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 3  # two redraws and the summary
    assert frames[0] == ("simulate:  25.0% |######..................| 100/400 datums in 0.5s 200 datums/s ETA 1.5s")
    assert frames[1].startswith("simulate:  50.0% |############............| 200/400 datums")
    assert "ETA" in frames[1]
    assert text.count("\n") == 1 and text.endswith("\n")
    assert frames[2].startswith("simulate: done 200/400 datums in 1.0s (200 datums/s)")


def test_tty_rate_is_smoothed() -> None:
    out = FakeTTY()
    clock = FakeClock()
    bar = Progress(None, "x", "", out, clock=clock, width=200)
    clock.t += 1.0
    bar.update(100)
    assert bar.rate == pytest.approx(100)
    clock.t += 1.0
    bar.update(1000)  # a burst moves the rate towards 1000, not all the way
    assert bar.rate is not None and 100 < bar.rate < 1000
    bar.close()
    bar.close()  # idempotent
    assert out.getvalue().count("\n") == 1


def test_tty_line_shorter_than_previous_is_padded_and_truncated_to_width() -> None:
    out = FakeTTY()
    clock = FakeClock()
    bar = Progress(None, "x", "d", out, clock=clock, width=30)
    bar.set_postfix(stage="a-very-long-stage-name-indeed")
    clock.t += 1
    bar.update(5)
    first = out.getvalue().split("\r")[-1]
    assert len(first) == 29
    bar.write("a log line")
    assert out.getvalue().endswith("\r" + " " * 29 + "\r" + "a log line\n")
    bar.close()


def test_failure_and_interrupt_are_reported() -> None:
    out = io.StringIO()
    clock = FakeClock()
    with pytest.raises(RuntimeError), Progress(10, "rows", "recompute", out, clock=clock) as bar:
        bar.update(3)
        raise RuntimeError("boom")
    assert out.getvalue().splitlines()[-1].startswith("recompute: failed 3/10 rows")
    out2 = io.StringIO()
    with pytest.raises(KeyboardInterrupt), Progress(None, "rows", "", out2, clock=clock):
        raise KeyboardInterrupt
    assert out2.getvalue().startswith("interrupted 0 rows")


def test_stream_defaults_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(2, "items", "t") as bar:
        bar.update(2)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("t: done 2 items in")


def test_update_is_cheap() -> None:
    import time

    out = io.StringIO()
    bar = Progress(None, "x", "", out, log_every_s=60)
    t = time.perf_counter()
    for _ in range(100_000):
        bar.update(1)
    per_call = (time.perf_counter() - t) / 100_000
    assert per_call < 5e-6
    assert out.getvalue() == ""
    bar.close()
