"""Every Redis key filterd writes, in one place.

A key is ``<prefix><family>:...:<hash>``: the ``[redis] key_prefix``, a short family name, and a
hash of the canonical inputs (lower-cased addresses, the masked client network, sorted
recipients), so a key never carries an address in clear text and has a fixed length.  Every key
gets a TTL from the settings of the check that writes it; nothing here lives forever.

Families (``P`` is the prefix, ``{N}`` a hash tag, ``H`` a hash of the inputs named):

=====================  ======  ===========================================  ======================
key                    type    contents                                     TTL
=====================  ======  ===========================================  ======================
P gl:{N}:t:H(net,      hash    ``first``: time of the first attempt,        retry window until it
   sender, rcpt)               ``passed``: time of the last accepted use    passes, then the pass
                                                                            TTL (refreshed on use)
P gl:{N}:n             hash    ``count``: passes of client network N        pass TTL (refreshed)
                               (counted at most once per interval),
                               ``last``: time of the last counted pass
P rep:KIND:H(value)    hash    ``DAY:VERDICT``: messages of that verdict    window days (refreshed
                               on that day (days since the epoch, UTC),     on every update)
                               ``id``: "KIND value", for people
P repmsg:H(id)         string JSON of one message's reputation entities   correction_days
                               and the verdict counted, so a correction by
                               ``filterctl train`` moves the right counters
P rl:KIND:H(value)     hash    ``tokens``, ``ts``: a token bucket of        time to refill fully
                               recipients; value: the client network
                               (``ip``, masked by the check's prefix
                               lengths) or the authenticated user
=====================  ======  ===========================================  ======================

``N`` is the hash of the client network, written as a Redis Cluster hash tag (``{...}``): the
greylist script touches the triplet and the network counter together, and the keys of one script
must live in one hash slot.  Every other script touches one key.  The prefix must therefore not
contain braces (checked in `Keys`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

REPUTATION_KINDS = ("ip", "net", "helo", "from", "auth")
RATELIMIT_KINDS = ("ip", "user")

_DIGITS = re.compile(r"\d+")
_BATV = re.compile(r"^(?:prvs|btv1|msprvs1)=[^=]+=", re.I)


def digest(*parts: str) -> str:
    """A short, stable hash of the canonical inputs (80 bits: collisions are not a concern here)."""
    h = hashlib.blake2b(digest_size=10)
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\x00")
    return h.hexdigest()


def client_network(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, v4_prefix: int = 24, v6_prefix: int = 64
) -> str:
    """The network a client address is counted in: /24 for IPv4 and /64 for IPv6 by default.

    Large senders send retries from neighbouring addresses of one pool, which is why postgrey's
    ``--lookup-by-subnet`` is the usual setting and why reputation has a per-network family."""
    prefix = v4_prefix if ip.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def normalize_sender(sender: str | None) -> str:
    """The envelope sender as greylisting compares it.

    Bounce-address schemes make every retry look new: BATV (``prvs=TAG=user@``), ``+extensions``
    and VERP numbers.  postgrey strips those too; without it, mailing lists would be greylisted on
    every message.  The null sender is ``<>``."""
    if not sender:
        return "<>"
    addr = sender.strip("<>").lower()
    local, at, domain = addr.rpartition("@")
    if not at:
        return addr
    local = _BATV.sub("", local)
    local = local.split("+", 1)[0]
    local = _DIGITS.sub("#", local)
    return f"{local}@{domain}"


def domain_of(address: str | None) -> str | None:
    """The lower-cased domain of an address, or None (null sender, no @)."""
    if not address:
        return None
    addr = address.strip("<>").lower()
    _, at, domain = addr.rpartition("@")
    if not at:
        return None
    return domain.strip(".") or None


@dataclass(frozen=True)
class Keys:
    """Builds the keys of every family from one prefix."""

    prefix: str

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            # the first {...} in a key is its Redis Cluster hash tag: a brace in the prefix would
            # put every key in one slot, or split a script's keys across slots
            raise ValueError("the Redis key prefix must not contain { or }")

    def greylist_triplet(self, network: str, sender: str, rcpt: str) -> str:
        return f"{self.prefix}gl:{{{digest(network)}}}:t:{digest(network, sender, rcpt.lower())}"

    def greylist_network(self, network: str) -> str:
        return f"{self.prefix}gl:{{{digest(network)}}}:n"

    def reputation(self, kind: str, value: str) -> str:
        if kind not in REPUTATION_KINDS:
            raise ValueError(f"unknown reputation kind {kind!r}")
        return f"{self.prefix}rep:{kind}:{digest(kind, value.lower())}"

    def reputation_message(self, message_id: str) -> str:
        return f"{self.prefix}repmsg:{digest(message_id.strip())}"

    def ratelimit(self, kind: str, value: str) -> str:
        if kind not in RATELIMIT_KINDS:
            raise ValueError(f"unknown rate limit kind {kind!r}")
        return f"{self.prefix}rl:{kind}:{digest(kind, value.lower())}"
