"""The one Authentication-Results header (RFC 8601) carrying SPF, DKIM, DMARC and ARC.

Runs at end of message after the authentication checks and writes what they left on
``tx.auth_results``.  The authserv-id is ``authserv_id`` here, else ``[network] hostname``, else the host
name Postfix announces (the ``j`` macro), else the host's FQDN; incoming Authentication-Results
headers that claim it (compared without case or a trailing dot) are removed by the milter and on
release from quarantine (`filterd.report.is_forgeable`), so a downstream filter reading ours can
trust it.

A check that ends the transaction early with a decision that still delivers (DMARC's quarantine)
adds the header itself through `header_for`, since this check will not run after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from filterd.auth.results import AR_HEADER, HEADER_DONE, configured_authserv_id, render
from filterd.check import AddHeader, Check, CheckSettings, Output, Stage
from filterd.config import Config
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


class AuthResults(Check):
    name = "auth_results"
    stage = Stage.EOM
    description = "add one Authentication-Results header with the SPF, DKIM, DMARC and ARC results"
    symbols = dict[str, float]()  # adds a header, scores nothing
    Settings = AuthResultsSettings

    def run(self, tx: Transaction) -> Iterable[Output]:
        header = header_for(tx, self.config)
        if header is not None:
            yield header


def header_for(tx: Transaction, config: Config) -> AddHeader | None:
    """The Authentication-Results header for `tx`, once: None if already given, disabled or empty."""
    if tx.auth_results.get(HEADER_DONE) or not config.check_settings("auth_results").enabled:
        return None
    value = render(configured_authserv_id(config, tx.session.macros.get("j")), tx.auth_results)
    if value is None:
        return None
    tx.auth_results[HEADER_DONE] = True
    return AddHeader(AR_HEADER, value)
