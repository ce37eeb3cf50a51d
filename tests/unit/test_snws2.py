"""SNWS2 verification (processors/snws2.py) against SolarNetwork's own client and server.

* Requests signed by solarnetwork-api-core's AuthorizationV2Builder under Node verify, and our
  canonical request is byte-for-byte the client's.
* Signatures SolarNetwork's Java verifier computes in its own tests (AuthenticationDataV2Tests) are
  reproduced, proxy port rules included.
* Tampering with the path, query, body, date or a signed header after signing is refused, and so is
  a date skew of 15 minutes or more.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import snws2
from processors.snws2 import Snws2Error, Snws2Request
from tests.snjs import core_version, sign_requests

TOKEN = "a1b2C3d4E5f6G7h8I9j0"
SECRET = "s3cr3t!~ with spaces & ünicode"
NOW = datetime(2026, 11, 30, 20, 0, 0, tzinfo=UTC)
HOST = "127.0.0.1:8080"
LIST_PATH = "/solarquery/api/v1/sec/datum/list"


def encode_query(query: dict[str, Any]) -> str:
    """The query string an HTTP client sends for these parameters (encodeURIComponent-style)."""
    parts: list[str] = []
    for name, values in query.items():
        for value in values if isinstance(values, list) else [values]:
            parts.append(f"{quote(name, safe='')}={quote(str(value), safe='')}")
    return "&".join(parts)


def as_request(spec: dict[str, Any], signed: dict[str, Any]) -> Snws2Request:
    body = spec.get("body")
    form = spec.get("contentType", "").startswith(snws2.FORM_CONTENT_TYPE)
    return Snws2Request(
        method=spec["method"],
        path=spec["path"],
        query="" if form else encode_query(spec.get("query", {})),
        headers=list(signed["headers"].items()),
        body=(encode_query(spec["query"]) if form else body or "").encode("utf-8"),
    )


def base_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "token": TOKEN,
        "secret": SECRET,
        "method": "GET",
        "host": HOST,
        "path": LIST_PATH,
        "query": {},
        "date": NOW.isoformat(),
    }
    spec.update(overrides)
    return spec


# A spread of what SolarNetwork's clients send: X-SN-Date or Date, multi-valued and escaped query
# parameters, a JSON body (Digest header), a form body, a signing key saved days before.
CLIENT_REQUESTS: list[dict[str, Any]] = [
    base_spec(path="/solarquery/api/v1/sec/range/interval", query={}),
    base_spec(query={"nodeIds": "1", "sourceIds": ["/S1/**", "/S2/M?"], "startDate": "2026-11-01T00:00"}),
    base_spec(
        query={
            "sourceIds": ["a b", "x/y*z", "it's (ok)!", "ü€", "~._-"],
            "ｚ": "fullwidth",
            "\U0001f600": "emoji sorts before U+FF5A in UTF-16, after it by code point",
            "aggregation": "Hour",
        }
    ),
    base_spec(useSnDate=False, query={"max": "10", "offset": "0"}),
    base_spec(
        method="POST",
        path="/solarin/api/v1/sec/datum",
        contentType="application/json;charset=UTF-8",
        body='[{"nodeId":1,"sourceId":"/S1/M1","samples":{"i":{"watts":1.5}}}]',
    ),
    base_spec(
        method="POST",
        path="/solarquery/api/v1/sec/datum/list",
        contentType="application/x-www-form-urlencoded; charset=UTF-8",
        query={"nodeIds": ["1", "2"], "sourceIds": "/S1/B1"},
        computeDigest=False,
    ),
    base_spec(signingDate=(NOW - timedelta(days=6)).isoformat(), query={"nodeId": "7"}),
    base_spec(host="pipeline.example.org", date=(NOW + timedelta(seconds=59)).isoformat()),
]


@pytest.fixture(scope="module")
def client_signed() -> list[dict[str, Any]]:
    assert core_version().startswith("3."), core_version()
    return sign_requests(CLIENT_REQUESTS)


def verify_at(request: Snws2Request, now: datetime = NOW, secret: str = SECRET) -> snws2.PreparedRequest:
    return snws2.verify(request, {TOKEN: secret}, now)


@pytest.mark.parametrize("index", range(len(CLIENT_REQUESTS)))
def test_real_client_signatures_verify(client_signed: list[dict[str, Any]], index: int) -> None:
    spec, signed = CLIENT_REQUESTS[index], client_signed[index]
    request = as_request(spec, signed)
    prepared = verify_at(request)
    assert prepared.token_id == TOKEN
    assert prepared.canonical_request == signed["canonicalRequest"]


def _tampered(request: Snws2Request, **changes: Any) -> Snws2Request:
    fields = {f: getattr(request, f) for f in ("method", "path", "query", "headers", "body")}
    fields.update(changes)
    return Snws2Request(**fields)


def _replace_header(request: Snws2Request, name: str, value: str) -> Snws2Request:
    headers = [(n, value if n.lower() == name.lower() else v) for n, v in request.headers]
    assert headers != list(request.headers), f"{name} not in request"
    return _tampered(request, headers=headers)


@pytest.mark.parametrize("index", range(len(CLIENT_REQUESTS)))
def test_tampered_requests_are_refused(client_signed: list[dict[str, Any]], index: int) -> None:
    spec, signed = CLIENT_REQUESTS[index], client_signed[index]
    request = as_request(spec, signed)
    date_header = "X-SN-Date" if spec.get("useSnDate", True) else "Date"
    moved = snws2.format_http_date(snws2.parse_http_date(signed["headers"][date_header]) + timedelta(seconds=1))
    attempts = {
        "path": _tampered(request, path=request.path + "x"),
        "path case": _tampered(request, path=request.path.upper()),
        "method": _tampered(request, method="DELETE"),
        "extra query parameter": _tampered(request, query=(request.query + "&" if request.query else "") + "nodeId=2"),
        "date": _replace_header(request, date_header, moved),
        "host": _replace_header(request, "Host", "evil.example:8080"),
        "body": _tampered(request, body=request.body + b" "),
    }
    if request.query:
        attempts["query value"] = _tampered(request, query=request.query.replace("=", "=9", 1))
    if "Content-Type" in signed["headers"]:
        attempts["content type"] = _replace_header(request, "Content-Type", "text/plain")
    for what, bad in attempts.items():
        with pytest.raises(Snws2Error) as err:
            verify_at(bad)
        assert err.value.reason in {"Bad credentials", "Content SHA-256 digest value mismatch"}, what
    with pytest.raises(Snws2Error, match="Bad credentials"):
        verify_at(request, secret=SECRET + "x")
    with pytest.raises(Snws2Error, match="Bad credentials"):
        snws2.verify(request, {"another-token": SECRET}, NOW)
    # an unsigned X-SN-* header may not ride along
    with pytest.raises(Snws2Error, match="'x-sn-extra' HTTP header must be included"):
        verify_at(_tampered(request, headers=[*request.headers, ("X-SN-Extra", "1")]))


def test_date_skew_limit_is_15_minutes(client_signed: list[dict[str, Any]]) -> None:
    request = as_request(CLIENT_REQUESTS[1], client_signed[1])
    verify_at(request, NOW + timedelta(minutes=14, seconds=59))
    verify_at(request, NOW - timedelta(minutes=14, seconds=59))
    for now in (NOW + timedelta(minutes=15), NOW - timedelta(minutes=15), NOW + timedelta(days=1)):
        with pytest.raises(Snws2Error) as err:
            verify_at(request, now)
        assert err.value.reason == "date skew too large"


def test_signing_key_older_than_seven_days_is_refused() -> None:
    for days_back, ok in ((0, True), (6, True), (7, False), (-1, False)):
        headers = snws2.sign(
            token_id=TOKEN,
            secret=SECRET,
            method="GET",
            host=HOST,
            path="/x",
            now=NOW,
            signing_day=NOW.date() - timedelta(days=days_back),
        )
        request = Snws2Request("GET", "/x", "", list(headers.items()))
        if ok:
            verify_at(request)
        else:
            with pytest.raises(Snws2Error, match="Bad credentials"):
                verify_at(request)


def _java_vector(host_headers: list[tuple[str, str]]) -> str:
    # SolarNetwork's AuthenticationDataV2Tests: token 12345678901234567890, secret lsdjfpse9jfoeijfe09j,
    # GET /mock/path/here, X-SN-Date Thu, 10 Aug 2017 04:41:22 GMT, SignedHeaders host;x-sn-date.
    when = datetime(2017, 8, 10, 4, 41, 22, tzinfo=UTC)
    auth = "SNWS2 Credential=12345678901234567890,SignedHeaders=host;x-sn-date,Signature=" + "0" * 64
    headers = [*host_headers, ("X-SN-Date", snws2.format_http_date(when)), ("Authorization", auth)]
    request = Snws2Request("GET", "/mock/path/here", "", headers)
    prepared = snws2.prepare(request)
    return snws2.signature(snws2.signing_key("lsdjfpse9jfoeijfe09j", when.date()), prepared.string_to_sign)


@pytest.mark.parametrize(
    ("host_headers", "expected"),
    [
        ([("Host", "localhost:8080")], "0574baabdb8c97c0961d04f1a3e9a328dde3219b3898982af18b0c9675463fb1"),
        (
            [("Host", "localhost"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Port", "443")],
            "85028cb8b15bc3a7557aa9607c419697e0a942a95511728318e290c1d27ffd41",
        ),
        (
            [("Host", "localhost"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Port", "8443")],
            "409bc3bd69fd95d6b67fe7cde94ae412221d61a92ee52dc3bfc82ae535f9f8a9",
        ),
        (
            [("Host", "localhost"), ("X-Forwarded-Proto", "http"), ("X-Forwarded-Port", "80")],
            "9584e63cd1c3e8e6fd007b982f99ffb63a6feb8a9db06bd3f4879bf7867a290f",
        ),
        (
            [("Host", "localhost"), ("X-Forwarded-Proto", "http"), ("X-Forwarded-Port", "8080")],
            "0574baabdb8c97c0961d04f1a3e9a328dde3219b3898982af18b0c9675463fb1",
        ),
    ],
)
def test_solarnetwork_server_vectors(host_headers: list[tuple[str, str]], expected: str) -> None:
    assert _java_vector(host_headers) == expected


def test_random_queries_match_the_client() -> None:
    """40 random parameter sets (any Unicode, repeated names) signed by the client verify here."""
    rng = random.Random(14)
    alphabet = "aZ09-_.~ !*'()/&=+%?#;:,@$\u00e9\u20ac\uff5a\U0001f600\U00010348\t"
    specs = []
    for i in range(40):
        query: dict[str, Any] = {}
        for _ in range(rng.randint(0, 5)):
            name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
            values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(rng.randint(1, 3))]
            query[name] = values if len(values) > 1 else values[0]
        specs.append(base_spec(query=query, date=(NOW + timedelta(seconds=i)).isoformat()))
    for spec, signed in zip(specs, sign_requests(specs), strict=True):
        prepared = verify_at(as_request(spec, signed))
        assert prepared.canonical_request == signed["canonicalRequest"]


def test_python_signer_round_trip_and_form_body() -> None:
    body = b"nodeIds=1&nodeIds=2&sourceIds=%2FS1%2F*"
    headers = snws2.sign(
        token_id=TOKEN,
        secret=SECRET,
        method="POST",
        host=HOST,
        path=LIST_PATH,
        now=NOW,
        params=[("max", "5")],
        body=body,
        content_type="application/x-www-form-urlencoded",
    )
    request = Snws2Request("POST", LIST_PATH, "max=5", list(headers.items()), body)
    prepared = verify_at(request)
    assert "max=5&nodeIds=1&nodeIds=2&sourceIds=%2FS1%2F%2A\n" in prepared.canonical_request
    assert prepared.canonical_request.endswith(snws2.EMPTY_SHA256_HEX)
    with pytest.raises(Snws2Error, match="Bad credentials"):
        verify_at(_tampered(request, body=body.replace(b"nodeIds=2", b"nodeIds=3")))


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([("Host", HOST)], "Missing or invalid HTTP Date header value"),
        ([("Host", HOST), ("X-SN-Date", "yesterday")], "Invalid HTTP X-SN-Date header value"),
        ([("Host", HOST), ("Date", "Mon, 30 Nov 2026 20:00:00 CET")], "Invalid HTTP Date header value"),
        (
            [("Host", HOST), ("X-SN-Date", "Mon, 30 Nov 2026 20:00:00 GMT"), ("Content-Type", "text/plain")],
            "The 'content-type' HTTP header must be included in SignedHeaders",
        ),
        (
            [("Host", HOST), ("X-SN-Date", "Mon, 30 Nov 2026 20:00:00 GMT"), ("Digest", "sha-256=AAAA")],
            "The 'digest' HTTP header must be included in SignedHeaders",
        ),
    ],
)
def test_header_problems_name_the_rule(headers: list[tuple[str, str]], reason: str) -> None:
    auth = f"SNWS2 Credential={TOKEN},SignedHeaders=host;x-sn-date;date,Signature=" + "a" * 64
    with pytest.raises(Snws2Error) as err:
        snws2.prepare(Snws2Request("GET", "/", "", [*headers, ("Authorization", auth)]))
    assert err.value.reason == reason


def test_digest_header_must_match_the_body() -> None:
    headers = snws2.sign(
        token_id=TOKEN,
        secret=SECRET,
        method="POST",
        host=HOST,
        path="/in",
        now=NOW,
        body=b"{}",
        content_type="application/json",
    )
    verify_at(Snws2Request("POST", "/in", "", list(headers.items()), b"{}"))
    with pytest.raises(Snws2Error, match="Content SHA-256 digest value mismatch"):
        snws2.prepare(Snws2Request("POST", "/in", "", list(headers.items()), b"[]"))
    bad = {**headers, "Digest": "sha-256=!!"}
    with pytest.raises(Snws2Error, match="Invalid Digest SHA-256 encoding"):
        snws2.prepare(Snws2Request("POST", "/in", "", list(bad.items()), b"{}"))


def test_http_date_forms() -> None:
    expected = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)
    for text in ("Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"):
        assert snws2.parse_http_date(text) == expected
    assert snws2.format_http_date(expected) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert snws2.signing_key("x", date(2026, 1, 2)) != snws2.signing_key("x", date(2026, 1, 3))


# --- the Authorization header parser ---------------------------------------------------------

_token_ids = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), exclude_characters=",="),
    min_size=1,
    max_size=30,
)
_header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_signatures = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@given(
    token=_token_ids,
    extra=st.lists(_header_names, max_size=4),
    sig=_signatures,
    date_name=st.sampled_from(["date", "x-sn-date"]),
    order=st.permutations(["Credential", "SignedHeaders", "Signature"]),
    spaces=st.booleans(),
)
def test_parser_round_trips_any_component_order(
    token: str, extra: list[str], sig: str, date_name: str, order: list[str], spaces: bool
) -> None:
    names = ["Host", date_name.upper(), *extra]
    parts = {"Credential": token, "SignedHeaders": ";".join(names), "Signature": sig}
    value = "SNWS2 " + (", " if spaces else ",").join(f"{k}={parts[k]}" for k in order)
    auth = snws2.parse_authorization(value)
    assert auth.token_id == token
    assert auth.signature == sig
    assert auth.signed_headers == tuple(sorted({n.lower() for n in names}))
    assert snws2.parse_authorization(auth.header_value()) == auth


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_parser_refuses_garbage_only_with_snws2_error(value: str) -> None:
    for candidate in (value, "SNWS2 " + value):
        try:
            auth = snws2.parse_authorization(candidate)
        except Snws2Error as err:
            assert err.reason
        else:
            assert len(auth.signature) == 64
            assert "host" in auth.signed_headers


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("Bearer abc", "Authorization scheme must be SNWS2"),
        ("SNWS2 SignedHeaders=host;date,Signature=" + "a" * 64, "Invalid Credential value"),
        ("SNWS2 Credential=t,SignedHeaders=host;date,Signature=abc", "Invalid Signature value"),
        ("SNWS2 Credential=t,SignedHeaders=host;date,Signature=" + "g" * 64, "Invalid Signature value"),
        ("SNWS2 Credential=t,SignedHeaders=host,Signature=" + "a" * 64, "Invalid SignedHeaders value"),
        (
            "SNWS2 Credential=t,SignedHeaders=date;x-sn-date,Signature=" + "a" * 64,
            "The 'Host' HTTP header must be included in SignedHeaders",
        ),
        (
            "SNWS2 Credential=t,SignedHeaders=host;digest,Signature=" + "a" * 64,
            "One of the 'Date' or 'X-SN-Date' HTTP headers must be included in SignedHeaders",
        ),
        ("SNWS2 Credential=t,Credential=u,SignedHeaders=host;date,Signature=" + "a" * 64, "Duplicate"),
        ("SNWS2 Credential=t,junk,SignedHeaders=host;date,Signature=" + "a" * 64, "Invalid Authorization component"),
    ],
)
def test_parser_errors_are_clear(value: str, reason: str) -> None:
    with pytest.raises(Snws2Error) as err:
        snws2.parse_authorization(value)
    assert err.value.reason.startswith(reason)
