"""Fuzzing the content readers: the message parser, the HTML scanner, the Bayes tokenizer, the rules.

Invariants, for every input: no exception, and each call within the time bound (tests/fuzz/harness.py).
Inputs are corpus and built-in seeds damaged byte by byte or disguised structurally
(tests/fuzz/strategies.py), and for the HTML scanner markup made of known traps."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings

from filterd.bayes.tokenizer import tokenize, tokens
from filterd.config import known_symbols
from filterd.htmlscan import scan_html
from filterd.message import Message
from filterd.rules import RuleSet, load_rule_set
from tests.fuzz.harness import examples, exercise
from tests.fuzz.strategies import html_fragments, messages, repeated_html

HEADERS = ("Subject", "From", "To", "Reply-To", "Content-Type", "Message-ID", "Received")

# the inputs are messages of up to a few hundred KB: hypothesis says so when it prints one
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


@cache
def shipped_rules() -> RuleSet:
    return load_rule_set(reserved=known_symbols())


def read_everything(raw: bytes) -> Message:
    """Touch every lazily computed view of the message, as the checks together do."""
    msg = Message(raw)
    assert isinstance(msg.headers, list)
    for name in HEADERS:
        msg.header_values(name)
        value = msg.decoded_header(name)
        assert value is None or isinstance(value, str)
    for node in msg.mime:
        node.payload()
        node.text() if node.is_text else node.size()
    assert len(msg.leaves) <= len(msg.mime)
    assert all(p.size >= 0 for p in msg.parts)
    assert isinstance(msg.plain, str) and isinstance(msg.html, str) and isinstance(msg.text, str)
    assert all(isinstance(u, str) for u in msg.urls)
    return msg


@settings(max_examples=examples(260))
@given(messages())
def test_message_parsing_never_raises_and_is_bounded(raw: bytes) -> None:
    exercise("message", raw, lambda: read_everything(raw))


@settings(max_examples=examples(200))
@given(messages())
def test_bayes_tokenizer_never_raises_and_is_bounded(raw: bytes) -> None:
    def run() -> None:
        msg = Message(raw)
        t = tokens(msg)
        assert all(isinstance(n, str) for n in t.names)
        tokenize(msg)

    exercise("tokenizer", raw, run)


@settings(max_examples=examples(200))
@given(messages())
def test_shipped_rules_never_raise_and_are_bounded(raw: bytes) -> None:
    rules = shipped_rules()  # compiled before the first input is timed
    exercise("rules", raw, lambda: rules.match(Message(raw)))


@settings(max_examples=examples(250))
@given(html_fragments)
def test_html_scanner_on_random_markup(markup: str) -> None:
    exercise("html", markup.encode("utf-8", "surrogatepass"), lambda: scan_html(markup).attrs)


@settings(max_examples=examples(60))
@given(repeated_html())
def test_html_scanner_on_repeated_traps(markup: str) -> None:
    exercise("html_repeated", markup.encode("utf-8", "surrogatepass"), lambda: scan_html(markup).attrs)
