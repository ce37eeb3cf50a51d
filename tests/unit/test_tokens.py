"""Security tokens as history-log metadata (processors/tokens.py): no secret kept, and the digest
that is kept verifies SNWS2 signatures exactly as the secret does."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import snws2
from processors.metadata import parse_event, validate_value
from processors.security_policy import SecurityPolicy, TokenType
from processors.tokens import (
    SECRET_LENGTH,
    TOKEN_ID_LENGTH,
    TokenValueError,
    check_value,
    make_token,
    policy_from_options,
    public_view,
    stored_token,
)

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def _made(seed: int = 1, token_type: TokenType = TokenType.READ_NODE_DATA, policy: SecurityPolicy | None = None):  # type: ignore[no-untyped-def]
    return make_token(token_type, policy or SecurityPolicy(node_ids=frozenset({7})), random.Random(seed).choice)


def test_a_new_token_keeps_no_secret() -> None:
    made = _made()
    assert len(made.token_id) == TOKEN_ID_LENGTH and len(made.secret) == SECRET_LENGTH
    assert made.secret not in repr(made.value)
    assert set(made.value) == {"type", "policy", "key_sha256"}
    assert made.value["policy"] == {"nodeIds": [7]}
    check_value(made.value)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), day_back=st.integers(0, 6), query=st.text(max_size=20))
def test_the_stored_digest_verifies_exactly_as_the_secret(seed: int, day_back: int, query: str) -> None:
    made = _made(seed)
    key = stored_token(made.token_id, made.value).key
    headers = snws2.sign(
        token_id=made.token_id,
        secret=made.secret,
        method="GET",
        host="h:1",
        path="/solarquery/api/v1/sec/datum/list",
        now=NOW,
        params=[("q", query)],
        signing_day=(NOW - timedelta(days=day_back)).date(),
    )
    from urllib.parse import quote

    request = snws2.Snws2Request(
        "GET", "/solarquery/api/v1/sec/datum/list", f"q={quote(query, safe='')}", list(headers.items())
    )
    assert snws2.verify(request, {made.token_id: key}, NOW).token_id == made.token_id
    assert snws2.signing_key(key, date(2026, 12, 1)) == snws2.signing_key(made.secret, date(2026, 12, 1))


def test_a_wrong_digest_does_not_verify() -> None:
    made, other = _made(1), _made(2)
    headers = snws2.sign(token_id=made.token_id, secret=made.secret, method="GET", host="h:1", path="/x", now=NOW)
    request = snws2.Snws2Request("GET", "/x", "", list(headers.items()))
    with pytest.raises(snws2.Snws2Error, match="Bad credentials"):
        snws2.verify(request, {made.token_id: stored_token(other.token_id, other.value).key}, NOW)


def test_a_short_secret_cannot_be_kept_as_a_digest() -> None:
    with pytest.raises(ValueError, match="over 59 bytes"):
        snws2.stored_key("x" * 59)
    assert len(snws2.stored_key("x" * 60)) == 32


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"type": "ReadNodeData", "policy": {}, "key_sha256": "0" * 64, "secret": "s"}, "unknown token field"),
        ({"type": "Admin", "policy": {}, "key_sha256": "0" * 64}, "type must be one of"),
        ({"type": "ReadNodeData", "policy": {}, "key_sha256": "0" * 63}, "64 lower-case hex"),
        ({"type": "ReadNodeData", "policy": {"nodeIds": ["x"]}, "key_sha256": "0" * 64}, "policy:"),
        ({"type": "Node", "policy": {}, "key_sha256": "0" * 64}, "must name its node IDs"),
        ({"type": "ReadNodeData", "policy": {"userIds": [1]}, "key_sha256": "0" * 64}, "unsupported policy field"),
    ],
)
def test_bad_token_values_are_refused(value: dict[str, object], message: str) -> None:
    with pytest.raises(TokenValueError, match=message):
        check_value(value)


def test_the_history_log_refuses_a_token_event_with_a_secret() -> None:
    made = _made()
    good = parse_event(
        {
            "event_id": str(uuid.uuid4()),
            "entity": "security_token",
            "key": {"token_id": made.token_id},
            "op": "upsert",
            "value": made.value,
            "produced_at": NOW.isoformat(),
            "author": "t",
        }
    )
    assert validate_value(good) is None
    bad = parse_event(
        {
            "event_id": str(uuid.uuid4()),
            "entity": "security_token",
            "key": {"token_id": made.token_id},
            "op": "upsert",
            "value": {**made.value, "secret": made.secret},
            "produced_at": NOW.isoformat(),
            "author": "t",
        }
    )
    refusal = validate_value(bad)
    assert refusal is not None and refusal.rule == "token.invalid"
    bad_id = parse_event(
        {
            "event_id": str(uuid.uuid4()),
            "entity": "security_token",
            "key": {"token_id": "a b"},
            "op": "upsert",
            "value": made.value,
            "produced_at": NOW.isoformat(),
            "author": "t",
        }
    )
    refusal = validate_value(bad_id)
    assert refusal is not None and refusal.rule == "token.id"


def test_options_make_solarnetwork_policy_json() -> None:
    policy = policy_from_options([3, 1], ["/S1/**"], "Hour", ["/datum/**"], "2027-01-01T00:00:00Z")
    assert policy.to_json() == {
        "nodeIds": [1, 3],
        "sourceIds": ["/S1/**"],
        "minAggregation": "Hour",
        "apiPaths": ["/datum/**"],
        "notAfter": "2027-01-01T00:00:00Z",
    }
    made = make_token(TokenType.NODE, policy, random.Random(3).choice, "gateway 3")
    view = public_view(made.token_id, made.value)
    assert view == {"tokenId": made.token_id, "type": "Node", "policy": policy.to_json(), "name": "gateway 3"}
