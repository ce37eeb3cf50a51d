"""The one sink contract: add rows, flush them as one batch; a store that cannot take the
batch raises SinkBackpressure and the caller retries the same batch later (no offsets move)."""

from __future__ import annotations

import abc
from typing import Any


class SinkBackpressure(Exception):
    """The store refused or failed this batch; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BatchingSink(abc.ABC):
    def __init__(self) -> None:
        self._pending: list[Any] = []

    def add(self, row: Any) -> None:
        self._pending.append(row)

    def extend(self, rows: list[Any]) -> None:
        self._pending.extend(rows)

    def __len__(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Write everything added so far. On SinkBackpressure the rows stay pending."""
        if not self._pending:
            return 0
        self.write(self._pending)
        n = len(self._pending)
        self._pending = []
        return n

    @abc.abstractmethod
    def write(self, rows: list[Any]) -> None:
        """Store the whole batch or raise SinkBackpressure. Must be idempotent."""
