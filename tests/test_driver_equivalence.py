"""`filterctl scan` and the milter take one path (filterd.driver): the same message, envelope and
configuration get the same verdict, symbols and per-recipient decisions both ways.

Corpus messages go through the real Postfix with a mixed recipient list (one recipient on the
deny list), and then through `scan` with the same envelope and configuration.  What the milter
saw is the delivered copy minus what filterd added (Postfix puts its own Received header on
top before the milter sees the message, so the bytes as sent are not what it scored).  A
message refused at end of message is compared by its reply code.
"""

from __future__ import annotations

import csv
import os
import re
import smtplib
from pathlib import Path

import pytest

from filterd.config import load_config
from filterd.driver import SmtpContext, scan
from filterd.pipeline import Pipeline
from filterd.report import REPORT_HEADER
from filterd.results import Action, Reject
from tests.harness.stack import Stack

pytestmark = pytest.mark.stack

CORPUS = Path(os.environ.get("FILTERD_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
DENIED = "denied@example.net"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# Added by filterd to the delivered copy: removed again to get the bytes the milter scored.
OURS = ("x-spam-", "authentication-results", "received-spf")


def corpus_messages(per_label: int = 6) -> list[tuple[str, bytes]]:
    manifest = CORPUS / "spamassassin-public" / "manifest.csv"
    if not manifest.exists():
        pytest.skip(f"labelled corpus not found at {CORPUS} (set FILTERD_CORPUS; see corpus/README.md)")
    rows = list(csv.DictReader(manifest.open()))
    picked: list[tuple[str, bytes]] = []
    for label in ("ham", "spam"):
        # spread over the corpus, small messages (Postfix and the sink stay fast), no upstream verdicts
        rows_of = [
            r for r in rows if r["label"] == label and int(r["size"]) < 20000 and r["has_x_spam"] == "False"
        ]
        step = max(1, len(rows_of) // per_label)
        picked += [
            (r["path"], (CORPUS / "spamassassin-public" / r["path"]).read_bytes())
            for r in rows_of[::step][:per_label]
        ]
    return picked


def with_crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def as_scored(delivered: bytes) -> bytes:
    """The delivered copy without the header fields filterd added."""
    head, _, body = with_crlf(delivered).partition(b"\r\n\r\n")
    lines: list[bytes] = []
    keep = True
    for line in head.split(b"\r\n"):
        if line[:1] not in (b" ", b"\t"):
            name = line.split(b":", 1)[0].decode("ascii", "replace").lower()
            keep = not name.startswith(OURS)
        if keep:
            lines.append(line)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


SYMBOL_LINE = re.compile(r"(?:^|\s)\*\s+(-?\d+\.\d)\s+([A-Z][A-Z0-9_]+)\b")


def report_symbols(report: str) -> list[tuple[str, float]]:
    """(name, score) of each symbol of an X-Spam-Report value (unfolded: "* 1.0 NAME reason ...")."""
    return [(name, float(score)) for score, name in SYMBOL_LINE.findall(report)]


@pytest.fixture(scope="module")
def deny_file(stack: Stack) -> Path:
    path = stack.dir / "rcpt-deny.txt"
    path.write_text(f"{DENIED}\n")
    return path


def test_scan_and_postfix_agree_on_verdict_symbols_and_recipients(stack: Stack, deny_file: Path) -> None:
    rcpts = ("bob@example.net", DENIED, "carol@example.net")
    gtube = b"From: a@example.org\r\nSubject: test\r\n\r\n" + GTUBE + b"\r\n"
    messages = [*corpus_messages(), ("gtube", gtube)]
    compared = 0
    with stack.configured({"checks": {"recipient_lists": {"deny_file": str(deny_file)}}}) as filterd:
        pipeline = Pipeline.from_config(load_config(filterd.config_path))
        try:
            for name, raw in messages:
                marker = f"X-Equivalence: {name}".encode()
                sent = with_crlf(marker + b"\r\n" + raw)
                try:
                    refused = stack.send(sent, mail_from="alice@example.org", rcpts=rcpts)
                    code = 250
                except smtplib.SMTPDataError as exc:
                    refused, code = {DENIED: (550, b"")}, exc.smtp_code
                assert set(refused) == {DENIED}, name  # refused at RCPT, the others accepted
                context = SmtpContext(
                    client_addr="127.0.0.1",
                    client_name="localhost",
                    helo="client.example.org",
                    mail_from="alice@example.org",
                    rcpts=rcpts,
                )
                if code != 250:  # refused at end of message: compare the decision
                    tx, verdict = scan(pipeline, sent, context)
                    assert isinstance(verdict.decision, Reject) and verdict.decision.reply.code == code, name
                    continue
                got = stack.sink.find(marker.decode())
                tx, verdict = scan(pipeline, as_scored(got.data), context)
                assert [r for r, _ in tx.refused] == [DENIED] and tx.rcpts == [rcpts[0], rcpts[2]], name
                assert verdict.action in (Action.ACCEPT, Action.ADD_HEADER), name
                milter_report = got.header(REPORT_HEADER)[0]
                assert milter_report.split()[0] == f"action={verdict.action.value}", name
                scanned = sorted((s.name, round(s.score, 1)) for s in verdict.symbols)
                assert sorted(report_symbols(milter_report)) == scanned, name
                compared += 1
        finally:
            pipeline.close()
    assert compared >= 8  # most corpus messages are delivered (the default reject is at 15)
