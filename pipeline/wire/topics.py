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
from dataclasses import dataclass

from processors.name_encoding import TOPIC

DATUM_PREFIX = "datum."
TOPIC_MAX = 249
HASHED = "--"

# The topic format of the shared encoding (series names use the same one, keeping `_` too).
encode_source = TOPIC.encode
decode_source = TOPIC.decode


@dataclass(frozen=True)
class Topics:
    """Every topic name the pipeline uses, for one deployment prefix."""

    prefix: str = ""

    def source(self, source_id: str) -> str:
        head = self.prefix + DATUM_PREFIX
        encoded = encode_source(source_id)
        if len(head) + len(encoded) > TOPIC_MAX:
            # surrogatepass: as the plain encoding, total (the same bytes for any valid text)
            encoded = HASHED + hashlib.sha256(source_id.encode("utf-8", "surrogatepass")).hexdigest()
        return head + encoded

    def source_id_of(self, topic: str) -> str | None:
        """The sourceId of a plain source topic; None for other topics and hashed names."""
        head = self.prefix + DATUM_PREFIX
        if not topic.startswith(head) or topic.startswith(head + HASHED):
            return None
        return decode_source(topic[len(head) :])

    @property
    def source_pattern(self) -> re.Pattern[str]:
        """Matches every per-source datum topic of this deployment."""
        return re.compile("^" + re.escape(self.prefix + DATUM_PREFIX) + r"[A-Za-z0-9.\-]*$")

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
