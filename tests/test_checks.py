"""The checks of the foundation: header sanity, allow/deny lists, message size."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path

import pytest

from filterd.addrlists import AddressList, NetworkList
from filterd.check import Finding
from filterd.checks.header_sanity import HeaderSanity
from filterd.checks.lists import ClientLists, RecipientAllowed, RecipientLists, SenderLists
from filterd.checks.message_size import MessageSize
from filterd.config import parse_config
from filterd.pipeline import build_check
from filterd.replies import Reject
from filterd.settings import ConfigError
from filterd.transaction import Session, Transaction

NOW = 1_800_000_000.0


def header_findings(headers: str, **settings: float) -> set[str]:
    config = parse_config({"checks": {"header_sanity": settings}})
    check = build_check(HeaderSanity, config)
    check.clock = lambda: NOW  # type: ignore[method-assign]
    tx = Transaction.start(Session())
    tx.raw_message = headers.replace("\n", "\r\n").encode() + b"\r\n\r\nbody\r\n"
    return {o.symbol for o in check.run(tx) if isinstance(o, Finding)}


def date(offset: float) -> str:
    return email.utils.formatdate(NOW + offset)


GOOD = "From: Alice <a@example.org>\nMessage-ID: <x.1@example.org>\nDate: {}"


def test_good_headers_find_nothing() -> None:
    assert header_findings(GOOD.format(date(-60))) == set()


@pytest.mark.parametrize(
    ("headers", "symbol"),
    [
        ("From: a@example.org\nMessage-ID: <1@x.org>", "MISSING_DATE"),
        (GOOD.format("yesterday-ish"), "INVALID_DATE"),
        (GOOD.format(date(3 * 86400)), "DATE_IN_FUTURE"),
        (GOOD.format(date(-30 * 86400)), "DATE_IN_PAST"),
        ("From: a@example.org\nDate: " + date(0), "MISSING_MESSAGE_ID"),
        ("From: a@example.org\nMessage-ID: no-brackets@x\nDate: " + date(0), "INVALID_MESSAGE_ID"),
        ("Message-ID: <1@x.org>\nDate: " + date(0), "MISSING_FROM"),
        ("From: Alice\nMessage-ID: <1@x.org>\nDate: " + date(0), "INVALID_FROM"),
        (
            "From: a@example.org\nFrom: b@example.org\nMessage-ID: <1@x.org>\nDate: " + date(0),
            "DUPLICATE_FROM",
        ),
    ],
)
def test_each_problem_is_its_own_symbol(headers: str, symbol: str) -> None:
    assert header_findings(headers) == {symbol}


def test_date_window_is_configurable() -> None:
    headers = GOOD.format(date(-3 * 86400))
    assert header_findings(headers) == set()
    assert header_findings(headers, past_days=1.0) == {"DATE_IN_PAST"}


def test_list_files_allow_comments_and_name_bad_lines(tmp_path: Path) -> None:
    f = tmp_path / "nets"
    f.write_text("# comment\n\n192.0.2.0/24   # docs\n2001:db8::/32\n")
    nets = NetworkList.load(str(f), "k")
    import ipaddress

    assert nets.match(ipaddress.ip_address("192.0.2.77")) is not None
    assert nets.match(ipaddress.ip_address("2001:db8::1")) is not None
    assert nets.match(ipaddress.ip_address("198.51.100.1")) is None
    f.write_text("192.0.2.0/24\n300.1.1.1\n")
    with pytest.raises(ConfigError, match=r"nets:2: '300.1.1.1' is not an IP address"):
        NetworkList.load(str(f), "k")
    with pytest.raises(ConfigError, match="cannot read list file"):
        NetworkList.load(str(tmp_path / "missing"), "k")


def test_address_list_matching_rules(tmp_path: Path) -> None:
    f = tmp_path / "addrs"
    f.write_text("Boss@Example.com\nexample.net\n@example.org\n.example.edu\n")
    lst = AddressList.load(str(f), "k")
    assert lst.match("boss@example.com") == "boss@example.com"
    assert lst.match("<other@example.com>") is None
    assert lst.match("x@example.net") == "example.net"
    assert lst.match("x@sub.example.net") is None
    assert lst.match("x@example.org") == "example.org"
    assert lst.match("x@dept.example.edu") == ".example.edu"
    assert lst.match("x@example.edu") is None
    assert lst.match("") is None


def _check(cls: type, files: dict[str, str], tmp_path: Path) -> object:
    settings: dict[str, str] = {}
    for kind, text in files.items():
        p = tmp_path / kind
        p.write_text(text)
        settings[f"{kind}_file"] = str(p)
    config = parse_config({"checks": {cls.name: settings}})  # type: ignore[attr-defined]
    return build_check(cls, config)


def test_client_deny_rejects_and_allow_scores(tmp_path: Path) -> None:
    check = _check(ClientLists, {"deny": "203.0.113.0/24\n", "allow": "192.0.2.0/24\n"}, tmp_path)
    denied = list(check.run(Transaction(session=Session(client_addr="203.0.113.9"))))  # type: ignore[attr-defined]
    assert isinstance(denied[0], Reject) and "203.0.113.9" in denied[0].reply.text
    allowed = list(check.run(Transaction(session=Session(client_addr="192.0.2.1"))))  # type: ignore[attr-defined]
    assert allowed == [Finding("CLIENT_ALLOWED", "client 192.0.2.1 in allow list (192.0.2.0/24)")]
    assert list(check.run(Transaction(session=Session(client_addr=None)))) == []  # type: ignore[attr-defined]


def test_sender_and_recipient_lists(tmp_path: Path) -> None:
    sender = _check(SenderLists, {"deny": "spam.example\n"}, tmp_path)
    tx = Transaction(session=Session(), mail_from="x@spam.example")
    (decision,) = sender.run(tx)  # type: ignore[attr-defined]
    assert isinstance(decision, Reject) and decision.reply.code == 550
    rcpt = _check(
        RecipientLists, {"allow": "postmaster@example.net\n", "deny": "gone@example.net\n"}, tmp_path
    )
    tx = Transaction(session=Session(), rcpts=["postmaster@example.net"])
    assert list(rcpt.run(tx)) == []  # type: ignore[attr-defined]  # the allow list is applied at the end
    tx.rcpts.append("gone@example.net")
    (decision,) = rcpt.run(tx)  # type: ignore[attr-defined]
    assert isinstance(decision, Reject) and "<gone@example.net>" in decision.reply.text


def _recipient_allowed(tmp_path: Path, allow: str, **lists: object) -> RecipientAllowed:
    (tmp_path / "allow").write_text(allow)
    config = parse_config({"checks": {"recipient_lists": {"allow_file": str(tmp_path / "allow"), **lists}}})
    return build_check(RecipientAllowed, config)


def test_recipient_allow_list_needs_every_recipient(tmp_path: Path) -> None:
    """One verdict per message: RCPT_ALLOWED (-20) only when every recipient is allow-listed."""
    check = _recipient_allowed(tmp_path, "postmaster@example.net\n.example.org\n")

    def findings(*rcpts: str) -> list[Finding]:
        return [
            f for f in check.run(Transaction(session=Session(), rcpts=list(rcpts))) if isinstance(f, Finding)
        ]

    assert findings("postmaster@example.net") == [
        Finding("RCPT_ALLOWED", "recipient in allow list: postmaster@example.net")
    ]
    assert findings("postmaster@example.net", "abuse@dept.example.org") == [
        Finding(
            "RCPT_ALLOWED",
            "all 2 recipients in allow list: postmaster@example.net, abuse@dept.example.org (.example.org)",
        )
    ]
    assert findings("postmaster@example.net", "bob@example.net") == []  # mixed: scored as usual
    assert findings("bob@example.net", "postmaster@example.net") == []
    assert findings() == []
    off = _recipient_allowed(tmp_path, "postmaster@example.net\n", enabled=False)
    assert list(off.run(Transaction(session=Session(), rcpts=["postmaster@example.net"]))) == []


def test_message_size_limit_and_scan_skip() -> None:
    config = parse_config({"checks": {"message_size": {"reject_over": 1000}}})
    check = build_check(MessageSize, config)
    tx = Transaction(session=Session(), size=2000)
    (decision,) = check.run(tx)
    assert isinstance(decision, Reject) and decision.reply.code == 552
    config = parse_config({"milter": {"oversize_action": "accept"}})
    check = build_check(MessageSize, config)
    tx = Transaction(session=Session(), size=50_000_000, oversized=True)
    assert [f.symbol for f in check.run(tx)] == ["SCAN_SKIPPED_SIZE"]  # type: ignore[union-attr]
    config = parse_config({})  # the default: over max_scan_bytes is refused, naming the limit
    check = build_check(MessageSize, config)
    finding, decision = check.run(tx)
    assert isinstance(finding, Finding) and finding.symbol == "SCAN_SKIPPED_SIZE"
    assert isinstance(decision, Reject) and str(decision.reply).startswith("552 5.3.4 ")
    assert "10485760 bytes" in decision.reply.text


def test_clock_default_is_real_time() -> None:
    assert abs(HeaderSanity.clock() - time.time()) < 5
