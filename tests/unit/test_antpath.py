"""Ant-style source patterns: examples, and Hypothesis against a plain recursive matcher."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.antpath import compile_pattern, is_pattern, matches, specificity


@pytest.mark.parametrize(
    ("pattern", "source", "expected"),
    [
        ("/S1/**/M?", "/S1/M1", True),
        ("/S1/**/M?", "/S1/B1/M1", True),
        ("/S1/**/M?", "/S1/B1/F2/M9", True),
        ("/S1/**/M?", "/S1/B1/M12", False),
        ("/S1/**/M?", "/S2/B1/M1", False),
        ("/S1/INV?", "/S1/INV1", True),
        ("/S1/INV?", "/S1/INV", False),
        ("/S1/INV?", "/S1/INV/", False),
        ("/S1/WX", "/S1/WX", True),
        ("/S1/WX", "/S1/wx", False),  # case-sensitive
        ("/otherm-data/*", "/otherm-data/0d6e-4f", True),
        ("/otherm-data/*", "/otherm-data/a/b", False),
        ("/S1/**", "/S1", True),
        ("/S1/**", "/S1/a/b/c", True),
        ("**", "anything/at/all", True),
        ("/S1/*", "/S1/", True),
        ("S1", "/S1", False),  # leading separators must agree
        ("/a.b", "/aXb", False),  # regex characters are literal
        ("/M[1]", "/M[1]", True),
    ],
)
def test_examples(pattern: str, source: str, expected: bool) -> None:
    assert matches(pattern, source) is expected


def test_compiled_once() -> None:
    assert compile_pattern("/S1/**/M?") is compile_pattern("/S1/**/M?")


def test_specificity_orders_literal_first() -> None:
    ranked = sorted(["/S1/**", "/S1/**/M?", "/S1/B1/M?", "/S1/B1/M1", "**"], key=specificity)
    assert ranked[-1] == "/S1/B1/M1"
    assert ranked[0] == "**"
    assert specificity("/S1/B1/M?") > specificity("/S1/**/M?")


# --- property tests against an independent segment matcher --------------------------------


def _segment_ok(pattern: str, text: str) -> bool:
    if not pattern:
        return not text
    head = pattern[0]
    if head == "*":
        return any(_segment_ok(pattern[1:], text[k:]) for k in range(len(text) + 1))
    if not text:
        return False
    if head == "?" or head == text[0]:
        return _segment_ok(pattern[1:], text[1:])
    return False


def _segments_ok(pats: list[str], parts: list[str]) -> bool:
    if not pats:
        return not parts
    if pats[0] == "**":
        if len(pats) == 1:
            return True
        # "**" takes zero or more non-empty segments
        return any(_segments_ok(pats[1:], parts[k:]) for k in range(len(parts) + 1) if all(parts[:k]))
    return bool(parts) and _segment_ok(pats[0], parts[0]) and _segments_ok(pats[1:], parts[1:])


def reference(pattern: str, path: str) -> bool:
    return _segments_ok(pattern.split("/"), path.split("/"))


segment = st.text(alphabet="ab1", min_size=0, max_size=3)
paths = st.lists(segment, min_size=1, max_size=5).map("/".join)
pattern_segment = st.one_of(st.text(alphabet="ab1?*", min_size=0, max_size=3), st.just("**"))
patterns = st.lists(pattern_segment, min_size=1, max_size=5).map("/".join)


@settings(max_examples=400, deadline=None)
@given(patterns, paths)
def test_agrees_with_reference(pattern: str, path: str) -> None:
    assert matches(pattern, path) is reference(pattern, path)


@settings(max_examples=200, deadline=None)
@given(paths)
def test_literal_matches_only_itself(path: str) -> None:
    assert not is_pattern(path)
    assert matches(path, path)
    assert not matches(path, path + "x")


@settings(max_examples=200, deadline=None)
@given(paths, st.data())
def test_question_mark_stands_for_any_one_character(path: str, data: st.DataObject) -> None:
    positions = [i for i, ch in enumerate(path) if ch != "/"]
    if not positions:
        return
    i = data.draw(st.sampled_from(positions))
    assert matches(path[:i] + "?" + path[i + 1 :], path)


@settings(max_examples=200, deadline=None)
@given(paths, paths)
def test_double_star_suffix_matches_everything_below(prefix: str, rest: str) -> None:
    base = "/" + prefix.strip("/") if prefix.strip("/") else "/S"
    assert matches(base + "/**", base)
    assert matches(base + "/**", base + "/" + rest)
