"""What Linux's /proc says about a process, for the tests that start and kill processes (unit,
integration and chaos)."""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """Running: not gone, not a zombie waiting to be reaped (by its parent, or its new one)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
