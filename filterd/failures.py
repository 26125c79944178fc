"""Which failures are a dependency's (they go away: retry later) and which are ours (they do not).

A 4xx asks the client to send the same bytes again later.  That is right when a dependency is
down -- Redis, clamd, DNS, the quarantine disk -- and wrong for anything else: a bug that the
message's bytes trigger fails the same way on every retry, so the 4xx becomes a retry loop and
the message is lost days later in a bounce.  So a check's `on_error = "closed"` policy tempfails
only dependency failures; any other exception in a fail-closed check is refused with a 5xx (the
admin asked that no unchecked mail be delivered, and a 5xx at least tells the sender now).
"""

from __future__ import annotations

from filterd.clamd import ClamdError
from filterd.dns import DnsTempError
from filterd.replies import Reply

R554_CHECK_FAILED = Reply(554, "5.3.0", "The content filter could not check this message")


def _dependency_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that mean "a service we depend on failed", from what is installed."""
    found: list[type[BaseException]] = [OSError, ClamdError, DnsTempError]  # OSError: sockets, timeouts, disk
    try:
        import redis.exceptions

        # all of them: besides a lost connection, OOM, READONLY and the like are the server's state
        found.append(redis.exceptions.RedisError)
    except ImportError:
        pass
    try:
        import dns.exception
        import dns.resolver

        found += [dns.exception.Timeout, dns.resolver.NoNameservers]
    except ImportError:
        pass
    try:
        import spf

        found.append(spf.TempError)
    except ImportError:
        pass
    try:
        import dkim

        found.append(dkim.DnsTimeoutError)
    except ImportError:
        pass
    return tuple(found)


DEPENDENCY_ERRORS = _dependency_errors()


def is_dependency_failure(exc: BaseException) -> bool:
    """Did a service we depend on fail (worth a retry), rather than our code on these bytes?"""
    return isinstance(exc, DEPENDENCY_ERRORS)
