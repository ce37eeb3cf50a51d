"""Compiled fast path for line protocol (processors/_lpfast.c); see processors/line_protocol.py."""

from collections.abc import Callable
from typing import Any

def configure(
    point: type, point_slots: tuple[str, ...], unsigned: type, datum: type, datum_slots: tuple[str, ...], /
) -> None: ...
def parse_points(
    items: list[Any], start: int, mult: int, default_ns: int | None, line_no: int, out: list[Any], /
) -> tuple[int, int]: ...
def parse_datums(
    items: list[Any],
    start: int,
    mult: int,
    default_ns: int | None,
    line_no: int,
    out: list[Any],
    owner: object,
    resolve: Callable[[str, tuple[tuple[str, str], ...]], object],
    sentinels: tuple[float, ...],
    datum_tags: tuple[str, ...],
    /,
) -> tuple[int, int]: ...
