"""The worker's memory over long runs: glibc's allocator, told to give memory back.

A worker allocates and frees large transient buffers all the time (a batch's columns, Arrow
tables, the rollup agent's reads), from the event loop's thread and from the threads its
ClickHouse calls run in. glibc serves each thread from its own arena (up to 8 per core) and
returns freed memory to the system only from the top of a heap, so the resident size of a
long-running worker creeps up though nothing is kept (issue 13: +22 % over 10 minutes at
3,000 datums/s, +6.5 % with these remedies; docs/hot-path.md). Two remedies, both no-ops
where the C library is not glibc:

* `limit_arenas`: at most `arenas` malloc arenas (mallopt M_ARENA_MAX), before threads start;
* `trim`: malloc_trim(0), which hands the free pages of every arena back; called periodically.

And a third, for Arrow's buffers (the columnar datum path and the rollup reads are Arrow tables):
pyarrow allocates them from its bundled mimalloc, which neither remedy reaches. `arrow_from_malloc`
makes the C library's malloc Arrow's default pool, so the arena limit and the trim hold them too.
Five minutes at 24,500 datums/s, dense (`bench_e2e.py --paced-seconds 300 --paced-rate 24500`):
worker RSS 327-457 and 316-411 MiB with mimalloc, 219-323 and 204-301 MiB with malloc, at the
same CPU (workers 74.3 s against 71.7 s) and latencies (docs/hot-path.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

M_ARENA_MAX = -8  # glibc's mallopt parameter number


@cache
def _glibc() -> Any:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # only glibc has it  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


def limit_arenas(arenas: int = 2) -> bool:
    """At most `arenas` malloc arenas for this process; True if glibc took it."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, int(arenas)) == 1)


def arrow_from_malloc() -> str:
    """Arrow's default memory pool the C library's malloc, for buffers allocated from now on;
    returns the pool's backend name."""
    import pyarrow as pa

    pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)
    return str(pool.backend_name)


def trim() -> bool:
    """Give the free memory of every arena back to the system; True if some was released."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0) == 1)
