"""The smallest inputs found by the fuzz tests that break an invariant, one test each.

Each failed when it was found (the comments give the cost then) and guards its fix now.  Sizes
are chosen so that the old quadratic code took seconds, far past what linear work on these sizes
costs (milliseconds)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from filterd.bayes.tokenizer import tokens
from filterd.config import known_symbols, parse_config
from filterd.driver import scan
from filterd.htmlscan import scan_html
from filterd.message import Message
from filterd.pipeline import Pipeline
from filterd.quarantine.store import QuarantineSettings, QuarantineStore
from filterd.rules import load_rule_set
from filterd.rules.targets import Targets
from filterd.settings import ConfigError
from tests.fuzz import mutations as m
from tests.fuzz.offline import offline_pipeline

LINEAR = 0.5  # seconds: generous for inputs of 20-120 KB that linear-time code reads in ~10 ms


def seconds(call: object) -> float:
    assert callable(call)
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def test_html_with_many_unclosed_comments_is_scanned_in_linear_time() -> None:
    assert seconds(lambda: scan_html("<!--" * 6000)) < LINEAR  # 24 KB; 1.4 s here, 174 s at 200 KB


def test_html_with_many_unclosed_start_tags_is_scanned_in_linear_time() -> None:
    assert seconds(lambda: scan_html("<a href='http://x.example/\n" * 3000)) < LINEAR  # 81 KB; 1.5 s


def test_a_long_address_header_is_tokenized_in_linear_time() -> None:
    raw = b"To: " + b"x" * 30_000 + b"\r\n\r\nhi\r\n"
    assert seconds(lambda: tokens(Message(raw))) < LINEAR  # 4.5 s here; 53 s at 130 KB (From:)


def test_a_long_received_header_is_tokenized_in_linear_time() -> None:
    raw = b"Received: " + b"1.2.3." * 3000 + b"\r\n\r\nhi\r\n"
    assert seconds(lambda: tokens(Message(raw))) < LINEAR  # 18 KB: 2.9 s here; 120 KB: 100 s


def test_base64_text_after_a_line_that_is_not_a_header_is_still_read() -> None:
    # fast_mail_parser ends the header block at the stray line and takes it into the body, which
    # is then invalid base64; the stdlib parser decodes it (MissingHeaderBodySeparatorDefect).
    body = base64.encodebytes(b"Buy cheap pills now at http://spam.example/buy\n")
    raw = (
        b"From: a@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: base64\r\nX-Stray No - 0\r\n\r\n" + body
    )
    msg = Message(raw)
    assert "cheap pills" in msg.text and msg.urls == ["http://spam.example/buy"]


def test_gtube_is_found_in_a_base64_body() -> None:
    gtube = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    raw = (
        b"From: a@example.org\r\nSubject: test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(gtube)
    )
    hits = {r.name for r in load_rule_set(reserved=known_symbols()).match(Message(raw))}
    assert hits & {"GTUBE", "GTUBE_ENCODED"}


def test_an_encoded_word_with_an_8bit_charset_name_never_raises(tmp_path: Path) -> None:
    raw = b"From: a@example.org\r\nSubject: =?\xcd?Q?a?=\r\n\r\nhi\r\n"
    assert Message(raw).decoded_header("Subject") is not None
    store = QuarantineStore(QuarantineSettings(directory=str(tmp_path)))
    assert store.put(raw, [], {})


def test_a_nameserver_that_is_not_an_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"dns\.nameservers"):
        Pipeline.from_config(parse_config({"dns": {"nameservers": ["not-an-ip"]}})).close()


def test_a_nul_in_an_encoded_words_charset_does_not_switch_off_the_content_checks() -> None:
    raw = b"From: =?a\x00b?Q?x?= <s@example.biz>\r\nSubject: hi\r\n\r\nhello\r\n"
    _, verdict = scan(offline_pipeline(), raw)
    assert "CHECK_ERROR" not in {s.name for s in verdict.symbols}, verdict.symbols


def test_nesting_does_not_hide_the_charset_raw_8bit_headers_are_read_with() -> None:
    raw = b"From: a@example.org\r\nSubject: x\r\nContent-Type: text/plain; charset=big5\r\n\r\nhi\r\n"
    assert Targets(Message(raw)).charset == "big5"
    assert Targets(Message(m.nest(raw, 25))).charset == "big5"
