"""Which failures are a dependency's (they go away: retry later) and which are ours (they do not).

A 4xx asks the client to send the same bytes again later.  That is right when a dependency is
down -- Redis, clamd, DNS, the quarantine disk -- and wrong for anything else: a bug that the
message's bytes trigger fails the same way on every retry, so the 4xx becomes a retry loop and
the message is lost days later in a bounce.  So a check's `on_error = "closed"` policy tempfails
only dependency failures; any other exception in a fail-closed check is refused with a 5xx (the
admin asked that no unchecked mail be delivered, and a 5xx at least tells the sender now).
"""

from __future__ import annotations

import dkim
import dns.exception
import dns.resolver
import redis.exceptions
import spf

from filterd.clamd import ClamdError
from filterd.dns import DnsTempError
from filterd.replies import Reply

R554_CHECK_FAILED = Reply(554, "5.3.0", "The content filter could not check this message")


# The exception classes that mean "a service we depend on failed".  OSError: sockets, timeouts,
# disk.  Every RedisError: besides a lost connection, OOM, READONLY and the like are the server's
# state, not the message's.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ClamdError,
    DnsTempError,
    redis.exceptions.RedisError,
    dns.exception.Timeout,
    dns.resolver.NoNameservers,
    spf.TempError,
    dkim.DnsTimeoutError,
)


def is_dependency_failure(exc: BaseException) -> bool:
    """Did a service we depend on fail (worth a retry), rather than our code on these bytes?"""
    return isinstance(exc, DEPENDENCY_ERRORS)
