"""Look-alike letters (filterd/confusables.py): disguised words read as Latin, real scripts left alone."""

from __future__ import annotations

import time

from filterd.confusables import fold
from filterd.message import Message
from filterd.rules import shipped_dir
from filterd.rules.loader import load_rules
from filterd.rules.ruleset import RuleSet


def test_mixed_words_read_as_the_latin_words_they_imitate() -> None:
    text, n = fold("Gеt Ѵіаgrа аnd Сіаlіѕ at tһе lоwеѕt рrісеѕ")
    assert text == "Get Viagra and Cialis at the lowest prices" and n == 7  # "at" was Latin already


def test_russian_greek_and_ascii_text_is_left_as_it_is() -> None:
    for plain in ("Привет, как дела? Встреча в среду.", "Καλημέρα σας", "plain ASCII", "Grüße aus Köln"):
        assert fold(plain) == (plain, 0)
    # a Latin brand name beside a Russian word is two words, not a disguise
    assert fold("Купите iPhone сегодня") == ("Купите iPhone сегодня", 0)


def test_a_long_hostile_text_is_read_in_linear_time() -> None:
    hostile = ("аb" * 50_000 + " ") * 20  # two million characters of mixed "words"
    start = time.process_time()
    text, n = fold(hostile)
    assert n == 20 and text.startswith("ab")
    # a long ASCII run before one non-ASCII letter: a pattern free to start anywhere inside a
    # word re-scans the run from every position (quadratic: minutes for these 400 KB)
    assert fold("a" * 200_000 + " é " + "b" * 200_000 + "é") == (
        "a" * 200_000 + " é " + "b" * 200_000 + "é",
        0,
    )
    assert time.process_time() - start < 2.0


def _message(body: str) -> Message:
    return Message(
        b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body.encode() + b"\r\n"
    )


def test_the_rules_see_the_folded_words_and_score_the_disguise() -> None:
    ruleset = RuleSet(load_rules(shipped_dir()))
    disguised = {r.name for r in ruleset.match(_message("Cheap Ѵіаgrа and Сіаlіѕ, nо рrеѕсrірtіоn needed."))}
    assert "MIXED_SCRIPT_WORDS" in disguised and "PHARM_ED_DRUG" in disguised
    russian = {
        r.name for r in ruleset.match(_message("Добрый день! Отчёт за ноябрь во вложении, iPhone тоже."))
    }
    assert "MIXED_SCRIPT_WORDS" not in russian
