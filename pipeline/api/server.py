"""The OpenOrg time-series HTTP API (`pipeline api`): GET /api/timeseries over ClickHouse.

Parameter rules, series names, periods and formats are in processors/timeseries.py (pure);
this module reads ClickHouse (the `datum` and `rollup` views, parametrised queries only) and the
nodes' time zones from the history log, and speaks HTTP. docs/api.md is the manual.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from pipeline.api.access import Access, AccessUnavailable, TokenStore
from pipeline.api.http_ingest import INGEST_PATH, HttpIngest
from pipeline.history.view import LogView
from pipeline.settings import Settings
from processors import security_policy as sp
from processors import timeseries as ts
from processors.catalog_versions import timezone_at
from processors.http_ingest import MAX_BODY_BYTES
from processors.metadata import MetadataCatalog
from processors.solarquery import error_body as sq_error
from sinks.clickhouse import DATUM_VIEW, RAW_TABLE, connect
from sinks.rollups import ROLLUP_TABLE, ROLLUP_VIEW

log = logging.getLogger(__name__)

BASE_PATH = "/api/timeseries"
OPENAPI_PATH = BASE_PATH + "/openapi.json"
OPENAPI_FILE = Path(__file__).resolve().parent / "openapi" / "timeseries.json"
SERIES_TTL_S = 2.0  # how long the series list is reused (an unknown name refreshes it at once)
ZONES_CHECK_S = 2.0  # how often the history log's high-water mark is checked
CHUNK = 50  # series per UNION ALL query (keeps the parameter list of one request small)
# DateTime64(3)'s range: times outside are clamped (nothing is stored there anyway)
MIN_MS = -2_208_988_800_000  # 1900-01-01
MAX_MS = 10_413_791_999_999  # 2299-12-31T23:59:59.999
CORS = (("Access-Control-Allow-Origin", "*"),)
SOLARQUERY_PREFIX = "/solarquery/api/v1/"
# What a preflight may ask to send: the SNWS2 headers (credentials travel in headers only).
ALLOWED_HEADERS = "Accept, Authorization, Content-Type, Digest, X-SN-Date"
# The policy's aggregation of each periodicity (SolarNetwork's names); raw readings are None.
AGGREGATION_OF: dict[str | None, sp.Aggregation] = {
    None: sp.Aggregation.NONE,
    "halfhour": sp.Aggregation.THIRTY_MINUTE,
    "hour": sp.Aggregation.HOUR,
    "day": sp.Aggregation.DAY,
    "week": sp.Aggregation.WEEK,
    "month": sp.Aggregation.MONTH,
    "year": sp.Aggregation.YEAR,
}


class Unavailable(Exception):
    """ClickHouse cannot be reached or cannot answer: 503. `code` is ClickHouse's error code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


UNKNOWN_TABLE = 60
_CODE = re.compile(r"code: (\d+)", re.IGNORECASE)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------------------
# ClickHouse


class Store:
    """One shared clickhouse-connect client without a session (sessions serialise requests)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Client | None = None
        self._lock = threading.Lock()
        self._series: dict[ts.SeriesKey, str] = {}
        self._series_at = 0.0
        self._series_lock = threading.Lock()

    def _get(self) -> Client:
        with self._lock:
            if self._client is None:
                try:
                    self._client = connect(
                        self.url,
                        long_statements=False,
                        autogenerate_session_id=False,
                        connect_timeout=3,
                        send_receive_timeout=60,
                        query_limit=0,
                    )
                except ClickHouseError as exc:
                    raise Unavailable(
                        f"ClickHouse at {_safe_url(self.url)} is unavailable: {_first_line(exc)}"
                    ) from exc
            return self._client

    def client(self) -> Client:
        return self._get()

    def rows(self, sql: str, params: dict[str, Any]) -> list[Sequence[Any]]:
        client = self._get()
        try:
            return list(client.query(sql, parameters=params).result_rows)
        except OperationalError as exc:  # connection refused, reset, timed out
            with self._lock:
                self._client = None
            raise Unavailable(f"ClickHouse at {_safe_url(self.url)} is unavailable: {_first_line(exc)}") from exc
        except DatabaseError as exc:
            m = _CODE.search(str(exc))
            raise Unavailable(
                f"ClickHouse could not answer: {_first_line(exc)}", int(m.group(1)) if m else None
            ) from exc

    def _distinct(self, sql: str) -> list[Sequence[Any]]:
        try:
            return self.rows(sql, {})
        except Unavailable as exc:
            if exc.code == UNKNOWN_TABLE:  # nothing stored yet: the worker creates the tables
                return []
            raise

    def series(self, refresh: bool = False) -> dict[ts.SeriesKey, str]:
        """Every series with its kind (i, a, s, p): raw rows first, then rollups (raw rows may
        have expired by their TTL while their rollups stay)."""
        with self._series_lock:
            if refresh or time.monotonic() - self._series_at > SERIES_TTL_S:
                found: dict[ts.SeriesKey, str] = {}
                # the raw table, not the view: duplicates cannot change a DISTINCT, FINAL is costly
                for table, order in ((ROLLUP_TABLE, "ts_start"), (RAW_TABLE, "created")):
                    where = " WHERE deleted = 0" if table == ROLLUP_TABLE else ""
                    for node, source, prop, kind in self._distinct(
                        f"SELECT node_id, toString(source_id), toString(property), toString(argMax(kind, {order}))"
                        f" FROM {table}{where} GROUP BY node_id, source_id, property"
                    ):
                        found[ts.SeriesKey(int(node), str(source), str(prop))] = str(kind)
                self._series = dict(sorted(found.items()))
                self._series_at = time.monotonic()
            return self._series

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.hostname else url


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Node time zones from the history log


class Zones:
    """Node time zones by data time, from the history log; UTC without a log or a zone."""

    def __init__(self, dsn: str) -> None:
        from sinks import history

        self.view: LogView[MetadataCatalog] = LogView(dsn, "node time zones", history.current_catalog, ZONES_CHECK_S)

    def at(self, node_id: int, created_ms: int) -> str:
        """A TimezoneAt (processors/catalog_versions.py), as the worker's rollups use."""
        catalog = self.view.get()
        return "UTC" if catalog is None else timezone_at(catalog.node_timezones, node_id, created_ms)

    def close(self) -> None:
        self.view.close()


# ---------------------------------------------------------------------------------------------
# Queries


@dataclass(frozen=True)
class Target:
    """One series to answer, with its time selection [lo, hi) (clamped) and node time zone."""

    key: ts.SeriesKey
    kind: str
    tz: str
    lo: int = MIN_MS
    hi: int = MAX_MS


def _where(n: int, t: Target, column: str) -> tuple[str, dict[str, Any]]:
    sql = (
        f" node_id = {{n{n}:UInt64}} AND source_id = {{s{n}:String}} AND property = {{p{n}:String}}"
        f" AND {column} >= fromUnixTimestamp64Milli({{lo{n}:Int64}}, 'UTC')"
        f" AND {column} < fromUnixTimestamp64Milli({{hi{n}:Int64}}, 'UTC')"
    )
    return sql, {
        f"n{n}": t.key.node_id,
        f"s{n}": t.key.source_id,
        f"p{n}": t.key.property,
        f"lo{n}": max(MIN_MS, min(MAX_MS, t.lo)),
        f"hi{n}": max(MIN_MS, min(MAX_MS, t.hi)),
    }


_ROLLUP_FIELDS = "toUnixTimestamp64Milli(ts_start), count, avg, min, max, diff, read_start, read_end, toString(mode)"


class Api:
    """Answers requests: (status, body) for a path, query string and Accept header."""

    def __init__(self, store: Store, zones: Zones, openapi: bytes, access: Access | None = None) -> None:
        self.store = store
        self.zones = zones
        self.openapi = openapi
        self.access = access or Access(TokenStore(""))

    # -- data ----------------------------------------------------------------------------------

    def _union(self, parts: Sequence[tuple[str, dict[str, Any]]], shared: dict[str, Any]) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = []
        for k in range(0, len(parts), CHUNK):
            chunk = parts[k : k + CHUNK]
            params = dict(shared)
            for _, p in chunk:
                params.update(p)
            rows += self.store.rows(" UNION ALL ".join(f"SELECT * FROM ({sql})" for sql, _ in chunk), params)
        return rows

    def _source(self, query: ts.Query) -> tuple[str, str, dict[str, Any]]:
        """(relation, time column, shared parameters) of the view a query reads."""
        if query.periodicity is None:
            return DATUM_VIEW, "created", {}
        return f"{ROLLUP_VIEW}", "ts_start", {"per": query.periodicity}

    def _rel_filter(self, query: ts.Query) -> str:
        return "" if query.periodicity is None else " periodicity = {per:String} AND"

    def results(self, query: ts.Query, targets: Sequence[Target]) -> list[ts.SeriesResult]:
        """Counts and pages of every target. Without negative indices the page does not depend on
        the count, so both come from one query (the endpoint's cost is mostly per query);
        otherwise the count comes first and resolves the slice."""
        view, column, shared = self._source(query)
        per = self._rel_filter(query)
        raw = query.periodicity is None
        fields = "toUnixTimestamp64Milli(created), value, text" if raw else _ROLLUP_FIELDS
        # a count row carries the count where a data row has its time, and typed blanks after
        blanks = (
            "CAST(NULL, 'Nullable(Float64)'), ''"
            if raw
            else "toUInt64(0), " + ", ".join(["CAST(NULL, 'Nullable(Float64)')"] * 6) + ", ''"
        )

        def count_part(n: int, t: Target) -> tuple[str, dict[str, Any]]:
            where, params = _where(n, t, column)
            return (
                f"SELECT toUInt8(0) AS part, toUInt32({n}) AS q, toInt64(count()), {blanks}"
                f" FROM {view} WHERE{per}{where}",
                params,
            )

        def data_part(n: int, t: Target, offset: int, limit: int) -> tuple[str, dict[str, Any]]:
            where, params = _where(n, t, column)
            params.update({f"o{n}": offset, f"l{n}": limit})
            return (
                f"SELECT toUInt8(1) AS part, toUInt32({n}) AS q, {fields} FROM {view} WHERE{per}{where}"
                f" ORDER BY {column} LIMIT {{l{n}:UInt64}} OFFSET {{o{n}:UInt64}}",
                params,
            )

        fixed = ts.page_without_count(query)
        parts = [count_part(n, t) for n, t in enumerate(targets)]
        if fixed is not None and fixed[1] > 0:
            parts += [data_part(n, t, *fixed) for n, t in enumerate(targets)]
        rows = self._union(parts, shared)
        counts = [0] * len(targets)
        for row in rows:
            if row[0] == 0:
                counts[int(row[1])] = int(row[2])
        windows = [ts.page(c, query) for c in counts]
        if fixed is None:
            rows = self._union(
                [
                    data_part(n, t, w.offset, w.limit)
                    for n, (t, w) in enumerate(zip(targets, windows, strict=True))
                    if w.limit > 0
                ],
                shared,
            )
        points: list[list[ts.Point]] = [[] for _ in targets]
        for row in rows:
            if row[0] != 1:
                continue
            n = int(row[1])
            kind = targets[n].kind
            if raw:
                points[n].append(ts.raw_point(kind, int(row[2]), row[3], str(row[4])))
            else:
                points[n].append(ts.rollup_point(kind, int(row[2]), int(row[3]), *row[4:11]))
        for p in points:
            p.sort(key=lambda x: x.ts_ms)  # UNION ALL keeps no order across parts
        return [
            ts.SeriesResult(
                t.key, ts.series_type(t.kind), query.periodicity, query.limit, query.offset, w.total, t.tz, tuple(p)
            )
            for t, w, p in zip(targets, windows, points, strict=True)
        ]

    def compared(self, query: ts.Query, targets: Sequence[Target], at_ms: int) -> list[ts.SeriesResult]:
        assert query.compare is not None and query.periodicity is not None
        plans = [ts.compare_buckets(at_ms, query.periodicity, query.compare, query.history, t.tz) for t in targets]
        parts = []
        for n, (t, (now, before)) in enumerate(zip(targets, plans, strict=True)):
            where, params = _where(n, Target(t.key, t.kind, t.tz, min(before, default=now), now + 1), "ts_start")
            params[f"b{n}"] = [now, *before]
            parts.append(
                (
                    f"SELECT toUInt32({n}) AS q, {_ROLLUP_FIELDS} FROM {ROLLUP_VIEW}"
                    f" WHERE periodicity = {{per:String}} AND{where}"
                    f" AND toUnixTimestamp64Milli(ts_start) IN {{b{n}:Array(Int64)}}",
                    params,
                )
            )
        found: list[dict[int, ts.Point]] = [{} for _ in targets]
        for row in self._union(parts, {"per": query.periodicity}):
            n = int(row[0])
            found[n][int(row[1])] = ts.rollup_point(targets[n].kind, int(row[1]), int(row[2]), *row[3:10])
        out = []
        for t, (now, before), got in zip(targets, plans, found, strict=True):
            kind = ts.series_type(t.kind)
            latest = tuple(p for p in (got.get(now),) if p is not None)
            base = ts.baseline(query.compare, query.history, kind, [got[s] for s in before if s in got])
            out.append(ts.SeriesResult(t.key, kind, query.periodicity, 1, 0, len(latest), t.tz, latest, base))
        return out

    # -- requests ------------------------------------------------------------------------------

    def visible(self, token: sp.Token | None) -> dict[ts.SeriesKey, str]:
        """The series list as the token may see it (all of it without a token)."""
        known = self.store.series()
        if token is None:
            return known
        return {k: v for k, v in known.items() if sp.stream_allowed(token.policy, k.node_id, k.source_id)}

    def authorize(self, query: ts.Query, token: sp.Token | None) -> None:
        """403 for series or an aggregation the token's policy excludes (decided before looking
        at which series exist, so a refusal tells nothing about series outside the policy)."""
        if token is None:
            return
        # a description lists series: no figures, so no aggregation rule applies
        sp.authorize_read(
            token,
            now=datetime.now(UTC),
            path=BASE_PATH,
            aggregation=AGGREGATION_OF[query.periodicity],
            figures=not query.describe,
        )
        for key in query.series or ():
            if not sp.stream_allowed(token.policy, key.node_id, key.source_id):
                raise sp.AccessDenied(403, f"series {ts.series_name(key)} not allowed by the token policy")

    def targets(self, query: ts.Query, at_ms: int, token: sp.Token | None = None) -> list[Target]:
        known = self.visible(token)
        if query.series is None:
            keys = list(known)
        else:
            missing = [k for k in query.series if k not in known]
            if missing:
                self.store.series(refresh=True)  # perhaps new since the cached list
                known = self.visible(token)
                missing = [k for k in query.series if k not in known]
            if missing:
                names = ", ".join(ts.series_name(k) for k in missing[:5])
                raise ts.ParameterError(
                    "series", f"unknown series: {names} (query without parameters for the list)", status=404
                )
            keys = list(query.series)
        out = []
        for key in keys:
            tz = self.zones.at(key.node_id, at_ms)
            lo, hi = MIN_MS, MAX_MS
            if query.current is not None:
                lo, hi = ts.current_bounds(query.current, at_ms, tz)
            else:
                lo = query.start_ms if query.start_ms is not None else lo
                hi = query.end_ms if query.end_ms is not None else hi
            out.append(Target(key, known[key], tz, lo, hi))
        return out

    def get(self, raw_query: str, accept: str | None, token: sp.Token | None = None) -> tuple[int, ts.Rendered]:
        fmt: ts.Format = "json"
        callback: str | None = None
        try:
            params = parse_qs(raw_query, keep_blank_values=True, errors="strict", max_num_fields=100)
        except (ValueError, UnicodeDecodeError) as exc:
            return 400, ts.render_error(400, f"the query string cannot be read: {exc}", None)
        fmt, callback = _error_format(params, accept)
        try:
            query = ts.parse_query(params)
            fmt = ts.negotiate(accept, query)
            callback = query.callback
            self.authorize(query, token)
            now = _now_ms()
            if query.describe:
                infos = [
                    ts.SeriesInfo(k, ts.series_type(kind), self.zones.at(k.node_id, now))
                    for k, kind in self.visible(token).items()
                ]
                return 200, ts.render_description(infos, fmt, callback, OPENAPI_PATH)
            at_ms = query.at_ms if query.at_ms is not None else now
            targets = self.targets(query, at_ms, token)
            if query.compare is not None:
                results = self.compared(query, targets, at_ms)
            else:
                results = self.results(query, targets)
            return 200, ts.render_results(results, fmt, callback)
        except ts.ParameterError as exc:
            return exc.status, ts.render_error(exc.status, exc.message, exc.parameter, fmt, callback)
        except sp.AccessDenied as exc:
            return exc.status, ts.render_error(exc.status, exc.reason, None, fmt, callback)
        except Unavailable as exc:
            return 503, ts.render_error(503, str(exc), None, fmt, callback)


def _error_format(params: dict[str, list[str]], accept: str | None) -> tuple[ts.Format, str | None]:
    """The format an error is rendered in: the request's, as far as it can be told."""
    fmt = (params.get("format") or [""])[0]
    raw_cb = (params.get("callback") or [""])[0]
    callback = raw_cb if ts.valid_callback(raw_cb) else None
    if fmt == "xml":
        return "xml", None
    if fmt == "csv":
        return "csv", None
    if callback is not None:
        return "jsonp", callback
    if fmt:
        return "json", None
    try:
        return ts.negotiate(accept, ts.Query()), None
    except ts.ParameterError:
        return "json", None


# ---------------------------------------------------------------------------------------------
# HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not hold up a stop
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: Api, ingest: HttpIngest | None = None) -> None:
        self.api = api
        self.ingest = ingest or HttpIngest(Settings())
        self.in_flight = 0
        self.idle = threading.Condition()
        super().__init__(address, _Handler)

    @contextlib.contextmanager
    def request_scope(self) -> Iterator[None]:
        with self.idle:
            self.in_flight += 1
        try:
            yield
        finally:
            with self.idle:
                self.in_flight -= 1
                self.idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self.idle:
            return self.idle.wait_for(lambda: self.in_flight == 0, timeout)


JSON_UTF8 = "application/json;charset=UTF-8"


def _timeseries_error(status: int, message: str) -> tuple[bytes, str]:
    r = ts.render_error(status, message, None)
    return r.body, r.content_type


def _solarnetwork_error(status: int, message: str) -> tuple[bytes, str]:
    return sq_error(message, status), JSON_UTF8


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pipeline-timeseries/1"
    timeout = 30  # an idle keep-alive connection is closed after this
    server: _Server

    def _send(
        self, status: int, body: bytes, content_type: str, head: bool = False, extra: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.send_response(status)
        for name, value in (
            *CORS,
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Vary", "Accept"),
            ("X-Content-Type-Options", "nosniff"),
            *extra,
        ):
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool) -> None:
        with self.server.request_scope():
            url = urlsplit(self.path)
            path = url.path.rstrip("/") or "/"
            if path == OPENAPI_PATH:
                self._send(200, self.server.api.openapi, "application/json; charset=utf-8", head)
                return
            if path.startswith(SOLARQUERY_PREFIX):
                self._solarquery(url.path, url.query, head)
                return
            if path != BASE_PATH:
                r = ts.render_error(404, f"no such resource {url.path!r}; the API is at {BASE_PATH}", None)
                self._send(404, r.body, r.content_type, head)
                return

            def timeseries(token: sp.Token | None) -> tuple[int, bytes, str]:
                status, r = self.server.api.get(url.query, self.headers.get("Accept"), token)
                return status, r.body, r.content_type

            self._signed(url.path, url.query, timeseries, _timeseries_error, head)

    def _signed(
        self,
        raw_path: str,
        raw_query: str,
        serve: Callable[[sp.Token | None], tuple[int, bytes, str]],
        error: Callable[[int, str], tuple[bytes, str]],
        head: bool = False,
        body: bytes = b"",
        internal: str = "internal error (logged by the server)",
    ) -> None:
        """Authenticate the request, then answer it with `serve(token)` -> (status, body, content
        type); refusals (401/403), unreadable tokens (503) and our own failures (500, logged, no
        details) are rendered by `error(status, message)` -> (body, content type)."""
        try:
            token = self.server.api.access.authenticate(
                self.command, raw_path, raw_query, list(self.headers.items()), body
            )
            status, out, content_type = serve(token)
        except sp.AccessDenied as exc:
            status, (out, content_type) = exc.status, error(exc.status, exc.reason)
        except AccessUnavailable as exc:
            status, (out, content_type) = 503, error(503, str(exc))
        except Exception:  # a bug, never a bad parameter: logged, and answered without details
            log.exception("request %s failed", self.path)
            status, (out, content_type) = 500, error(500, internal)
        extra = (("WWW-Authenticate", "SNWS2"),) if status == 401 else ()
        self._send(status, out, content_type, head, extra)

    def _solarquery(self, raw_path: str, raw_query: str, head: bool) -> None:
        from pipeline.api import solarquery

        def answer(token: sp.Token | None) -> tuple[int, bytes, str]:
            return (*solarquery.handle(self.server.api, raw_path, raw_query, token), JSON_UTF8)

        self._signed(raw_path, raw_query, answer, _solarnetwork_error, head)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._route(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(head=True)

    def do_OPTIONS(self) -> None:  # noqa: N802 - CORS preflight
        self._send(
            204,
            b"",
            "text/plain; charset=utf-8",
            extra=(
                ("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS"),
                ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
                ("Access-Control-Max-Age", "86400"),
                ("Allow", "GET, HEAD, OPTIONS"),
            ),
        )

    def _not_allowed(self) -> None:
        r = ts.render_error(405, f"method {self.command} is not allowed; use GET", None)
        self._send(405, r.body, r.content_type, extra=(("Allow", "GET, HEAD, OPTIONS"), ("Connection", "close")))
        self.close_connection = True

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        if url.path.rstrip("/") != INGEST_PATH:
            self._not_allowed()
            return
        with self.server.request_scope():
            body = self._body()
            if body is None:
                return

            def ingest(token: sp.Token | None) -> tuple[int, bytes, str]:
                return (*self.server.ingest.post(token, body, url.path), JSON_UTF8)

            # a failure of ours acknowledged nothing: the gateway must send again
            self._signed(
                url.path,
                url.query,
                ingest,
                _solarnetwork_error,
                body=body,
                internal="internal error (logged by the server); not taken",
            )

    def _body(self) -> bytes | None:
        """The request body by Content-Length (bounded); None when refused (answered here)."""
        raw = self.headers.get("Content-Length")
        if raw is None or not raw.strip().isdigit():
            self.close_connection = True
            self._send(
                411, sq_error("Content-Length is required (a number)", 411), JSON_UTF8, extra=(("Connection", "close"),)
            )
            return None
        size = int(raw)
        if size > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(
                413,
                sq_error(f"the body is over {MAX_BODY_BYTES} bytes", 413),
                JSON_UTF8,
                extra=(("Connection", "close"),),
            )
            return None
        return self.rfile.read(size)

    do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (bad request line, URI too long) get JSON and CORS too."""
        self.close_connection = True
        r = ts.render_error(code, message or self.responses.get(code, ("error",))[0], None)
        try:
            self.send_response(code, message)
            for name, value in (
                *CORS,
                ("Content-Type", r.content_type),
                ("Content-Length", str(len(r.body))),
                ("Connection", "close"),
            ):
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(r.body)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)


def load_openapi(path: Path = OPENAPI_FILE) -> bytes:
    """The OpenAPI document, checked to be JSON once at start."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return json.dumps(doc, indent=1).encode()


def serve(settings: Settings, on_ready: Callable[[tuple[str, int]], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; in-flight requests are finished first."""
    store = Store(settings.clickhouse_url)
    zones = Zones(settings.postgres_dsn)
    tokens = TokenStore(settings.postgres_dsn)
    access = Access(tokens, settings.api_auth)
    ingest = HttpIngest(settings)
    server = _Server((settings.api_host, settings.api_port), Api(store, zones, load_openapi(), access), ingest)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="api-http", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    log.info("time-series API on http://%s:%s%s", host, port, BASE_PATH)
    if on_ready is not None:
        on_ready((str(host), int(port)))
    try:
        while not stop.wait(0.5):
            pass
    finally:
        log.info("time-series API stopping")
        server.shutdown()
        if not server.wait_idle(30):
            log.warning("stopping with requests still in flight")
        server.server_close()
        store.close()
        zones.close()
        tokens.close()
        ingest.close()
        log.info("time-series API stopped")
