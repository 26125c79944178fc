from __future__ import annotations

import random
import time

import pytest

from filterd.bayes import tokenizer
from filterd.bayes.tokenizer import registered_domain, tokenize
from filterd.message import Message
from tests.bayes_helpers import make_message


def tokens_of(raw: bytes) -> list[str]:
    return tokenize(Message(raw))


def test_prefixes_say_where_a_token_came_from() -> None:
    raw = make_message(
        "Free Money inside",
        "Click here to claim your free money at http://www.win.example.co.uk/claim/now today",
        headers=(
            ("X-Mailer", "Bulk Mailer 3.1"),
            ("Received", "from relay.example.com ([192.0.2.77]) by mx"),
        ),
    )
    toks = set(tokens_of(raw))
    assert {"subject:free", "subject:money", "subject:free money"} <= toks
    assert {"click", "free", "money", "bi:click here", "bi:free money"} <= toks
    assert {"from:domain:example.org", "from:addr:someone@example.org", "from:name:someone"} <= toks
    assert {"url:host:www.win.example.co.uk", "url:dom:example.co.uk", "url:path:claim"} <= toks
    assert {"h:x-mailer:bulk", "hn:x-mailer"} <= toks
    assert {"rcvd:net:192.0.2", "rcvd:host:relay.example.com", "rcvd:dom:example.com"} <= toks
    assert "part:ct:text/plain" in toks
    assert len(toks) == len(tokens_of(raw))  # distinct


def test_filter_headers_are_never_learned() -> None:
    raw = make_message(
        "hello",
        "body words",
        headers=(
            ("X-Spam-Status", "Yes, score=99 required=5"),
            ("X-Spam-Flag", "YES"),
            ("X-DSPAM-Result", "Spam"),
            ("X-Bogosity", "Spam, tests=bogofilter"),
            ("X-Filterd-Signature", "abcdef"),
            # other filters' verdicts under other names (all seen in the CSDMC corpus)
            ("X-Virus-Scanned", "clean"),
            ("X-Barracuda-Spam-Score", "40.41"),
            ("X-ASG-Debug-ID", "1270802351-4c3902010001-W4TwRL"),
            ("X-AmavisStatus", "No, score=-11.9"),
            ("XStatus", "No, score=-15.9 required=4.0"),
            ("X-RC-Spam", "0"),
        ),
    )
    toks = tokens_of(raw)
    assert not [
        t
        for t in toks
        if any(w in t for w in ("spam", "bogosity", "filterd", "virus", "asg", "amavis", "xstatus"))
    ]
    assert "hn:x-mailer" not in toks and "hn:message-id" in toks  # other headers still count


def test_cjk_text_becomes_character_bigrams() -> None:
    raw = make_message("免费", "我们提供免费服务 english words").replace(
        b"Message-ID", b"Content-Type: text/plain; charset=utf-8\r\nMessage-ID"
    )
    toks = set(tokens_of(raw))
    assert {"cjk:我们", "cjk:们提", "cjk:免费", "cjk:服务"} <= toks
    assert "我们提供免费服务" not in toks
    assert {"english", "words", "bi:english words"} <= toks


def test_long_words_become_skip_tokens_and_work_is_bounded(monkeypatch) -> None:
    raw = make_message("x", "a" * 40 + " normal " + " ".join(f"w{i}x" for i in range(7000)))
    toks = tokens_of(raw)
    assert "skip:a 40" in toks
    assert "bi:a normal" not in toks and "normal" in toks  # the long word broke the chain
    assert not [t for t in toks if "aaaaaaaaaa" in t]
    bounded = tokenizer.tokens(Message(raw))
    assert len(bounded.words) == tokenizer.MAX_TOKENS and len(bounded.names) <= tokenizer.MAX_TOKENS
    monkeypatch.setattr(tokenizer, "MAX_TEXT_CHARS", 100)
    assert len(tokens_of(raw)) < 100


def test_html_signals() -> None:
    raw = (
        b"From: a@example.org\r\nSubject: hi\r\nContent-Type: text/html\r\n\r\n"
        b'<font color="#ff0000">BUY</font> <span style="display: none">hidden words</span>'
        b'<a href="http://198.51.100.7:8080/x">go</a>'
    )
    toks = set(tokens_of(raw))
    assert {
        "tag:font",
        "tag:span",
        "attr:style:hidden",
        "url:ip",
        "url:net:198.51.100",
        "url:port:8080",
    } <= toks
    assert {"buy", "hidden", "bi:buy hidden"} <= toks


def test_undecodable_header_bytes_give_stable_tokens() -> None:
    raw = b"From: \xff\xfe Bad <bad@example.org>\r\nSubject: caf\xe9 \xe0 la carte\r\n\r\nbody\r\n"
    first, second = tokens_of(raw), tokens_of(raw)
    assert first == second
    assert "subject:café" in first
    for t in first:
        t.encode("utf-8")  # the hasher needs encodable strings


def test_registered_domain() -> None:
    assert registered_domain("a.b.example.com") == "example.com"
    assert registered_domain("www.shop.example.co.uk") == "example.co.uk"
    assert registered_domain("example.com.") == "example.com"
    assert registered_domain("localhost") == "localhost"


def _header_cost(value: bytes) -> float:
    raw = b"From: a@example.com\r\nTo: " + value + b"\r\nSubject: hi\r\n\r\nbody\r\n"
    tokenizer._HEADER_CACHE.clear()
    started = time.process_time()
    tokenizer.tokens(Message(raw))
    return time.process_time() - started


@pytest.mark.parametrize(
    "unit",
    [b"a", b"a.", b"a-", b"x@", b"a.@a.", b"User 1 <user1@example.net>, ", b"=?utf-8?q?a?= "],
)
def test_a_huge_address_header_tokenizes_in_linear_time(unit: bytes) -> None:
    """34 KB of "a." in a To: took 4 s (the address regex tried every start position)."""
    small_value, large_value = unit * (34_000 // len(unit)), unit * (340_000 // len(unit))
    _header_cost(small_value)
    small = min(_header_cost(small_value) for _ in range(3))
    large = _header_cost(large_value)
    assert large < 30 * max(small, 0.002), (small, large)


def test_addresses_found_as_the_regex_finds_them() -> None:
    rng = random.Random(7)
    alphabet = "ab.@-_+x1 <>,é'"
    for _ in range(5_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert tokenizer._address_spans(text) == [m.span() for m in tokenizer._ADDRESS.finditer(text)], text
