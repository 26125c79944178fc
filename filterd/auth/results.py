"""Authentication results: what SPF, DKIM, DMARC and ARC found, and the one header that says so.

Each authentication check leaves its result on ``tx.facts`` under its fact below, so DMARC can
read the SPF and DKIM results and the `auth_results` finisher can write one
Authentication-Results header (RFC 8601) that carries them all.  Results are plain frozen data;
the rendering here knows nothing about how they were obtained.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Literal

from filterd.results import Fact, Facts

if TYPE_CHECKING:
    from filterd.config import Config

AR_HEADER = "Authentication-Results"


@dataclass(frozen=True)
class SpfResult:
    result: str  # pass fail softfail neutral none temperror permerror
    identity: Literal["mailfrom", "helo"]
    domain: str  # the domain whose policy was evaluated
    sender: str  # the identity checked: the MAIL FROM address, or postmaster@HELO
    explanation: str = ""


@dataclass(frozen=True)
class DkimResult:
    result: str  # pass fail neutral policy temperror permerror
    domain: str  # d=
    selector: str  # s=
    b: str  # the b= tag with folding whitespace removed ("" if unreadable)
    algorithm: str  # a=
    reason: str = ""


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass fail none temperror permerror
    from_domain: str  # the RFC5322.From domain ("" when there is none or several)
    policy: str = ""  # p= (or sp= for a subdomain) of the record that applied; "" without a record
    disposition: str = "none"  # what the policy asks for this message after pct: none quarantine reject
    reason: str = ""


@dataclass(frozen=True)
class ArcResult:
    result: str  # pass fail none temperror
    instances: int = 0
    reason: str = ""


# The facts the authentication checks provide (`Transaction.facts`).
SPF = Fact[SpfResult]("auth.spf")  # the MAIL FROM identity
SPF_HELO = Fact[SpfResult]("auth.spf_helo")  # the HELO identity
DKIM = Fact[tuple[DkimResult, ...]]("auth.dkim")  # one per signature, in header order
DMARC = Fact[DmarcResult]("auth.dmarc")
ARC = Fact[ArcResult]("auth.arc")


def our_hostname(configured: str, announced: str | None = None) -> str:
    """This host's name in our headers: `configured` (``[network] hostname``), else the name
    Postfix announces (its ``j`` macro, `announced`, when filterd runs as a milter), else the FQDN."""
    return configured or (announced or "").strip() or _fqdn()


def configured_authserv_id(config: Config, announced: str | None = None) -> str:
    """Our authserv-id: ``[checks.auth_results] authserv_id``, else `our_hostname`."""
    settings = config.check_settings("auth_results")
    return settings.authserv_id or our_hostname(config.network.hostname, announced)


def our_ids(config: Config, announced: str | None = None) -> tuple[str, ...]:
    """The names an incoming Authentication-Results or Received-SPF header must not claim: our
    authserv-id and our host name (they differ when authserv_id is set to, say, the domain)."""
    ids = (configured_authserv_id(config, announced), our_hostname(config.network.hostname, announced))
    return tuple(dict.fromkeys(normalise_id(i) for i in ids if i))


def normalise_id(value: str) -> str:
    """An authserv-id or host name as compared: case and a trailing dot do not matter (RFC 8601
    2.5 compares authserv-ids case-insensitively; ``mx.example.net.`` names ``mx.example.net``)."""
    return value.strip().lower().rstrip(".")


@cache
def _fqdn() -> str:
    return socket.getfqdn()  # may ask DNS: once per process, not per message


# --- reading an authserv-id (to remove forged headers) ---------------------------------------


def _strip_comments(value: str) -> str:
    """RFC 5322 comments (nested, with quoted-pairs) removed; quoted strings left alone."""
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            if depth == 0:
                out.append(ch)
            continue
        if quoted:
            quoted = ch != '"'
            out.append(ch)
        elif ch == '"' and depth == 0:
            quoted = True
            out.append(ch)
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


_RECEIVER = re.compile(r'(?i)(?:^|[;\s])receiver\s*=\s*"?([^";\s]+)')
_COMMENT_HOST = re.compile(r"^\s*[A-Za-z]+\s*\(\s*([^:\s()]+)\s*:")


def receivers_of(value: str) -> tuple[str, ...]:
    """The hosts a Received-SPF value (RFC 7208 9.1) says wrote it: its ``receiver=`` key and the
    host that opens its comment (``Pass (mx.example.net: domain of ...)``, as pyspf writes it)."""
    found = [m.group(1) for m in _RECEIVER.finditer(value[:4096])]
    m = _COMMENT_HOST.match(value[:1024])
    if m:
        found.append(m.group(1))
    return tuple(normalise_id(f) for f in found)


def authserv_id_of(value: str) -> str:
    """The authserv-id an Authentication-Results value claims ("" when there is none)."""
    head = _strip_comments(value).split(";", 1)[0].strip()
    if not head:
        return ""
    first = head.split()[0]
    if first.startswith('"') and first.endswith('"') and len(first) > 1:
        first = first[1:-1]
    return first


# --- writing the header ----------------------------------------------------------------------

_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")  # RFC 2045 token: no tspecials
_ADDRESS = re.compile(
    r"^(?:[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+(?:\.[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+)*)?@[0-9A-Za-z.\-]+$"
)


def pvalue(value: str) -> str:
    """A property value (RFC 8601 2.2): a token, an address, or else a quoted-string."""
    if _TOKEN.match(value) or _ADDRESS.match(value):
        return value
    cleaned = "".join(c for c in value if c.isprintable())
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment(text: str, limit: int = 120) -> str:
    """A header comment, " (text)", safe to put in a header; "" for no text."""
    text = " ".join("".join(c if c.isprintable() and ord(c) < 128 else "?" for c in text).split())
    if not text:
        return ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return " (" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def _spf_resinfo(r: SpfResult) -> str:
    prop = "smtp.mailfrom" if r.identity == "mailfrom" else "smtp.helo"
    value = r.domain if r.identity == "helo" else (r.sender or r.domain)
    return f"spf={r.result}{comment(r.explanation) if r.result != 'pass' else ''} {prop}={pvalue(value)}"


def _dkim_resinfo(r: DkimResult) -> str:
    out = f"dkim={r.result}{comment(r.reason) if r.result != 'pass' else ''}"
    if r.domain:
        out += f" header.d={pvalue(r.domain)}"
    if r.selector:
        out += f" header.s={pvalue(r.selector)}"
    if r.b:
        out += f" header.b={pvalue(r.b[:8])}"  # RFC 6008: a prefix tells several signatures apart
    return out


def _dmarc_resinfo(r: DmarcResult) -> str:
    details = []
    if r.policy:
        details.append(f"p={r.policy} dis={r.disposition}")
    if r.reason:
        details.append(r.reason)
    out = f"dmarc={r.result}{comment('; '.join(details))}"
    if r.from_domain:
        out += f" header.from={pvalue(r.from_domain)}"
    return out


def _arc_resinfo(r: ArcResult) -> str:
    details = [f"i={r.instances}"] if r.instances else []
    if r.reason and r.result != "pass":
        details.append(r.reason)
    return f"arc={r.result}{comment('; '.join(details))}"


def render(authserv_id: str, results: Facts) -> str | None:
    """The Authentication-Results value for `results`, folded one method a line; None if empty."""
    parts: list[str] = []
    for key in (SPF, SPF_HELO):
        if (spf := results.get(key)) is not None:
            parts.append(_spf_resinfo(spf))
    if (dkims := results.get(DKIM)) is not None:
        parts.extend([_dkim_resinfo(d) for d in dkims] or ["dkim=none"])
    if (dmarc := results.get(DMARC)) is not None:
        parts.append(_dmarc_resinfo(dmarc))
    if (arc := results.get(ARC)) is not None:
        parts.append(_arc_resinfo(arc))
    if not parts:
        return None
    return pvalue(authserv_id) + ";\n\t" + ";\n\t".join(parts)
