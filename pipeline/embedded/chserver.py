"""ClickHouse's HTTP interface served from an in-process chDB engine.

chDB lets exactly one process own a data directory, so this process owns it and speaks the
ClickHouse HTTP protocol to everyone else (clickhouse-connect, curl, Grafana). Clients cannot
tell it from a ClickHouse server for what the pipeline uses: queries in any output format,
INSERT ... FORMAT <fmt> with the data in the body, HTTP compression both ways, URL settings,
sessions (temporary tables, SET), query parameters, ClickHouse-shaped errors and headers.

    python -m pipeline.embedded.chserver --data-dir DIR --host HOST --port PORT

Each chDB connection handle has its own session state (current database, settings, temporary
tables) and runs queries concurrently with other handles, while calls on one handle serialize.
So every HTTP session gets its own handle and sessionless requests borrow one from a pool.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import re
import signal
import socket
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Protocol, cast
from urllib.parse import parse_qsl, urlsplit

import chdb
import lz4.frame
import zstandard

from sinks.sql import sql_ident, sql_str

log = logging.getLogger("pipeline.embedded.chserver")

KEEP_ALIVE_TIMEOUT = 30  # seconds an idle keep-alive connection is kept, as ClickHouse does
DEFAULT_SESSION_TIMEOUT = 60  # ClickHouse's default_session_timeout
MAX_SESSION_TIMEOUT = 3600  # ClickHouse's max_session_timeout
HEAD_BYTES = 1 << 16  # body prefix read before deciding how a request is executed
# A query that is not an INSERT's data is held whole: at most this (ClickHouse's max_query_size
# is 256 KiB; set-wise reads of the pipeline send ~50 KB).
MAX_QUERY_BYTES = 16 << 20
MAX_CHUNK_BYTES = 1 << 30  # one chunk of a chunked body
DECOMPRESS_STEP = 1 << 20  # most decompressed bytes produced per step: a small body never inflates at once
# Table functions and clauses that reach outside the database (files, URLs, other servers,
# programs): this endpoint serves the pipeline's tables, never the host's files (issue 14).
DENIED_TABLE_FUNCTIONS = frozenset(
    {
        b"FILE",
        b"URL",
        b"URLCLUSTER",
        b"S3",
        b"S3CLUSTER",
        b"GCS",
        b"OSS",
        b"COSN",
        b"HDFS",
        b"HDFSCLUSTER",
        b"AZUREBLOBSTORAGE",
        b"AZUREBLOBSTORAGECLUSTER",
        b"REMOTE",
        b"REMOTESECURE",
        b"CLUSTER",
        b"CLUSTERALLREPLICAS",
        b"MYSQL",
        b"POSTGRESQL",
        b"MONGODB",
        b"REDIS",
        b"SQLITE",
        b"JDBC",
        b"ODBC",
        b"EXECUTABLE",
        b"PYTHON",
        b"ICEBERG",
        b"ICEBERGS3",
        b"ICEBERGAZURE",
        b"ICEBERGHDFS",
        b"ICEBERGLOCAL",
        b"DELTALAKE",
        b"DELTALAKELOCAL",
        b"DELTALAKES3",
        b"HUDI",
        b"FILECLUSTER",
        b"ARROWFLIGHT",
        b"YTSAURUS",
        b"PARQUETMETADATA",
        b"DATALAKE",
    }
)
IDLE_POOL_SIZE = 8  # sessionless handles kept open between requests

# URL parameters that belong to the HTTP layer, not to the query's settings.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "session_id",
        "session_timeout",
        "session_check",
        "query_id",
        "quota_key",
        "user",
        "password",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "send_progress_in_http_headers",
        "enable_http_compression",
        "cancel_http_readonly_queries_on_client_close",
        "add_http_cors_header",
        "max_result_bytes_for_http",
        "stacktrace",
    }
)

# ClickHouse error codes this module raises itself.
SYNTAX_ERROR = 62
NOT_IMPLEMENTED = 48
UNKNOWN_FORMAT = 73
UNKNOWN_COMPRESSION_METHOD = 89
READONLY = 164
ACCESS_DENIED = 497
AUTHENTICATION_FAILED = 516
CANNOT_DECOMPRESS = 271
SESSION_NOT_FOUND = 372
SESSION_IS_LOCKED = 373
UNKNOWN_EXCEPTION = 1002

# HTTP status per exception name, as ClickHouse's exceptionCodeToHTTPStatus maps them.
_STATUS_BY_NAME: dict[str, int] = {
    **dict.fromkeys(
        (
            "BAD_ARGUMENTS",
            "CANNOT_COMPILE_REGEXP",
            "CANNOT_PARSE_TEXT",
            "CANNOT_PARSE_ESCAPE_SEQUENCE",
            "CANNOT_PARSE_QUOTED_STRING",
            "CANNOT_PARSE_DATE",
            "CANNOT_PARSE_DATETIME",
            "CANNOT_PARSE_NUMBER",
            "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
            "CANNOT_PARSE_IPV4",
            "CANNOT_PARSE_IPV6",
            "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
            "CANNOT_PARSE_UUID",
            "DUPLICATE_COLUMN",
            "ILLEGAL_COLUMN",
            "UNKNOWN_ELEMENT_IN_AST",
            "UNKNOWN_TYPE_OF_AST_NODE",
            "THERE_IS_NO_COLUMN",
            "TOO_DEEP_AST",
            "TOO_BIG_AST",
            "UNEXPECTED_AST_STRUCTURE",
            "SYNTAX_ERROR",
            "INCORRECT_DATA",
            "TYPE_MISMATCH",
            "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        ),
        400,
    ),
    **dict.fromkeys(
        (
            "UNKNOWN_TABLE",
            "UNKNOWN_FUNCTION",
            "UNKNOWN_IDENTIFIER",
            "UNKNOWN_TYPE",
            "UNKNOWN_STORAGE",
            "UNKNOWN_DATABASE",
            "UNKNOWN_SETTING",
            "UNKNOWN_DIRECTION_OF_SORTING",
            "UNKNOWN_AGGREGATE_FUNCTION",
            "UNKNOWN_FORMAT",
            "UNKNOWN_DATABASE_ENGINE",
            "UNKNOWN_TYPE_OF_QUERY",
            "UNKNOWN_ROLE",
        ),
        404,
    ),
    "QUERY_IS_TOO_LARGE": 413,
    "ACCESS_DENIED": 403,
    "AUTHENTICATION_FAILED": 403,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "CANNOT_SCHEDULE_TASK": 503,
    "TIMEOUT_EXCEEDED": 408,
}

# One SQL token: whitespace, comment, quoted string or identifier, word, or any single byte.
_TOKEN = re.compile(
    # quoted: the unrolled form, a run of plain characters at a time (one alternation per
    # character took ~5 ms for the ~40 KB literal table of a set-wise read)
    rb"""\s+|--[^\n]*|/\*.*?\*/|'[^'\\]*(?:\\.[^'\\]*)*'|"[^"\\]*(?:\\.[^"\\]*)*"|`[^`\\]*(?:\\.[^`\\]*)*`"""
    rb"""|[A-Za-z_][A-Za-z0-9_]*|.""",
    re.S,
)
_CODE_RE = re.compile(r"Code: (\d+)\.")
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)(?: \(version [^)]*\))?\s*$")
_VERSION_SUFFIX_RE = re.compile(r"\s*\(version [^)]*\)\s*$")
_LEADING_SET_RE = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/)*SET\s", re.I | re.S)
_LEADING_USE_RE = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/)*USE\s", re.I | re.S)
_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# chdb's Python wrapper turns these pseudo-formats into Python objects: not wire formats.
_PYTHON_FORMATS = frozenset({"dataframe", "datastore", "arrowtable"})


class ClickHouseError(Exception):
    """An error reported to the client the way ClickHouse reports it."""

    def __init__(self, code: int, message: str, name: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.name = name


def _from_engine(exc: Exception) -> ClickHouseError:
    """chDB raises RuntimeError('... Code: N. DB::Exception: msg. (NAME) (version ...)')."""
    text = str(exc)
    start = text.find("Code: ")
    text = (text[start:] if start >= 0 else text).strip()
    code_m = _CODE_RE.match(text)
    code = int(code_m.group(1)) if code_m else UNKNOWN_EXCEPTION
    name_m = _NAME_RE.search(text)
    if not code_m:
        text = f"Code: {code}. DB::Exception: {text}"
    return ClickHouseError(code, _VERSION_SUFFIX_RE.sub("", text), name_m.group(1) if name_m else "")


def _significant(buf: bytes, end: int) -> Iterator[re.Match[bytes]]:
    """SQL tokens of buf[:end] without whitespace and comments."""
    for m in _TOKEN.finditer(buf, 0, end):
        tok = m.group()
        if not (tok[:1].isspace() or tok.startswith((b"--", b"/*"))):
            yield m


@dataclass(frozen=True)
class InsertSplit:
    """An INSERT whose data follows its FORMAT clause."""

    statement: str  # the INSERT without its FORMAT clause, as chDB's send_insert wants it
    fmt: str
    data_start: int


def denied(buf: bytes) -> str | None:
    """The table function or clause of a statement that reaches outside the database, if any:
    `file(...)`, `url(...)`, `remote(...)`, ... anywhere (INSERT INTO FUNCTION included), and
    INTO OUTFILE / FROM INFILE. Quoted strings and comments are skipped, so a literal 'file(' is
    no match."""
    prev: bytes = b""
    for m in _significant(buf, len(buf)):
        tok = m.group()
        if tok == b"(":
            name = prev.strip(b'`"')
            if name.upper() in DENIED_TABLE_FUNCTIONS:
                return name.decode(errors="replace")
        elif len(tok) in (6, 7) and tok.upper() in (b"OUTFILE", b"INFILE") and prev.upper() in (b"INTO", b"FROM"):
            return f"{prev.decode()} {tok.decode()}"
        prev = tok
    return None


def split_insert(buf: bytes) -> InsertSplit | None:
    """Find where the data of `INSERT ... FORMAT <fmt>` starts, None for any other statement.

    Like ClickHouse, data starts after the first newline following the format name, or after the
    whitespace when there is no newline. INSERT ... VALUES / SELECT run as ordinary queries.
    """
    tokens = _significant(buf, len(buf))
    first = next(tokens, None)
    if first is None or first.group().upper() != b"INSERT":
        return None
    depth = 0
    for m in tokens:
        tok = m.group()
        if tok == b"(":
            depth += 1
        elif tok == b")":
            depth -= 1
        elif depth == 0 and tok[:1].isalpha():
            word = tok.upper()
            if word in (b"VALUES", b"SELECT", b"WITH"):
                return None
            if word == b"FORMAT":
                name = next(tokens, None)
                if name is None or not name.group()[:1].isalpha():
                    return None
                pos = name.end()
                while pos < len(buf) and buf[pos] in b" \t\r\n\f\v":
                    pos += 1
                    if buf[pos - 1] == 0x0A:
                        break
                return InsertSplit(buf[: m.start()].decode(), name.group().decode(), pos)
    return None


def output_format(query: bytes) -> str | None:
    """The format named by a query's trailing `FORMAT <fmt> [SETTINGS ...]` clause, if any."""
    found = None
    toks = [m.group() for m in _significant(query, len(query))]
    depth = 0
    for i, tok in enumerate(toks):
        depth += (tok == b"(") - (tok == b")")
        if depth == 0 and tok.upper() == b"FORMAT" and i + 1 < len(toks) and toks[i + 1][:1].isalpha():
            rest = toks[i + 2 :]
            if not rest or rest[0] == b";" or rest[0].upper() == b"SETTINGS":
                found = toks[i + 1].decode()
    return found


def content_type(fmt: str) -> str:
    f = fmt.lower()
    if f.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if f.startswith("csv"):
        return "text/csv; charset=UTF-8; header=" + ("present" if "names" in f else "absent")
    if f.startswith("json") or f == "ndjson":
        return "application/json; charset=UTF-8"
    if f.startswith(
        ("native", "rowbinary", "parquet", "arrow", "orc", "avro", "protobuf", "capnproto", "msgpack", "bson", "npy")
    ):
        return "application/octet-stream"
    if f == "xml":
        return "application/xml; charset=UTF-8"
    return "text/plain; charset=UTF-8"


# ---- HTTP compression ------------------------------------------------------------------------


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, /) -> bytes: ...


def _lz4_decompressor() -> _Decompressor:
    made: _Decompressor = lz4.frame.LZ4FrameDecompressor()
    return made


def _decompressor_factory(encoding: str) -> Callable[[], _Decompressor]:
    if encoding == "lz4":
        return _lz4_decompressor
    if encoding == "zstd":
        return lambda: zstandard.ZstdDecompressor().decompressobj()
    if encoding in ("gzip", "x-gzip"):
        return lambda: zlib.decompressobj(zlib.MAX_WBITS | 16)
    if encoding == "deflate":
        return lambda: zlib.decompressobj()
    if encoding == "br":
        try:
            import brotli  # type: ignore[import-not-found,unused-ignore]  # optional
        except ImportError:
            pass
        else:
            return brotli.Decompressor  # type: ignore[no-any-return]
    raise ClickHouseError(
        UNKNOWN_COMPRESSION_METHOD,
        f"Code: {UNKNOWN_COMPRESSION_METHOD}. DB::Exception: Unsupported HTTP "
        f"Content-Encoding '{encoding}'. (UNKNOWN_COMPRESSION_METHOD)",
    )


class _ChunkReader:
    """A file-like view of an iterator of chunks (for zstandard's stream reader)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buf = b""

    def read(self, size: int = -1) -> bytes:
        while not self.buf:
            nxt = next(self.chunks, None)
            if nxt is None:
                return b""
            self.buf = nxt
        if size < 0 or size >= len(self.buf):
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:size], self.buf[size:]
        return out


def _bounded(dec: Any, data: bytes, step: int) -> Iterator[bytes]:
    """What `data` inflates to, `step` bytes at most at a time (lz4 and zlib take a max length)."""
    if isinstance(dec, lz4.frame.LZ4FrameDecompressor):
        out = dec.decompress(data, max_length=step)
        yield out
        while not dec.needs_input and not dec.eof:
            yield dec.decompress(b"", max_length=step)
        return
    if hasattr(dec, "unconsumed_tail"):  # zlib
        out = dec.decompress(data, step)
        yield out
        while dec.unconsumed_tail and not dec.eof:
            yield dec.decompress(dec.unconsumed_tail, step)
        return
    yield dec.decompress(data)  # brotli: no bound offered


def decompress_stream(chunks: Iterator[bytes], encoding: str, step: int = DECOMPRESS_STEP) -> Iterator[bytes]:
    """Inflate a request body; clickhouse-connect sends one lz4/zstd frame per block. Never more
    than `step` bytes are produced at once, so a small body that inflates to gigabytes (a
    decompression bomb) costs no more memory than a large one; the caller bounds the total."""
    try:
        if encoding == "zstd":
            source = cast(IO[bytes], _ChunkReader(chunks))  # a file-like reader: read() is all zstandard calls
            reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
            while True:
                out = reader.read(step)
                if not out:
                    return
                yield out
        factory = _decompressor_factory(encoding)
        dec = factory()
        for chunk in chunks:
            while chunk:
                for out in _bounded(dec, chunk, step):
                    if out:
                        yield out
                chunk = b""
                if getattr(dec, "eof", False):
                    chunk = dec.unused_data
                    dec = factory()
    except (zlib.error, RuntimeError, zstandard.ZstdError, ValueError) as exc:
        raise ClickHouseError(
            CANNOT_DECOMPRESS,
            f"Code: {CANNOT_DECOMPRESS}. DB::Exception: "
            f"Cannot decompress {encoding} request body: {exc}. (CANNOT_DECOMPRESS)",
        ) from exc


def compress_body(body: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
    """Compress a response with the first encoding the client accepts that we support."""
    for enc in (e.split(";")[0].strip().lower() for e in accept_encoding.split(",")):
        if enc == "lz4":
            return lz4.frame.compress(body), enc
        if enc == "zstd":
            return zstandard.ZstdCompressor().compress(body), enc
        if enc in ("gzip", "x-gzip"):
            c = zlib.compressobj(3, zlib.DEFLATED, zlib.MAX_WBITS | 16)
            return c.compress(body) + c.flush(), "gzip"
        if enc == "deflate":
            return zlib.compress(body, 3), enc
    return body, None


# ---- chDB handles ----------------------------------------------------------------------------


@dataclass
class Handle:
    """One chDB connection with the state this server layered on top of it."""

    conn: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    database: str | None = "default"  # None once a USE made it unknown
    overlay: dict[str, str] = field(default_factory=dict)  # per-request settings now applied
    base: dict[str, tuple[str, bool]] = field(default_factory=dict)  # their values underneath
    broken: bool = False  # overlay could not be undone: do not reuse
    expires: float = 0.0
    timeout: float = DEFAULT_SESSION_TIMEOUT

    def run(self, sql: str, fmt: str = "TabSeparated", params: dict[str, str] | None = None) -> Any:
        try:
            return self.conn.query(sql, fmt, params=params)
        except RuntimeError as exc:
            raise _from_engine(exc) from None

    def classify(self, sql: str) -> dict[str, Any]:
        """Statement class and count from chDB's parser (only the raw handle exposes it)."""
        try:
            return dict(self.conn._conn.classify_query(sql))
        except (AttributeError, RuntimeError):
            return {}  # unparsable: running it reports the real syntax error

    def use(self, database: str | None, default: str | None) -> None:
        want = database or default
        if want and want != self.database:
            self.run(f"USE {sql_ident(want)}")
            self.database = want

    def apply_settings(self, settings: dict[str, str]) -> None:
        """Make exactly `settings` the per-request overlay; only differences cost a SET."""
        stale = [k for k in self.overlay if k not in settings]
        if stale:
            self._restore(stale)
        new = [k for k in settings if k not in self.overlay]
        if new:
            names = ", ".join(sql_str(k) for k in new)
            rows = self.run(
                f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})", "JSONEachRow"
            ).bytes()
            for line in rows.splitlines():
                row = json.loads(line)
                self.base[row["name"]] = (row["value"], bool(row["changed"]))
        changes = {k: v for k, v in settings.items() if self.overlay.get(k) != v}
        # readonly goes last: once set, no other SET would be accepted
        for key in sorted(changes, key=lambda k: k == "readonly"):
            if not _SETTING_NAME_RE.match(key):
                raise ClickHouseError(
                    SYNTAX_ERROR,
                    f"Code: {SYNTAX_ERROR}. DB::Exception: Invalid setting name {key!r}. (SYNTAX_ERROR)",
                    "SYNTAX_ERROR",
                )
            try:
                self.run(f"SET {key} = {sql_str(changes[key])}")
            except ClickHouseError:
                self.base.pop(key, None)  # unknown setting: nothing to restore later
                raise
            self.overlay[key] = changes[key]

    def clear_overlay(self) -> None:
        if self.overlay:
            self._restore(list(self.overlay))

    def _restore(self, keys: list[str]) -> None:
        try:
            for key in keys:
                value, changed = self.base.pop(key, ("", False))
                self.run(f"SET {key} = {sql_str(value)}" if changed else f"SET {key} = DEFAULT")
                del self.overlay[key]
        except ClickHouseError:
            self.broken = True  # e.g. readonly=1 forbids undoing it: drop this handle
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class Engine:
    """The chDB engine: a pool of sessionless handles plus one handle per HTTP session."""

    def __init__(self, data_dir: Path) -> None:
        self.path = str(data_dir.resolve())
        self._root = self._open()  # keeps the engine up while handles come and go
        row = self._root.run(
            "SELECT version(), timezone(), displayName(), toString(getSetting('enable_http_compression'))",
            "JSONCompact",
        )
        self.version, self.timezone, self.display_name, http_comp = json.loads(row.bytes())["data"][0]
        # chDB reports enable_http_compression=1, so clients expect compressed responses by default
        self.http_compression_default = http_comp in ("1", "true")
        self._lock = threading.Lock()
        self._idle: list[Handle] = []
        self._sessions: dict[str, Handle] = {}
        self._closed = False

    def _open(self) -> Handle:
        return Handle(chdb.connect(self.path))  # type: ignore[no-untyped-call]  # chdb has no annotations

    @contextlib.contextmanager
    def handle(self, session_id: str | None, timeout: float, check: bool) -> Iterator[Handle]:
        if session_id:
            with self._lock:
                h = self._sessions.get(session_id)
                if h is None:
                    if check:
                        raise ClickHouseError(
                            SESSION_NOT_FOUND,
                            f"Code: {SESSION_NOT_FOUND}. DB::Exception: "
                            f"Session {session_id} not found. (SESSION_NOT_FOUND)",
                        )
                    h = self._sessions[session_id] = self._open()
                h.timeout = timeout
                h.expires = float("inf")  # in use: the reaper must not close it
            # ClickHouse refuses concurrent requests in one session rather than queueing them
            if not h.lock.acquire(blocking=False):
                raise ClickHouseError(
                    SESSION_IS_LOCKED,
                    f"Code: {SESSION_IS_LOCKED}. DB::Exception: "
                    f"Session {session_id} is locked by a concurrent client. "
                    "(SESSION_IS_LOCKED)",
                )
            try:
                yield h
            finally:
                if h.broken:
                    with self._lock:
                        self._sessions.pop(session_id, None)
                    h.close()
                h.expires = time.monotonic() + h.timeout
                h.lock.release()
            return
        with self._lock:
            h = self._idle.pop() if self._idle else None
        if h is None:
            h = self._open()
        with h.lock:
            try:
                yield h
            finally:
                keep = not h.broken
        with self._lock:
            if keep and not self._closed and len(self._idle) < IDLE_POOL_SIZE:
                self._idle.append(h)
                return
        h.close()

    def expire_sessions(self) -> None:
        now = time.monotonic()
        with self._lock:
            dead = [sid for sid, h in self._sessions.items() if h.expires < now]
            handles = [self._sessions.pop(sid) for sid in dead]
        for h in handles:
            h.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            handles = [*self._idle, *self._sessions.values()]
            self._idle.clear()
            self._sessions.clear()
        for h in handles:
            with h.lock:
                h.close()
        self._root.close()


# ---- query execution -------------------------------------------------------------------------


@dataclass
class Request:
    params: dict[str, str]
    headers: dict[str, str]
    method: str
    body: Iterator[bytes]  # decompressed request body
    user: str = "default"
    readonly: bool = False  # the user may only read (SELECT, SHOW, DESCRIBE, ...)


@dataclass(frozen=True)
class User:
    sha256_hex: str
    readonly: bool = False


def load_users(path: Path) -> dict[str, User]:
    """{"name": {"sha256_hex": "<SHA-256 of the password>", "readonly": bool}, ...}"""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {str(name): User(str(u["sha256_hex"]).lower(), bool(u.get("readonly", False))) for name, u in doc.items()}


def credentials(headers: dict[str, str], params: dict[str, str]) -> tuple[str, str]:
    """(user, password) as ClickHouse's HTTP interface takes them: Basic auth, the
    X-ClickHouse-User/Key headers, or the user/password URL parameters; else default, no password."""
    auth = headers.get("authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            user, _, password = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            user, password = "", ""
        return user or "default", password
    if "x-clickhouse-user" in headers or "x-clickhouse-key" in headers:
        return headers.get("x-clickhouse-user") or "default", headers.get("x-clickhouse-key", "")
    return params.get("user") or "default", params.get("password", "")


def authenticate(users: dict[str, User] | None, user: str, password: str) -> User | None:
    """The user, when the password is right (every user's check costs the same); None otherwise.
    Without a users file every request is let in as an unrestricted user."""
    if users is None:
        return User("", False)
    known = users.get(user)
    digest = hashlib.sha256(password.encode("utf-8")).hexdigest()
    ok = hmac.compare_digest(digest, known.sha256_hex if known else "0" * 64)
    return known if known is not None and ok else None


@dataclass
class Result:
    body: bytes = b""
    fmt: str | None = None  # set for statements that produce a result set
    summary: dict[str, str] = field(default_factory=dict)


def _settings_of(params: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith(("param_", "http_"))}


def _summary(res: Any, elapsed: float, written: bool) -> dict[str, str]:
    rows_w, bytes_w = (res.rows_written(), res.bytes_written()) if written else (0, 0)
    return {
        "read_rows": str(res.rows_read()),
        "read_bytes": str(res.bytes_read()),
        "written_rows": str(rows_w),
        "written_bytes": str(bytes_w),
        "total_rows_to_read": "0",
        "result_rows": "0",
        "result_bytes": str(res.bytes_read()),
        "elapsed_ns": str(int(elapsed * 1e9)),
    }


def execute(engine: Engine, req: Request) -> Result:
    """Run one HTTP query request against chDB."""
    p = req.params
    for flag in ("compress", "decompress"):
        if p.get(flag, "0") not in ("0", ""):
            raise ClickHouseError(
                NOT_IMPLEMENTED,
                f"Code: {NOT_IMPLEMENTED}. DB::Exception: "
                f"'{flag}=1' (ClickHouse's native block compression) is not supported "
                "here; use HTTP Content-Encoding. (NOT_IMPLEMENTED)",
                "NOT_IMPLEMENTED",
            )
    default_fmt = p.get("default_format") or req.headers.get("x-clickhouse-format") or "TabSeparated"
    if default_fmt.lower() in _PYTHON_FORMATS:
        raise ClickHouseError(
            UNKNOWN_FORMAT,
            f"Code: {UNKNOWN_FORMAT}. DB::Exception: Unknown format {default_fmt}. (UNKNOWN_FORMAT)",
            "UNKNOWN_FORMAT",
        )
    query_param = p.get("query", "")
    head = bytearray((query_param + "\n").encode() if query_param else b"")
    body = req.body
    done = False
    while len(head) < HEAD_BYTES:
        chunk = next(body, None)
        if chunk is None:
            done = True
            break
        head += chunk
    split = split_insert(bytes(head))
    if split is None and not done:  # a long VALUES insert or a huge query: it all is the query
        for chunk in body:
            head += chunk
            if len(head) > MAX_QUERY_BYTES:
                raise ClickHouseError(
                    SYNTAX_ERROR,
                    f"Code: {SYNTAX_ERROR}. DB::Exception: Max query size "
                    f"exceeded: the query is over {MAX_QUERY_BYTES} bytes; send large data "
                    "as INSERT ... FORMAT with the data in the body. (SYNTAX_ERROR)",
                    "SYNTAX_ERROR",
                )
        done = True
        split = split_insert(bytes(head))
    statement = bytes(head[: split.data_start]) if split is not None else bytes(head)
    outside = denied(statement)
    if outside is not None:
        raise ClickHouseError(
            ACCESS_DENIED,
            f"Code: {ACCESS_DENIED}. DB::Exception: {outside} is not allowed "
            "on this endpoint: it serves the database, not the host's files, URLs or other "
            "servers. (ACCESS_DENIED)",
            "ACCESS_DENIED",
        )
    if split is None and not head.strip():
        raise ClickHouseError(
            SYNTAX_ERROR, f"Code: {SYNTAX_ERROR}. DB::Exception: Empty query. (SYNTAX_ERROR)", "SYNTAX_ERROR"
        )
    try:
        timeout = min(float(p.get("session_timeout", DEFAULT_SESSION_TIMEOUT)), MAX_SESSION_TIMEOUT)
    except ValueError:
        timeout = DEFAULT_SESSION_TIMEOUT
    session_id = p.get("session_id") or None
    database = p.get("database") or req.headers.get("x-clickhouse-database")
    query_params = {k[6:]: v for k, v in p.items() if k.startswith("param_")}
    if req.readonly and split is not None:
        raise ClickHouseError(
            READONLY,
            f"Code: {READONLY}. DB::Exception: {req.user}: Cannot execute query in "
            "readonly mode: the user may only read. (READONLY)",
            "READONLY",
        )
    if session_id:
        session_id = f"{req.user}\x00{session_id}"  # a user's sessions are its own
    with engine.handle(session_id, timeout, p.get("session_check") == "1") as h:
        # a sessionless handle always starts from the default database
        h.use(database, None if session_id else "default")
        started = time.perf_counter()
        if split is not None:
            h.apply_settings(_settings_of(p))
            data = memoryview(head)[split.data_start :]
            return Result(summary=_insert(h, split, data, None if done else body, started))
        query = bytes(head)
        text = query.decode("utf-8", errors="replace")
        info = h.classify(text)
        kind = str(info.get("query_class", ""))
        if info.get("statement_count", 1) > 1:
            raise ClickHouseError(
                SYNTAX_ERROR,
                f"Code: {SYNTAX_ERROR}. DB::Exception: Multi-statements are not allowed. (SYNTAX_ERROR)",
                "SYNTAX_ERROR",
            )
        if req.readonly and "READ_ONLY" not in kind:
            raise ClickHouseError(
                READONLY,
                f"Code: {READONLY}. DB::Exception: {req.user}: Cannot execute query "
                "in readonly mode: the user may only read. (READONLY)",
                "READONLY",
            )
        if req.method == "GET" and "MUTATING" in kind:
            raise ClickHouseError(
                READONLY,
                f"Code: {READONLY}. DB::Exception: Cannot execute query in "
                "readonly mode. For queries over HTTP, method GET implies readonly. "
                "You should use method POST for modifying queries. (READONLY)",
                "READONLY",
            )
        if session_id and _LEADING_SET_RE.match(text):
            h.clear_overlay()  # a session SET changes the session itself, not the overlay
        else:
            h.apply_settings(_settings_of(p))
        res = h.run(text, default_fmt, query_params)
        if info.get("statement_count", 1) == 0:
            # chDB's parser found no statement and chDB answered nothing (ClickHouse: a syntax error)
            raise ClickHouseError(
                SYNTAX_ERROR,
                f"Code: {SYNTAX_ERROR}. DB::Exception: Syntax error: no SQL statement in {text[:40]!r}. (SYNTAX_ERROR)",
                "SYNTAX_ERROR",
            )
        if _LEADING_USE_RE.match(text):
            h.database = None
        elapsed = time.perf_counter() - started
        fmt = output_format(query) or default_fmt
        data_out = res.bytes()
        produces = "READ_ONLY" in kind or bool(data_out)
        summary = _summary(res, elapsed, "MUTATING" in kind)
        summary["result_bytes"] = str(len(data_out))
        return Result(data_out, fmt if produces else None, summary)


def _insert(
    h: Handle, split: InsertSplit, first: memoryview, rest: Iterator[bytes] | None, started: float
) -> dict[str, str]:
    """Stream INSERT data into chDB as it arrives; the body is never held whole."""
    try:
        ins = h.conn.send_insert(split.statement, split.fmt)
    except RuntimeError as exc:
        raise _from_engine(exc) from None
    try:
        if first:
            ins.append(first)
        for chunk in rest or ():
            ins.append(chunk)
        res = ins.finish()
    except RuntimeError as exc:
        with contextlib.suppress(RuntimeError):
            ins.cancel()
        raise _from_engine(exc) from None
    except BaseException:
        with contextlib.suppress(RuntimeError):
            ins.cancel()
        raise
    return {
        "read_rows": str(res.rows_written),
        "read_bytes": str(res.bytes_written),
        "written_rows": str(res.rows_written),
        "written_bytes": str(res.bytes_written),
        "total_rows_to_read": "0",
        "result_rows": str(res.rows_written),
        "result_bytes": str(res.bytes_written),
        "elapsed_ns": str(int((time.perf_counter() - started) * 1e9)),
    }


# ---- HTTP ------------------------------------------------------------------------------------


class BadRequestBody(Exception):
    """The request body framing is broken: the connection cannot be reused."""


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for in-flight requests
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: Engine, users: dict[str, User] | None = None) -> None:
        super().__init__(address, Handler)
        self.engine = engine
        self.users = users  # None: no users file, every request is let in
        self.stopping = False
        self.conn_lock = threading.Lock()
        self.connections: dict[Handler, bool] = {}  # handler -> busy with a request

    def close_idle_connections(self) -> None:
        """Wake handlers blocked waiting for a next keep-alive request so they exit."""
        with self.conn_lock:
            self.stopping = True
            idle = [h for h, busy in self.connections.items() if not busy]
        for h in idle:
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RD)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = KEEP_ALIVE_TIMEOUT
    # TCP_NODELAY: without it a response's second write (the body after the headers) waits for
    # the client's delayed ACK, 40 ms on Linux, and every query took at least that (issue 13).
    disable_nagle_algorithm = True
    server: Server
    _headers_buffer: list[bytes]  # BaseHTTPRequestHandler's, written whole below

    def setup(self) -> None:
        super().setup()
        with self.server.conn_lock:
            self.server.connections[self] = False

    def finish(self) -> None:
        with self.server.conn_lock:
            self.server.connections.pop(self, None)
        with contextlib.suppress(OSError):
            super().finish()

    def parse_request(self) -> bool:
        with self.server.conn_lock:
            self.server.connections[self] = True
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _raw_body(self) -> Iterator[bytes]:
        """The request body as sent: by Content-Length or chunked transfer encoding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise BadRequestBody(f"bad chunk size line {line[:40]!r}") from None
                if not 0 <= size <= MAX_CHUNK_BYTES:
                    raise BadRequestBody(f"chunk size {size} is over {MAX_CHUNK_BYTES}")
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                while size > 0:  # in pieces: a chunk's size alone never decides what is held
                    data = self.rfile.read(min(size, 1 << 20))
                    if not data:
                        raise BadRequestBody("connection closed inside a chunk")
                    size -= len(data)
                    yield data
                self.rfile.readline(16)
        length = (self.headers.get("Content-Length") or "0").strip()
        if not length.isdigit():
            raise BadRequestBody(f"Content-Length {length[:40]!r} is not a number")
        remaining = int(length)
        while remaining > 0:
            data = self.rfile.read(min(remaining, 1 << 20))
            if not data:
                raise BadRequestBody("connection closed inside the body")
            remaining -= len(data)
            yield data

    def _dispatch(self) -> None:
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except BadRequestBody as exc:  # a /ping or unknown path with a malformed body
            self.close_connection = True
            self._error(
                ClickHouseError(
                    UNKNOWN_EXCEPTION, f"Code: {UNKNOWN_EXCEPTION}. DB::Exception: Malformed request body: {exc}.", ""
                ),
                400,
                None,
            )
        finally:
            with self.server.conn_lock:
                self.server.connections[self] = False
                if self.server.stopping:
                    self.close_connection = True

    def _route(self) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path in ("/ping", "/replicas_status") or (
            url.path == "/" and self.command == "GET" and "query" not in params
        ):
            for _ in self._raw_body():
                pass
            self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            return
        if url.path != "/":
            for _ in self._raw_body():
                pass
            self._error(
                ClickHouseError(
                    UNKNOWN_EXCEPTION,
                    f"Code: {UNKNOWN_EXCEPTION}. DB::Exception: There is no handle {url.path}. Use / or /ping.",
                    "",
                ),
                404,
                params.get("query_id"),
            )
            return
        query_id = params.get("query_id") or str(uuid.uuid4())
        raw = self._raw_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        name, password = credentials(headers, params)
        user = authenticate(self.server.users, name, password)
        if user is None:
            self._drain(raw)
            self._error(
                ClickHouseError(
                    AUTHENTICATION_FAILED,
                    f"Code: {AUTHENTICATION_FAILED}. DB::Exception: "
                    f"{name}: Authentication failed: password is incorrect, or there is no "
                    "user with such name. (AUTHENTICATION_FAILED)",
                    "AUTHENTICATION_FAILED",
                ),
                None,
                query_id,
            )
            return
        try:
            encoding = headers.get("content-encoding", "").strip().lower()
            body = decompress_stream(raw, encoding) if encoding and encoding != "identity" else raw
            result = execute(self.server.engine, Request(params, headers, self.command, body, name, user.readonly))
        except BadRequestBody as exc:
            self.close_connection = True
            self._error(
                ClickHouseError(
                    UNKNOWN_EXCEPTION, f"Code: {UNKNOWN_EXCEPTION}. DB::Exception: Malformed request body: {exc}.", ""
                ),
                400,
                query_id,
            )
            return
        except ClickHouseError as exc:
            self._drain(raw)
            self._error(exc, None, query_id)
            return
        except Exception as exc:  # never let a bad request take the server down
            log.exception("request failed")
            self._drain(raw)
            self._error(
                ClickHouseError(
                    UNKNOWN_EXCEPTION, f"Code: {UNKNOWN_EXCEPTION}. DB::Exception: {type(exc).__name__}: {exc}.", ""
                ),
                500,
                query_id,
            )
            return
        out = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Summary": json.dumps(result.summary, separators=(",", ":")),
        }
        if result.fmt:
            out["X-ClickHouse-Format"] = result.fmt
        out["Content-Type"] = content_type(result.fmt) if result.fmt else "text/plain; charset=UTF-8"
        body_out = result.body
        if self._compression_enabled(params):
            body_out, enc = compress_body(body_out, headers.get("accept-encoding", ""))
            if enc:
                out["Content-Encoding"] = enc
        self._send(200, body_out, out)

    def _compression_enabled(self, params: dict[str, str]) -> bool:
        flag = params.get("enable_http_compression")
        return self.server.engine.http_compression_default if flag is None else flag not in ("0", "")

    def _drain(self, raw: Iterator[bytes]) -> None:
        """Read what is left of the body so the client sees the error, not a broken pipe."""
        try:
            for _ in raw:
                pass
        except (BadRequestBody, OSError, ValueError):
            self.close_connection = True

    def _error(self, exc: ClickHouseError, status: int | None, query_id: str | None) -> None:
        message = f"{exc.message} (version {self.server.engine.version})\n".encode(errors="replace")
        self._send(
            status or _STATUS_BY_NAME.get(exc.name, 500),
            message,
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(exc.code),
                "X-ClickHouse-Query-Id": query_id or "",
            },
        )

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        engine = self.server.engine
        self.send_response(status)
        headers.setdefault("X-ClickHouse-Server-Display-Name", engine.display_name)
        headers.setdefault("X-ClickHouse-Timezone", engine.timezone)
        headers["Content-Length"] = str(len(body))
        if self.close_connection or self.server.stopping:
            headers["Connection"] = "close"
        else:
            headers["Keep-Alive"] = f"timeout={KEEP_ALIVE_TIMEOUT}"
        for name, value in headers.items():
            self.send_header(name, value)
        # headers and body in one write: one segment for a small response
        self._headers_buffer.append(b"\r\n")
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        self.wfile.write(head + body if self.command != "HEAD" else head)


def serve(data_dir: Path, host: str, port: int, users_file: Path | None = None) -> None:
    """Own data_dir and serve it over HTTP until SIGTERM/SIGINT, then shut down cleanly. With a
    users file, every request (but /ping) must name a user of it with its password."""
    data_dir.mkdir(parents=True, exist_ok=True)
    users = load_users(users_file) if users_file is not None else None
    engine = Engine(data_dir)
    server = Server((host, port), engine, users)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="chserver-accept")
    loop.start()
    log.info(
        "chDB %s on %s serving http://%s:%d (%s)",
        engine.version,
        data_dir,
        host,
        port,
        f"users: {', '.join(sorted(users))}" if users is not None else "no users file: anyone who reaches it",
    )
    try:
        while not stop.wait(1.0):
            engine.expire_sessions()
    finally:
        log.info("shutting down")
        server.shutdown()  # stop accepting
        server.close_idle_connections()
        server.server_close()  # joins the request threads still finishing their requests
        loop.join()
        engine.close()
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.embedded.chserver", description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--users", type=Path, help="JSON users file: {name: {sha256_hex, readonly}} (default: open)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(args.data_dir, args.host, args.port, args.users)
    return 0


if __name__ == "__main__":
    sys.exit(main())
