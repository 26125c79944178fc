"""Reputation: verdict counters per client IP, network, HELO domain, sender domain and
authenticated domain, in daily buckets that age out.

Each entity (a kind and a value, e.g. ``ip 192.0.2.7`` or ``auth example.com``) is one Redis hash
whose fields are ``DAY:VERDICT`` counters, DAY being days since the epoch (UTC).  Reading sums
the buckets of the last ``window_days`` days; the update script deletes older buckets and refreshes
the key's TTL, so an entity that stops sending disappears by itself.

Why these kinds:

- ``ip`` and ``net``: the client address, and its /24 or /64 -- spam runs move between
  neighbouring addresses, large senders retry from a pool.
- ``helo``: the registered domain of the HELO name (``mail7.example.com`` counts as
  ``example.com``), so a sender's numbered hosts share one record.
- ``from``: the envelope sender's domain as claimed.  Anyone can claim any domain, so this kind
  can only be a weak signal.
- ``auth``: a domain that passed SPF or DKIM for this message.  Counted apart from ``from``:
  a forger can spoil the reputation of the claim, never of the authenticated domain.

The verdict counted for a message is one of ``ham``, ``spam``, ``virus``, ``rejected`` (see
`category_of`).  Scoring turns the counts into a share of bad messages, smoothed so that a
handful of messages cannot swing it::

            spam + virus + rejected + 0.5
    bad  =  -----------------------------          (only once total >= min_messages)
                    total + 1

    bad >= 0.5:  REP_<KIND>_BAD  scored  table_score * (bad - 0.5) * 2
    bad <  0.5:  REP_<KIND>_GOOD scored  table_score * (0.5 - bad) * 2

so an entity with only spam gets nearly the full (positive) table score, one with only ham
nearly the full (negative) one, and a mixed one next to nothing.  Clients and authenticated
domains whose ham share is at least ``trusted_ratio`` are also marked TRUSTED (score 0), which
the greylist check reads to let them through without a delay.

A corrected verdict (``filterctl train``) moves one count from the old verdict to the new one in
the bucket of the day the message was counted: each counted message leaves a small record of its
entities under its Message-ID for ``window_days`` (`retrain`).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from filterd.auth.results import DKIM, SPF
from filterd.keys import Keys, client_network, domain_of
from filterd.redisstate import LuaScript, RedisCheckSettings
from filterd.results import Action, Verdict
from filterd.settings import ip_networks, not_negative, positive, setting

if TYPE_CHECKING:
    from filterd.config import Config
    from filterd.transaction import Transaction

VERDICTS = ("ham", "spam", "virus", "rejected")
SIGNATURE_HEADER = "x-filterd-signature"  # added by the bayes check (issue 6)
SIGNATURE_ID = "sig:"  # a signature id as a record id: never mistaken for a Message-ID ("<...>")
DAY = 86400


def _ratio(value: float) -> str | None:
    return None if 0 < value <= 1 else "expected a number above 0 and at most 1"


def _prefix(bits: int) -> Any:
    def check(value: int) -> str | None:
        return None if 0 <= value <= bits else f"expected a prefix length from 0 to {bits}"

    return check


@dataclass(frozen=True)
class ReputationSettings(RedisCheckSettings):
    window_days: int = setting(30, "days of verdicts counted (daily buckets; older ones age out)", positive)
    min_messages: int = setting(10, "messages of an entity needed before its reputation is scored", positive)
    trusted_ratio: float = setting(
        0.9, "ham share at which a client or authenticated domain is TRUSTED (greylisting skips it)", _ratio
    )
    ipv4_prefix: int = setting(24, "IPv4 prefix length of the client network counted", _prefix(32))
    ipv6_prefix: int = setting(64, "IPv6 prefix length of the client network counted", _prefix(128))
    virus_symbols: tuple[str, ...] = setting(
        ("CLAM_VIRUS", "VIRUS_FOUND"), "symbols that make a message count as a virus"
    )
    correction_days: int = setting(
        14,
        "days a counted message can still be corrected by filterctl train (its entities are kept "
        "that long, ~400 bytes per id, two ids with a signature; 0: not kept, no corrections)",
        not_negative,
    )
    exempt_networks: tuple[str, ...] = setting(
        ("127.0.0.0/8", "::1/128"),
        "clients whose address and network are not counted (local reinjection, fetchmail)",
        ip_networks,
    )


@dataclass(frozen=True)
class Entity:
    kind: str  # one of keys.REPUTATION_KINDS
    value: str

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"


@dataclass
class Counts:
    ham: int = 0
    spam: int = 0
    virus: int = 0
    rejected: int = 0
    days: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.ham + self.spam + self.virus + self.rejected

    @property
    def bad(self) -> int:
        return self.spam + self.virus + self.rejected

    def bad_share(self) -> float:
        """The smoothed share of bad messages (see the module docstring)."""
        return (self.bad + 0.5) / (self.total + 1)

    def __str__(self) -> str:
        return f"{self.ham} ham, {self.spam} spam, {self.virus} virus, {self.rejected} rejected"


# Updates every entity of a message at once (atomically, one round trip), and writes its record.
# KEYS: the entities' hashes, then the record keys.  ARGV: number of entities, day, first day
# kept, TTL seconds, number of changes, the changes as (verdict, increment) pairs, one "kind value"
# id per entity, then the record text and its expiry ("KEEPTTL" or seconds) when there are
# record keys.  A negative increment (a correction) never leaves a zero or negative counter; the
# buckets older than the window are deleted on the way.
_UPDATE = LuaScript(
    """
local nent = tonumber(ARGV[1])
local day = ARGV[2]
local cutoff = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local nch = tonumber(ARGV[5])
local i = 6
local changes = {}
for c = 1, nch do
  changes[c] = {ARGV[i], ARGV[i + 1]}
  i = i + 2
end
for e = 1, nent do
  local key = KEYS[e]
  for _, ch in ipairs(changes) do
    local field = day .. ':' .. ch[1]
    if redis.call('HINCRBY', key, field, ch[2]) <= 0 then redis.call('HDEL', key, field) end
  end
  redis.call('HSET', key, 'id', ARGV[i])
  i = i + 1
  for _, f in ipairs(redis.call('HKEYS', key)) do
    local d = tonumber(string.match(f, '^(%d+):'))
    if d and d < cutoff then redis.call('HDEL', key, f) end
  end
  redis.call('EXPIRE', key, ttl)
end
for k = nent + 1, #KEYS do
  if ARGV[i + 1] == 'KEEPTTL' then
    redis.call('SET', KEYS[k], ARGV[i], 'KEEPTTL')
  else
    redis.call('SET', KEYS[k], ARGV[i], 'EX', ARGV[i + 1])
  end
end
return nent
"""
)

# The window's sums per entity, added up in Redis: a month of daily buckets is ~120 fields a
# hash, and sending them all to be added up in Python cost more than everything else.  Measured
# with bench/redis_checks.py (30 days of history, a known greylist triplet): 4.8 ms of filterd CPU
# per message with HGETALL and the sums in Python, 1.5 ms with this script.
# KEYS: the entities' hashes; ARGV[1]: the first day counted.
# Returns ham, spam, virus, rejected for each key in turn.
_READ = LuaScript(
    """
local first = tonumber(ARGV[1])
local out = {}
for k = 1, #KEYS do
  local sums = {ham = 0, spam = 0, virus = 0, rejected = 0}
  local all = redis.call('HGETALL', KEYS[k])
  for j = 1, #all, 2 do
    local d, verdict = string.match(all[j], '^(%d+):(%a+)$')
    if d and tonumber(d) >= first and sums[verdict] then
      sums[verdict] = sums[verdict] + tonumber(all[j + 1])
    end
  end
  out[#out + 1] = sums.ham
  out[#out + 1] = sums.spam
  out[#out + 1] = sums.virus
  out[#out + 1] = sums.rejected
end
return out
"""
)


def today(now: float) -> int:
    return int(now // DAY)


def helo_domain(helo: str | None) -> str | None:
    """The registered domain of a HELO name, or None for a literal or a bare word."""
    if not helo:
        return None
    name = helo.strip().rstrip(".").lower()
    if name.startswith("[") or "." not in name:
        return None
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    return registered_domain(name)


def registered_domain(name: str) -> str:
    """``mail7.example.co.uk`` -> ``example.co.uk``: the organisational domain by the Public
    Suffix List, the same function DMARC uses (one list for the whole project)."""
    from filterd.auth.dmarc import org_domain

    return org_domain(name)


def authenticated_domains(tx: Transaction) -> dict[str, set[str]]:
    """Domains that passed SPF or DKIM for this message, by method: ``{"spf": {...}, "dkim": {...}}``.

    Read from the facts the sender-authentication checks leave (`filterd.auth.results.SPF`: the
    MAIL FROM identity's result, `DKIM`: one result per signature); without those checks there
    are simply no authenticated domains.  The HELO identity's SPF pass is not counted: it vouches
    for the client's name, not for the sender."""
    out: dict[str, set[str]] = {}
    spf = tx.facts.get(SPF)
    if _passed(spf):
        out["spf"] = {_domain(spf)}
    dkim = {_domain(r) for r in tx.facts.get(DKIM) or () if _passed(r)}
    if dkim:
        out["dkim"] = dkim
    return out


def _passed(result: Any) -> bool:
    return getattr(result, "result", None) == "pass" and bool(getattr(result, "domain", ""))


def _domain(result: Any) -> str:
    return str(result.domain).lower().rstrip(".")


def entities_of(tx: Transaction, settings: ReputationSettings, auth: bool = True) -> list[Entity]:
    """The entities a message counts for, in a fixed order (ip, net, helo, from, auth...)."""
    out: list[Entity] = []
    ip = tx.session.client_ip
    exempt = ip is not None and any(
        ip.version == n.version and ip in n for n in _networks_of(settings.exempt_networks)
    )
    if ip is not None and not exempt:
        out.append(Entity("ip", str(ip)))
        out.append(Entity("net", client_network(ip, settings.ipv4_prefix, settings.ipv6_prefix)))
    if (helo := helo_domain(tx.session.helo)) is not None:
        out.append(Entity("helo", helo))
    if (sender := domain_of(tx.mail_from)) is not None:
        out.append(Entity("from", sender))
    if auth:
        domains = set().union(*authenticated_domains(tx).values())
        out.extend(Entity("auth", d) for d in sorted(domains))
    return out


@functools.lru_cache(maxsize=16)
def _networks_of(values: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def category_of(verdict: Verdict, settings: ReputationSettings) -> str | None:
    """The verdict a message counts as, or None when it does not count (tempfailed: it comes back)."""
    if verdict.action is Action.TEMPFAIL or verdict.action is Action.GREYLIST:
        return None
    if any(s.name in settings.virus_symbols for s in verdict.symbols):
        return "virus"
    if verdict.action is Action.REJECT:
        return "rejected"
    if verdict.is_spam or verdict.action in (Action.QUARANTINE, Action.DISCARD):
        return "spam"
    return "ham"


class ReputationStore:
    """Reads and updates the counters.  Every method costs one round trip (two for `retrain`)."""

    def __init__(self, client: Any, keys: Keys, settings: ReputationSettings) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings

    def read(self, entities: Sequence[Entity], now: float) -> list[Counts]:
        """The counts of each entity over the window, summed in Redis (one round trip)."""
        if not entities:
            return []
        first = today(now) - self.settings.window_days + 1
        names = [self.keys.reputation(e.kind, e.value) for e in entities]
        if _is_cluster(self.client):
            # a script's keys must share a hash slot there: read the hashes, add up here
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(name)
            return [_counts(raw, first) for raw in pipe.execute()]
        flat = [int(x) for x in _READ(self.client, names, [first])]
        return [
            Counts(ham=flat[i], spam=flat[i + 1], virus=flat[i + 2], rejected=flat[i + 3])
            for i in range(0, len(flat), 4)
        ]

    def record(
        self,
        entities: Sequence[Entity],
        verdict: str,
        now: float,
        ids: Sequence[str] = (),
    ) -> None:
        """Count one message; remember its entities under each of its `ids` (see `message_ids`)
        so a later correction can move the count."""
        day = today(now)
        ids = [i for i in ids if i] if self.settings.correction_days else []
        record = json.dumps(
            {"day": day, "verdict": verdict, "entities": [[e.kind, e.value] for e in entities], "ids": ids}
        )
        expiry = str(self.settings.correction_days * DAY)
        self._update(entities, day, [(verdict, 1)], now, ids, record, expiry)

    def retrain(self, message_id: str, verdict: str, now: float | None = None) -> str:
        """Move a counted message to another verdict.  `message_id` is one of the ids it was
        recorded under (its Message-ID, or ``sig:`` + its X-Filterd-Signature).  Returns what
        happened, for the CLI: ``moved``, ``unchanged`` (already counted so) or ``unknown`` (no
        record: too old, never counted here)."""
        if verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}")
        raw = self.client.get(self.keys.reputation_message(message_id))
        if raw is None:
            return "unknown"
        record = json.loads(raw)
        if record["verdict"] == verdict:
            return "unchanged"
        entities = [Entity(k, v) for k, v in record["entities"]]
        old = record["verdict"]
        record["verdict"] = verdict
        # every id of the message sees the new verdict, so a second correction by the other id
        # does not move the count twice
        ids = record.get("ids", [message_id])
        now = time.time() if now is None else now
        self._update(
            entities, int(record["day"]), [(old, -1), (verdict, 1)], now, ids, json.dumps(record), "KEEPTTL"
        )
        return "moved"

    def reset(self, entities: Iterable[Entity]) -> int:
        """Forget entities' counters; returns how many existed."""
        names = [self.keys.reputation(e.kind, e.value) for e in entities]
        return int(self.client.delete(*names)) if names else 0

    def _ttl(self) -> int:
        return self.settings.window_days * DAY

    def _update(
        self,
        entities: Sequence[Entity],
        day: int,
        changes: Sequence[tuple[str, int]],
        now: float,
        ids: Sequence[str],
        record: str,
        expiry: str,
    ) -> None:
        first = today(now) - self.settings.window_days + 1
        first = min(first, day)  # a correction of an old day must not delete its own bucket
        names = [self.keys.reputation(e.kind, e.value) for e in entities]
        records = [self.keys.reputation_message(i) for i in ids]
        changed = [x for verdict, n in changes for x in (verdict, n)]

        def args(ents: Sequence[Entity]) -> list[Any]:
            return [len(ents), day, first, self._ttl(), len(changes), *changed, *(str(e) for e in ents)]

        if not _is_cluster(self.client):
            _UPDATE(self.client, names + records, [*args(entities), record, expiry])
            return
        # Redis Cluster: a script's keys must share a slot, so one call per entity there
        for entity, name in zip(entities, names, strict=True):
            _UPDATE(self.client, [name], args([entity]))
        for key in records:
            if expiry == "KEEPTTL":
                self.client.set(key, record, keepttl=True)
            else:
                self.client.set(key, record, ex=int(expiry))


def _is_cluster(client: Any) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def _counts(raw: Mapping[bytes | str, bytes | str], first_day: int) -> Counts:
    counts = Counts()
    for f, v in raw.items():
        name = f.decode() if isinstance(f, bytes) else f
        day_s, _, verdict = name.partition(":")
        if not day_s.isdigit() or verdict not in VERDICTS:
            continue
        day = int(day_s)
        if day < first_day:
            continue
        n = int(v)
        setattr(counts, verdict, getattr(counts, verdict) + n)
        counts.days.setdefault(day, {})[verdict] = n
    return counts


@dataclass(frozen=True)
class Assessment:
    """What the counts of one entity say: a symbol suffix (BAD/GOOD), a strength in [0, 1], trust."""

    suffix: str
    strength: float
    trusted: bool


def assess(counts: Counts, settings: ReputationSettings) -> Assessment | None:
    """None while there is too little evidence (fewer than ``min_messages``)."""
    if counts.total < settings.min_messages:
        return None
    bad = counts.bad_share()
    trusted = counts.ham / counts.total >= settings.trusted_ratio
    if bad >= 0.5:
        return Assessment("BAD", round((bad - 0.5) * 2, 3), trusted)
    return Assessment("GOOD", round((0.5 - bad) * 2, 3), trusted)


def store_for(config: Config, client: Any = None) -> ReputationStore:
    """A store with the configuration's key prefix and ``[checks.reputation]`` settings; `client`
    defaults to a new Redis client made from ``[redis]``."""
    from filterd.services import Services

    settings = config.check_settings("reputation")
    return ReputationStore(client or Services(config).redis, Keys(config.redis.key_prefix), settings)


def retrain(
    config: Config,
    label: str,
    message_id: str | None = None,
    signature: str | None = None,
    client: Any = None,
) -> str:
    """What ``filterctl train spam|ham`` calls per message: move the message's reputation counts
    to `label` ("spam" or "ham").  Give the message's Message-ID header value, or the
    X-Filterd-Signature id when training ``--signature``.  Returns "moved", "unchanged" or
    "unknown" (see `ReputationStore.retrain`); raises a redis-py error when Redis is unreachable."""
    key = message_id.strip() if message_id else (SIGNATURE_ID + signature.strip() if signature else "")
    if not key:
        return "unknown"
    return store_for(config, client).retrain(key, label)


def message_ids(tx: Transaction, verdict: Verdict) -> list[str]:
    """The ids a counted message is recorded under: its Message-ID, and the signature id the
    classifier added (``X-Filterd-Signature``), by which ``filterctl train --signature`` knows it."""
    ids = tx.header_values("Message-ID")[:1]
    ids += [SIGNATURE_ID + h.value.strip() for h in verdict.add_headers if h.name.lower() == SIGNATURE_HEADER]
    return [i.strip() for i in ids if i.strip()]


def entities_for_target(target: str, settings: ReputationSettings) -> list[Entity]:
    """The entities `filterctl reputation show|reset TARGET` covers: an IP address and its
    network, or a domain as HELO domain, sender domain and authenticated domain."""
    try:
        ip = ipaddress.ip_address(target.strip("[]"))
    except ValueError:
        pass
    else:
        return [
            Entity("ip", str(ip)),
            Entity("net", client_network(ip, settings.ipv4_prefix, settings.ipv6_prefix)),
        ]
    try:
        net = ipaddress.ip_network(target, strict=False)
    except ValueError:
        pass
    else:
        return [Entity("net", str(net))]
    domain = target.strip().rstrip(".").lower().lstrip("@")
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"{target!r} is not an IP address or a domain")
    return [Entity("helo", domain), Entity("from", domain), Entity("auth", domain)]


_DOMAIN = re.compile(
    r"(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)
