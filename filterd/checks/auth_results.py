"""The one Authentication-Results header (RFC 8601) carrying SPF, DKIM, DMARC and ARC.

A finisher: runs once the verdict is known -- on a message delivered or held, whatever check
decided -- and writes what the authentication checks left on ``tx.facts``.  The authserv-id is ``authserv_id`` here, else ``[network] hostname``, else the host
name Postfix announces (the ``j`` macro), else the host's FQDN; incoming Authentication-Results
headers that claim it (compared without case or a trailing dot) are removed by the milter and on
release from quarantine (`filterd.report.is_forgeable`), so a downstream filter reading ours can
trust it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from filterd.auth.results import AR_HEADER, ARC, DKIM, DMARC, SPF, SPF_HELO, our_hostname, render
from filterd.check import AddHeader, CheckSettings, Finding, Finisher
from filterd.results import Verdict
from filterd.settings import setting
from filterd.transaction import Transaction


def _check_id(value: str) -> str | None:
    if value and (any(c.isspace() or c in ';()"\\' for c in value) or not value.isascii()):
        return "expected a host name or similar token, without spaces, ';', quotes or parentheses"
    return None


@dataclass(frozen=True)
class AuthResultsSettings(CheckSettings):
    authserv_id: str = setting(
        "",
        "authserv-id of our Authentication-Results header; empty: [network] hostname, else the host"
        " name Postfix announces (its j macro), else the FQDN",
        _check_id,
    )


class AuthResults(Finisher):
    name = "auth_results"
    description = "add one Authentication-Results header with the SPF, DKIM, DMARC and ARC results"
    symbols = dict[str, float]()  # adds a header, scores nothing
    Settings = AuthResultsSettings
    requires = (SPF, SPF_HELO, DKIM, DMARC, ARC)

    def finish(self, tx: Transaction, verdict: Verdict) -> Iterable[AddHeader | Finding]:
        authserv_id = self.settings.authserv_id or our_hostname(
            self.site.hostname, tx.session.macros.get("j")
        )
        value = render(authserv_id, tx.facts)
        if value is not None:
            yield AddHeader(AR_HEADER, value)
