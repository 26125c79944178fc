"""Address headers are read without raising, whatever the sender wrote."""

from __future__ import annotations

import email.utils

import pytest

from filterd.addresses import getaddresses
from filterd.config import parse_config
from filterd.driver import SmtpContext, scan
from filterd.pipeline import Pipeline

NESTED_GROUPS = "Boss <ceo@bank.example>" + ", g:g:" * 1000


def test_stdlib_parser_recurses_on_nested_groups() -> None:
    """Why filterd.addresses exists: if this starts passing, the fallback may go."""
    with pytest.raises(RecursionError):
        email.utils.getaddresses([NESTED_GROUPS])


def test_nested_groups_still_give_the_address() -> None:
    pairs = getaddresses([NESTED_GROUPS])
    assert ("", "ceo@bank.example") in pairs


def test_ordinary_header_keeps_display_names() -> None:
    assert getaddresses(['"Bob, Jr." <bob@example.net>, ann@example.org']) == [
        ("Bob, Jr.", "bob@example.net"),
        ("", "ann@example.org"),
    ]


def test_no_check_fails_on_nested_groups_in_from_and_to() -> None:
    raw = (
        f"From: {NESTED_GROUPS}\r\nTo: {NESTED_GROUPS}\r\nSubject: hello\r\n"
        "Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@bank.example>\r\n\r\nbody\r\n"
    ).encode()
    config = parse_config({"network": {"local_domains": ["bank.example"]}})
    pipeline = Pipeline.from_config(config)
    try:
        _, verdict = scan(pipeline, raw, SmtpContext(client_addr="192.0.2.1", mail_from="x@bank.example"))
    finally:
        pipeline.close()
    errors = [s for s in verdict.symbols if s.name == "CHECK_ERROR"]
    assert errors == []
