"""Ant-style source ID patterns, as SolarNetwork uses them (Spring's AntPathMatcher subset).

    ?    exactly one character, never "/"
    *    zero or more characters within one path segment (never "/")
    **   as a whole segment: zero or more whole segments, e.g. "/S1/**/M?" matches
         "/S1/M1" and "/S1/B1/F2/M1"; "/S1/**" also matches "/S1" itself.

Matching is case-sensitive and covers the whole source ID. A pattern and a source ID must
agree on a leading "/" (as in Spring). `{name}` URI variables are not supported: braces are
literal. Each pattern is compiled once to a regular expression and cached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

SEPARATOR = "/"
_WILDCARDS = frozenset("*?")


def is_pattern(text: str) -> bool:
    """True when `text` holds a wildcard; a plain source ID matches only itself."""
    return any(ch in _WILDCARDS for ch in text)


def _segment_regex(segment: str, group: str) -> str:
    out: list[str] = []
    prev_star = False
    for ch in segment:
        if ch == "*":
            if not prev_star:  # "a**b" inside a segment is just "a*b"
                out.append(group + "[^/]*)")
            prev_star = True
            continue
        prev_star = False
        out.append(group + "[^/])" if ch == "?" else re.escape(ch))
    return "".join(out)


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str, capture: bool = False) -> re.Pattern[str]:
    """The regex equivalent to `pattern`; use with fullmatch. With `capture`, one group per
    wildcard in order (`?`, a run of `*`, a `**` segment with its separators), the text each matched
    (the topic-mapping rule's `{n}`, pipeline/wire/topics.py)."""
    group = "(" if capture else "(?:"
    segments: list[str] = []
    for seg in pattern.split(SEPARATOR):
        if seg == "**" and segments and segments[-1] == "**":
            continue  # "**/**" means the same as "**"
        segments.append(seg)
    out: list[str] = []
    last = len(segments) - 1
    for idx, seg in enumerate(segments):
        if seg == "**":
            if idx == last:
                if idx == 0:
                    out.append(group + ".*)")  # "**" alone: everything
                else:
                    # out ends with "/": "/S1/**" matches "/S1", "/S1/" and "/S1/x/y"
                    out[-1] = group + "(?:/.*)?)"
            else:
                # zero or more whole segments, each with its trailing separator
                out.append(group + "(?:[^/]+/)*)")
            continue
        out.append(_segment_regex(seg, group))
        if idx != last:
            out.append("/")
    return re.compile("".join(out), re.DOTALL)


def matches(pattern: str, source_id: str) -> bool:
    """Does `source_id` match the Ant pattern `pattern`?"""
    return compile_pattern(pattern).fullmatch(source_id) is not None


@dataclass(frozen=True, slots=True, order=True)
class Specificity:
    """Sort key: a greater value is a more specific pattern (after Spring's AntPatternComparator).

    A literal beats any pattern and "**" alone loses to every other; then fewer wildcards
    ("*" counts 1, "**" counts 2, "?" nothing), then more literal characters, then fewer "?".
    """

    literal: bool
    not_catch_all: bool
    neg_wildcards: int
    literal_chars: int
    neg_questions: int


def specificity(pattern: str) -> Specificity:
    segments = pattern.split(SEPARATOR)
    double = sum(1 for s in segments if s == "**")
    rest = SEPARATOR.join(s for s in segments if s != "**")
    stars = len(re.findall(r"\*+", rest))
    questions = rest.count("?")
    literal_chars = sum(1 for ch in rest if ch not in _WILDCARDS)
    return Specificity(
        not is_pattern(pattern),
        pattern.strip(SEPARATOR) != "**",
        -(stars + 2 * double),
        literal_chars,
        -questions,
    )
