"""Helpers for the sender-authentication tests: a config pointed at the local DNS server, DKIM keys
published there, messages, and a transaction built the way the milter builds one."""

from __future__ import annotations

import email.utils
import itertools
import re
from pathlib import Path
from typing import Any

import dkim

from filterd.auth.keys import generate, split_txt, txt_value
from filterd.config import Config, parse_config
from filterd.driver import SmtpContext, scan
from filterd.pipeline import Pipeline
from filterd.results import Verdict
from filterd.services import Services
from filterd.transaction import Session, Transaction
from tests.harness.dns import LocalDns

_serial = itertools.count(1)


def unique(label: str) -> str:
    """A domain no other test uses (the DNS fixture is shared by the whole session).

    Under .test (RFC 2606), which the Public Suffix List does not know: by the list's "*" rule
    each such domain is its own organisational domain, as a real registered domain is."""
    return f"{label}{next(_serial)}.test"


def auth_config(local_dns: LocalDns, checks: dict[str, Any] | None = None, **top: Any) -> Config:
    data: dict[str, Any] = {
        "dns": {"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.4, "attempts": 1},
        "network": {"hostname": "mx.filterd.test"},
        "checks": checks or {},
    }
    data.update(top)
    return parse_config(data)


def pipeline(local_dns: LocalDns, checks: dict[str, Any] | None = None, **top: Any) -> Pipeline:
    config = auth_config(local_dns, checks, **top)
    return Pipeline.from_config(config, Services(config))


def message(
    from_addr: str = "alice@example.com",
    subject: str = "Hello",
    body: str = "Hello there.\r\nSecond line with  two spaces. \r\n",
    extra: str = "",
) -> bytes:
    head = (
        f"From: Alice <{from_addr}>\r\n"
        "To: bob@example.net\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {email.utils.formatdate()}\r\n"
        f"Message-ID: <{next(_serial)}@example.com>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        f"{extra}"
    )
    return (head + "\r\n" + body).encode()


class PublishedKey:
    """A DKIM key pair whose public half the local DNS server publishes."""

    def __init__(
        self, local_dns: LocalDns, domain: str, selector: str, key_type: str = "rsa", publish: bool = True
    ) -> None:
        from filterd.auth.keys import parse_private_key

        self.domain, self.selector, self.key_type = domain, selector, key_type
        self.pem, public = generate(key_type, 2048 if key_type == "rsa" else 0)  # type: ignore[arg-type]
        _, _, self.private, _ = parse_private_key(self.pem, "test key")
        self.public = public
        if publish:
            publish_txt(local_dns, f"{selector}._domainkey.{domain}", txt_value(key_type, public))  # type: ignore[arg-type]

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem)
        path.chmod(0o600)
        return path

    def sign(self, raw: bytes, canon: tuple[bytes, bytes] = (b"relaxed", b"relaxed")) -> bytes:
        """`raw` with a DKIM-Signature made by dkimpy prepended (as a signing MTA does)."""
        algorithm = b"rsa-sha256" if self.key_type == "rsa" else b"ed25519-sha256"
        sig = dkim.DKIM(raw).sign(
            self.selector.encode(),
            self.domain.encode(),
            self.private,
            signature_algorithm=algorithm,
            canonicalize=canon,
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        return sig + raw


def publish_txt(local_dns: LocalDns, name: str, value: str, ttl: int = 60) -> None:
    strings = " ".join('"' + s.replace('"', '\\"') + '"' for s in split_txt(value))
    local_dns.add(f"{name}. {ttl} IN TXT {strings}")


def run(p: Pipeline, raw: bytes, **context: Any) -> tuple[Transaction, Verdict]:
    context.setdefault("rcpts", ("bob@example.net",))
    return scan(p, raw, SmtpContext(**context))


def symbols(verdict: Verdict) -> dict[str, str]:
    return {s.name: s.reason for s in verdict.symbols}


def headers_of(verdict: Verdict, name: str) -> list[str]:
    return [h.value for h in verdict.add_headers if h.name.lower() == name.lower()]


def milter_split(raw: bytes) -> tuple[list[tuple[str, str]], list[bytes]]:
    """What Postfix hands a milter with SMFIP_HDR_LEADSPC: each header's name and its value as
    sent (leading space kept, folded lines joined by a bare "\\n"), and the body in chunks."""
    sep = raw.index(b"\r\n\r\n")
    head, body = raw[:sep], raw[sep + 4 :]
    headers: list[tuple[str, str]] = []
    for line in re.split(rb"\r\n(?![ \t])", head):
        name, _, value = line.partition(b":")
        headers.append((name.decode(), value.replace(b"\r\n", b"\n").decode("utf-8", "surrogateescape")))
    chunks = [body[i : i + 65535] for i in range(0, len(body), 65535)] or [b""]
    return headers, chunks


def milter_run(p: Pipeline, raw: bytes, **context: Any) -> tuple[Transaction, Verdict]:
    """Run the driver on a transaction built from header and body callbacks, as the milter does
    (not on the raw bytes, as `scan` does)."""
    from filterd.driver import Driver

    driver = Driver(
        p, Session(client_addr=context.get("client_addr"), helo=context.get("helo")), learns=False
    )
    step = driver.mail(context.get("mail_from"), context.get("auth_user"))
    tx = driver.current()
    if step.verdict is not None:
        return tx, step.verdict
    step = driver.rcpt("bob@example.net")
    if step.verdict is not None:
        return tx, step.verdict
    tx.raw_headers, tx.body_chunks = milter_split(raw)
    tx.size = len(raw)
    return tx, driver.end_of_message()


def with_headers(raw: bytes, verdict: Verdict, names: tuple[str, ...] = ("DKIM-Signature",)) -> bytes:
    """`raw` with the verdict's added headers of those names appended to the header block, as
    libmilter's addheader does (and as Postfix writes them: "Name: value", folds as CRLF)."""
    sep = raw.index(b"\r\n\r\n")
    added = b"".join(
        f"{h.name}: {h.value}".replace("\n", "\r\n").encode() + b"\r\n"
        for h in verdict.add_headers
        if h.name in names
    )
    return raw[: sep + 2] + added + raw[sep + 2 :]
