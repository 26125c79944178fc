"""A local authoritative DNS server for the bench, in a process of its own.

    python bench/dns_server.py ZONEFILE PORTFILE

It serves the records of ZONEFILE (zone-file syntax) on 127.0.0.1, UDP and TCP, and writes its port
to PORTFILE once it listens.  It answers as tests.harness.dns.LocalDns does (NXDOMAIN for an
unknown name, an empty NOERROR for a known name without the asked type), but from an index by
name: the bench publishes records for hundreds of domains, and a scan of every record per query
would make the DNS server, not the filters, the cost.  A process of its own, so that the CPU it
spends is read from /proc/PID/stat apart from the load generator's.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.net import free_port  # noqa: E402


class IndexedZone(BaseResolver):
    def __init__(self, zone: str) -> None:
        self.by_name: dict[str, list[RR]] = {}
        for rr in RR.fromZone(zone):
            self.by_name.setdefault(str(rr.rname).lower(), []).append(rr)

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        records = self.by_name.get(str(request.q.qname).lower())
        if records is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        qtype = QTYPE[request.q.qtype]
        for rr in records:
            rtype = QTYPE[rr.rtype]
            if rtype == qtype or qtype == "ANY" or rtype == "CNAME":
                reply.add_answer(rr)
        return reply


def main() -> int:
    zone_file, port_file = Path(sys.argv[1]), Path(sys.argv[2])
    resolver = IndexedZone(zone_file.read_text())
    quiet = DNSLogger(log="-recv,-send,-request,-reply,-truncated,-error,-data", prefix=False)
    port = free_port()
    servers = [
        DNSServer(resolver, port=port, address="127.0.0.1", tcp=tcp, logger=quiet) for tcp in (False, True)
    ]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for server in servers:
        server.start_thread()
    port_file.write_text(str(port))
    stop.wait()
    for server in servers:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
