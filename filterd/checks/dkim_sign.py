"""DKIM signing of outbound mail (authenticated senders and internal networks).

The key table maps a signing domain to its selectors and their private key files::

    [checks.dkim_sign.keys."example.com"]
    rsa2024 = "/etc/filterd/dkim/example.com.rsa2024.key"
    ed2024 = "/etc/filterd/dkim/example.com.ed2024.key"

A message is signed with every key of the domain of its From address (two keys of different
types is dual signing: RSA for every receiver, Ed25519 for those that know RFC 8463).  A From
subdomain uses its parent's keys when ``subdomains`` is on (the signature still aligns for
DMARC in relaxed mode); a From domain with no key uses ``default_domain``'s keys when one is set,
and is otherwise not signed.  Canonicalisation is relaxed/relaxed, which survives the header
refolding and trailing-space changes MTAs make on the way.  The headers in ``oversign`` are
signed once more than they occur, so nobody can add one (a second From) without breaking the
signature.

With ``[sql]`` on, the rows of the ``filterd_dkim`` table (domain, selector, key_path) join the
table (docs/sql.md): adding a domain in SQL needs no filterd edit, and signing for it starts
within ``[sql] cache_seconds``.  A domain in both keeps its TOML keys; a row whose key cannot be
used is logged and skipped (a row added at run time must not stop the mail).

Every key of the TOML table is read and checked when the pipeline is built: a missing, unparsable, too short or
world-readable key stops filterd from starting, with the key table entry named.

The signature goes on with `AddHeader`: libmilter appends it at the end of the header block.
Where the DKIM-Signature header sits does not matter to a verifier (it is not one of the signed
headers), and relaxed header canonicalisation ignores how Postfix refolds it.
"""

from __future__ import annotations

import logging
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dkim

from filterd.addresses import getaddresses
from filterd.auth.keys import SigningKey, load_signing_key
from filterd.check import AddHeader, CheckContext, CheckSettings, Direction, Finding, Finisher
from filterd.results import Verdict
from filterd.settings import Collector, ConfigError, setting
from filterd.sqllookup import DkimRow
from filterd.transaction import Transaction

DEFAULT_HEADERS = (
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-id",
    "content-description",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
    "resent-date",
    "resent-from",
    "resent-to",
    "resent-cc",
    "resent-message-id",
)
_SELECTOR = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
log = logging.getLogger("filterd.checks.dkim_sign")
_NEVER_SIGN = frozenset(h.decode() for h in dkim.DKIM.SHOULD_NOT)


def _check_headers(values: tuple[str, ...]) -> str | None:
    bad = sorted({v.lower() for v in values} & _NEVER_SIGN)
    if bad:
        return f"{', '.join(bad)} must not be signed (RFC 6376 5.4.1: they change in transit)"
    if any(not v or ":" in v or " " in v for v in values):
        return "each entry is one header name"
    return None


@dataclass(frozen=True)
class DkimSignSettings(CheckSettings):
    keys: Mapping[str, Mapping[str, str]] = setting(
        types.MappingProxyType({}),
        'signing domain -> selector -> private key file, e.g. keys."example.com".sel1 = "/etc/filterd/dkim/k"',
    )
    default_domain: str = setting(
        "", "sign mail whose From domain has no key with this domain's keys (empty: leave it unsigned)"
    )
    subdomains: bool = setting(True, "a From subdomain (mail.example.com) uses its parent domain's keys")
    headers: tuple[str, ...] = setting(
        DEFAULT_HEADERS, "headers signed when present (From is always signed)", _check_headers
    )
    oversign: tuple[str, ...] = setting(
        ("from",), "headers signed once more than they occur, so none can be added", _check_headers
    )
    key_dir: str = setting(
        "/etc/filterd/dkim", "where `filterctl dkim keygen` writes a key not yet in the key table"
    )


class DkimSign(Finisher):
    """Signs once the verdict is known (a finisher): the signature covers the message as it
    leaves, and a message that is refused costs no signature."""

    name = "dkim_sign"
    directions = frozenset({Direction.OUTBOUND})
    description = "DKIM-sign outbound mail with the From domain's keys (RSA, Ed25519 or both)"
    needs_body = True
    symbols = {"DKIM_SIGNED": 0.0, "DKIM_NOT_SIGNED": 0.0}
    Settings = DkimSignSettings

    def __init__(self, ctx: CheckContext[DkimSignSettings]) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.sign_settings = settings
        self.static_table = load_key_table(settings)
        self.table = self.static_table
        # [sql]: the filterd_dkim rows join the table (filterd.sqllookup); keys read once per row
        self.sql = ctx.site.sql
        self.sql_keys = SqlKeys()
        self.headers = tuple(dict.fromkeys(["from", *(h.lower() for h in settings.headers)]))
        self.oversign = frozenset(h.lower() for h in settings.oversign)

    def keys_for(self, from_domain: str) -> list[SigningKey]:
        """The keys that sign mail from `from_domain` (empty: it is not signed)."""
        domain = from_domain.lower().rstrip(".")
        if self.sql is not None:
            self.table = self.sql_keys.merged(self.static_table, self.sql.dkim_rows())
        if domain in self.table:
            return self.table[domain]
        if self.sign_settings.subdomains:
            labels = domain.split(".")
            for i in range(1, len(labels) - 1):
                parent = ".".join(labels[i:])
                if parent in self.table:
                    return self.table[parent]
        return self.table.get(self.sign_settings.default_domain.lower(), [])

    def finish(self, tx: Transaction, verdict: Verdict) -> Iterable[AddHeader | Finding]:
        if not self.table and self.sql is None:
            return
        addresses = [a for _, a in getaddresses(tx.header_values("From")) if "@" in a]
        domains = {a.rpartition("@")[2].lower().rstrip(".") for a in addresses}
        if len(domains) != 1:
            why = "no From address" if not domains else f"From addresses of {len(domains)} domains"
            yield Finding("DKIM_NOT_SIGNED", f"{why}: not signed")
            return
        from_domain = domains.pop()
        keys = self.keys_for(from_domain)
        if not keys:
            yield Finding("DKIM_NOT_SIGNED", f"no signing key for From domain {from_domain}")
            return
        raw = tx.message.raw
        signer = dkim.DKIM(raw)
        include = self.include_headers(signer.headers)
        for key in keys:
            header = signer.sign(
                key.selector.encode(),
                key.domain.encode(),
                key.private,
                signature_algorithm=key.algorithm,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include,
            )
            yield AddHeader("DKIM-Signature", signature_value(header))
        names = ", ".join(f"s={k.selector} ({k.key_type})" for k in keys)
        yield Finding("DKIM_SIGNED", f"signed for d={keys[0].domain}: {names}")

    def include_headers(self, headers: list[tuple[bytes, Any]]) -> list[bytes]:
        """h= of a new signature: each listed header as often as it occurs, oversigned ones once more."""
        present: dict[str, int] = {}
        for raw_name, _ in headers:
            key = raw_name.decode("ascii", "replace").lower()
            present[key] = present.get(key, 0) + 1
        out: list[bytes] = []
        for name in self.headers:
            count = present.get(name, 0) + (1 if name in self.oversign else 0)
            out.extend([name.encode()] * count)
        return out


def signature_value(header: bytes) -> str:
    """The value of a DKIM-Signature line dkimpy made, folded with "\\n\\t" as a milter adds headers."""
    value = header.split(b":", 1)[1].strip()
    return value.decode("ascii").replace("\r\n", "\n")


class SqlKeys:
    """The signer's table with the SQL rows added: TOML keys first (a domain in both keeps its
    TOML keys), each SQL row's key file read once and kept while its row stays.  A row whose key
    cannot be used is logged once and skipped: a row added at run time must not stop the mail."""

    def __init__(self) -> None:
        self.rows: tuple[DkimRow, ...] | None = None
        self.table: dict[str, list[SigningKey]] = {}
        self.loaded: dict[DkimRow, SigningKey | None] = {}
        self.warned: set[DkimRow] = set()

    def merged(
        self, static: dict[str, list[SigningKey]], rows: tuple[DkimRow, ...]
    ) -> dict[str, list[SigningKey]]:
        if rows is self.rows:
            return self.table  # unchanged since the last refresh: no work per message
        # a row whose key failed is tried again at each refresh (the admin may have fixed the file)
        loaded = {row: self.loaded.get(row) or self._load(row) for row in rows}
        table = dict(static)
        for row, key in loaded.items():
            if key is not None and row.domain not in static:
                table.setdefault(row.domain, []).append(key)
        self.rows, self.table, self.loaded = rows, table, loaded
        return table

    def _load(self, row: DkimRow) -> SigningKey | None:
        where = f"filterd_dkim row ({row.domain}, {row.selector})"
        try:
            if not _SELECTOR.match(row.selector) or "." not in row.domain:
                raise ConfigError(where, "not a valid domain and selector")
            return load_signing_key(row.domain, row.selector, row.key_path, where)
        except ConfigError as exc:
            if row not in self.warned:  # once per row, not at every refresh
                self.warned.add(row)
                log.warning("DKIM signing: %s; the row is skipped", exc)
            return None


def load_key_table(settings: DkimSignSettings) -> dict[str, list[SigningKey]]:
    """Every key of the table, read and checked now (ConfigError names the bad entry)."""
    table: dict[str, list[SigningKey]] = {}
    collector = Collector()  # every bad key of the table at once, not one per restart
    for domain, selectors in settings.keys.items():
        d = domain.lower().rstrip(".")
        if not d or "." not in d:
            collector.add(f"checks.dkim_sign.keys.{domain}", "expected a domain name such as example.com")
            continue
        if not selectors:
            collector.add(f"checks.dkim_sign.keys.{domain}", "no selector: give selector = key file")
        for selector, path in selectors.items():
            with collector.collect():
                if not _SELECTOR.match(selector):
                    raise ConfigError(
                        f"checks.dkim_sign.keys.{domain}.{selector}", "not a valid selector (DNS labels)"
                    )
                table.setdefault(d, []).append(
                    load_signing_key(d, selector, path, f"checks.dkim_sign.keys.{domain}.{selector}")
                )
    default = settings.default_domain.lower().rstrip(".")
    if default and default not in {k.lower().rstrip(".") for k in settings.keys}:
        collector.add("checks.dkim_sign.default_domain", f"{default!r} has no keys in checks.dkim_sign.keys")
    collector.raise_if_any()
    return table
