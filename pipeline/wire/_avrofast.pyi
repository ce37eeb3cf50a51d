"""Compiled datum batch envelope encoder (pipeline/wire/_avrofast.c); see pipeline/wire/codec.py."""

from collections.abc import Sequence

from processors.datum import Datum

def configure(datum: type, /) -> None: ...
def encode_datum_batch(datums: Sequence[Datum], /) -> bytes | None: ...
def decode_columns(
    payload: bytes, /
) -> tuple[bytes, list[str], bytes, list[tuple[str, ...]], bytes, bytes, list[str], bytes, list[str]] | None: ...
