"""Per-partition positions, kept by a Faust sensor, and the consumer lag they give.

`PositionMonitor` is the Faust app's monitor: Faust's sensor hooks tell it, per partition,

    consumed   the last offset handed to a stream                 (on_message_in)
    handled    the last offset its agent acked: stored, or        (on_message_out)
               dead-lettered (pipeline/worker/commit.py)
    committed  the offset Faust committed last (the next to read) (on_tp_commit)
    end        the partition's end offset, as the consumer last   (track_tp_end_offset)
               fetched it

It is a `faust.Monitor` (the app's default sensor, extended), passed as `faust.App(monitor=...)`,
because Faust reports commits and end offsets to `app.monitor` only, not to the sensors added with
`app.sensors.add` (pipeline/worker/faust_fixes.py, 4.; what it relies on is checked there).

`update_lag` sets `pipeline_consumer_lag{topic, partition}` = end - handled - 1 for every assigned
partition this worker has handled a message of, as the worker's timer did before from its own
bookkeeping: the messages of the partition not handled yet. The end offset is asked of the consumer
at that moment (the fetcher's high-water mark; no broker round trip), so a lag still grows while
the agent is stuck and no message goes through the hooks. A revoked partition's positions are
dropped (`forget`); its lag series stays at its last value (compose/prometheus/alerts.yml says so).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from faust.sensors.monitor import Monitor
from faust.types import TP
from prometheus_client import Gauge


@dataclass
class Position:
    """What the hooks said of one partition since it was assigned (None: nothing yet)."""

    consumed: int | None = None
    handled: int | None = None
    committed: int | None = None
    end: int | None = None

    def lag(self, end: int | None = None) -> int | None:
        """Messages after the last handled one (to `end`, else the last end the consumer fetched)."""
        end = self.end if end is None else end
        if end is None or self.handled is None:
            return None
        return max(0, end - self.handled - 1)


class PositionMonitor(Monitor):
    """Faust's monitor, also keeping the positions of every partition (module docstring)."""

    def __init__(self, lag: Gauge, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lag_gauge = lag
        self.positions: dict[TP, Position] = {}

    def position(self, tp: TP) -> Position:
        pos = self.positions.get(tp)
        if pos is None:
            pos = self.positions[tp] = Position()
        return pos

    # -- Faust's hooks (called on the event loop, once per message: kept small) -------------------

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        super().on_message_in(tp, offset, message)
        self.position(tp).consumed = offset

    def on_message_out(self, tp: TP, offset: int, message: Any) -> None:
        super().on_message_out(tp, offset, message)
        self.position(tp).handled = offset

    def on_tp_commit(self, tp_offsets: Mapping[TP, int]) -> None:
        super().on_tp_commit(tp_offsets)  # type: ignore[arg-type]  # Faust types it MutableMapping, reads it only
        for tp, offset in tp_offsets.items():
            self.position(tp).committed = offset

    def track_tp_end_offset(self, tp: TP, offset: int) -> None:
        super().track_tp_end_offset(tp, offset)
        if offset is not None:  # the consumer may not know it yet
            self.position(tp).end = offset

    # -- the worker's side -----------------------------------------------------------------------

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions revoked: what this worker knew of them is history once another may take them."""
        for tp in tps:
            self.positions.pop(tp, None)

    def update_lag(self, assignment: Iterable[TP], highwater: Callable[[TP], int | None]) -> None:
        """Set the lag of every assigned partition with a handled offset; `highwater(tp)` is the
        consumer's end offset now (None: not known, the last one tracked is used)."""
        for tp in assignment:
            pos = self.positions.get(tp)
            if pos is None or pos.handled is None:
                continue
            lag = pos.lag(highwater(tp))
            if lag is not None:
                self.lag_gauge.labels(tp.topic, str(tp.partition)).set(lag)
