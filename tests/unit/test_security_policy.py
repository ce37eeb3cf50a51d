"""SolarNetwork's token security policies (processors/security_policy.py): table-driven cases from
SolarNetwork's documented behaviour, and properties: a restriction never widens a request, never
returns anything outside the policy, and a larger request never yields less."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.antpath import is_pattern, matches
from processors.security_policy import (
    AccessDenied,
    Aggregation,
    PolicyError,
    SecurityPolicy,
    Token,
    TokenType,
    api_path_allowed,
    authorize_ingest,
    authorize_read,
    effective_aggregation,
    is_valid_at,
    may_overlap,
    restrict_node_ids,
    select_streams,
    source_allowed,
    stream_allowed,
)

NOW = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)
LIST = "/solarquery/api/v1/sec/datum/list"
A = Aggregation


def policy(**kw: Any) -> SecurityPolicy:
    for name in ("node_ids", "source_ids", "aggregations", "api_paths"):
        if name in kw:
            kw[name] = frozenset(kw[name])
    return SecurityPolicy(**kw)


def reader(**kw: Any) -> Token:
    return Token("read-token", TokenType.READ_NODE_DATA, policy(**kw))


def denied(call: Any, status: int, reason_start: str) -> None:
    with pytest.raises(AccessDenied) as err:
        call()
    assert err.value.status == status
    assert err.value.reason.startswith(reason_start), err.value.reason


# --- aggregation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("h", A.HOUR),
        ("Hour", A.HOUR),
        ("hour", A.HOUR),
        ("m", A.MINUTE),
        ("M", A.MONTH),
        ("month", A.MONTH),
        ("FiveMinute", A.FIVE_MINUTE),
        ("5m", A.FIVE_MINUTE),
        ("", A.NONE),
        (None, A.NONE),
        ("rt", A.RUNNING_TOTAL),
    ],
)
def test_aggregation_parse_by_key_or_name(text: str | None, expected: Aggregation) -> None:
    assert Aggregation.parse(text) is expected


def test_aggregation_unknown_is_refused() -> None:
    with pytest.raises(PolicyError, match="unknown aggregation 'Fortnight'"):
        Aggregation.parse("Fortnight")


@pytest.mark.parametrize(
    ("pol", "requested", "raise_to_min", "expected"),
    [
        (policy(), None, False, None),
        (policy(), A.MINUTE, False, A.MINUTE),
        (policy(min_aggregation=A.HOUR), A.HOUR, False, A.HOUR),
        (policy(min_aggregation=A.HOUR), A.HOUR_OF_DAY, False, A.HOUR_OF_DAY),  # same level
        (policy(min_aggregation=A.HOUR), A.DAY, False, A.DAY),
        (policy(min_aggregation=A.HOUR), A.FIFTEEN_MINUTE, False, "403 aggregation FifteenMinute is below"),
        (policy(min_aggregation=A.HOUR), None, False, "403 no aggregation is below the token policy's minimum Hour"),
        (policy(min_aggregation=A.HOUR), A.NONE, False, "403 no aggregation is below"),
        (policy(min_aggregation=A.HOUR), None, True, A.HOUR),  # SolarNetwork's silent raise
        (policy(min_aggregation=A.DAY), A.FIVE_MINUTE, True, A.DAY),
        (policy(aggregations={A.DAY, A.MONTH}), A.DAY, False, A.DAY),
        (policy(aggregations={A.DAY, A.MONTH}), A.HOUR, False, "403 aggregation Hour is not allowed"),
        (policy(aggregations={A.DAY, A.MONTH}), None, False, "403 no aggregation is not allowed"),
        (policy(aggregations={A.NONE, A.DAY}), None, False, None),
    ],
)
def test_effective_aggregation(
    pol: SecurityPolicy, requested: Aggregation | None, raise_to_min: bool, expected: Any
) -> None:
    if isinstance(expected, str):
        denied(lambda: effective_aggregation(pol, requested, raise_to_minimum=raise_to_min), 403, expected[4:])
    else:
        assert effective_aggregation(pol, requested, raise_to_minimum=raise_to_min) is expected


def test_minimum_aggregation_allows_every_level_at_or_above() -> None:
    allowed = {a for a in A if a.at_least(A.DAY)}
    assert A.DAY_OF_WEEK in allowed and A.MONTH in allowed and A.RUNNING_TOTAL in allowed
    assert A.HOUR not in allowed and A.NONE not in allowed


# --- expiry, API paths, nodes, sources --------------------------------------------------------


def test_not_after_is_inclusive() -> None:
    pol = policy(not_after=NOW)
    assert is_valid_at(pol, NOW)
    assert not is_valid_at(pol, NOW + timedelta(microseconds=1))
    assert is_valid_at(policy(), NOW + timedelta(days=10_000))
    with pytest.raises(PolicyError, match="time zone"):
        policy(not_after=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("paths", "path", "allowed"),
    [
        ((), LIST, True),
        ({"/datum/list"}, LIST, True),
        ({"/datum/list"}, "/solarquery/api/v1/sec/datum/mostRecent", False),
        ({"/datum/*"}, "/solarquery/api/v1/sec/datum/mostRecent", True),
        ({"/datum/**"}, "/solarquery/api/v1/sec/datum/reading", True),
        ({"/range/**"}, LIST, False),
        ({"!/datum/reading"}, LIST, True),
        ({"!/datum/reading"}, "/solarquery/api/v1/sec/datum/reading", False),
        ({"/api/timeseries/**"}, "/api/timeseries/series", True),
        ({"/datum/list"}, "/solarquery/api/v1/sec-evil/datum/list", False),
    ],
)
def test_api_paths(paths: set[str], path: str, allowed: bool) -> None:
    assert api_path_allowed(policy(api_paths=paths), path) is allowed


@pytest.mark.parametrize(
    ("nodes", "requested", "expected"),
    [
        ((), None, None),
        ((), {5}, {5}),
        ({1, 2}, None, {1, 2}),
        ({1, 2}, set(), {1, 2}),
        ({1, 2}, {2, 3}, {2}),
        ({1, 2}, {3}, "403"),
    ],
)
def test_restrict_node_ids(nodes: set[int], requested: set[int] | None, expected: Any) -> None:
    pol = policy(node_ids=nodes)
    if expected == "403":
        denied(lambda: restrict_node_ids(pol, requested), 403, "node(s) 3 not allowed")
    else:
        assert restrict_node_ids(pol, requested) == (None if expected is None else frozenset(expected))


@pytest.mark.parametrize(
    ("sources", "source", "allowed"),
    [
        ((), "/x", True),
        ({"/S1/**"}, "/S1", True),
        ({"/S1/**"}, "/S1/B/M", True),
        ({"/S1/**"}, "/S2/M", False),
        ({"/S1/M?"}, "/S1/M1", True),
        ({"/S1/M?"}, "/S1/M10", False),
        ({"Meter_1"}, "Meter_1", True),
    ],
)
def test_source_allowed(sources: set[str], source: str, allowed: bool) -> None:
    assert source_allowed(policy(source_ids=sources), source) is allowed


# --- whole requests ---------------------------------------------------------------------------

CATALOG = [
    (1, "/S1/M1", "watts"),
    (1, "/S1/M1", "wattHours"),
    (1, "/S1/M2", "watts"),
    (1, "/S2/M1", "watts"),
    (2, "/S1/M1", "watts"),
    (3, "/S1/M1", "watts"),
]


def key(entry: tuple[int, str, str]) -> tuple[int, str]:
    return entry[0], entry[1]


@pytest.mark.parametrize("policy", [{"min_aggregation": A.HOUR}, {"aggregations": frozenset({A.DAY})}])
def test_a_read_of_no_figures_is_not_held_to_the_aggregation_rules(policy: dict[str, Any]) -> None:
    """A list of series or sources, a date range: whatever the policy's aggregation rule, it is
    not refused for one, while a read of raw figures is."""
    token = reader(node_ids={1}, **policy)
    scope = authorize_read(token, now=NOW, path=LIST, aggregation=None, figures=False)
    assert scope.aggregation is None and scope.node_ids == frozenset({1})
    with pytest.raises(AccessDenied) as refused:
        authorize_read(token, now=NOW, path=LIST, aggregation=None)
    assert refused.value.status == 403


def test_authorize_read_narrows_star_and_wildcards_to_the_policy() -> None:
    token = reader(node_ids={1, 2}, source_ids={"/S1/**"}, min_aggregation=A.HOUR, api_paths={"/datum/**"})
    scope = authorize_read(token, now=NOW, path=LIST, aggregation=A.DAY)
    assert scope.aggregation is A.DAY
    expected = [e for e in CATALOG if e[0] in {1, 2} and e[1].startswith("/S1/")]
    assert scope.select(token.policy, CATALOG, key) == expected
    wild = authorize_read(token, now=NOW, path=LIST, node_ids={1, 3}, source_ids={"/**"}, aggregation=A.HOUR)
    assert wild.node_ids == frozenset({1})
    assert wild.select(token.policy, CATALOG, key) == CATALOG[:3]
    narrow = authorize_read(token, now=NOW, path=LIST, source_ids={"/S1/M?", "/S2/M1"}, aggregation=A.HOUR)
    streams = [e[:2] for e in narrow.select(token.policy, CATALOG, key)]
    assert streams == [(1, "/S1/M1"), (1, "/S1/M1"), (1, "/S1/M2"), (2, "/S1/M1")]


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"now": NOW + timedelta(seconds=1)}, 401, "Expired token"),
        ({"path": "/solarquery/api/v1/sec/range/sources"}, 403, "API path"),
        ({"node_ids": {3}}, 403, "node(s) 3 not allowed"),
        ({"source_ids": {"/S2/M1"}}, 403, "source(s) /S2/M1 not allowed"),
        ({"source_ids": {"/S2/*", "/S3/**"}}, 403, "source(s) /S2/*, /S3/** not allowed"),
        ({"aggregation": A.FIVE_MINUTE}, 403, "aggregation FiveMinute is below"),
        ({"aggregation": None}, 403, "no aggregation is below"),
    ],
)
def test_authorize_read_refusals(kwargs: dict[str, Any], status: int, reason: str) -> None:
    token = reader(
        node_ids={1, 2}, source_ids={"/S1/**"}, min_aggregation=A.HOUR, api_paths={"/datum/**"}, not_after=NOW
    )
    args: dict[str, Any] = {"now": NOW, "path": LIST, "aggregation": A.HOUR, **kwargs}
    denied(lambda: authorize_read(token, **args), status, reason)


def test_node_token_posts_only_its_nodes_and_reads_nothing() -> None:
    node = Token("node-token", TokenType.NODE, policy(node_ids={7}, source_ids={"/meter/**"}))
    authorize_ingest(node, now=NOW, path="/solarin/api/v1/sec/datum", node_id=7, source_id="/meter/1")
    denied(lambda: authorize_ingest(node, now=NOW, path="/in", node_id=8, source_id="/meter/1"), 403, "node 8 is not")
    denied(lambda: authorize_ingest(node, now=NOW, path="/in", node_id=7, source_id="/pv/1"), 403, "source /pv/1")
    denied(lambda: authorize_read(node, now=NOW, path=LIST), 403, "a Node token cannot read")
    denied(lambda: authorize_ingest(reader(), now=NOW, path="/in", node_id=7, source_id="/x"), 403, "a ReadNodeData")
    expired = Token("n", TokenType.NODE, policy(node_ids={7}, not_after=NOW - timedelta(days=1)))
    denied(lambda: authorize_ingest(expired, now=NOW, path="/in", node_id=7, source_id="/x"), 401, "Expired token")
    with pytest.raises(PolicyError, match="must name its node IDs"):
        Token("n", TokenType.NODE, policy())


# --- JSON -------------------------------------------------------------------------------------


def test_json_with_solarnetwork_field_names() -> None:
    doc = {
        "nodeIds": [2, 1],
        "sourceIds": ["/S1/**"],
        "minAggregation": "Hour",
        "apiPaths": ["/datum/list"],
        "notAfter": "2027-01-01T00:00:00Z",
    }
    pol = SecurityPolicy.from_json(doc)
    assert pol.node_ids == {1, 2} and pol.min_aggregation is A.HOUR
    assert pol.not_after == datetime(2027, 1, 1, tzinfo=UTC)
    assert pol.to_json() == {**doc, "nodeIds": [1, 2]}
    assert SecurityPolicy.from_json({"notAfter": 1798761600000}).not_after == datetime(2027, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"nodeMetadataPaths": ["/m/**"]}, "unsupported policy field(s) nodeMetadataPaths"),
        ({"nodeIds": ["1"]}, "nodeIds must hold integers"),
        ({"nodeIds": 1}, "nodeIds must be a list"),
        ({"sourceIds": [""]}, "sourceIds must hold non-empty strings"),
        ({"minAggregation": "Fortnight"}, "unknown aggregation"),
        ({"notAfter": "2027-01-01T00:00:00"}, "time zone"),
        ({"nodeIds": [-1]}, "node IDs must be non-negative"),
    ],
)
def test_json_refusals(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as err:
        SecurityPolicy.from_json(doc)
    assert message in str(err.value)


# --- properties -------------------------------------------------------------------------------

_segments = st.sampled_from(["A", "B", "AB"])
_sources = st.lists(_segments, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s))
_pattern_segments = st.sampled_from(["A", "B", "AB", "*", "?", "**", "A*", "?B"])
_patterns = st.lists(_pattern_segments, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s))
_source_or_pattern = st.one_of(_sources, _patterns)
_nodes = st.integers(1, 3)
_policies = st.builds(
    lambda n, s: policy(node_ids=n, source_ids=s),
    st.frozensets(_nodes, max_size=2),
    st.frozensets(_source_or_pattern, max_size=3),
)
_catalogs = st.lists(st.tuples(_nodes, _sources), max_size=12)
_node_requests = st.one_of(st.none(), st.frozensets(_nodes, max_size=3))
_source_requests = st.one_of(st.none(), st.frozensets(_source_or_pattern, max_size=3))


def _selected(request: frozenset[str] | None, source: str) -> bool:
    return request is None or any(source == r or (is_pattern(r) and matches(r, source)) for r in request)


@settings(max_examples=300)
@given(_policies, _catalogs, _node_requests, _source_requests)
def test_selection_never_leaves_the_policy_or_the_request(
    pol: SecurityPolicy, catalog: list[tuple[int, str]], nodes: frozenset[int] | None, sources: frozenset[str] | None
) -> None:
    for node, source in select_streams(pol, catalog, lambda e: e, node_ids=nodes, source_ids=sources):
        assert stream_allowed(pol, node, source)
        assert nodes is None or node in nodes
        assert _selected(sources, source)


@settings(max_examples=300)
@given(_policies, _catalogs, _node_requests, _source_requests, _node_requests, _source_requests)
def test_selection_is_monotone_in_the_request(
    pol: SecurityPolicy,
    catalog: list[tuple[int, str]],
    nodes: frozenset[int] | None,
    sources: frozenset[str] | None,
    more_nodes: frozenset[int] | None,
    more_sources: frozenset[str] | None,
) -> None:
    wider_nodes = None if nodes is None or more_nodes is None else nodes | more_nodes
    wider_sources = None if sources is None or more_sources is None else sources | more_sources
    small = select_streams(pol, catalog, lambda e: e, node_ids=nodes, source_ids=sources)
    large = select_streams(pol, catalog, lambda e: e, node_ids=wider_nodes, source_ids=wider_sources)
    assert set(small) <= set(large)
    # and a more restrictive policy never yields more
    tighter = policy(node_ids=pol.node_ids or {1}, source_ids=pol.source_ids)
    assert set(select_streams(tighter, catalog, lambda e: e, node_ids=nodes, source_ids=sources)) <= set(small)


@settings(max_examples=500)
@given(_source_or_pattern, _source_or_pattern, st.lists(_sources, max_size=20))
def test_may_overlap_is_never_wrongly_false(a: str, b: str, universe: list[str]) -> None:
    if not may_overlap(a, b):
        for source in universe + [x for x in (a, b) if not is_pattern(x)]:
            assert not (_selected(frozenset({a}), source) and _selected(frozenset({b}), source))


@settings(max_examples=300)
@given(_policies, _catalogs, st.frozensets(_source_or_pattern, min_size=1, max_size=3))
def test_no_403_when_the_request_selects_something_allowed(
    pol: SecurityPolicy, catalog: list[tuple[int, str]], sources: frozenset[str]
) -> None:
    token = Token("t", TokenType.READ_NODE_DATA, pol)
    allowed = select_streams(pol, catalog, lambda e: e, source_ids=sources)
    try:
        scope = authorize_read(token, now=NOW, path=LIST, source_ids=sources)
    except AccessDenied as err:
        assert err.status == 403
        assert not allowed, "refused although the request selects streams the policy allows"
    else:
        assert set(allowed) <= set(scope.select(pol, catalog, lambda e: e))


@given(_policies, st.one_of(st.none(), st.sampled_from(list(Aggregation))))
def test_json_round_trip(pol: SecurityPolicy, minimum: Aggregation | None) -> None:
    full = SecurityPolicy(pol.node_ids, pol.source_ids, minimum, frozenset(), frozenset({"/datum/**"}), NOW)
    assert SecurityPolicy.from_json(full.to_json()) == full
