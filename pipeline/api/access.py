"""Who is asking: SNWS2-signed requests checked against the tokens in the history log.

The decisions are pure (processors/snws2.py verifies a signature, processors/security_policy.py
decides 401/403 from a token's policy); this module reads the tokens in force from PostgreSQL
and applies the API's access mode:

* `auto` (default): a request needs a token once any token exists; before the first token is
  made the APIs are open (a fresh embedded stack on 127.0.0.1);
* `required`: always (the production compose stack).

A request that carries an Authorization header is always verified, whatever the mode. The token
list is re-read when the history log moves (checked at most every TOKENS_CHECK_S); should the log
be unreachable before it was ever read, every request is refused (503): access is never granted
for want of knowing the tokens. docs/security.md is the manual.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pipeline.history.view import LogView
from processors import snws2
from processors.security_policy import AccessDenied, Token
from processors.tokens import StoredToken, TokenValueError, stored_token

log = logging.getLogger(__name__)

TOKENS_CHECK_S = 1.0
MODES = ("auto", "required")


class AccessUnavailable(Exception):
    """The tokens cannot be read (history log down, never read): 503."""


class TokenStore:
    """The tokens in force, from the history log (re-read when it moves)."""

    def __init__(self, dsn: str, check_s: float = TOKENS_CHECK_S) -> None:
        self.view: LogView[dict[str, StoredToken]] = LogView(dsn, "security tokens", _load_tokens, check_s, missing={})

    def current(self) -> dict[str, StoredToken]:
        """token id -> stored token; raises AccessUnavailable when never read and unreadable."""
        tokens = self.view.get()
        if tokens is None:
            raise AccessUnavailable("the security tokens cannot be read (history log unavailable)")
        return tokens

    def close(self) -> None:
        self.view.close()


def _load_tokens(conn: Any) -> dict[str, StoredToken]:
    from sinks import history

    tokens: dict[str, StoredToken] = {}
    for token_id, value in history.current_tokens(conn).items():
        try:
            tokens[token_id] = stored_token(token_id, value)
        except TokenValueError as exc:  # the log validated it; a later rule may not
            log.error("security token %s ignored: %s", token_id, exc)
    return tokens


class _Keys:
    """token id -> verifying key, for snws2.verify (a Mapping-like .get)."""

    def __init__(self, tokens: dict[str, StoredToken]) -> None:
        self.tokens = tokens

    def get(self, token_id: str, default: bytes | None = None) -> bytes | None:
        found = self.tokens.get(token_id)
        return found.key if found is not None else default


class Access:
    """Authenticates requests for the HTTP APIs."""

    def __init__(
        self, tokens: TokenStore, mode: str = "auto", clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"api_auth must be one of {', '.join(MODES)}, not {mode!r}")
        self.tokens = tokens
        self.mode = mode
        self.clock = clock

    def is_open(self) -> bool:
        """Whether a request without credentials is served (mode auto, no token made yet)."""
        try:
            return self.mode == "auto" and not self.tokens.current()
        except AccessUnavailable:
            return False

    def authenticate(
        self, method: str, path: str, query: str, headers: Sequence[tuple[str, str]], body: bytes = b""
    ) -> Token | None:
        """The token a request is signed with; None when the API is open and the request carries no
        credentials. Raises AccessDenied (401) or AccessUnavailable (503)."""
        authorization = next((v for k, v in headers if k.lower() == "authorization"), None)
        tokens = self.tokens.current()  # AccessUnavailable: 503, never open by default
        if authorization is None:
            if self.mode == "auto" and not tokens:
                return None
            raise AccessDenied(401, "Missing Authorization header: sign requests with a security token (SNWS2)")
        if not snws2.is_snws2(authorization):
            raise AccessDenied(401, "Unsupported authorization scheme: use SNWS2")
        request = snws2.Snws2Request(method, path, query, list(headers), body)
        try:
            prepared = snws2.verify(request, _Keys(tokens), self.clock())  # type: ignore[arg-type]
        except snws2.Snws2Error as exc:
            raise AccessDenied(401, exc.reason) from None
        return tokens[prepared.token_id].token
