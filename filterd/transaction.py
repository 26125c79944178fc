"""Connection state and message state, kept apart (the aiosmtpd split).

One SMTP connection (`Session`) carries any number of messages; each message is a `Transaction`,
started at MAIL FROM and dropped at end of message, RSET or abort.  Findings made at CONNECT and
HELO belong to the session and are copied into every transaction on it.

A decision that cannot be given when it is taken waits in one place per scope: `Session.decision`
(taken at CONNECT or HELO, given at every MAIL FROM of the connection, so the client sees its
reason: see filterd.milter) and `Transaction.pending` (a quarantine or discard decided before the
message is whole, or any decision taken where the MTA awaits no reply: given at end of message).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property

from filterd.dns import DnsBudget, DnsSettings
from filterd.message import Message
from filterd.results import AddHeader, Decision, Direction, Facts, Finding, Reject, Stage, TempFail


@dataclass
class Session:
    """What is known about the SMTP client for the whole connection."""

    client_addr: str | None = None  # None when unknown (a local submission, an offline scan)
    client_port: int | None = None
    client_name: str | None = None  # the verified reverse-DNS name; None when it has none
    helo: str | None = None
    macros: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    timings: dict[Stage, float] = field(default_factory=dict)
    facts: Facts = field(default_factory=Facts)
    decision: Decision | None = None  # taken at CONNECT or HELO; given at each MAIL FROM

    @cached_property
    def client_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if not self.client_addr:
            return None
        try:
            ip = ipaddress.ip_address(self.client_addr.strip("[]").removeprefix("IPv6:"))
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            return ip.ipv4_mapped
        return ip


@dataclass
class Transaction:
    """One message on a session: the envelope, the headers and body as received, and what was found."""

    session: Session
    mail_from: str | None = None  # "" is the null sender <>
    rcpts: list[str] = field(default_factory=list)
    auth_user: str | None = None
    queue_id: str | None = None
    direction: Direction = Direction.INBOUND
    raw_headers: list[tuple[str, str]] = field(default_factory=list)  # (name, value) exactly as received
    body_chunks: list[bytes] = field(default_factory=list)
    size: int = 0  # bytes of header and body seen, counted even past max_scan_bytes
    oversized: bool = False  # the body passed max_scan_bytes and was not kept
    findings: list[Finding] = field(default_factory=list)
    add_headers: list[AddHeader] = field(default_factory=list)
    pending: Decision | None = None  # decided before it could be given: given at end of message
    refused: list[tuple[str, Reject | TempFail]] = field(
        default_factory=list
    )  # refused at RCPT, with the reply
    timings: dict[Stage, float] = field(default_factory=dict)
    check_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds each check spent on it
    raw_message: bytes | None = None  # set when the message came whole (an offline scan)
    # what checks leave for each other, by typed key (SPF/DKIM/DMARC/ARC results: filterd.auth.results)
    facts: Facts = field(default_factory=Facts)
    # what DNS this message may still cause, shared by every check (see `dns_budget_for`)
    dns_budget: DnsBudget | None = None
    # raw_headers by lower-case name: (the list it was built from, its length then, the index)
    _header_index: tuple[list[tuple[str, str]], int, dict[str, list[str]]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @classmethod
    def start(cls, session: Session) -> Transaction:
        """A new message on `session`: it starts with what the connection stages found."""
        return cls(
            session=session,
            findings=list(session.findings),
            timings=dict(session.timings),
            facts=session.facts.copy(),
        )

    @classmethod
    def of_connection(cls, session: Session) -> Transaction:
        """What the CONNECT and HELO checks run on: no envelope yet, and what they find (findings,
        timings, facts) is the session's own, so every message on the connection starts with it."""
        return cls(session=session, findings=session.findings, timings=session.timings, facts=session.facts)

    @property
    def current_rcpt(self) -> str:
        """At RCPT: the recipient being checked now."""
        return self.rcpts[-1]

    def dns_budget_for(self, settings: DnsSettings) -> DnsBudget:
        """The message's one DNS budget (``[dns] max_lookups_per_message`` and
        ``max_seconds_per_message``), made at the first lookup: every check's lookups draw from it."""
        if self.dns_budget is None:
            self.dns_budget = DnsBudget.from_settings(settings)
        return self.dns_budget

    def header_values(self, name: str) -> list[str]:
        """Values of the headers called `name` (case-insensitive), unfolded and stripped.

        Available from end of headers on, before the body is known."""
        if self.raw_message is not None:
            return self.message.header_values(name)
        return [" ".join(v.split()) for v in self._headers_by_name().get(name.lower(), ())]

    def _headers_by_name(self) -> dict[str, list[str]]:
        """raw_headers indexed by lower-case name, built once: a message's checks look up many
        names, and each lookup would otherwise lower-case and compare every header again.
        Rebuilt if the headers changed since (more arrived, or the list was replaced)."""
        headers = self.raw_headers
        cached = self._header_index
        if cached is not None and cached[0] is headers and cached[1] == len(headers):
            return cached[2]
        index: dict[str, list[str]] = {}
        for n, v in headers:
            index.setdefault(n.lower(), []).append(v)
        self._header_index = (headers, len(headers), index)
        return index

    @cached_property
    def message(self) -> Message:
        """The message as one object, built once at end of message and shared by every check."""
        if self.raw_message is not None:
            return Message(self.raw_message)
        head = b"".join(
            name.encode("ascii", "replace")
            + b":"
            + value.encode("utf-8", "surrogateescape").replace(b"\n", b"\r\n")
            + b"\r\n"
            for name, value in self.raw_headers
        )
        # One copy of the body, not two (`head + b"".join(...)` copied it twice), and the chunks
        # let go of once joined: a message in flight holds its bytes once (filterd.milter).
        raw = b"".join([head, b"\r\n", *self.body_chunks])
        self.body_chunks.clear()
        return Message(raw)
