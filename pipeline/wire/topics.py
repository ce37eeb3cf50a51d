"""Topic names: defined here once.

Datums go to one topic per source. The sourceId is mapped to a legal Kafka topic name by the
injective (collision-free, reversible) encoding of processors/name_encoding.py, keeping ASCII
letters and digits:

* ASCII letters and digits stay as they are;
* ``/`` becomes ``.`` (so ``/S1/B1/M1`` reads as ``datum..S1.B1.M1``);
* every other character becomes ``-HH`` for each byte of its UTF-8 encoding (``_`` → ``-5F``,
  ``.`` → ``-2E``, ``-`` → ``-2D``, space → ``-20``).

The result only uses ``[A-Za-z0-9.-]``, which Kafka allows, and never ``_``: Kafka warns that
topics differing only by ``.`` versus ``_`` collide in its metric names, which therefore cannot
happen here. An ASCII sourceId of 64 characters encodes to at most 192 characters. A longer
encoding (non-ASCII sourceIds take up to 12 characters per character) would pass Kafka's 249
limit; those sources use ``--`` + the SHA-256 of the sourceId instead. ``--`` never occurs in
the plain encoding (a ``-`` there is always followed by two hex digits, and ``-`` itself is
``-2D``), so hashed names cannot collide with plain ones.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from processors.antpath import compile_pattern
from processors.name_encoding import TOPIC

if TYPE_CHECKING:
    from pipeline.settings import Settings

DATUM_PREFIX = "datum."
# Topics of a topic-mapping rule's groups: another head than DATUM_PREFIX's, so that a group's
# name never equals a source's (docs/scale-out.md, "The topic-mapping rule").
GROUP_PREFIX = "datumgroup."
TOPIC_MAX = 249
HASHED = "--"

# The topic format of the shared encoding (series names use the same one, keeping `_` too).
encode_source = TOPIC.encode
decode_source = TOPIC.decode


class TopicMapError(ValueError):
    """PIPELINE_TOPIC_MAP cannot be read; the message names the rule and why."""


_CAPTURE = re.compile(r"\{(\d+)\}")


@dataclass(frozen=True)
class TopicRule:
    """`<Ant pattern of sourceIds> = <group name>`: matching sources share the group's topic. The
    name may hold `{n}`, the text the n-th wildcard of the pattern matched (from 1)."""

    pattern: str
    group: str
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", compile_pattern(self.pattern, capture=True))
        for ref in _CAPTURE.findall(self.group):
            if not 1 <= int(ref) <= self.regex.groups:
                raise TopicMapError(
                    f"rule {self.pattern!r} = {self.group!r}: {{{ref}}} names no wildcard"
                    f" (the pattern has {self.regex.groups})"
                )

    def group_of(self, source_id: str) -> str | None:
        """The group name for `source_id`; None when the pattern does not match it."""
        found = self.regex.fullmatch(source_id)
        if found is None:
            return None
        return _CAPTURE.sub(lambda ref: found.group(int(ref.group(1))), self.group)


def parse_topic_map(text: str) -> tuple[TopicRule, ...]:
    """PIPELINE_TOPIC_MAP: rules `<pattern> = <group>`, separated by `;` or new lines, first match
    wins. Empty text: no rule (one topic per source)."""
    rules: list[TopicRule] = []
    for raw in re.split(r"[;\n]", text):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, eq, group = (part.strip() for part in line.partition("="))
        if not eq or not pattern or not group:
            raise TopicMapError(f"rule {line!r}: expected '<Ant pattern of sourceIds> = <group name>'")
        rules.append(TopicRule(pattern, group))
    return tuple(rules)


@lru_cache(maxsize=65536)
def _named(head: str, name: str) -> str:
    encoded = encode_source(name)
    if len(head) + len(encoded) > TOPIC_MAX:
        # surrogatepass: as the plain encoding, total (the same bytes for any valid text)
        encoded = HASHED + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return head + encoded


@dataclass(frozen=True)
class Topics:
    """Every topic name the pipeline uses, for one deployment prefix and topic map."""

    prefix: str = ""
    # the topic-mapping rule (PIPELINE_TOPIC_MAP), first match wins; empty: one topic per source
    topic_map: tuple[TopicRule, ...] = ()

    @classmethod
    def of(cls, prefix: str, topic_map: str | Iterable[TopicRule] = "") -> Topics:
        rules = parse_topic_map(topic_map) if isinstance(topic_map, str) else tuple(topic_map)
        return cls(prefix, rules)

    @classmethod
    def of_settings(cls, settings: Settings) -> Topics:
        """The deployment's topics: PIPELINE_TOPIC_PREFIX and PIPELINE_TOPIC_MAP."""
        try:
            return cls.of(settings.topic_prefix, settings.topic_map)
        except TopicMapError as exc:
            raise TopicMapError(f"PIPELINE_TOPIC_MAP: {exc}") from None

    def group_of(self, source_id: str) -> str | None:
        """The topic-mapping group of `source_id`; None when it keeps a topic of its own."""
        for rule in self.topic_map:
            group = rule.group_of(source_id)
            if group is not None:
                return group
        return None

    def source(self, source_id: str) -> str:
        """The topic the datums of `source_id` go to: its group's, or its own."""
        group = self.group_of(source_id)
        if group is not None:
            return _named(self.prefix + GROUP_PREFIX, group)
        return _named(self.prefix + DATUM_PREFIX, source_id)

    def source_id_of(self, topic: str) -> str | None:
        """The sourceId of a plain source topic; None for other topics and hashed names."""
        head = self.prefix + DATUM_PREFIX
        if not topic.startswith(head) or topic.startswith(head + HASHED):
            return None
        return decode_source(topic[len(head) :])

    @property
    def source_pattern(self) -> re.Pattern[str]:
        """Matches every datum topic of this deployment: per source and per group (whatever the
        map says now: a topic of an earlier map is still read until it is drained)."""
        heads = "|".join(re.escape(self.prefix + head) for head in (DATUM_PREFIX, GROUP_PREFIX))
        return re.compile("^(?:" + heads + r")[A-Za-z0-9.\-]*$")

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}pipeline.deadletter"

    @property
    def rollup_stale(self) -> str:
        """Stale-bucket marks: (stream, changed readings) the rollup agent recomputes from."""
        return f"{self.prefix}pipeline.rollup-stale"

    @property
    def metadata(self) -> str:
        return f"{self.prefix}pipeline.metadata"

    @property
    def auxiliary(self) -> str:
        """SolarNetwork auxiliary records (meter Reset markers): store, delete and move changes."""
        return f"{self.prefix}pipeline.datum-auxiliary"

    def partitions(self, topic: str, default: int) -> int:
        """Metadata and dead letters keep one partition: metadata events must apply in the order
        they were produced, and one partition keeps dead letters in arrival order."""
        return 1 if topic in (self.metadata, self.deadletter) else default

    def commands(self, node_id: int) -> str:
        """Set operations for one node's gateway."""
        return f"{self.prefix}node.{node_id}.commands"


def stream_key(node_id: int, source_id: str) -> bytes:
    """Message key: one (node, source) stream always lands on one partition, in order."""
    return f"{node_id}\x1f{source_id}".encode()
