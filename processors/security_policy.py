"""SolarNetwork's security policy model for tokens, and the pure decisions made with it.

A token has a type and a policy. A policy only ever *restricts*; an empty set means "no restriction"
(SolarNetwork's rule), and every restriction that is set must pass:

    nodeIds         node IDs the token may touch
    sourceIds       source IDs, literal or Ant-style patterns (processors.antpath), e.g. "/S1/**"
    minAggregation  the finest aggregation the token may read (compared by level: Hour == HourOfDay)
    aggregations    the exact aggregations allowed, when there is no minimum
    apiPaths        Ant patterns of API paths (relative to /solarquery/api/v1/sec); "!" inverts one
    notAfter        the token is invalid after this instant (401 "Expired token")

Token types: `ReadNodeData` (SolarNetwork's data token: reads datums) and `Node` (this pipeline's
ingest token: posts datums of its policy's nodes, reads nothing).

Decisions (what an API answers):
    401  the credentials are no good: unknown, bad signature, date skew, expired (`notAfter` past)
    403  the credentials are good but the policy excludes what was asked: a node or source outside
         the policy, an aggregation below the minimum (unless the caller chooses SolarNetwork's
         silent raise to the minimum), an API path outside `apiPaths`, the wrong token type.
A request that names nothing (no nodes, no sources, `*`) is narrowed to the policy, never refused;
a request that names things keeps only what the policy allows and is refused only when nothing is
left. Nothing here ever widens a request.

Sources: SolarNetwork wiki "SolarNet API global objects" (Security policy, Wildcard patterns), the
SolarNode handbook "Security Tokens"; SolarNetwork's code (solarnetwork-common BasicSecurityPolicy,
Aggregation; solarnetwork-central SecurityPolicyEnforcer, SecurityTokenAuthenticationFilter). Written
from those descriptions, not copied. Where this differs from SolarNetwork it says so (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any, TypeVar

from processors.antpath import is_pattern, matches

INVERTED_PATH_PREFIX = "!"
# API paths in a policy are relative to these request path prefixes (SolarNetwork strips its
# context path and "/api/v1/sec" before matching); a path under none of them is matched whole.
SOLARQUERY_PATH_PREFIXES: tuple[str, ...] = ("/solarquery/api/v1/sec",)

S = TypeVar("S")


class PolicyError(ValueError):
    """A policy (or its JSON) is malformed or asks for a restriction this pipeline cannot enforce."""


class AccessDenied(Exception):
    """The answer to a request: `status` is 401 (credentials) or 403 (policy); `reason` is for the body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


def _unauthorized(reason: str) -> AccessDenied:
    return AccessDenied(401, reason)


def _forbidden(reason: str) -> AccessDenied:
    return AccessDenied(403, reason)


class TokenType(StrEnum):
    READ_NODE_DATA = "ReadNodeData"  # SolarNetwork's data token
    NODE = "Node"  # ingest token of this pipeline (SolarNetwork nodes use X.509 certificates instead)


class Aggregation(Enum):
    """SolarNetwork's aggregation levels: (name, level in seconds, short key), in SolarNetwork's order."""

    NONE = ("None", 0, "0")
    MINUTE = ("Minute", 60, "m")
    FIVE_MINUTE = ("FiveMinute", 300, "5m")
    TEN_MINUTE = ("TenMinute", 600, "10m")
    FIFTEEN_MINUTE = ("FifteenMinute", 900, "15m")
    THIRTY_MINUTE = ("ThirtyMinute", 1800, "30m")
    HOUR = ("Hour", 3600, "h")
    HOUR_OF_DAY = ("HourOfDay", 3600, "hd")
    HOUR_OF_YEAR = ("HourOfYear", 3600, "hy")
    SEASONAL_HOUR_OF_DAY = ("SeasonalHourOfDay", 3600, "shd")
    DAY = ("Day", 86400, "d")
    DAY_OF_WEEK = ("DayOfWeek", 86400, "wd")
    DAY_OF_YEAR = ("DayOfYear", 86400, "yd")
    SEASONAL_DAY_OF_WEEK = ("SeasonalDayOfWeek", 86400, "swd")
    WEEK = ("Week", 604800, "w")
    WEEK_OF_YEAR = ("WeekOfYear", 604800, "yw")
    MONTH = ("Month", 2419200, "M")  # levels above Day are SolarNetwork's standard periods (28-day month)
    YEAR = ("Year", 31536000, "y")
    RUNNING_TOTAL = ("RunningTotal", 2**31 - 1, "rt")

    @property
    def label(self) -> str:
        """The name SolarNetwork's API uses, e.g. "FiveMinute"."""
        label: str = self.value[0]
        return label

    @property
    def level(self) -> int:
        level: int = self.value[1]
        return level

    @property
    def key(self) -> str:
        key: str = self.value[2]
        return key

    @classmethod
    def parse(cls, text: str | None) -> Aggregation:
        """By short key (exact) or name (any case), as SolarNetwork's Aggregation.forKey; ""/None is None."""
        if not text:
            return cls.NONE
        for agg in cls:
            if agg.key == text or agg.label.lower() == text.lower():
                return agg
        raise PolicyError(f"unknown aggregation {text!r}")

    def at_least(self, other: Aggregation) -> bool:
        return self.level >= other.level


def _aware(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise PolicyError(f"{what} must carry a time zone")
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    node_ids: frozenset[int] = field(default_factory=frozenset)
    source_ids: frozenset[str] = field(default_factory=frozenset)
    min_aggregation: Aggregation | None = None
    aggregations: frozenset[Aggregation] = field(default_factory=frozenset)
    api_paths: frozenset[str] = field(default_factory=frozenset)
    not_after: datetime | None = None

    def __post_init__(self) -> None:
        for node in self.node_ids:
            if isinstance(node, bool) or not isinstance(node, int) or node < 0:
                raise PolicyError(f"node IDs must be non-negative integers, not {node!r}")
        for name, values in (("source IDs", self.source_ids), ("API paths", self.api_paths)):
            for value in values:
                if not isinstance(value, str) or not value or value == INVERTED_PATH_PREFIX:
                    raise PolicyError(f"{name} must be non-empty strings, not {value!r}")
        if self.not_after is not None:
            object.__setattr__(self, "not_after", _aware(self.not_after, "notAfter"))

    # --- JSON, with SolarNetwork's field names -----------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.node_ids:
            out["nodeIds"] = sorted(self.node_ids)
        if self.source_ids:
            out["sourceIds"] = sorted(self.source_ids)
        if self.min_aggregation is not None:
            out["minAggregation"] = self.min_aggregation.label
        elif self.aggregations:
            out["aggregations"] = [a.label for a in Aggregation if a in self.aggregations]
        if self.api_paths:
            out["apiPaths"] = sorted(self.api_paths)
        if self.not_after is not None:
            out["notAfter"] = self.not_after.strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SecurityPolicy:
        """Parse SolarNetwork's policy JSON. Restrictions this pipeline cannot enforce are refused:
        accepting one silently would grant more than its author meant."""
        supported = {"nodeIds", "sourceIds", "minAggregation", "aggregations", "apiPaths", "notAfter"}
        unknown = sorted(set(obj) - supported)
        if unknown:
            raise PolicyError(
                f"unsupported policy field(s) {', '.join(unknown)}; supported: {', '.join(sorted(supported))}"
            )
        nodes = _json_list(obj, "nodeIds")
        for node in nodes:
            if isinstance(node, bool) or not isinstance(node, int):
                raise PolicyError(f"nodeIds must hold integers, not {node!r}")
        min_agg = obj.get("minAggregation")
        if min_agg is not None and not isinstance(min_agg, str):
            raise PolicyError("minAggregation must be a string")
        aggs = [Aggregation.parse(_text(a, "aggregations")) for a in _json_list(obj, "aggregations")]
        return cls(
            node_ids=frozenset(nodes),
            source_ids=frozenset(_text(s, "sourceIds") for s in _json_list(obj, "sourceIds")),
            min_aggregation=Aggregation.parse(min_agg) if min_agg else None,
            aggregations=frozenset(aggs),
            api_paths=frozenset(_text(p, "apiPaths") for p in _json_list(obj, "apiPaths")),
            not_after=_parse_instant(obj.get("notAfter")),
        )


def _json_list(obj: Mapping[str, Any], name: str) -> list[Any]:
    value = obj.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(f"{name} must be a list")
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise PolicyError(f"{name} must hold non-empty strings, not {value!r}")
    return value


def _parse_instant(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise PolicyError("notAfter must be an ISO-8601 instant or epoch milliseconds")
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if isinstance(value, str):
        try:
            return _aware(datetime.fromisoformat(value.replace("Z", "+00:00")), "notAfter")
        except ValueError:
            raise PolicyError(f"notAfter {value!r} is not an ISO-8601 instant with a time zone") from None
    raise PolicyError("notAfter must be an ISO-8601 instant or epoch milliseconds")


@dataclass(frozen=True, slots=True)
class Token:
    """A token as the API sees it once its signature verified (the secret is not here)."""

    token_id: str
    token_type: TokenType
    policy: SecurityPolicy = field(default_factory=SecurityPolicy)

    def __post_init__(self) -> None:
        if self.token_type is TokenType.NODE and not self.policy.node_ids:
            # A node token speaks for specific nodes; an empty set would mean "any node".
            raise PolicyError("a Node token's policy must name its node IDs")


# --- single checks --------------------------------------------------------------------------


def is_valid_at(policy: SecurityPolicy, now: datetime) -> bool:
    """Valid up to and including `notAfter` (SolarNetwork: !notAfter.isBefore(now))."""
    return policy.not_after is None or _aware(now, "now") <= policy.not_after


def node_allowed(policy: SecurityPolicy, node_id: int) -> bool:
    return not policy.node_ids or node_id in policy.node_ids


def source_allowed(policy: SecurityPolicy, source_id: str) -> bool:
    """Is this concrete source ID in the policy, literally or by one of its patterns?"""
    if not policy.source_ids or source_id in policy.source_ids:
        return True
    return any(is_pattern(p) and matches(p, source_id) for p in policy.source_ids)


def stream_allowed(policy: SecurityPolicy, node_id: int, source_id: str) -> bool:
    return node_allowed(policy, node_id) and source_allowed(policy, source_id)


def api_path_of(path: str, prefixes: Sequence[str] = SOLARQUERY_PATH_PREFIXES) -> str:
    """The request path relative to the first matching prefix (whole when none matches)."""
    for prefix in prefixes:
        if path == prefix or path.startswith(prefix + "/"):
            return path[len(prefix) :] or "/"
    return path


def api_path_allowed(policy: SecurityPolicy, path: str, prefixes: Sequence[str] = SOLARQUERY_PATH_PREFIXES) -> bool:
    """Any entry matching allows; an entry "!pattern" matches every path the pattern does not."""
    if not policy.api_paths:
        return True
    relative = api_path_of(path, prefixes)
    for entry in policy.api_paths:
        inverted = entry.startswith(INVERTED_PATH_PREFIX)
        pattern = entry[1:] if inverted else entry
        if matches(pattern, relative) != inverted:
            return True
    return False


def _aggregation_name(agg: Aggregation | None) -> str:
    return "no aggregation" if agg is None or agg is Aggregation.NONE else f"aggregation {agg.label}"


def effective_aggregation(
    policy: SecurityPolicy, requested: Aggregation | None, *, raise_to_minimum: bool = False
) -> Aggregation | None:
    """The aggregation to run, or AccessDenied(403).

    Below `minAggregation` (no aggregation counts as below any minimum): SolarNetwork silently
    answers at the minimum instead; `raise_to_minimum=True` does the same, the default refuses (403)
    so a client never gets something other than what it asked for without being told.
    """
    minimum = policy.min_aggregation
    if minimum is not None:
        if requested is None or not requested.at_least(minimum):
            if raise_to_minimum:
                return minimum
            raise _forbidden(f"{_aggregation_name(requested)} is below the token policy's minimum {minimum.label}")
        return requested
    if policy.aggregations and (requested or Aggregation.NONE) not in policy.aggregations:
        raise _forbidden(f"{_aggregation_name(requested)} is not allowed by the token policy")
    return requested


# --- restricting requested sets (never widening) ----------------------------------------------


def restrict_node_ids(policy: SecurityPolicy, requested: Collection[int] | None) -> frozenset[int] | None:
    """Requested node IDs the policy allows; none requested -> the policy's (None: any node).

    403 when nodes were requested and none of them is allowed.
    """
    if not policy.node_ids:
        return frozenset(requested) if requested else None
    if not requested:
        return policy.node_ids
    kept = frozenset(n for n in requested if n in policy.node_ids)
    if not kept:
        raise _forbidden(f"node(s) {', '.join(map(str, sorted(requested)))} not allowed by the token policy")
    return kept


def _source_selected(selection: frozenset[str] | None, source_id: str) -> bool:
    if selection is None or source_id in selection:
        return True
    return any(is_pattern(s) and matches(s, source_id) for s in selection)


def select_streams(
    policy: SecurityPolicy,
    catalog: Iterable[S],
    key: Callable[[S], tuple[int, str]],
    *,
    node_ids: Collection[int] | None = None,
    source_ids: Collection[str] | None = None,
) -> list[S]:
    """The catalog entries (e.g. series of a node, source and property) that the request selects
    AND the policy allows, in catalog order. `node_ids`/`source_ids` None means all (`*`); source
    IDs may be patterns. Monotone: a larger request or catalog never yields less, and nothing outside
    the policy is ever returned. It does not refuse: an empty answer is the caller's 403-or-empty call
    (see `authorize_read`, which refuses explicit requests the policy wholly excludes).
    """
    nodes = None if node_ids is None else frozenset(node_ids)
    sources = None if source_ids is None else frozenset(source_ids)
    out: list[S] = []
    for entry in catalog:
        node, source = key(entry)
        if nodes is not None and node not in nodes:
            continue
        if not _source_selected(sources, source):
            continue
        if stream_allowed(policy, node, source):
            out.append(entry)
    return out


# --- whole-request decisions --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadScope:
    """What a read selects. `node_ids` is already narrowed to the policy (None: any node);
    `source_ids` is the request's own selection (None: all), narrowed per source by `select_streams`."""

    node_ids: frozenset[int] | None
    source_ids: frozenset[str] | None
    aggregation: Aggregation | None

    def select(self, policy: SecurityPolicy, catalog: Iterable[S], key: Callable[[S], tuple[int, str]]) -> list[S]:
        return select_streams(policy, catalog, key, node_ids=self.node_ids, source_ids=self.source_ids)


def _literal_prefix(pattern: str) -> str:
    cut = min((i for i, ch in enumerate(pattern) if ch in "*?"), default=len(pattern))
    # "/S1/**" also matches "/S1" itself, so a trailing separator is not part of what must match
    return pattern[:cut].rstrip("/")


def may_overlap(requested: str, allowed: str) -> bool:
    """Could some source ID match both (each a literal or a pattern)? Never False when one does.

    Literals are decided exactly; two patterns are disjoint when neither's literal prefix (up to its
    first wildcard) starts the other's, otherwise they are assumed to overlap.
    """
    if not is_pattern(requested):
        return requested == allowed or (is_pattern(allowed) and matches(allowed, requested))
    if not is_pattern(allowed):
        return matches(requested, allowed)
    a, b = _literal_prefix(requested), _literal_prefix(allowed)
    return a.startswith(b) or b.startswith(a)


def excluded_sources(policy: SecurityPolicy, requested: Collection[str]) -> list[str]:
    """The requested source IDs/patterns that cannot select anything the policy allows."""
    if not policy.source_ids:
        return []
    return sorted(r for r in requested if not any(may_overlap(r, p) for p in policy.source_ids))


def check_token(token: Token, now: datetime) -> None:
    """401 "Expired token" after `notAfter` (SolarNetwork's CredentialsExpiredException)."""
    if not is_valid_at(token.policy, now):
        raise _unauthorized("Expired token")


def authorize_read(
    token: Token,
    *,
    now: datetime,
    path: str,
    node_ids: Collection[int] | None = None,
    source_ids: Collection[str] | None = None,
    aggregation: Aggregation | None = None,
    raise_to_minimum: bool = False,
    path_prefixes: Sequence[str] = SOLARQUERY_PATH_PREFIXES,
    figures: bool = True,
) -> ReadScope:
    """Decide a read, in this order: expired (401), token type, API path, nodes, sources,
    aggregation (403). Returns the scope; `scope.select(policy, catalog, key)` gives the entries.
    `figures=False`: the read returns no figures (a list of series or sources, a date range), so
    the aggregation rules do not apply and the scope's aggregation is None.

    Sources are refused (403) only when every requested source ID or pattern provably selects
    nothing the policy allows; otherwise each catalog source is checked on its own, so a wildcard
    (or `*`) is narrowed to the policy instead of refused. The decision never depends on which
    sources exist, so a 403 tells nothing about sources outside the policy.
    """
    check_token(token, now)
    if token.token_type is not TokenType.READ_NODE_DATA:
        raise _forbidden(f"a {token.token_type.value} token cannot read datums")
    if not api_path_allowed(token.policy, path, path_prefixes):
        # SolarNetwork answers 401 "Access denied" here; the policy excludes the path, hence 403.
        raise _forbidden(f"API path {path} not allowed by the token policy")
    nodes = restrict_node_ids(token.policy, node_ids)
    sources = frozenset(source_ids) if source_ids else None
    if sources is not None and len(excluded_sources(token.policy, sources)) == len(sources):
        raise _forbidden(f"source(s) {', '.join(sorted(sources))} not allowed by the token policy")
    agg = effective_aggregation(token.policy, aggregation, raise_to_minimum=raise_to_minimum) if figures else None
    return ReadScope(nodes, sources, agg)


def authorize_ingest(
    token: Token,
    *,
    now: datetime,
    path: str,
    node_id: int,
    source_id: str,
    path_prefixes: Sequence[str] = SOLARQUERY_PATH_PREFIXES,
) -> None:
    """May this token post a datum of (node_id, source_id)? Expired -> 401; otherwise only a Node
    token, on an allowed API path, for one of its nodes and an allowed source (else 403)."""
    check_token(token, now)
    if token.token_type is not TokenType.NODE:
        raise _forbidden(f"a {token.token_type.value} token cannot post datums; a Node token can")
    if not api_path_allowed(token.policy, path, path_prefixes):
        raise _forbidden(f"API path {path} not allowed by the token policy")
    if node_id not in token.policy.node_ids:
        raise _forbidden(f"node {node_id} is not one of the token's nodes")
    if not source_allowed(token.policy, source_id):
        raise _forbidden(f"source {source_id} on node {node_id} not allowed by the token policy")
