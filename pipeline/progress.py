"""Progress for long commands (ingest, replay, recompute, simulate), without third-party code.

    with Progress(total=len(batches) or None, unit="datums", description="replay") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))
            bar.set_postfix(ok=ok, rejected=rejected)

On a terminal: one line, redrawn at most every `redraw_s` (0.1 s), with a bar when the total
is known, the count, a smoothed rate and the ETA. Elsewhere (logs, CI, pipes): a plain line at
most every `log_every_s` (5 s) with the same figures. A summary line is always written at the
end, also when the block raises.

`update()` is meant for per-batch calls but stays cheap per item too: one clock read and one
comparison unless a line is due.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

BAR_WIDTH = 24
SMOOTHING_S = 3.0  # time constant of the rate's exponential moving average, seconds


class Progress:
    def __init__(
        self,
        total: int | None,
        unit: str = "items",
        description: str = "",
        stream: TextIO | None = None,
        *,
        log_every_s: float = 5.0,
        redraw_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
        width: int | None = None,
    ) -> None:
        self.total = total
        self.unit = unit
        self.description = description
        self.stream: TextIO = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            try:
                tty = bool(isatty()) if isatty is not None else False
            except (ValueError, OSError):  # closed or odd stream
                tty = False
        self.tty = tty
        # a terminal line longer than the terminal wraps, and "\r" then redraws only its tail
        self.width = width if width is not None else shutil.get_terminal_size((100, 24)).columns
        self.interval_s = redraw_s if tty else log_every_s
        self.n = 0
        self.postfix: dict[str, object] = {}
        self._clock = clock
        self._start = clock()
        self._next_emit = self._start + self.interval_s
        self._last_t = self._start
        self._last_n = 0
        self._rate: float | None = None
        self._line_len = 0
        self._closed = False

    # -- use ------------------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("failed")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now >= self._next_emit:
            self._emit(now)

    def set_postfix(self, **counts: object) -> None:
        """Extra figures shown after the rate (e.g. ok=…, rejected=…); replaces the previous set."""
        self.postfix = counts

    def write(self, message: str) -> None:
        """A log line that does not garble the bar on a terminal."""
        if self.tty and self._line_len:
            self.stream.write("\r" + " " * self._line_len + "\r")
            self._line_len = 0
        self.stream.write(message.rstrip("\n") + "\n")
        self.stream.flush()

    def close(self, outcome: str = "done") -> None:
        if self._closed:
            return
        self._closed = True
        now = self._clock()
        line = self.summary(now, outcome)
        if self.tty:
            pad = max(0, self._line_len - len(line))
            self.stream.write("\r" + line + " " * pad + "\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    # -- figures -------------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    @property
    def rate(self) -> float | None:
        """Smoothed items per second, None before the first measurement."""
        return self._rate

    def eta_s(self) -> float | None:
        if self.total is None or not self._rate:
            return None
        return max(0.0, (self.total - self.n) / self._rate)

    def line(self, now: float) -> str:
        """The progress line as it would be printed now (no carriage return)."""
        parts: list[str] = []
        if self.description:
            parts.append(f"{self.description}:")
        count = f"{self.n:,}"
        if self.total is not None:
            frac = min(1.0, self.n / self.total) if self.total > 0 else 1.0
            if self.tty:
                filled = int(frac * BAR_WIDTH)
                parts.append(f"{frac * 100:5.1f}% |{'#' * filled}{'.' * (BAR_WIDTH - filled)}|")
            else:
                parts.append(f"{frac * 100:.1f}%")
            count += f"/{self.total:,}"
        parts.append(f"{count} {self.unit}")
        parts.append(f"in {_duration(now - self._start)}")
        parts.append(f"{_rate(self._rate)} {self.unit}/s")
        eta = self.eta_s()
        if eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        text = " ".join(parts)
        if self.postfix:
            text += " | " + " ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items())
        return text

    def summary(self, now: float, outcome: str = "done") -> str:
        elapsed = now - self._start
        mean = self.n / elapsed if elapsed > 0 else None
        parts = [f"{self.description}:" if self.description else "", outcome]
        count = f"{self.n:,}"
        if self.total is not None and self.n != self.total:
            count += f"/{self.total:,}"
        parts.append(f"{count} {self.unit} in {_duration(elapsed)}")
        parts.append(f"({_rate(mean)} {self.unit}/s)")
        text = " ".join(p for p in parts if p)
        if self.postfix:
            text += " | " + " ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items())
        return text

    # -- internals -----------------------------------------------------------------------------

    def _emit(self, now: float) -> None:
        dt = now - self._last_t
        if dt > 0:
            inst = (self.n - self._last_n) / dt
            if self._rate is None:
                self._rate = inst
            else:
                alpha = 1.0 - math.exp(-dt / SMOOTHING_S)
                self._rate += alpha * (inst - self._rate)
        self._last_t, self._last_n = now, self.n
        self._next_emit = now + self.interval_s
        if self._closed:
            return
        line = self.line(now)
        if self.tty:
            line = line[: max(10, self.width - 1)]
            pad = max(0, self._line_len - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._line_len = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5) if seconds >= 10 else None
    if s is None:
        return f"{seconds:.1f}s"
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _rate(rate: float | None) -> str:
    if rate is None:
        return "?"
    if rate >= 100:
        return f"{rate:,.0f}"
    return f"{rate:.1f}"


def _fmt(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)
