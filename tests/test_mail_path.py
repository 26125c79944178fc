"""The shortcuts taken on the milter's mail path give the same answers as the long way."""

from __future__ import annotations

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
