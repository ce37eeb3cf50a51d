"""sinks/sql.py, the one ClickHouse quoting: what chDB reads back is the very text quoted, for
string literals and identifiers, whatever quotes, backslashes, control or non-ASCII characters."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys

import pytest

from sinks.sql import sql_ident, sql_str

TRICKY = [
    "",
    "it's",
    "a\\b",
    "\\",
    "'",
    "\\'",
    "`",
    "a`b\\`",
    "tab\there",
    "new\nline",
    "\x00nul",
    "é€😀",
    "{name:String}",
    "?",
    "%s",
    "--",
    "/*",
    "\r\n",
]


def corpus(n: int = 200) -> list[str]:
    rng = random.Random(15)
    alphabet = "ab'`\\\"\t\n\r\x00 ?{}:é😀-/*"
    return TRICKY + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def test_examples() -> None:
    assert sql_str("it's a\\b") == "'it\\'s a\\\\b'"
    assert sql_ident("my`db") == "`my\\`db`"


@pytest.mark.skipif(importlib.util.find_spec("chdb") is None, reason="chdb not installed")
def test_chdb_reads_back_what_was_quoted() -> None:
    """A separate process: chDB allows one engine state per process and other tests may hold it."""
    texts = corpus()
    names = [t for t in dict.fromkeys(texts) if t]  # column names: distinct, not empty
    query = f"SELECT [{', '.join(sql_str(t) for t in texts)}] AS {sql_ident('values')}, " + ", ".join(
        f"{k} AS {sql_ident(n)}" for k, n in enumerate(names)
    )
    code = "import chdb, sys; sys.stdout.write(chdb.query(sys.stdin.read(), 'JSONEachRow').bytes().decode())"
    out = subprocess.run([sys.executable, "-c", code], input=query, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row.pop("values") == texts
    assert list(row) == names
