"""The endpoint's response path (one write per response, no Nagle delay) and what it refuses
(table functions reaching outside the database, bodies that inflate at once).

A response written as headers, then body, on a socket with Nagle's algorithm on waits for the
client's delayed ACK before the body leaves: 40 ms on Linux, on every query (issue 13 measured
48 ms for `SELECT 1` through clickhouse-connect, 1.5 ms after)."""

from __future__ import annotations

import gzip
import io
from typing import Any

import lz4.frame
import pytest
import zstandard

from pipeline.embedded.chserver import Handler, decompress_stream, denied


class _Recorder(io.RawIOBase):
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.writes.append(bytes(b))
        return len(b)


class _Engine:
    display_name = "test"
    timezone = "UTC"


class _Server:
    engine = _Engine()
    stopping = False


def _handler(command: str) -> tuple[Handler, _Recorder]:
    h = Handler.__new__(Handler)  # no socket: only the response path is driven
    out = _Recorder()
    h.wfile = out  # type: ignore[assignment]
    h.server = _Server()  # type: ignore[assignment]
    h.request_version = "HTTP/1.1"
    h.command = command
    h.close_connection = False
    h.requestline = f"{command} / HTTP/1.1"
    h.client_address = ("127.0.0.1", 0)
    return h, out


def test_headers_and_body_leave_in_one_write() -> None:
    h, out = _handler("POST")
    h._send(200, b"1\n", {"Content-Type": "text/plain"})
    assert len(out.writes) == 1
    head, _, body = out.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 2" in head
    assert body == b"1\n"


def test_head_request_gets_headers_only() -> None:
    h, out = _handler("HEAD")
    h._send(200, b"abc", {})
    assert len(out.writes) == 1
    assert out.writes[0].endswith(b"\r\n\r\n")


def test_the_endpoint_turns_nagle_off() -> None:
    assert Handler.disable_nagle_algorithm is True


# --- what the endpoint refuses (issue 14) -------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "found"),
    [
        ("SELECT * FROM file('/etc/hostname', 'RawBLOB')", "file"),
        ("select * from FILE ('x')", "FILE"),
        ("SELECT * FROM `file`('x')", "file"),
        ("INSERT INTO FUNCTION file('out.tsv', 'TSV') SELECT 1", "file"),
        ("SELECT * FROM url('http://example.org', CSV)", "url"),
        ("SELECT * FROM remote('other:9000', db.t)", "remote"),
        ("SELECT * FROM s3('https://b/k')", "s3"),
        ("SELECT * FROM executable('x.sh', TSV, 'a Int8')", "executable"),
        ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
        ("INSERT INTO t FROM INFILE '/etc/passwd' FORMAT CSV", "FROM INFILE"),
        ("SELECT /* file( */ 1", None),
        ("SELECT 'file(' AS a, \"url\" FROM t -- remote(", None),
        ("SELECT * FROM format(TSV, 'a Int8', '1')", None),
        ("SELECT domain(url) FROM t", None),
    ],
)
def test_table_functions_reaching_outside_are_found(sql: str, found: str | None) -> None:
    assert denied(sql.encode()) == found


BOMB = b"SELECT 1 /*" + b" " * (64 << 20) + b"*/"


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
        ("lz4", lz4.frame.compress),
        ("gzip", gzip.compress),
    ],
)
def test_a_decompression_bomb_never_inflates_at_once(encoding: str, compress: object) -> None:
    body = compress(BOMB)  # type: ignore[operator]
    assert len(body) < (1 << 20)
    pieces = decompress_stream(iter([body[:1000], body[1000:]]), encoding, step=1 << 20)
    total = 0
    for piece in pieces:
        assert len(piece) <= 1 << 20
        total += len(piece)
    assert total == len(BOMB)
