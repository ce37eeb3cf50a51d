"""Zone offsets for bucket bounds (processors/rollup.py `_offset_ms`): asked once per UTC hour and
zone, equal to the exact per-instant lookup, on the premise that no zone changes its offset twice
within an hour — checked here against the transitions of every zone of the installed tzdata."""

from __future__ import annotations

import struct
import zoneinfo
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.rollup import HOUR_MS, _exact_offset_ms, _first_with_offset, _offset_ms

ZONES = [
    "UTC",
    "Pacific/Auckland",
    "Pacific/Chatham",
    "Australia/Lord_Howe",  # 30-minute DST
    "America/St_Johns",
    "Europe/Dublin",  # negative DST in tzdata
    "Asia/Kathmandu",
    "America/Sao_Paulo",
    "Africa/Casablanca",  # Ramadan suspensions: several transitions a year
    "Antarctica/Troll",
]
INSTANTS = st.integers(-2_000_000_000_000, 4_000_000_000_000)


@given(st.sampled_from(ZONES), INSTANTS)
def test_the_hourly_offset_equals_the_exact_one(name: str, ts_ms: int) -> None:
    z = zoneinfo.ZoneInfo(name)
    assert _offset_ms(ts_ms, z) == _exact_offset_ms(ts_ms, z)


@pytest.mark.parametrize("name", ZONES)
def test_around_every_transition_from_1970_to_2040(name: str) -> None:
    z = zoneinfo.ZoneInfo(name)
    day = 86_400_000
    lo = 0
    while lo < 2_209_000_000_000:  # 2040
        hi = lo + day
        if _exact_offset_ms(lo, z) != _exact_offset_ms(hi, z):
            t = _first_with_offset(lo, hi, _exact_offset_ms(hi, z), z)
            for ts in (t - HOUR_MS, t - 1001, t - 1000, t - 1, t, t + 1, t + 999, t + 1000, t + HOUR_MS):
                assert _offset_ms(ts, z) == _exact_offset_ms(ts, z), (name, ts)
        lo = hi


def _transitions(path: Path) -> list[int]:
    """The transition instants (epoch s) of a TZif file (RFC 8536): the 64-bit block when there is one."""
    data = path.read_bytes()
    if data[:4] != b"TZif":
        return []
    counts = struct.unpack(">6l", data[20:44])
    isut, isstd, leap, times, types, chars = counts
    if data[4:5] in (b"2", b"3", b"4"):
        skip = 44 + times * 5 + types * 6 + chars + leap * 8 + isstd + isut
        counts = struct.unpack(">6l", data[skip + 20 : skip + 44])
        times = counts[3]
        return list(struct.unpack(f">{times}q", data[skip + 44 : skip + 44 + times * 8]))
    return list(struct.unpack(f">{times}l", data[44 : 44 + times * 4]))


def test_no_zone_changes_its_offset_twice_within_an_hour() -> None:
    """The premise of `_offset_ms`, for every zone the installed tzdata has (from 1900 on)."""
    roots = [Path(p) for p in zoneinfo.TZPATH if Path(p).is_dir()]
    if not roots:
        pytest.skip("no system tzdata to read")
    root = roots[0]
    checked = 0
    for name in sorted(zoneinfo.available_timezones()):
        path = root / name
        if not path.is_file():
            continue
        times = [t for t in _transitions(path) if t >= -2_208_988_800]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(g >= 3600 for g in gaps), f"{name}: two offset changes within an hour"
        checked += 1
    assert checked > 300
