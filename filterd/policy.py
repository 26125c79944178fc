"""Policy by recipient: what one domain or one mailbox wants done with its mail.

An admin hosting several domains writes, besides the site-wide ``[actions]``, a table per
recipient domain or address (docs/policy.md)::

    [policy."example.com"]
    reject = 25.0                       # any key of [actions]: thresholds and subject_tag
    reject_action = "quarantine"        # hold what would be rejected instead of a 5xx
    disabled_checks = ["greylist"]      # checks not run for these recipients
    allow_senders = ["partner.example"] # SENDER_ALLOWED (-20), as [checks.sender_lists]
    deny_senders = ["spam@bad.example"] # 550 for these recipients
    bayes = false                       # the classifier not run

The most specific entry wins: the address (``user@example.com``), then its domain
(``example.com``), then a parent domain (``.example.com`` covers every subdomain, the nearest
first), then the site-wide settings.  Domains match case-insensitively, and an internationalised
domain matches in either form (``bücher.example`` and ``xn--bcher-kva.example``).

A milter gives one verdict per message, for all its recipients, so a message has one policy:
the first accepted recipient's.  A later recipient whose policy differs is refused with a 4xx
by the driver (`SEPARATE_DELIVERY`) and the client sends it again in a transaction of its own,
as amavisd-new's policy banks split a message (docs/policy.md says why).

This module reads and validates the tables and looks a recipient up; the driver and the pipeline
apply what it finds.  It knows no check: the check names to validate are handed in.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from filterd.addrlists import AddressList
from filterd.replies import R550_SENDER_DENIED
from filterd.results import Fact, Finding, Reject, Reply, TempFail
from filterd.settings import Collector, Problem, Table, build_partial, setting, toml_key, unknown_key_message

if TYPE_CHECKING:
    from filterd.config import ActionSettings
    from filterd.transaction import Transaction

# The reply to a recipient whose policy differs from the message's: a 4xx, so the client keeps
# it and sends it again in another transaction (Postfix's smtp client defers that recipient and
# its queue manager retries it; it delivers the accepted ones now).
SEPARATE_DELIVERY = Reply(452, "4.3.0", "recipient needs a separate delivery: try again")

_NO_ADDRESSES = AddressList(frozenset(), frozenset(), ())

# The [actions] keys a policy may set: ActionSettings' fields (a test checks the two agree).
ACTION_KEYS = ("reject", "quarantine", "rewrite_subject", "add_header", "greylist", "subject_tag")


@dataclass(frozen=True)
class PolicyOptions:
    """The keys of a ``[policy."..."]`` table besides the [actions] ones (declared here so
    they are validated, and their errors worded, as every other setting)."""

    reject_action: Literal["reject", "quarantine"] = setting(
        "reject", 'what a score at or above reject does: "reject" (550) or "quarantine" (held)'
    )
    disabled_checks: tuple[str, ...] = setting((), "checks not run for these recipients")
    allow_senders: tuple[str, ...] = setting(
        (), "envelope senders (address, domain, .parent-domain) given SENDER_ALLOWED for these recipients"
    )
    deny_senders: tuple[str, ...] = setting(
        (), "envelope senders (address, domain, .parent-domain) refused with 550 for these recipients"
    )
    bayes: bool = setting(True, "run the classifier (false: as if bayes were in disabled_checks)")


@dataclass(frozen=True)
class Policy:
    """What applies to a message: one entry's settings, or the site-wide ones (`SITE`).

    Two policies are the same when they would treat a message alike, whatever their names:
    recipients of ``a.example`` and ``b.example`` with equal tables share a transaction."""

    name: str = field(default="", compare=False)  # the entry's key; "" for the site-wide settings
    actions: tuple[tuple[str, Any], ...] = ()  # the [actions] keys this entry sets
    reject_action: str = "reject"
    disabled_checks: frozenset[str] = frozenset()
    allow_senders: AddressList = _NO_ADDRESSES
    deny_senders: AddressList = _NO_ADDRESSES
    written: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)  # as in the file

    def actions_over(self, site: ActionSettings) -> ActionSettings:
        """The site's [actions] with this policy's keys laid over them."""
        return dataclasses.replace(site, **dict(self.actions)) if self.actions else site

    def runs(self, check: str) -> bool:
        return check not in self.disabled_checks

    def sender_outcome(self, sender: str | None) -> Reject | Finding | None:
        """The deny list's 550, the allow list's SENDER_ALLOWED, or nothing."""
        where = f"policy {self.name}" if self.name else "policy"
        if (entry := self.deny_senders.match(sender)) is not None:
            return Reject(
                R550_SENDER_DENIED.with_text(f"Sender address <{sender}> is on this recipient's deny list"),
                f"sender {sender} in the deny list of {where} ({entry})",
            )
        if (entry := self.allow_senders.match(sender)) is not None:
            return Finding("SENDER_ALLOWED", f"sender {sender} in the allow list of {where} ({entry})")
        return None


SITE = Policy()

# The message's policy, set by the driver at its first accepted recipient.
POLICY = Fact[Policy | None]("policy")


def policy_of(tx: Transaction) -> Policy:
    """The policy the message is handled under (the site's before any recipient is known)."""
    return tx.facts.get(POLICY) or SITE


def normalize_domain(domain: str) -> str:
    """Lower case, no trailing dot, and the ASCII (IDNA) form of an internationalised name, so
    ``Bücher.Example.`` and ``xn--bcher-kva.example`` are one key."""
    d = domain.strip().rstrip(".").lower()
    if d.isascii():
        return d
    try:
        return d.encode("idna").decode("ascii")
    except UnicodeError:  # not a valid IDN: it can only match itself
        return d


def normalize_key(key: str) -> str:
    """A policy key or a recipient address in the form the table is looked up by."""
    local, at, domain = key.strip().strip("<>").rpartition("@")
    if not at:
        return ("." if domain.startswith(".") else "") + normalize_domain(domain.lstrip("."))
    return f"{local.lower()}@{normalize_domain(domain)}"


@dataclass(frozen=True)
class PolicyTable:
    """Every ``[policy."..."]`` entry by its normalised key."""

    entries: Mapping[str, Policy] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def lookup(self, rcpt: str) -> Policy:
        """The most specific entry for a recipient: address, domain, nearest parent, the site."""
        if not self.entries:
            return SITE
        address = normalize_key(rcpt)
        if (policy := self.entries.get(address)) is not None:
            return policy
        domain = address.rpartition("@")[2]
        if (policy := self.entries.get(domain)) is not None:
            return policy
        labels = domain.split(".")
        for i in range(1, len(labels)):
            if (policy := self.entries.get("." + ".".join(labels[i:]))) is not None:
                return policy
        return SITE

    def as_table(self) -> Table:
        """The entries as written, for ``filterctl config show``."""
        return Table({p.name: dict(p.written) for p in self.entries.values()})


def _key_problem(key: str) -> str | None:
    if not key or any(c.isspace() for c in key) or key.count("@") > 1:
        return "expected a domain, .parent-domain or user@domain"
    local, at, domain = key.rpartition("@")
    if (at and not local) or not domain.lstrip(".") or ".." in domain or domain.endswith("."):
        return "expected a domain, .parent-domain or user@domain"
    if at and domain.startswith("."):
        return "an address's domain cannot start with a dot"
    return None


def parse_policies(
    data: Any, site: ActionSettings, check_names: Collection[str]
) -> tuple[PolicyTable, list[Problem]]:
    """Validate ``[policy."..."]`` tables; every problem is returned, each naming its key as
    ``policy."example.com".reject``.  `site` is the site-wide [actions] (its class validates the
    thresholds); `check_names` the registered checks, for ``disabled_checks``."""
    collector = Collector()
    if not isinstance(data, dict):
        collector.add("policy", f'{data!r} is not valid: expected tables [policy."example.com"]')
        return PolicyTable(), collector.problems
    entries: dict[str, Policy] = {}
    for raw_key, table in data.items():
        prefix = f"policy.{toml_key(raw_key)}"
        if (problem := _key_problem(raw_key)) is not None:
            collector.add(prefix, f"{raw_key!r} is not valid: {problem}")
            continue
        if not isinstance(table, dict):
            collector.add(prefix, f"{table!r} is not valid: expected a table of policy settings")
            continue
        key = normalize_key(raw_key)
        if key in entries:
            collector.add(prefix, f"the same recipient as policy.{toml_key(entries[key].name)}")
            continue
        policy, problems = _parse_one(raw_key, table, prefix, site, check_names)
        collector.problems.extend(problems)
        entries[key] = policy
    return PolicyTable(entries), collector.problems


def _parse_one(
    name: str, table: dict[str, Any], prefix: str, site: ActionSettings, check_names: Collection[str]
) -> tuple[Policy, list[Problem]]:
    collector = Collector()
    option_keys = {f.name for f in dataclasses.fields(PolicyOptions)}
    known = {k: None for k in (*ACTION_KEYS, *sorted(option_keys))}
    for k in sorted(set(table) - set(known)):
        collector.add(f"{prefix}.{k}", unknown_key_message(k, prefix, known))
    action_data = {k: v for k, v in table.items() if k in ACTION_KEYS}
    option_data = {k: v for k, v in table.items() if k in option_keys}
    actions, problems = build_partial(type(site), action_data, prefix)
    collector.problems.extend(problems)
    options, problems = build_partial(PolicyOptions, option_data, prefix)
    collector.problems.extend(problems)
    for i, check in enumerate(options.disabled_checks):
        if check not in check_names:
            close = difflib.get_close_matches(check, list(check_names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else " (see `filterctl symbols` for the checks)"
            collector.add(f"{prefix}.disabled_checks[{i}]", f"{check!r} is not a check{hint}")
    lists = {}
    for list_key in ("allow_senders", "deny_senders"):
        lists[list_key] = _NO_ADDRESSES
        entries = getattr(options, list_key)
        good = []
        for i, entry in enumerate(entries):
            with collector.collect():  # each bad entry named by its index
                AddressList.of([("", entry)], f"{prefix}.{list_key}[{i}]")
                good.append(("", entry))
        lists[list_key] = AddressList.of(good, f"{prefix}.{list_key}")
    given = tuple((k, getattr(actions, k)) for k in ACTION_KEYS if k in action_data)
    disabled = set(options.disabled_checks) | (set() if options.bayes else {"bayes"})
    policy = Policy(
        name=name,
        actions=given,
        reject_action=options.reject_action,
        disabled_checks=frozenset(disabled),
        allow_senders=lists["allow_senders"],
        deny_senders=lists["deny_senders"],
        written=dict(table),
    )
    return policy, collector.problems


def separate_delivery(rcpt: str, policy: Policy, chosen: Policy) -> TempFail:
    """The 452 for a recipient whose policy is not the message's."""
    return TempFail(
        SEPARATE_DELIVERY,
        f"{rcpt} is under policy {policy.name or '(site)'}, the message under {chosen.name or '(site)'}",
    )


def merged_actions(policies: PolicyTable, site: ActionSettings) -> Iterable[tuple[Policy, ActionSettings]]:
    """Each entry with its effective [actions], for the cross-field checks of the configuration."""
    for policy in policies.entries.values():
        yield policy, policy.actions_over(site)
