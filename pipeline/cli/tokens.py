"""`pipeline token create|list|revoke`: API security tokens, applied to the history log directly."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pipeline.cli.common import history_conn, print_json
from pipeline.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tok = sub.add_parser("token", help="API security tokens (SolarNetwork policies, SNWS2 signing)")
    tok_sub = tok.add_subparsers(title="token commands", metavar="ACTION")
    tcreate = tok_sub.add_parser(
        "create",
        help="make a token; its secret is printed once, never stored",
        description="Write a security_token to the history log and print its id and secret as JSON. "
        "The secret is shown only here: the log keeps SHA-256('SNWS2' + secret), which verifies SNWS2 "
        "signatures (docs/security.md). A read token reads datums within its policy; a node token posts "
        "datums of its nodes (--node required).",
    )
    tcreate.add_argument("--type", choices=["read", "node"], default="read")
    tcreate.add_argument("--node", type=int, action="append", default=[], help="a node ID the token may touch")
    tcreate.add_argument(
        "--source", action="append", default=[], help="a source ID or Ant pattern (/S1/**) the token may touch"
    )
    tcreate.add_argument("--min-aggregation", help="the finest aggregation it may read (e.g. Hour)")
    tcreate.add_argument("--api-path", action="append", default=[], help="an Ant pattern of API paths allowed")
    tcreate.add_argument("--expires", help="not valid after this instant (ISO 8601 with offset)")
    tcreate.add_argument("--name", default="", help="a label for people")
    tcreate.add_argument("--author", default=os.environ.get("USER", "pipeline"), help="who makes the change")
    tcreate.set_defaults(func=cmd_token_create)
    tlist = tok_sub.add_parser("list", help="tokens in force: id, type, policy (no secrets)")
    tlist.set_defaults(func=cmd_token_list)
    trevoke = tok_sub.add_parser("revoke", help="revoke a token (a delete in the history log)")
    trevoke.add_argument("token_id")
    trevoke.add_argument("--author", default=os.environ.get("USER", "pipeline"), help="who makes the change")
    trevoke.add_argument("--comment", default="", help="why")
    trevoke.set_defaults(func=cmd_token_revoke)


def _apply_token_event(
    settings: Settings, token_id: str, op: str, value: dict[str, Any] | None, author: str, comment: str
) -> Any:
    """Apply a security_token event to the history log at once (not through the metadata topic):
    the secret is printed only once the token is stored, and a revoke holds when this returns."""
    import uuid
    from datetime import UTC, datetime

    from processors.metadata import parse_event
    from processors.tokens import TOKEN_ENTITY
    from sinks import history

    event = parse_event(
        {
            "event_id": str(uuid.uuid4()),
            "entity": TOKEN_ENTITY,
            "key": {"token_id": token_id},
            "op": op,
            "value": value,
            "author": author,
            "comment": comment,
            "produced_at": datetime.now(UTC).isoformat(),
        }
    )
    with history_conn(settings) as conn:
        history.migrate(conn)
        return history.apply_event(conn, event)


def cmd_token_create(settings: Settings, args: argparse.Namespace) -> int:
    import secrets

    from processors.security_policy import PolicyError, TokenType
    from processors.tokens import make_token, policy_from_options

    try:
        policy = policy_from_options(args.node, args.source, args.min_aggregation, args.api_path, args.expires)
        made = make_token(
            TokenType.NODE if args.type == "node" else TokenType.READ_NODE_DATA, policy, secrets.choice, args.name
        )
    except PolicyError as exc:
        print(f"pipeline token create: refused: {exc}", file=sys.stderr)
        return 2
    result = _apply_token_event(settings, made.token_id, "upsert", made.value, args.author, args.name)
    if result.status != "applied":
        print(f"pipeline token create: refused by the history log: {result.reason}", file=sys.stderr)
        return 2
    print_json(
        {
            "tokenId": made.token_id,
            "tokenSecret": made.secret,
            "type": made.value["type"],
            "policy": made.value["policy"],
            "note": "the secret is shown only now",
        }
    )
    return 0


def cmd_token_list(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from processors.tokens import public_view
    from sinks import history

    # a listing reads: it never migrates (creates) the log it looks at
    with history_conn(settings) as conn:
        try:
            tokens = history.current_tokens(conn)
        except history.TokensHidden as exc:
            print(f"pipeline token list: {exc}", file=sys.stderr)
            return 1
        except psycopg.errors.UndefinedTable:
            tokens = {}  # no log yet: no token was ever made
        for token_id, value in tokens.items():
            print_json(public_view(token_id, value))
    return 0


def cmd_token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    result = _apply_token_event(settings, args.token_id, "delete", None, args.author, args.comment)
    if result.status != "applied":
        print(f"pipeline token revoke: refused: {result.reason}", file=sys.stderr)
        return 2
    print_json({"tokenId": args.token_id, "revoked": True})
    return 0
