"""Loading rule files: the admin's overrides, and every kind of broken file naming file and rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from filterd.config import parse_config
from filterd.driver import scan
from filterd.pipeline import Pipeline
from filterd.rules import RuleError, load_rule_set, meta
from filterd.settings import ConfigError
from tests.rules_support import message, names, rule_dir, rules_from

SHIPPED = """
[SPAMMY]
kind = "body"
pattern = '(?i)cheap pills'
score = 2.0
description = "sells pills"

[__PART]
kind = "body"
pattern = 'lunch'

[COMBO]
kind = "meta"
expression = "SPAMMY && __PART"
score = 1.0
description = "pills at lunch"
"""


def test_local_dir_overrides_score_and_description(tmp_path: Path) -> None:
    rs = rules_from(tmp_path, SHIPPED, local='[SPAMMY]\nscore = 0.5\ndescription = "pills (local)"\n')
    rule = rs.by_name["SPAMMY"]
    assert rule.score == 0.5 and rule.description == "pills (local)"
    assert rule.kind == "body" and rule.pattern == "(?i)cheap pills"  # the rest is the shipped rule's
    assert "local.toml" in rule.source


def test_local_dir_disables_a_rule_and_metas_see_it_as_not_hit(tmp_path: Path) -> None:
    rs = rules_from(tmp_path, SHIPPED, local="[SPAMMY]\nenabled = false\n")
    assert names(rs, message(body="cheap pills for lunch")) == {"__PART"}


def test_local_dir_adds_and_replaces_rules(tmp_path: Path) -> None:
    local = """
    [SPAMMY]
    kind = "header"
    header = "Subject"
    pattern = 'pills'
    score = 3.0
    description = "pills in the subject"

    [MINE]
    kind = "body"
    pattern = 'our-secret-word'
    score = -5
    description = "our own word: not spam"
    """
    rs = rules_from(tmp_path, SHIPPED, local=local)
    assert rs.by_name["SPAMMY"].kind == "header"
    assert names(rs, message(body="cheap pills", subject="hi")) == set()
    assert names(rs, message(body="our-secret-word", subject="pills")) == {"SPAMMY", "MINE"}
    assert rs.by_name["MINE"].score == -5.0


def test_the_check_reports_rule_scores_and_descriptions(tmp_path: Path) -> None:
    base = rule_dir(tmp_path, "default", {"r.toml": SHIPPED})
    local = rule_dir(tmp_path, "local", {"l.toml": "[SPAMMY]\nscore = 4.5\n"})
    cfg = parse_config({"checks": {"rules": {"default_dir": str(base), "local_dir": str(local)}}})
    pipeline = Pipeline.from_config(cfg)
    raw = b"From: a@example.com\r\nSubject: x\r\n\r\ncheap pills for lunch\r\n"
    _, verdict = scan(pipeline, raw)
    found = {s.name: s for s in verdict.symbols}
    assert found["SPAMMY"].score == 4.5 and found["SPAMMY"].reason == "sells pills"
    assert found["COMBO"].score == 1.0
    assert "__PART" not in found  # __ rules only feed metas


# --- broken files: each error names the file and the rule --------------------------------------

BROKEN = [
    (
        "bad regex",
        '[BAD_RE]\nkind = "body"\npattern = \'(unclosed\'\ndescription = "x"\n',
        "BAD_RE",
        "bad regular expression '(unclosed': missing )",
    ),
    ("unknown kind", '[ODD]\nkind = "bodyy"\npattern = "x"\ndescription = "x"\n', "ODD", "is not one of"),
    (
        "unknown key",
        '[TYPO]\nkind = "body"\npatern = "x"\ndescription = "x"\n',
        "TYPO",
        "unknown key 'patern'",
    ),
    (
        "meta names an unknown rule",
        '[M]\nkind = "meta"\nexpression = "A && NOPE"\ndescription = "x"\n'
        '[A]\nkind = "body"\npattern = "a"\ndescription = "a"\n',
        "M",
        "unknown rule NOPE",
    ),
    (
        "meta cycle",
        '[M1]\nkind = "meta"\nexpression = "M2 || A"\ndescription = "x"\n'
        '[M2]\nkind = "meta"\nexpression = "!M1"\ndescription = "x"\n'
        '[A]\nkind = "body"\npattern = "a"\ndescription = "a"\n',
        "M1",
        "M1 -> M2 -> M1",
    ),
    ("meta syntax", '[M]\nkind = "meta"\nexpression = "A &"\ndescription = "x"\n', "M", "use && and ||"),
    ("missing description", '[NODESC]\nkind = "body"\npattern = "x"\n', "NODESC", "description is missing"),
    ("score on a __ rule", '[__H]\nkind = "body"\npattern = "x"\nscore = 1\n', "__H", "has no score"),
    (
        "wrong type",
        '[T]\nkind = "body"\npattern = "x"\nscore = "high"\ndescription = "x"\n',
        "T",
        "expected a number",
    ),
    ("bad name", '[lower_case]\nkind = "body"\npattern = "x"\ndescription = "x"\n', "lower_case", "A-Z"),
    (
        "reserved name",
        '[MISSING_DATE]\nkind = "body"\npattern = "x"\ndescription = "x"\n',
        "MISSING_DATE",
        "symbol of another check",
    ),
    (
        "unknown helper",
        '[H]\nkind = "helper"\ntest = "magic"\ndescription = "x"\n',
        "H",
        "is not one of",
    ),
    (
        "helper parameter out of range",
        '[H]\nkind = "helper"\ntest = "subject_caps"\nmin_ratio = 2.0\ndescription = "x"\n',
        "H",
        "out of range",
    ),
    (
        "header rule without pattern",
        '[H]\nkind = "header"\nheader = "Subject"\ndescription = "x"\n',
        "H",
        "needs a pattern",
    ),
    (
        "uri rule with both",
        '[U]\nkind = "uri"\npattern = "x"\nhosts = ["a.example"]\ndescription = "x"\n',
        "U",
        "exactly one",
    ),
]


@pytest.mark.parametrize(("case", "text", "rule", "words"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_rule_file_names_file_and_rule(
    tmp_path: Path, case: str, text: str, rule: str, words: str
) -> None:
    d = rule_dir(tmp_path, "default", {"50_broken.toml": text})
    with pytest.raises(RuleError) as info:
        load_rule_set(d, reserved={"MISSING_DATE"})
    message_text = str(info.value)
    assert "50_broken.toml" in message_text
    assert f"rule {rule}" in message_text
    assert words in message_text


def test_not_toml_and_duplicates_name_the_files(tmp_path: Path) -> None:
    d = rule_dir(tmp_path, "a", {"10_x.toml": "[A\nkind="})
    with pytest.raises(RuleError, match=r"10_x\.toml: not valid TOML"):
        load_rule_set(d)
    d = rule_dir(
        tmp_path,
        "b",
        {
            "10_x.toml": '[A]\nkind = "body"\npattern = "a"\ndescription = "a"\n',
            "20_y.toml": '[A]\nkind = "body"\npattern = "b"\ndescription = "b"\n',
        },
    )
    with pytest.raises(RuleError, match=r"20_y\.toml: rule A: already defined in .*10_x\.toml"):
        load_rule_set(d)


def test_override_of_a_rule_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match=r"local\.toml: rule GHOST: no such rule to override"):
        rules_from(tmp_path, SHIPPED, local="[GHOST]\nscore = 1\n")
    with pytest.raises(RuleError, match=r"rule SPAMMY: unknown key 'pattern' in an override"):
        rules_from(tmp_path / "2", SHIPPED, local="[SPAMMY]\npattern = 'x'\n")


def test_missing_local_dir_is_an_error(tmp_path: Path) -> None:
    d = rule_dir(tmp_path, "default", {"r.toml": SHIPPED})
    with pytest.raises(RuleError, match="local rule directory not found"):
        load_rule_set(d, tmp_path / "nope")


def test_filterd_refuses_to_start_on_a_broken_rule(tmp_path: Path) -> None:
    """The check raises ConfigError from its constructor: the daemon refuses to start, and a
    reload (which builds the new pipeline before swapping) keeps the old one."""
    good = rule_dir(tmp_path, "default", {"r.toml": SHIPPED})
    bad = rule_dir(
        tmp_path, "local", {"90_mine.toml": '[MINE]\nkind = "body"\npattern = "(x"\ndescription = "x"\n'}
    )
    cfg = parse_config({"checks": {"rules": {"default_dir": str(good), "local_dir": str(bad)}}})
    with pytest.raises(ConfigError, match=r"90_mine\.toml: rule MINE: pattern: bad regular expression"):
        Pipeline.from_config(cfg)
    old = Pipeline.from_config(parse_config({"checks": {"rules": {"default_dir": str(good)}}}))
    with pytest.raises(ConfigError):
        Pipeline.from_config(cfg)  # the reload attempt fails ...
    assert any(c.name == "rules" for c in old.checks)  # ... and the running pipeline is untouched


# --- the meta expression parser -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "hits", "expected"),
    [
        ("A && B || C", {"C"}, True),  # && binds tighter than ||
        ("A && (B || C)", {"C"}, False),
        ("!A && B", {"B"}, True),
        ("!!A", {"A"}, True),
        ("!(A || B)", set(), True),
        ("A || B && !C", {"B", "C"}, False),
        ("(A)", {"A"}, True),
    ],
)
def test_meta_precedence(expr: str, hits: set[str], expected: bool) -> None:
    assert meta.parse(expr).evaluate(hits) is expected


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("", "empty"),
        ("A &&", "at the end"),
        ("(A || B", "')'"),
        ("A B", "unexpected 'B'"),
        ("A and B", "unexpected 'and'"),
        ("A | B", "use && and ||"),
        ("A + 1", "unexpected '+'"),
        ("(" * 60 + "A" + ")" * 60, "nested more than"),
    ],
)
def test_meta_syntax_errors(expr: str, words: str) -> None:
    with pytest.raises(meta.MetaSyntaxError, match=re.escape(words)):
        meta.parse(expr)


def test_meta_names() -> None:
    assert meta.parse("A && (B || !C_1)").names == {"A", "B", "C_1"}
