"""The shortcuts taken on the milter's mail path give the same answers as the long way."""

from __future__ import annotations

import email.utils

import pytest

from filterd.checks.header_sanity import _addresses
from filterd.transaction import Session, Transaction


def milter_tx(headers: list[tuple[str, str]]) -> Transaction:
    """A transaction as the milter fills it: headers one by one, values with their leading space."""
    tx = Transaction.start(Session())
    tx.raw_headers.extend(headers)
    return tx


def test_header_values_by_name_any_case_unfolded() -> None:
    tx = milter_tx(
        [
            ("Received", " from a\n\tby b"),
            ("subject", " hello"),
            ("RECEIVED", " from c"),
        ]
    )
    assert tx.header_values("received") == ["from a by b", "from c"]
    assert tx.header_values("Subject") == ["hello"]
    assert tx.header_values("Date") == []


def test_header_values_see_headers_added_after_a_first_lookup() -> None:
    tx = milter_tx([("From", " a@example.org")])
    assert tx.header_values("Date") == []
    tx.raw_headers.append(("Date", " Mon, 01 Jan 2024 00:00:00 +0000"))
    assert tx.header_values("Date") == ["Mon, 01 Jan 2024 00:00:00 +0000"]
    tx.raw_headers = [("Date", " Tue, 02 Jan 2024 00:00:00 +0000")]  # replaced by a list as long
    assert tx.header_values("Date") == ["Tue, 02 Jan 2024 00:00:00 +0000"]
    assert tx.header_values("From") == []


@pytest.mark.parametrize(
    "value",
    [
        '"Alice Example" <alice@example.org>',
        '"Example, Alice" <alice.b+tag@mail.example.org>',
        ' "A. B. Example"  <a_b@example.org> ',
        '"" <x@example.org>',
        "alice@example.org (Alice Example)",
        "alice@example.org(Alice)",
        # not the simple shapes: left to the full parser, and still the same answer
        '"Alice \\"Al\\" Example" <alice@example.org>',
        '"Alice" <alice @example.org>',
        '"Alice" <a..b@example.org>',
        '"Alice" <alice@[192.0.2.1]>',
        '"A" <a@example.org>, "B" <b@example.org>',
        "alice@example.org (Alice (nested))",
        '"Alice" <alice@example.org> (comment)',
        '"unterminated <alice@example.org>',
    ],
)
def test_from_addresses_as_the_full_parser_reads_them(value: str) -> None:
    assert _addresses(value) == [a for _, a in email.utils.getaddresses([value]) if a]
