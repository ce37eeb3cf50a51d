"""The chDB HTTP endpoint against real clients: clickhouse-connect and raw HTTP like curl."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.embedded import stack
from sinks.clickhouse import QUERY_BYTES, connect, sql_table

DDL = """CREATE TABLE {db}.readings (
    ts DateTime64(3, 'UTC'), device LowCardinality(String), value Nullable(Float64),
    tags Array(String), status Enum8('ok' = 1, 'bad' = 2), attrs Map(String, Float64), seq UInt64
) ENGINE = MergeTree ORDER BY (device, ts)"""
COLUMNS = ["ts", "device", "value", "tags", "status", "attrs", "seq"]
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)


def rows(n: int) -> list[list[object]]:
    return [
        [
            T0 + dt.timedelta(seconds=i),
            f"dev-{i % 3}",
            None if i % 4 == 0 else i / 8,
            ["x", str(i)],
            "ok" if i % 2 else "bad",
            {"w": float(i)},
            i,
        ]
        for i in range(n)
    ]


def http(
    url: str, query: dict[str, str] | None = None, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    full = url + "/?" + urllib.parse.urlencode(query or {})
    req = urllib.request.Request(full, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


@pytest.mark.parametrize("compress", [True, False, "lz4", "zstd", "gzip"])
def test_roundtrip_types_each_compression(clickhouse_url: str, ch_database: str, compress: bool | str) -> None:
    client = clickhouse_connect.get_client(dsn=clickhouse_url, compress=compress)
    client.command(DDL.format(db=ch_database))
    data = rows(2000)
    summary = client.insert(f"{ch_database}.readings", data, column_names=COLUMNS)
    assert summary.written_rows == 2000
    got = client.query(f"SELECT * FROM {ch_database}.readings ORDER BY seq").result_rows
    assert len(got) == 2000
    for want, row in zip(data[:8], got[:8], strict=True):
        assert row[0] == want[0].replace(tzinfo=None)  # DateTime64 keeps the milliseconds
        assert list(row[1:]) == want[1:]
    types = client.query(
        f"SELECT toTypeName(device), toTypeName(status) FROM {ch_database}.readings LIMIT 1"
    ).result_rows[0]
    assert types == ("LowCardinality(String)", "Enum8('ok' = 1, 'bad' = 2)")
    client.close()


def test_columnar_insert_and_arrow(clickhouse_url: str, ch_database: str) -> None:
    client = clickhouse_connect.get_client(dsn=clickhouse_url, database=ch_database)
    client.command(DDL.format(db=ch_database))
    data = rows(50)
    columns = [list(col) for col in zip(*data, strict=True)]
    client.insert("readings", columns, column_names=COLUMNS, column_oriented=True)
    table = client.query_arrow("SELECT seq, device FROM readings ORDER BY seq")
    assert table.num_rows == 50
    assert table.column("seq").to_pylist() == list(range(50))


def test_database_and_settings(clickhouse_url: str, ch_database: str) -> None:
    client = clickhouse_connect.get_client(dsn=clickhouse_url, database=ch_database, settings={"max_threads": 1})
    assert client.command("SELECT currentDatabase()") == ch_database
    assert client.command("SELECT getSetting('max_threads')") == 1
    assert client.command("SELECT getSetting('max_block_size')", settings={"max_block_size": 777}) == 777
    # a per-query setting does not stick to the session
    assert client.command("SELECT getSetting('max_block_size')") != 777
    # server-side parameter binding
    assert client.query("SELECT {a:UInt16} * 2", parameters={"a": 21}).result_rows == [(42,)]


def test_the_pipeline_client_sends_statements_longer_than_clickhouse_default(
    clickhouse_url: str, ch_database: str
) -> None:
    """A fleet's set-wise statement carries thousands of ranges in its text, past ClickHouse's
    default `max_query_size` (256 KiB): the pipeline's clients raise it (QUERY_BYTES); a client
    without that is refused the same statement (the control)."""
    ranges = [(k, 1 + k // 10, f"/F/{k % 10}", k * 1000, k * 1000 + 500) for k in range(12_000)]
    shape = "q UInt32, node UInt64, source String, lo Int64, hi Int64"
    sql = f"SELECT count(), sum(lo) FROM {sql_table(shape, ranges)}"
    assert 256 * 1024 < len(sql) < QUERY_BYTES
    client = connect(clickhouse_url, ch_database)
    assert client.query(sql).result_rows == [(12_000, sum(r[3] for r in ranges))]
    plain = clickhouse_connect.get_client(dsn=clickhouse_url, database=ch_database)
    with pytest.raises(DatabaseError, match="max_query_size"):
        plain.query(sql)


def test_session_temporary_table_and_set(clickhouse_url: str) -> None:
    client = clickhouse_connect.get_client(dsn=clickhouse_url)
    client.command("CREATE TEMPORARY TABLE scratch (a Int32)")
    client.insert("scratch", [[1], [2], [3]])
    client.command("SET max_block_size = 4321")
    assert client.command("SELECT sum(a) FROM scratch") == 6
    assert client.command("SELECT getSetting('max_block_size')") == 4321
    other = clickhouse_connect.get_client(dsn=clickhouse_url)
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE"):
        other.command("SELECT sum(a) FROM scratch")


def test_sql_error_is_a_clear_database_error(clickhouse_url: str, ch_database: str) -> None:
    client = clickhouse_connect.get_client(dsn=clickhouse_url)
    with pytest.raises(DatabaseError) as err:
        client.query(f"SELECT * FROM {ch_database}.no_such_table")
    assert "UNKNOWN_TABLE" in str(err.value) and "no_such_table" in str(err.value)
    with pytest.raises(DatabaseError, match="SYNTAX_ERROR"):
        client.command("SELEKT 1")
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE"):
        client.insert(f"{ch_database}.missing", [[1]], column_names=["a"], column_type_names=["UInt8"])
    assert client.command("SELECT 1") == 1  # the session and server survive


def test_raw_http_like_curl(clickhouse_url: str, ch_database: str) -> None:
    status, headers, body = http(clickhouse_url, {"query": "SELECT 1"})
    assert (status, body) == (200, b"1\n")
    assert headers["X-ClickHouse-Format"] == "TabSeparated"
    assert json.loads(headers["X-ClickHouse-Summary"])["read_rows"] == "1"
    assert headers["X-ClickHouse-Query-Id"] and headers["X-ClickHouse-Timezone"]

    status, _, body = http(clickhouse_url, body=b"SELECT number FROM numbers(3) FORMAT CSV")
    assert (status, body) == (200, b"0\n1\n2\n")

    assert (
        http(
            clickhouse_url,
            body=f"CREATE TABLE {ch_database}.kv (k String, v UInt32) ENGINE = MergeTree ORDER BY k".encode(),
        )[0]
        == 200
    )
    lines = b'{"k": "a", "v": 1}\n{"k": "b", "v": 2}\n'
    status, headers, _ = http(clickhouse_url, {"query": f"INSERT INTO {ch_database}.kv FORMAT JSONEachRow"}, body=lines)
    assert status == 200 and json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == "2"
    # whole INSERT in a gzip-compressed body, data after the FORMAT line
    payload = gzip.compress(f"INSERT INTO {ch_database}.kv FORMAT CSV\nc,3\n".encode())
    assert http(clickhouse_url, body=payload, headers={"Content-Encoding": "gzip"})[0] == 200

    status, headers, body = http(
        clickhouse_url,
        {"query": f"SELECT k, v FROM {ch_database}.kv ORDER BY k FORMAT JSONEachRow", "enable_http_compression": "1"},
        headers={"Accept-Encoding": "gzip"},
    )
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert [json.loads(line) for line in gzip.decompress(body).splitlines()] == [
        {"k": "a", "v": 1},
        {"k": "b", "v": 2},
        {"k": "c", "v": 3},
    ]

    status, headers, body = http(clickhouse_url, {"query": "SELECT nope"})
    assert status == 404 and headers["X-ClickHouse-Exception-Code"] == "47"
    assert body.startswith(b"Code: 47. DB::Exception:") and b"(version " in body
    # GET implies readonly, as on a ClickHouse server
    status, headers, _ = http(clickhouse_url, {"query": f"DROP TABLE {ch_database}.kv"})
    assert status == 500 and headers["X-ClickHouse-Exception-Code"] == "164"


def test_concurrent_clients(clickhouse_url: str, ch_database: str) -> None:
    clickhouse_connect.get_client(dsn=clickhouse_url).command(DDL.format(db=ch_database))
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            client = clickhouse_connect.get_client(dsn=clickhouse_url)
            for _ in range(5):
                client.insert(f"{ch_database}.readings", rows(200), column_names=COLUMNS)
                client.query(f"SELECT count(), sum(seq) FROM {ch_database}.readings")
            client.close()
        except BaseException as exc:  # surfaced below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    count = clickhouse_connect.get_client(dsn=clickhouse_url).command(f"SELECT count() FROM {ch_database}.readings")
    assert count == 6 * 5 * 200


def test_data_persists_across_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "ch"
    svc = stack.start_clickhouse(data_dir)
    try:
        client = clickhouse_connect.get_client(dsn=svc.url)
        client.command("CREATE DATABASE keep")
        client.command(DDL.format(db="keep"))
        client.insert("keep.readings", rows(300), column_names=COLUMNS)
        client.close()
    finally:
        svc.stop()
    assert svc.proc is not None and svc.proc.returncode == 0  # clean SIGTERM shutdown
    svc = stack.start_clickhouse(data_dir)
    try:
        client = clickhouse_connect.get_client(dsn=svc.url)
        assert client.command("SELECT count(), max(seq) FROM keep.readings") == ["300", "299"]
        client.close()
    finally:
        svc.stop()


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 2**63 - 1), _TEXT, st.integers(-(2**62), 2**62), _TEXT), min_size=1, max_size=30
    )
)
def test_sql_table_reads_back_every_row_exactly(clickhouse_url: str, rows: list[tuple[int, str, int, str]]) -> None:
    """The literal tables of set-wise reads (sinks.clickhouse.sql_table) survive any text: tabs,
    newlines, backslashes, quotes, `\\N`, non-ASCII."""
    client = clickhouse_connect.get_client(dsn=clickhouse_url)
    numbered = [(k, *row) for k, row in enumerate(rows)]
    table = sql_table("k UInt32, a UInt64, s String, b Int64, t String", numbered)
    got = client.query(f"SELECT k, a, s, b, t FROM {table} ORDER BY k").result_rows
    assert [tuple(r) for r in got] == numbered


def _raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (malformed on purpose) and read the status line and body."""
    import socket

    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
        )
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nSELECT 1", 400, b"is not a number"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"ffffffffffffffff\r\nSELECT 1\r\n0\r\n\r\n",
            400,
            b"chunk size",
        ),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\néé€€".encode(), 400, b"SYNTAX_ERROR"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 46\r\n\r\nSELECT * FROM file('/etc/hostname', 'RawBLOB')",
            403,
            b"ACCESS_DENIED",
        ),
    ],
)
def test_malformed_and_outside_requests_get_clickhouse_shaped_4xx(
    clickhouse_url: str, request_bytes: bytes, status: int, says: bytes
) -> None:
    got, body = _raw_request(clickhouse_url, request_bytes)
    assert got == status, body
    assert says in body and b"Traceback" not in body


def test_a_zstd_bomb_is_refused_without_inflating(clickhouse_url: str) -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"SELECT 1 /*" + b" " * (200 << 20) + b"*/")
    assert len(bomb) < 100_000
    got, body = _raw_request(
        clickhouse_url,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Encoding: zstd\r\nContent-Length: %d\r\n\r\n" % len(bomb) + bomb,
    )
    # refused by the endpoint once 16 MiB were inflated (chDB's parser would say the same after
    # holding all 200 MiB: 1.2 GB more resident memory for a 13 KB request, before this check)
    assert got == 400 and b"Max query size exceeded" in body and b"send large data as INSERT" in body
    # and the endpoint still answers
    client = clickhouse_connect.get_client(dsn=clickhouse_url)
    assert client.command("SELECT 1") == 1


def test_users_with_passwords_and_a_read_only_reader(tmp_path: Path) -> None:
    """With a users file (what `pipeline up` gives it) the endpoint answers only its users:
    the writer may write, the reader only read, anyone else gets ClickHouse's 516 (HTTP 403, as
    ClickHouse's exceptionCodeToHTTPStatus answers it)."""
    data = tmp_path / "data"
    users = stack.clickhouse_users_file(data)
    creds = stack.clickhouse_credentials(data)
    svc = stack.start_clickhouse(data / "clickhouse", users_file=users)
    try:
        port = int(svc.url.rsplit(":", 1)[1])
        writer_url = stack.embedded_clickhouse_url(data, port)
        reader_url = stack.embedded_clickhouse_url(data, port, user=stack.CLICKHOUSE_READER)
        assert creds[stack.CLICKHOUSE_WRITER] in writer_url
        assert (data / stack.CREDENTIALS_FILE).stat().st_mode & 0o077 == 0  # the owner's alone
        assert creds[stack.CLICKHOUSE_WRITER] not in users.read_text()  # the endpoint gets hashes
        writer = clickhouse_connect.get_client(dsn=writer_url)
        writer.command("CREATE TABLE t (a UInt8) ENGINE = MergeTree ORDER BY a")
        writer.insert("t", [[1], [2]], column_names=["a"])
        reader = clickhouse_connect.get_client(dsn=reader_url)
        assert reader.command("SELECT sum(a) FROM t") == 3
        for attempt in (
            lambda: reader.insert("t", [[3]], column_names=["a"]),
            lambda: reader.command("INSERT INTO t VALUES (4)"),
            lambda: reader.command("DROP TABLE t"),
        ):
            with pytest.raises(DatabaseError, match="READONLY"):
                attempt()
        assert writer.command("SELECT count() FROM t") == 2
        status, _, body = http(svc.url, {"query": "SELECT 1"})
        assert status == 403 and b"AUTHENTICATION_FAILED" in body
        status, _, body = http(svc.url, {"query": "SELECT 1", "user": stack.CLICKHOUSE_WRITER, "password": "nope"})
        assert status == 403 and b"AUTHENTICATION_FAILED" in body
        status, _, body = http(
            svc.url,
            {"query": "SELECT 1"},
            headers={"X-ClickHouse-User": stack.CLICKHOUSE_READER, "X-ClickHouse-Key": creds[stack.CLICKHOUSE_READER]},
        )
        assert (status, body) == (200, b"1\n")
        with urllib.request.urlopen(svc.url.rstrip("/") + "/ping", timeout=10) as r:
            assert r.status == 200  # health checks need no password
    finally:
        svc.stop()
