"""One reversible encoding of a sourceId (or a property name) into the characters a name may hold.

Two external formats use it, and differ only in which ASCII characters they keep as themselves:

* Kafka topic names (pipeline/wire/topics.py, `TOPIC`): letters and digits. `_` is escaped because
  Kafka's metric names confuse topics that differ only by `.` versus `_`.
* time-series API series names (processors/timeseries.py, `SERIES`): letters, digits and `_`.

Both are in use (existing topics, series names clients hold), so neither `keep` may change.

Encoding: a kept character stays, `/` becomes `.`, every other character becomes `-HH` for each
byte of its UTF-8 encoding (upper-case hex; a lone surrogate is encoded too, via surrogatepass, so
encoding never fails). `.` and `-` are never kept, so the result is injective: `.` always means `/`
and `-` always starts an escape.

Decoding accepts exactly what encoding makes (canonical form): lower-case hex, an escaped kept
character or `/`, a truncated UTF-8 sequence or any other character is a ValueError. So a name
maps back to one text and that text encodes to the very same name.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

_HEX = frozenset("0123456789ABCDEF")
# Characters that have a meaning of their own in the encoding (`/` -> `.`, `-HH` escapes).
_RESERVED = frozenset("/.-")


@dataclass(frozen=True, slots=True)
class NameEncoding:
    """The encoding for one format; `keep` is the ASCII characters written as themselves."""

    keep: frozenset[str]

    def __post_init__(self) -> None:
        bad = sorted(c for c in self.keep if len(c) != 1 or not c.isascii() or c in _RESERVED)
        if bad:
            raise ValueError(f"cannot keep {bad!r}: only single ASCII characters other than '/', '.', '-'")

    def encode(self, text: str) -> str:
        keep = self.keep
        out: list[str] = []
        for ch in text:
            if ch in keep:
                out.append(ch)
            elif ch == "/":
                out.append(".")
            else:
                out.extend(f"-{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        return "".join(out)

    def decode(self, text: str) -> str:
        """The inverse of encode; ValueError unless `text` is exactly what encode makes."""
        keep = self.keep
        out: list[str] = []
        pending = bytearray()  # the bytes of escaped characters not yet decoded
        k = 0
        while k < len(text):
            ch = text[k]
            if ch == "-":
                hh = text[k + 1 : k + 3]
                if len(hh) != 2 or not set(hh) <= _HEX:
                    raise ValueError(f"'-' must be followed by two upper-case hex digits at {k}")
                pending.append(int(hh, 16))
                k += 3
                continue
            if pending:
                out.append(self._escaped(pending))
                pending.clear()
            if ch == ".":
                out.append("/")
            elif ch in keep:
                out.append(ch)
            else:
                raise ValueError(f"character {ch!r} cannot appear in an encoded name")
            k += 1
        if pending:
            out.append(self._escaped(pending))
        return "".join(out)

    def _escaped(self, raw: bytearray) -> str:
        try:
            text = bytes(raw).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise ValueError(f"escaped bytes are not UTF-8: {exc.reason}") from None
        # canonical only: a character that is written as itself is never escaped
        if any(c in self.keep or c == "/" for c in text):
            raise ValueError("an escaped character is written as itself")
        return text


_ALNUM = frozenset(string.ascii_letters + string.digits)
TOPIC = NameEncoding(_ALNUM)
SERIES = NameEncoding(_ALNUM | {"_"})
