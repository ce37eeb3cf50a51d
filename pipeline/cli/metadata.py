"""Commands of the metadata history log: publish events and datamodels, set operations, time travel."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.cli.common import embedded_defaults, history_conn, parse_when, print_json
from pipeline.settings import Settings
from processors.metadata import EntityState


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    meta = sub.add_parser("metadata", help="publish metadata changes to the metadata topic")
    meta_sub = meta.add_subparsers(title="metadata commands", metavar="ACTION")
    apply_p = meta_sub.add_parser(
        "apply",
        help="publish metadata events (JSON array or one object per line)",
        description="Check every event against the event schema (docs/history.md), then publish "
        "them to the metadata topic; a worker applies them to the PostgreSQL history log in order. "
        "One bad event refuses the whole file.",
    )
    apply_p.add_argument("files", nargs="+", type=Path)
    apply_p.set_defaults(func=cmd_metadata_apply)
    dm = meta_sub.add_parser(
        "datamodels",
        help="register OpenGate datamodel files and a bindings.json",
        description="Check datamodel files (every template rule) and bindings.json, then publish "
        "them as datamodel and source_binding events. A bad file refuses the whole set. The same "
        "content gives the same event ids, so publishing twice changes nothing.",
    )
    dm.add_argument("files", nargs="+", type=Path, help="datamodel JSON files, bindings.json, or a directory")
    dm.add_argument("--author", default=os.environ.get("USER", "pipeline"), help="who makes the change")
    dm.add_argument("--comment", default="", help="why (EBAS's --transcomment)")
    dm.set_defaults(func=cmd_metadata_datamodels)

    setp = sub.add_parser(
        "set",
        help="send a value to a device datastream (WRITE access only)",
        description="A set operation: accepted only for datastreams whose access includes WRITE and "
        "whose JSON Schema the value satisfies; accepted commands go to the node's command topic "
        "(node.<id>.commands) for its gateway. Refusals print their reason and exit 2.",
    )
    setp.add_argument("node_id", type=int)
    setp.add_argument("datastream", help="datastream identifier, e.g. energy.meter.relay")
    setp.add_argument("value", help="the value as JSON (e.g. 5000, '\"open\"')")
    setp.add_argument("--source", help="sourceId of the device (needed when bindings use patterns)")
    setp.set_defaults(func=cmd_set)

    hist = sub.add_parser("history", help="time travel in the metadata history log")
    hist_sub = hist.add_subparsers(title="history commands", metavar="ACTION")
    state = hist_sub.add_parser("state", help="the metadata as recorded at transaction time T (EBAS --state)")
    state.add_argument("--at", required=True, help="transaction time, ISO 8601 with offset, or 'now'")
    state.add_argument("--entity", help="only this entity type (e.g. node, datastream_template)")
    state.set_defaults(func=cmd_history_state)
    hdiff = hist_sub.add_parser("diff", help="what was added, changed and deleted between two states (EBAS --diff)")
    hdiff.add_argument("--from", dest="t_from", required=True, help="ISO 8601 transaction time")
    hdiff.add_argument("--to", dest="t_to", default="now", help="ISO 8601 transaction time (default now)")
    hdiff.add_argument("--entity", help="only this entity type")
    hdiff.set_defaults(func=cmd_history_diff)
    valid = hist_sub.add_parser("valid", help="which value held for data time T, as known at transaction time K")
    valid.add_argument("entity")
    valid.add_argument("key", help="the key as JSON, e.g. '{\"node_id\": 1}'")
    valid.add_argument("--data-time", required=True)
    valid.add_argument("--known-at", default=None)
    valid.set_defaults(func=cmd_history_valid)


def _publish_events(settings: Settings, events: list[dict[str, Any]]) -> None:
    import json

    from pipeline.wire.producer import DatumProducer

    producer = DatumProducer(settings)
    topic = producer.topics.metadata
    producer.admin.ensure([topic])
    for e in events:
        producer.send_raw(
            topic,
            json.dumps(e, separators=(",", ":")).encode(),
            key=f"{e['entity']}:{json.dumps(e['key'], sort_keys=True)}".encode(),
        )
    producer.flush()
    print(f"published {len(events)} metadata event(s) to {topic}")


def cmd_set(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from pipeline.gateway.commands import send_set_request

    settings = embedded_defaults(settings)
    try:
        value = json.loads(args.value)
    except json.JSONDecodeError:
        value = args.value  # a bare word is a string
    result = send_set_request(
        settings, args.node_id, args.datastream, value, args.source, os.environ.get("USER", "pipeline")
    )
    print_json(result)
    return 0 if result["accepted"] else 2


def cmd_metadata_apply(settings: Settings, args: argparse.Namespace) -> int:
    settings = embedded_defaults(settings)
    from pipeline.history.events import read_event_file
    from processors.metadata import MetadataEventError

    try:
        events = [e for path in args.files for e in read_event_file(path)]
    except (MetadataEventError, ValueError) as exc:
        print(f"pipeline metadata apply: refused, nothing published: {exc}", file=sys.stderr)
        return 2
    _publish_events(settings, events)
    return 0


def cmd_metadata_datamodels(settings: Settings, args: argparse.Namespace) -> int:
    settings = embedded_defaults(settings)
    from pipeline.history.events import datamodel_events

    paths: list[Path] = []
    for p in args.files:
        paths.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    try:
        events = datamodel_events(paths, args.author, args.comment)
    except ValueError as exc:  # DatamodelError, BindingError, MetadataEventError, JSON errors
        print(f"pipeline metadata datamodels: refused, nothing published: {exc}", file=sys.stderr)
        return 2
    _publish_events(settings, events)
    return 0


def state_json(row: EntityState) -> dict[str, Any]:
    """One entity's state as `history state` and `history valid` print it."""
    return {
        "entity": row.entity,
        "key": row.key,
        "value": row.value,
        "valid": row.valid.as_json() if row.valid else None,
        "known_since": row.known_since,
    }


def cmd_history_state(settings: Settings, args: argparse.Namespace) -> int:
    from sinks import history

    with history_conn(settings) as conn:
        for row in history.state_at(conn, parse_when(args.at), args.entity):
            print_json(state_json(row))
    return 0


def cmd_history_diff(settings: Settings, args: argparse.Namespace) -> int:
    from sinks import history

    with history_conn(settings) as conn:
        for ch in history.diff(conn, parse_when(args.t_from), parse_when(args.t_to), args.entity):
            print_json(
                {
                    "change": ch.kind,
                    "entity": ch.entity,
                    "key": ch.key,
                    "valid_from": ch.valid_from,
                    "before": ch.before.value if ch.before else None,
                    "after": ch.after.value if ch.after else None,
                }
            )
    return 0


def cmd_history_valid(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from sinks import history

    with history_conn(settings) as conn:
        row = history.valid_at(
            conn,
            args.entity,
            json.loads(args.key),
            parse_when(args.data_time),
            parse_when(args.known_at) if args.known_at else None,
        )
    if row is None:
        print("no value", file=sys.stderr)
        return 1
    print_json(state_json(row))
    return 0
