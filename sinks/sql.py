"""ClickHouse SQL quoting: one implementation for every place that inlines a value or a name.

Pure (no client import), so the embedded endpoint (pipeline/embedded/chserver.py) uses it without
loading clickhouse-connect. Values are inlined where a query names many streams at once (a
parameter per value would not scale); identifiers where a name is chosen at run time (USE <db>).
"""

from __future__ import annotations


def _quoted(text: str, quote: str) -> str:
    # ClickHouse escapes with backslashes inside quotes: the backslash first, then the quote
    return quote + text.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


def sql_str(text: str) -> str:
    """A ClickHouse string literal: 'it\\'s'."""
    return _quoted(text, "'")


def sql_ident(name: str) -> str:
    """A ClickHouse identifier in back quotes: `my db`."""
    return _quoted(name, "`")
