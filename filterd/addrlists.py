"""Allow and deny list files: client networks, and e-mail addresses or domains.

One entry per line; `#` starts a comment; blank lines are ignored.  A bad line is an error that
names the file and the line, so a typo cannot silently let mail through.

Address lists match, per entry:
- ``user@example.com`` -- that address (case-insensitive);
- ``example.com`` or ``@example.com`` -- any address at exactly that domain;
- ``.example.com`` -- any address at a subdomain of example.com (not example.com itself).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from filterd.settings import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _entries(path: Path, key: str) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read list file {path}: {exc}") from exc
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            out.append((number, entry))
    return out


@dataclass(frozen=True)
class NetworkList:
    networks: tuple[IPNetwork, ...]

    @classmethod
    def load(cls, path: str, key: str) -> NetworkList:
        if not path:
            return cls(())
        nets = []
        for number, entry in _entries(Path(path), key):
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ConfigError(
                    key, f"{path}:{number}: {entry!r} is not an IP address or network"
                ) from None
        return cls(tuple(nets))

    def match(self, ip: IPAddress | None) -> IPNetwork | None:
        if ip is None:
            return None
        for net in self.networks:
            if ip.version == net.version and ip in net:
                return net
        return None


@dataclass(frozen=True)
class AddressList:
    addresses: frozenset[str]
    domains: frozenset[str]
    parent_domains: tuple[str, ...]  # ".example.com" entries, stored with the leading dot

    @classmethod
    def load(cls, path: str, key: str) -> AddressList:
        if not path:
            return cls(frozenset(), frozenset(), ())
        return cls.of([(f"{path}:{number}: ", entry) for number, entry in _entries(Path(path), key)], key)

    @classmethod
    def of(cls, entries: Iterable[tuple[str, str]], key: str) -> AddressList:
        """A list from (where, entry) pairs; `where` prefixes the error of a bad entry (a file's
        line, or nothing for entries written in the configuration itself)."""
        addresses: set[str] = set()
        domains: set[str] = set()
        parents: list[str] = []
        for where, entry in entries:
            e = entry.strip().lower()
            if not e or " " in e or e.count("@") > 1 or e in ("@", "."):
                raise ConfigError(key, f"{where}{entry!r} is not an address or domain")
            if e.startswith("."):
                parents.append(e)
            elif "@" in e and not e.startswith("@"):
                addresses.add(e)
            else:
                domains.add(e.lstrip("@"))
        return cls(frozenset(addresses), frozenset(domains), tuple(parents))

    def match(self, address: str | None) -> str | None:
        """The entry that matches `address`, or None."""
        if not address:
            return None
        a = address.strip("<>").lower()
        if a in self.addresses:
            return a
        domain = a.rsplit("@", 1)[-1]
        if domain in self.domains:
            return domain
        for parent in self.parent_domains:
            if domain.endswith(parent):
                return parent
        return None
