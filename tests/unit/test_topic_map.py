"""The topic-mapping rule (PIPELINE_TOPIC_MAP, pipeline/wire/topics.py): several sourceIds per topic
by Ant pattern, first match wins, group topics under their own head so naming stays injective."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.settings import Settings
from pipeline.wire.topics import GROUP_PREFIX, TopicMapError, TopicRule, Topics, parse_topic_map
from processors.antpath import compile_pattern

LEGAL = re.compile(r"^[A-Za-z0-9._-]+$")
patterns = st.text(alphabet="/*?ab", min_size=1, max_size=12)
sources = st.text(alphabet="/ab", max_size=12)


@given(patterns, sources)
def test_a_rule_matches_exactly_what_the_ant_pattern_matches(pattern: str, source_id: str) -> None:
    """The rule's capturing regex and processors/antpath.py (the security policies' matcher) agree."""
    rule = TopicRule(pattern, "g")
    assert (rule.group_of(source_id) is not None) == (compile_pattern(pattern).fullmatch(source_id) is not None)


@given(st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=64))
def test_a_group_topic_is_never_a_source_topic(source_id: str, group: str) -> None:
    """Injective naming: a group's topic has its own head, whatever the group's name."""
    name = group.replace("{", "(").replace("}", ")")  # a literal name: no wildcard reference
    mapped = Topics.of("p.", [TopicRule("**", name)])
    plain = Topics("p.")
    group_topic = mapped.source(source_id)
    assert group_topic.startswith("p." + GROUP_PREFIX)
    assert group_topic != plain.source(source_id) and group_topic != plain.source(name)
    assert LEGAL.match(group_topic) and len(group_topic) <= 249
    assert plain.source_pattern.match(group_topic) and mapped.source_pattern.match(plain.source(source_id))


def test_wildcards_name_the_group_and_the_first_rule_wins() -> None:
    topics = Topics.of("p.", "/S*/B*/** = S{1}/B{2}; /S1/** = all-of-S1 ; /w?/** = w{1}")
    assert topics.group_of("/S1/B7/M1") == "S1/B7"
    assert topics.group_of("/S1/B7") == "S1/B7"
    assert topics.group_of("/S1/X") == "all-of-S1"  # the first rule needs a B* segment
    assert topics.group_of("/wx/a/b") == "wx"
    assert topics.group_of("/other") is None
    assert topics.source("/S1/B7/M1") == "p.datumgroup.S1.B7"  # '/' reads as '.', as in source topics
    assert topics.source("/S1/B7/M2") == topics.source("/S1/B7/M1")
    assert topics.source("/other") == Topics("p.").source("/other")  # no rule: its own topic, as before


def test_a_double_star_group_takes_whole_segments() -> None:
    topics = Topics.of("", "/site/**/meter = {1}")
    assert topics.group_of("/site/a/b/meter") == "a/b/"
    assert topics.group_of("/site/meter") == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/S1/**", "expected '<Ant pattern of sourceIds> = <group name>'"),
        ("= g", "expected"),
        ("/S1/** =", "expected"),
        ("/S*/** = {3}", "{3} names no wildcard (the pattern has 2)"),
        ("/S1 = {0}", "{0} names no wildcard"),
    ],
)
def test_a_rule_that_cannot_be_read_is_refused_with_its_reason(text: str, message: str) -> None:
    with pytest.raises(TopicMapError, match=re.escape(message)):
        parse_topic_map(text)


def test_empty_map_means_one_topic_per_source() -> None:
    assert parse_topic_map("") == () and parse_topic_map(" ;\n# a comment\n") == ()
    assert Topics.of_settings(Settings()) == Topics("")


def test_the_map_comes_from_the_settings_and_a_bad_one_names_the_variable() -> None:
    settings = Settings.from_env({"PIPELINE_TOPIC_PREFIX": "t.", "PIPELINE_TOPIC_MAP": "/S*/** = S{1}"})
    assert Topics.of_settings(settings).source("/S4/B1/M1") == "t.datumgroup.S4"
    bad = Settings.from_env({"PIPELINE_TOPIC_MAP": "/S*/** = S{3}"})
    with pytest.raises(TopicMapError, match=re.escape("PIPELINE_TOPIC_MAP: rule '/S*/**' = 'S{3}': {3} names no")):
        Topics.of_settings(bad)


def test_every_command_refuses_a_map_it_cannot_read(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    monkeypatch.setenv("PIPELINE_TOPIC_MAP", "/S* = {2}")
    assert main(["topic-name", "/S1"]) == 2
    assert "PIPELINE_TOPIC_MAP: rule '/S*' = '{2}': {2} names no wildcard" in capsys.readouterr().err
    monkeypatch.setenv("PIPELINE_TOPIC_MAP", "/S*/** = S{1}")
    assert main(["topic-name", "/S1/B2/M3"]) == 0
    assert capsys.readouterr().out.strip() == "datumgroup.S1"
