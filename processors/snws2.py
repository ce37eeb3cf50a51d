"""SolarNetwork's SNWS2 request signing (HMAC-SHA256), verified the way SolarNetwork verifies it.

A client signs each request with a token id and its secret and sends

    Authorization: SNWS2 Credential=<token id>,SignedHeaders=<a;b;...>,Signature=<64 hex>
    X-SN-Date: Mon, 30 Nov 2026 20:00:00 GMT        (or the standard Date header)

The server rebuilds the same strings from the request it received:

    canonical request = METHOD \\n path \\n canonical query \\n
                        (name ":" value \\n) for each signed header, sorted, lower-case names \\n
                        signed header names joined by ";" \\n
                        hex(sha256(body))                  (of "" when there is no body)
    string to sign    = "SNWS2-HMAC-SHA256" \\n yyyyMMdd'T'HHmmss'Z' (request date) \\n
                        hex(sha256(canonical request))
    signing key       = HMAC(HMAC("SNWS2" + secret, yyyyMMdd), "snws2_request")
    signature         = hex(HMAC(signing key, string to sign))

A signing key stays valid for 7 days (clients cache it), so the key's day may be the request's day
or any of the 6 days before. The request date must be within 15 minutes of the server clock.

Sources: SolarNetwork wiki "SolarNet API authentication scheme V2"; SolarNetwork's verifier
(solarnetwork-common: AuthenticationDataV2, AuthenticationData, Snws2AuthorizationBuilder,
AuthorizationUtils; solarnetwork-central: SecurityTokenAuthenticationFilter) and its JavaScript
client (sn-api-core-js: AuthorizationV2Builder). This module is written from those descriptions; it
holds no code of theirs. Where the Java server and the JavaScript client differ, the server wins
(see docs/security.md).

Pure: no I/O, no clock (the caller passes `now`). Every failure is an `Snws2Error` whose `reason` is
safe to send back in a 401 body: it never contains the secret or the expected signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import unquote_plus

SCHEME = "SNWS2"
ALGORITHM = "SNWS2-HMAC-SHA256"
SIGNING_KEY_MESSAGE = "snws2_request"
# SolarNetwork's default maximum |server clock - request date| (AuthenticationDataTokenAuthenticationFilter);
# a request is accepted only when the skew is strictly less than this.
MAX_DATE_SKEW = timedelta(minutes=15)
# Signing keys are derived per UTC day and clients may keep one for 7 days (the request's day and 6 before).
SIGNING_KEY_VALID_DAYS = 7
EMPTY_SHA256_HEX = hashlib.sha256(b"").hexdigest()
SIGNATURE_HEX_LENGTH = 64
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
SN_HEADER_PREFIX = "x-sn-"
# Headers that, when present on the request, must be covered by the signature (besides every X-SN-*).
_MUST_SIGN = frozenset({"content-type", "content-md5", "digest"})
_HEX = frozenset("0123456789abcdefABCDEF")
# RFC 3986 unreserved characters stay as they are in the canonical query; everything else is %XX.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_DIGEST_ALGORITHMS: dict[str, tuple[str, str]] = {
    # Digest header algorithm name (lower-case) -> (hashlib name, name used in error messages)
    "md5": ("md5", "MD5"),
    "sha": ("sha1", "SHA"),
    "sha-1": ("sha1", "SHA"),
    "sha-256": ("sha256", "SHA-256"),
    "sha-512": ("sha512", "SHA-512"),
}


class Snws2Error(ValueError):
    """The request does not authenticate; `reason` is the message for the 401 answer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- the Authorization header ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snws2Authorization:
    """A parsed `SNWS2 Credential=...,SignedHeaders=...,Signature=...` header value."""

    token_id: str
    signed_headers: tuple[str, ...]  # lower-case, sorted, without duplicates
    signature: str  # 64 hex characters, as sent

    def header_value(self) -> str:
        return (
            f"{SCHEME} Credential={self.token_id},SignedHeaders={';'.join(self.signed_headers)},"
            f"Signature={self.signature}"
        )


def is_snws2(value: str) -> bool:
    """Does this Authorization header value use the SNWS2 scheme?"""
    return value.startswith(SCHEME + " ")


def parse_authorization(value: str) -> Snws2Authorization:
    """Parse an Authorization header value; raises Snws2Error naming what is wrong.

    Components are comma separated `Key=value` pairs in any order (optional whitespace around the
    commas is allowed); unknown keys are ignored, as SolarNetwork does. A key given twice is refused
    (SolarNetwork keeps the last one; refusing is never less safe).
    """
    if not is_snws2(value):
        raise Snws2Error(f"Authorization scheme must be {SCHEME}")
    components: dict[str, str] = {}
    for part in value[len(SCHEME) + 1 :].split(","):
        part = part.strip(" \t")
        key, sep, val = part.partition("=")
        if not sep or not key:
            if part:
                raise Snws2Error(f"Invalid Authorization component {part[:40]!r}: expected Key=value")
            continue
        if key in components:
            raise Snws2Error(f"Duplicate Authorization component {key}")
        components[key] = val
    token_id = components.get("Credential")
    if not token_id:
        raise Snws2Error("Invalid Credential value")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in token_id):
        raise Snws2Error("Invalid Credential value")
    signature = components.get("Signature")
    if signature is None or len(signature) != SIGNATURE_HEX_LENGTH or not set(signature) <= _HEX:
        raise Snws2Error("Invalid Signature value")
    names = sorted({name.strip().lower() for name in components.get("SignedHeaders", "").split(";") if name.strip()})
    if len(names) < 2:
        # a minimum of Host and one of Date / X-SN-Date
        raise Snws2Error("Invalid SignedHeaders value")
    if "host" not in names:
        raise Snws2Error("The 'Host' HTTP header must be included in SignedHeaders")
    if "date" not in names and "x-sn-date" not in names:
        raise Snws2Error("One of the 'Date' or 'X-SN-Date' HTTP headers must be included in SignedHeaders")
    return Snws2Authorization(token_id, tuple(names), signature)


# --- canonical request pieces ---------------------------------------------------------------


def uri_encode(text: str) -> str:
    """Percent-encode every byte of the UTF-8 form except RFC 3986 unreserved characters (upper-case hex)."""
    out: list[str] = []
    for ch in text:
        if ch in _UNRESERVED:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def _utf16_key(text: str) -> bytes:
    # Java's String.compareTo and JavaScript's default sort compare UTF-16 code units, which differs
    # from Python's code-point order only above U+FFFF; sort the way both ends of the wire do.
    return text.encode("utf-16-be", "surrogatepass")


def parse_query(raw: str) -> list[tuple[str, str]]:
    """Decode a raw query string (or a form body) into (name, value) pairs, in order.

    As a servlet container does: pairs split on "&", name and value on the first "=", "+" and
    %XX decoded as UTF-8; a name without "=" has the value "". Empty pairs are skipped.
    """
    pairs: list[tuple[str, str]] = []
    for part in raw.split("&"):
        if not part:
            continue
        name, _, val = part.partition("=")
        pairs.append((unquote_plus(name, errors="strict"), unquote_plus(val, errors="strict")))
    return pairs


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """Names sorted; each name's values in request order; `enc(name)=enc(value)` joined by "&"."""
    grouped: dict[str, list[str]] = {}
    for name, val in params:
        grouped.setdefault(name, []).append(val)
    return "&".join(
        f"{uri_encode(name)}={uri_encode(val)}" for name in sorted(grouped, key=_utf16_key) for val in grouped[name]
    )


def _clean_header_value(value: str) -> str:
    # SolarNetwork trims (Java trim: every char <= U+0020) and collapses runs of spaces.
    trimmed = value.strip("".join(chr(c) for c in range(0x21)))
    return re.sub(" {2,}", " ", trimmed)


def canonical_headers(signed_headers: Sequence[str], headers: Mapping[str, str]) -> str:
    """`name:value\\n` for each signed header (names lower-case, sorted); a missing header signs as empty."""
    return "".join(f"{name}:{_clean_header_value(headers.get(name, ''))}\n" for name in signed_headers)


def canonical_request(
    method: str,
    path: str,
    params: Iterable[tuple[str, str]],
    signed_headers: Sequence[str],
    headers: Mapping[str, str],
    content_sha256_hex: str,
) -> str:
    """The canonical request message; `headers` keys must be lower-case."""
    return (
        f"{method}\n{path}\n{canonical_query(params)}\n"
        f"{canonical_headers(signed_headers, headers)}{';'.join(signed_headers)}\n{content_sha256_hex}"
    )


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def string_to_sign(request_date: datetime, canonical: str) -> str:
    return f"{ALGORITHM}\n{_timestamp(request_date)}\n{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"


# HMAC-SHA256 hashes a key longer than its block (64 bytes) and uses the hash: a server may keep
# SHA-256("SNWS2" + secret) instead of a long secret and verify exactly as with the secret.
HMAC_BLOCK_BYTES = 64


def stored_key(secret: str) -> bytes:
    """What a server keeps of a secret: SHA-256("SNWS2" + secret), which verifies exactly as the
    secret does (HMAC uses that hash in place of a key longer than its block). Only for secrets
    long enough that "SNWS2" + secret is over 64 bytes; a shorter one raises ValueError (HMAC
    would use it as it is, so no digest could stand in for it)."""
    material = (SCHEME + secret).encode("utf-8")
    if len(material) <= HMAC_BLOCK_BYTES:
        raise ValueError(f"a secret must be over {HMAC_BLOCK_BYTES - len(SCHEME)} bytes to be kept as a digest")
    return hashlib.sha256(material).digest()


def signing_key(secret: str | bytes, day: date) -> bytes:
    """HMAC(HMAC("SNWS2" + secret, yyyyMMdd), "snws2_request") for a UTC day. `secret` is the
    secret itself or (bytes) its `stored_key`."""
    material = secret if isinstance(secret, bytes) else (SCHEME + secret).encode("utf-8")
    day_key = hmac.new(material, day.strftime("%Y%m%d").encode("ascii"), hashlib.sha256)
    return hmac.new(day_key.digest(), SIGNING_KEY_MESSAGE.encode("ascii"), hashlib.sha256).digest()


def signature(key: bytes, to_sign: str) -> str:
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


# --- HTTP dates -----------------------------------------------------------------------------

_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, 1)}
_DAYS = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_DAYS_LONG = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"(\d{2}):(\d{2}):(\d{2})"
# The three HTTP-date forms a servlet container accepts (RFC 9110 section 5.6.7).
_IMF_FIXDATE = re.compile(rf"{_DAYS}, (\d{{2}}) {_MONTH} (\d{{4}}) {_TIME} GMT")
_RFC850 = re.compile(rf"{_DAYS_LONG}, (\d{{2}})-{_MONTH}-(\d{{2}}) {_TIME} GMT")
_ASCTIME = re.compile(rf"{_DAYS} {_MONTH} ([ \d]\d) {_TIME} (\d{{4}})")


def format_http_date(moment: datetime) -> str:
    """IMF-fixdate, e.g. "Mon, 30 Nov 2026 20:00:00 GMT" (what the JavaScript client sends)."""
    utc = moment.astimezone(UTC)
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[utc.weekday()]
    month = _MONTH_NAMES[utc.month - 1]
    return f"{day}, {utc.day:02d} {month} {utc.year:04d} {utc.hour:02d}:{utc.minute:02d}:{utc.second:02d} GMT"


def parse_http_date(text: str) -> datetime:
    """Parse an HTTP-date into an aware UTC datetime; raises ValueError."""
    text = text.strip()
    if m := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hh, mm, ss = m.groups()
        y = int(year)
    elif m := _RFC850.fullmatch(text):
        day, month, yy, hh, mm, ss = m.groups()
        # RFC 9110: a two-digit year more than 50 years in the future is in the past century
        y = 2000 + int(yy) if int(yy) < 70 else 1900 + int(yy)
    elif m := _ASCTIME.fullmatch(text):
        month, day, hh, mm, ss, year = m.groups()
        y = int(year)
    else:
        raise ValueError(f"not an HTTP date: {text[:40]!r}")
    return datetime(y, _MONTHS[month], int(day), int(hh), int(mm), int(ss), tzinfo=UTC)


# --- a request to verify --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snws2Request:
    """What the server received. `path` is the raw request path (no query, percent-encoding kept);
    `query` the raw query string without "?"; `headers` every header as received (any case; the
    first value of a repeated header counts, as in a servlet's getHeader)."""

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    body: bytes = b""

    def header_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in self.headers:
            out.setdefault(name.lower(), value)
        return out


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A request whose Authorization header parsed and whose body digests matched: ready to check."""

    authorization: Snws2Authorization
    request_date: datetime
    canonical_request: str
    string_to_sign: str

    @property
    def token_id(self) -> str:
        return self.authorization.token_id


def request_date(headers: Mapping[str, str]) -> datetime:
    """The request date: X-SN-Date when present, else Date (keys lower-case); raises Snws2Error."""
    for name, label in (("x-sn-date", "X-SN-Date"), ("date", "Date")):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            return parse_http_date(raw)
        except ValueError:
            raise Snws2Error(f"Invalid HTTP {label} header value") from None
    raise Snws2Error("Missing or invalid HTTP Date header value")


def _is_form(content_type: str | None) -> bool:
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == FORM_CONTENT_TYPE


def _decode_digest(provided: str, hex_length: int) -> bytes | None:
    try:
        if len(provided) == hex_length:
            return bytes.fromhex(provided)
        return base64.b64decode(provided, validate=True)
    except (ValueError, binascii.Error):
        return None


def validate_content_digest(headers: Mapping[str, str], body: bytes) -> None:
    """Check a `Digest` header (first supported algorithm in it) or else `Content-MD5` against the body.

    Values are hex when they have the algorithm's hex length, Base64 otherwise. Unsupported
    algorithms in `Digest` are skipped, as SolarNetwork does; the body itself is always covered by
    the signature anyway (its SHA-256 is the last line of the canonical request).
    """
    candidates: list[tuple[str, str]] = []
    digest = headers.get("digest")
    if digest is not None:
        for item in digest.split(","):
            alg, sep, val = item.strip().partition("=")
            if sep and alg.lower() in _DIGEST_ALGORITHMS:
                candidates.append((alg.lower(), val.strip()))
                break
    elif (md5 := headers.get("content-md5")) is not None:
        candidates.append(("md5", md5.strip()))
    for alg, provided in candidates:
        hash_name, label = _DIGEST_ALGORITHMS[alg]
        computed = hashlib.new(hash_name, body).digest()
        decoded = _decode_digest(provided, 2 * len(computed))
        if decoded is None:
            raise Snws2Error(f"Invalid Digest {label} encoding")
        if not hmac.compare_digest(decoded, computed):
            raise Snws2Error(f"Content {label} digest value mismatch")


def prepare(request: Snws2Request, authorization: str | None = None) -> PreparedRequest:
    """Parse and check everything that does not need the secret; raises Snws2Error.

    `authorization` defaults to the request's own Authorization header. After this, look up the
    token's secret by `token_id` and call `check_signature`, then `check_date`.
    """
    headers = request.header_map()
    if authorization is None:
        authorization = headers.get("authorization")
        if authorization is None:
            raise Snws2Error("Missing Authorization header")
    auth = parse_authorization(authorization)
    for name in headers:
        if (name.startswith(SN_HEADER_PREFIX) or name in _MUST_SIGN) and name not in auth.signed_headers:
            raise Snws2Error(f"The '{name}' HTTP header must be included in SignedHeaders")
    moment = request_date(headers)
    validate_content_digest(headers, request.body)
    try:
        params = parse_query(request.query)
        form = _is_form(headers.get("content-type"))
        if form and request.body:
            # A form body's fields are request parameters (servlet rules) and are signed as such; the
            # body hash is then that of "" (what SolarNetwork computes once the container has read it).
            params += parse_query(request.body.decode("utf-8"))
    except UnicodeDecodeError:
        raise Snws2Error("Request parameters are not valid UTF-8") from None
    body_hex = EMPTY_SHA256_HEX if form or not request.body else hashlib.sha256(request.body).hexdigest()
    canonical = canonical_request(
        request.method, request.path, params, auth.signed_headers, _signed_values(headers), body_hex
    )
    return PreparedRequest(auth, moment, canonical, string_to_sign(moment, canonical))


def _signed_values(headers: Mapping[str, str]) -> dict[str, str]:
    # The signed host is the Host header; behind a proxy SolarNetwork appends the forwarded port
    # (X-Forwarded-Port, or 443 for X-Forwarded-Proto https) when Host has none and it is not 80.
    out = dict(headers)
    host = _clean_header_value(out.get("host", ""))
    if host and ":" not in host:
        port = _clean_header_value(out.get("x-forwarded-port", ""))
        if not port and _clean_header_value(out.get("x-forwarded-proto", "")).lower() == "https":
            port = "443"
        if port and port != "80":
            out["host"] = f"{host}:{port}"
    return out


def check_signature(prepared: PreparedRequest, secret: str | bytes) -> bool:
    """Does the signature match with a key of the request's UTC day or one of the 6 days before?

    Every candidate is computed and compared in constant time (hmac.compare_digest), so the time
    taken tells nothing about how close a forged signature was.
    """
    given = prepared.authorization.signature.encode("ascii")
    day = prepared.request_date.astimezone(UTC).date()
    ok = False
    for back in range(SIGNING_KEY_VALID_DAYS):
        expected = signature(signing_key(secret, day - timedelta(days=back)), prepared.string_to_sign)
        ok |= hmac.compare_digest(expected.encode("ascii"), given)
    return ok


def date_skew(prepared: PreparedRequest, now: datetime) -> timedelta:
    return abs(now.astimezone(UTC) - prepared.request_date)


def check_date(prepared: PreparedRequest, now: datetime, max_skew: timedelta = MAX_DATE_SKEW) -> bool:
    return date_skew(prepared, now) < max_skew


def verify(
    request: Snws2Request,
    secret_for: Mapping[str, str] | Mapping[str, bytes],
    now: datetime,
    max_skew: timedelta = MAX_DATE_SKEW,
) -> PreparedRequest:
    """Authenticate a request end to end; returns it prepared (its `token_id` is the caller) or raises.

    `secret_for` maps token ids to secrets or their `stored_key`s (anything with .get). Reasons, in
    SolarNetwork's order: malformed header or digest, unknown token ("Bad credentials"), wrong signature ("Bad
    credentials"), then "date skew too large". Expiry and policy checks are the caller's
    (processors.security_policy).
    """
    prepared = prepare(request)
    secret = secret_for.get(prepared.token_id)
    if secret is None:
        # Still spend the HMAC work so an unknown token id takes as long as a known one.
        check_signature(prepared, bytes(32))
        raise Snws2Error("Bad credentials")
    if not check_signature(prepared, secret):
        raise Snws2Error("Bad credentials")
    if not check_date(prepared, now, max_skew):
        raise Snws2Error("date skew too large")
    return prepared


# --- signing (for Python clients and tests) ------------------------------------------------


def sign(
    *,
    token_id: str,
    secret: str,
    method: str,
    host: str,
    path: str,
    now: datetime,
    params: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
    use_sn_date: bool = True,
    extra_headers: Mapping[str, str] | None = None,
    signing_day: date | None = None,
) -> dict[str, str]:
    """The headers a client sends for this request (Host, the date header, Authorization, ...).

    A non-form body is covered by a `Digest: sha-256=<base64>` header, as the JavaScript client does.
    `signing_day` uses a cached key from an earlier day (at most 6 days before `now`).
    """
    date_name = "X-SN-Date" if use_sn_date else "Date"
    headers: dict[str, str] = {"Host": host, date_name: format_http_date(now)}
    if content_type is not None:
        headers["Content-Type"] = content_type
    form = _is_form(content_type)
    if body and not form:
        headers["Digest"] = "sha-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    headers.update(extra_headers or {})
    lower = {k.lower(): v for k, v in headers.items()}
    names = tuple(sorted(lower))
    all_params = list(params) + (parse_query(body.decode("utf-8")) if form and body else [])
    body_hex = EMPTY_SHA256_HEX if form or not body else hashlib.sha256(body).hexdigest()
    moment = now.astimezone(UTC).replace(microsecond=0)
    canonical = canonical_request(method, path, all_params, names, lower, body_hex)
    key = signing_key(secret, signing_day or moment.date())
    auth = Snws2Authorization(token_id, names, signature(key, string_to_sign(moment, canonical)))
    headers["Authorization"] = auth.header_value()
    return headers
