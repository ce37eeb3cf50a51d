"""The worker's memory remedies (pipeline/worker/memory.py): glibc's mallopt and malloc_trim,
no-ops where the C library is another."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.worker import memory


def run_alone(script: str) -> str:
    """The script's output, run in a Python process of its own (what it sets holds for the process)."""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_glibc_both_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.limit_arenas(2) is False
    assert memory.trim() is False


def test_on_glibc_the_arena_limit_is_taken_and_trim_runs() -> None:
    """In a process of its own: the arena limit holds for the rest of the process."""
    script = (
        "from pipeline.worker import memory\n"
        "if memory._glibc() is None: print('no glibc'); raise SystemExit(0)\n"
        "assert memory.limit_arenas(2) is True\n"
        "blocks = [bytearray(1 << 20) for _ in range(64)]\n"
        "del blocks\n"
        "assert isinstance(memory.trim(), bool)\n"
        "print('ok')\n"
    )
    assert run_alone(script) in ("ok", "no glibc")


def test_arrow_buffers_come_from_malloc_once_asked() -> None:
    """In a process of its own: the default pool is pyarrow's bundled allocator until asked."""
    script = (
        "import pyarrow as pa\n"
        "from pipeline.worker import memory\n"
        "before = pa.default_memory_pool().backend_name\n"
        "assert memory.arrow_from_malloc() == 'system'\n"
        "assert pa.default_memory_pool().backend_name == 'system'\n"
        "held = pa.array(range(100_000))\n"
        "assert pa.system_memory_pool().bytes_allocated() >= 800_000, 'not from malloc'\n"
        "print(before)\n"
    )
    assert run_alone(script) in ("mimalloc", "jemalloc", "system")
