"""A small authoritative DNS server on 127.0.0.1 for SPF, DKIM, DMARC, PTR, A and MX tests.

Records are added at run time with `add()` (zone-file syntax, one record a line).  A name with no
record of any type gets NXDOMAIN; a known name without the asked type gets an empty NOERROR, as
a real authoritative server answers.  Names listed in `silent` get no answer at all, so a client
times out: how a test makes a DNS temperror.
"""

from __future__ import annotations

import threading

from dnslib import QTYPE, RCODE, RR, DNSError, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from tests.harness.net import free_port


class _ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, server: LocalDns) -> None:
        self.server = server

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        qname = request.q.qname
        qtype = QTYPE[request.q.qtype]
        with self.server.lock:
            self.server.queries.append(str(qname).rstrip(".").lower())
            if any(qname.matchSuffix(DNSLabel(s)) for s in self.server.silent):
                raise DNSError("silent name: no answer")  # dnslib drops the request without a reply
            records = list(self.server.records)
        reply = request.reply()
        known = False
        for rr in records:
            if rr.rname != qname:
                continue
            known = True
            rtype = QTYPE[rr.rtype]
            if rtype == qtype or qtype == "ANY" or rtype == "CNAME":
                reply.add_answer(rr)
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class _QuietLogger(DNSLogger):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(log="-recv,-send,-request,-reply,-truncated,-error,-data", prefix=False)


class LocalDns:
    def __init__(self) -> None:
        self.port = free_port()
        self.records: list[RR] = []
        self.silent: set[str] = set()
        self.queries: list[str] = []  # every name asked, lower-case, as it arrived (UDP and TCP)
        self.lock = threading.Lock()
        resolver = _ZoneResolver(self)
        self.udp = DNSServer(resolver, port=self.port, address="127.0.0.1", tcp=False, logger=_QuietLogger())
        self.tcp = DNSServer(resolver, port=self.port, address="127.0.0.1", tcp=True, logger=_QuietLogger())

    def start(self) -> None:
        self.udp.start_thread()
        self.tcp.start_thread()

    def stop(self) -> None:
        self.udp.stop()
        self.tcp.stop()

    def add(self, zone: str) -> None:
        """Add records written in zone-file syntax, e.g. 'example.test. 300 IN TXT "v=spf1 -all"'."""
        with self.lock:
            self.records.extend(RR.fromZone(zone))

    def clear(self) -> None:
        with self.lock:
            self.records.clear()
            self.silent.clear()

    def queries_under(self, domain: str) -> int:
        """How many queries asked for `domain` or a name below it."""
        domain = domain.lower()
        with self.lock:
            return sum(1 for q in self.queries if q == domain or q.endswith("." + domain))

    def make_silent(self, name: str) -> None:
        """Stop answering for `name` and everything below it (the client times out)."""
        with self.lock:
            self.silent.add(name)
