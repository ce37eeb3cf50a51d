"""Security tokens as metadata: what the history log keeps of a token, and how a new one is made.

A token is an entity of the history log (`security_token`, EBAS class *history*: every change is
a new version in transaction time, so the log tells who could read what, when). Its value:

    {"type": "ReadNodeData" | "Node",
     "policy": {SolarNetwork policy JSON, processors.security_policy},
     "key_sha256": hex SHA-256("SNWS2" + secret),
     "name": optional label}

The secret itself is never stored: it is printed once when the token is made. What is kept,
SHA-256("SNWS2" + secret), is what HMAC-SHA256 uses in place of a key longer than its 64-byte
block, so SNWS2 signatures verify with it exactly as with the secret (processors/snws2.py,
`stored_key`). It is a credential nonetheless (it can sign): the history log is guarded like a
key store. Secrets made here are 64 characters, so "SNWS2" + secret is always over the block.

Pure: randomness comes from the caller (`secrets.choice` in the CLI, a seeded one in tests).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from processors import snws2
from processors.security_policy import PolicyError, SecurityPolicy, Token, TokenType

TOKEN_ENTITY = "security_token"
TOKEN_ID_LENGTH = 20  # SolarNetwork's token ids are 20 characters
SECRET_LENGTH = 64  # "SNWS2" + 64 characters > HMAC's 64-byte block: the digest can stand in
ALPHABET = string.ascii_letters + string.digits
_TOKEN_ID = re.compile(r"[A-Za-z0-9_\-.~]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
VALUE_FIELDS = frozenset({"type", "policy", "key_sha256", "name"})


class TokenValueError(ValueError):
    """A token's stored value breaks the rules above."""


@dataclass(frozen=True, slots=True)
class StoredToken:
    """A token as the log holds it: the token (type, policy) and the key that verifies it."""

    token: Token
    key: bytes  # snws2.stored_key(secret)
    name: str = ""


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just made: the secret is here and nowhere else."""

    token_id: str
    secret: str
    value: dict[str, Any]


def valid_token_id(token_id: object) -> bool:
    return isinstance(token_id, str) and _TOKEN_ID.fullmatch(token_id) is not None


def make_token(token_type: TokenType, policy: SecurityPolicy, choice: Callable[[str], str], name: str = "") -> NewToken:
    """A new token id and secret, and the value the history log keeps (no secret in it).
    `choice(alphabet)` picks one character (secrets.choice in production)."""
    token_id = "".join(choice(ALPHABET) for _ in range(TOKEN_ID_LENGTH))
    secret = "".join(choice(ALPHABET) for _ in range(SECRET_LENGTH))
    Token(token_id, token_type, policy)  # the rules of a token (a Node token names its nodes)
    value: dict[str, Any] = {
        "type": token_type.value,
        "policy": policy.to_json(),
        "key_sha256": snws2.stored_key(secret).hex(),
    }
    if name:
        value["name"] = name
    return NewToken(token_id, secret, value)


def _parse(value: Mapping[str, Any]) -> Token:
    """The token (id left blank) a stored value describes; TokenValueError when it breaks the rules."""
    unknown = sorted(set(value) - VALUE_FIELDS)
    if unknown:
        # a "secret" field in particular: the log must never hold one
        raise TokenValueError(f"unknown token field(s) {', '.join(unknown)}; known: {', '.join(sorted(VALUE_FIELDS))}")
    try:
        token_type = TokenType(str(value.get("type")))
    except ValueError:
        raise TokenValueError(f"type must be one of {', '.join(t.value for t in TokenType)}") from None
    policy = value.get("policy", {})
    if not isinstance(policy, Mapping):
        raise TokenValueError("policy must be an object")
    try:
        token = Token("", token_type, SecurityPolicy.from_json(policy))
    except PolicyError as exc:
        raise TokenValueError(f"policy: {exc}") from None
    key = value.get("key_sha256")
    if not isinstance(key, str) or _HEX64.fullmatch(key) is None:
        raise TokenValueError("key_sha256 must be 64 lower-case hex digits")
    if not isinstance(value.get("name", ""), str):
        raise TokenValueError("name must be a string")
    return token


def check_value(value: Mapping[str, Any]) -> None:
    """Raise TokenValueError unless `value` is a token value as described above."""
    _parse(value)


def stored_token(token_id: str, value: Mapping[str, Any]) -> StoredToken:
    """The token a stored value describes (checked first)."""
    token = _parse(value)
    return StoredToken(
        Token(token_id, token.token_type, token.policy), bytes.fromhex(value["key_sha256"]), str(value.get("name", ""))
    )


def public_view(token_id: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """What `pipeline token list` shows: everything but the key."""
    out: dict[str, Any] = {"tokenId": token_id, "type": value.get("type"), "policy": value.get("policy", {})}
    if value.get("name"):
        out["name"] = value["name"]
    return out


def policy_from_options(
    node_ids: Sequence[int] = (),
    source_ids: Sequence[str] = (),
    min_aggregation: str | None = None,
    api_paths: Sequence[str] = (),
    not_after: str | None = None,
) -> SecurityPolicy:
    """A policy from command-line options (SolarNetwork's JSON names underneath)."""
    doc: dict[str, Any] = {}
    if node_ids:
        doc["nodeIds"] = list(node_ids)
    if source_ids:
        doc["sourceIds"] = list(source_ids)
    if min_aggregation:
        doc["minAggregation"] = min_aggregation
    if api_paths:
        doc["apiPaths"] = list(api_paths)
    if not_after:
        doc["notAfter"] = not_after
    return SecurityPolicy.from_json(doc)
