"""The configuration: one TOML file, every setting declared here or in its check's `Settings`.

`load_config()` reads the file and validates all of it at once; the daemon refuses to start on an
error and `filterctl config check` runs the very same code.  `render_defaults()` writes the
reference file (contrib/filterd.toml) from these declarations.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from filterd.breaker import BreakerSettings
from filterd.check import Check
from filterd.combination import ScoringSettings
from filterd.dns import DnsSettings
from filterd.maillog import LogSettings
from filterd.policy import PolicyTable, merged_actions, parse_policies
from filterd.quarantine.store import QuarantineSettings
from filterd.registry import all_checks, network_checks, settings_sections
from filterd.registry import known_symbols as known_symbols
from filterd.results import Stage
from filterd.settings import (
    Collector,
    ConfigError,
    Problem,
    Table,
    as_table,
    build_partial,
    internal,
    ip_networks,
    not_negative,
    positive,
    render_section,
    render_table,
    section,
    setting,
    toml_key,
)

DEFAULT_CONFIG_PATH = Path("/etc/filterd/filterd.toml")

_INET = re.compile(r"^inet6?:(\d{1,5})(@.+)?$")


def check_socket(value: str) -> str | None:
    if value.startswith("unix:") or value.startswith("local:"):
        return None if value.split(":", 1)[1].startswith("/") else "a unix socket needs an absolute path"
    m = _INET.match(value)
    if m and 0 < int(m.group(1)) < 65536:
        return None
    return 'expected "unix:/path/to/socket" or "inet:PORT@ADDRESS"'


def check_mode(value: str) -> str | None:
    return None if re.fullmatch(r"0?[0-7]{3}", value) else 'expected an octal file mode such as "0660"'


@dataclass(frozen=True)
class MilterSettings:
    socket: str = setting(
        "unix:/run/filterd/filterd.sock",
        'where Postfix connects: "unix:/path" (recommended) or "inet:PORT@127.0.0.1"',
        check_socket,
    )
    socket_mode: str = setting(
        "0660", "file mode of the unix socket; the postfix user must be able to write it", check_mode
    )
    socket_group: str = setting(
        "postfix",
        "group given the unix socket so Postfix can write it; empty or a missing group: left as created",
    )
    workers: int = setting(0, "worker processes sharing the socket; 0 means one per CPU core", not_negative)
    timeout: int = setting(
        60, "seconds libmilter waits on Postfix before giving up on a connection", positive
    )
    shutdown_grace: float = setting(
        30.0, "seconds a stopping worker waits for messages in flight", not_negative
    )
    # 10 MiB: at or above Postfix's default message_size_limit (10240000) plus what Postfix adds
    # (its Received header), so no message Postfix accepts by default is over it.  Raise it with
    # message_size_limit; each message in flight keeps up to this much in memory.
    max_scan_bytes: int = setting(
        10 * 1024 * 1024,
        "bytes of a message (headers and body, CRLF line ends, as Postfix hands it over) kept and "
        "scanned; past it oversize_action applies.  Keep it at or above Postfix's message_size_limit "
        "(default 10240000) plus a few KiB, and clamd's StreamMaxLength above it",
        positive,
    )
    oversize_action: Literal["reject", "tempfail", "accept"] = setting(
        "reject",
        'a message over max_scan_bytes, whose content cannot be checked: "reject" (552 5.3.4 naming '
        'the limit), "tempfail" (452 4.3.4), or "accept" it unscanned: no antivirus, DKIM, DMARC, '
        "rules or Bayes (only what was known before the body counts)",
    )
    cpu_budget: float = setting(
        1.0,  # 15x the slowest corpus message (64 ms; median 1.3 ms): see docs/fuzzing.md
        "CPU seconds all checks together may spend on one message; the check that crosses it scores "
        "TIME_BUDGET and the optional content checks left (rules, bayes) are skipped (0: no budget)",
        not_negative,
    )
    log_level: Literal["debug", "info", "warning", "error"] = setting(
        "info", "the least severe lines logged (where they go: [log])"
    )
    max_headers: int = setting(
        1000,
        "header fields kept for the checks; a message with more scores TOO_MANY_HEADERS and the rest "
        "are only counted (CPU and memory stay bounded)",
        positive,
    )
    max_forged_headers: int = setting(
        1000,
        "forged verdict headers (X-Spam-*, our Authentication-Results) filterd removes from one message; "
        "a message with more is refused with 552 5.3.4 (Postfix fails past ~10,000 removals, and "
        "its 451 would repeat on every retry)",
        positive,
    )
    max_inflight_bytes: int = setting(
        256 * 1024 * 1024,
        "bytes of messages one worker holds at once; a message that would pass it gets 452 4.3.1 "
        "(the client retries later).  Counted once per message: the checks' own copies make a "
        "worker's peak a few times this",
        positive,
    )
    # 60, not 30: one end-of-message callback may rightly wait for DNS ([dns]
    # max_seconds_per_message, 20 s, plus 4 s kept for DMARC) and then clamd (the antivirus
    # timeout, 15 s): a heartbeat below that sum killed busy workers, and every session they held
    heartbeat_timeout: float = setting(
        60.0,
        "seconds a callback may run before the parent takes its worker for hung, kills it and starts "
        "another; keep it above [dns] max_seconds_per_message + 4 plus the antivirus timeout",
        positive,
    )


@dataclass(frozen=True)
class NetworkSettings:
    internal_networks: tuple[str, ...] = setting(
        (),
        "clients in these networks send outbound mail: not spam-scored (DKIM-signed later)",
        ip_networks,
    )
    hostname: str = setting("", "this host's name, used in headers; empty means the system's FQDN")
    local_domains: tuple[str, ...] = setting(
        (), "the mail domains this site receives for (HELO and From imitation heuristics)"
    )


@dataclass(frozen=True)
class ActionSettings:
    """Score thresholds.  The action taken is the one with the highest threshold the score reaches;
    `inf` turns an action off."""

    reject: float = setting(15.0, "reject with 5xx at or above this score")
    quarantine: float = setting(math.inf, "quarantine at or above this score (inf: off)")
    rewrite_subject: float = setting(math.inf, "tag the Subject at or above this score (inf: off)")
    add_header: float = setting(5.0, "mark as spam (X-Spam-Flag: YES) at or above this score")
    greylist: float = setting(math.inf, "tempfail with 4xx at or above this score (inf: off)")
    subject_tag: str = setting("***SPAM***", "prefix put before the Subject by rewrite_subject")

    def thresholds(self) -> dict[str, float]:
        return {
            "reject": self.reject,
            "quarantine": self.quarantine,
            "rewrite_subject": self.rewrite_subject,
            "add_header": self.add_header,
            "greylist": self.greylist,
        }

    @property
    def required(self) -> float:
        """The lowest score at which a message counts as spam (SpamAssassin's required_score)."""
        return min(self.reject, self.quarantine, self.rewrite_subject, self.add_header)


def check_hostports(values: tuple[str, ...]) -> str | None:
    for v in values:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit():
            return f"{v!r} is not HOST:PORT"
    return None


@dataclass(frozen=True)
class RedisSettings:
    url: str = setting(
        "redis://127.0.0.1:6379/0",
        "redis:// or rediss:// (TLS) URL; with sentinels, only the database number is used",
    )
    password: str = setting("", "password (AUTH); empty: none or the one in the URL")
    timeout: float = setting(
        0.5, "seconds for a connect or a command; past it the check's on_error policy applies", positive
    )
    key_prefix: str = setting("filterd:", "prefix of every key filterd writes")
    cluster: bool = setting(False, "the URL names a node of a Redis Cluster")
    sentinels: tuple[str, ...] = setting(
        (), "Redis Sentinel HOST:PORT list; empty: no Sentinel", check_hostports
    )
    sentinel_service: str = setting("mymaster", "the master name the sentinels watch")


@dataclass(frozen=True)
class StatsSettings:
    """Counters of every verdict in Redis, added up across MX hosts (filterd.stats, docs/stats.md).

    Fail-open: a Redis failure never touches the mail; it costs the counts of its messages and a
    warning at most once a minute."""

    enabled: Literal["auto", "on", "off"] = setting(
        "auto",
        'count every verdict in the Redis of [redis]: "auto" counts when this configuration uses '
        "Redis (a [redis] setting other than its default, or an enabled check that keeps its state "
        'there), "on" always, "off" never',
    )
    hourly_days: int = setting(8, "days the hourly counters are kept", positive)
    daily_days: int = setting(400, "days the daily counters and top lists are kept", positive)
    history: int = setting(
        10_000, "the last verdicts kept for the web console's history page (0: none)", not_negative
    )
    top_domains: int = setting(
        10_000, "rejected sender domains counted per day (past it the least counted are dropped)", positive
    )
    retry_after: float = setting(
        10.0, "after a Redis error, seconds during which verdicts are not counted", not_negative
    )


def check_listen(value: str) -> str | None:
    """HOST:PORT with an IP address for HOST ("[::1]:9143" for IPv6)."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return 'expected IP:PORT, e.g. "127.0.0.1:9143" or "[::1]:9143"'
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return 'expected IP:PORT, e.g. "127.0.0.1:9143" or "[::1]:9143"'
    return None


def check_absolute(value: str) -> str | None:
    return None if value.startswith("/") else "expected an absolute path"


@dataclass(frozen=True)
class MetricsSettings:
    """The Prometheus endpoint (filterd.metrics, docs/metrics.md).  Read at start only: a reload
    keeps the running endpoint."""

    enabled: bool = setting(False, "serve Prometheus metrics at http://LISTEN/metrics")
    # loopback by default: the counters tell who sends what volume; expose them deliberately
    listen: str = setting("127.0.0.1:9143", "IP:PORT the parent process serves /metrics on", check_listen)
    multiproc_dir: str = setting(
        "/run/filterd/metrics",
        "where each process keeps its counters (prometheus_client's multiprocess files); emptied at "
        "start, so it must be filterd's own directory",
        check_absolute,
    )


@dataclass(frozen=True)
class WebSettings:
    """The web console (`filterctl web`, docs/web.md): quarantine review, history, scan."""

    # loopback by default: put a TLS reverse proxy in front to reach it from elsewhere (docs/web.md)
    listen: str = setting("127.0.0.1:8143", "IP:PORT `filterctl web` serves on", check_listen)
    password_file: str = setting(
        "/etc/filterd/web-passwd",
        "who may log in: USER:HASH[:DOMAIN,...] lines written by `filterctl web passwd USER`; a "
        "user with domains sees only mail for recipients in those domains",
        check_absolute,
    )
    session_secret_file: str = setting(
        "/var/lib/filterd/web-secret",
        "the key that signs session cookies; created (random, mode 0600) when missing; replacing "
        "it logs everyone out",
        check_absolute,
    )
    session_lifetime: float = setting(
        8 * 3600.0, "seconds a login lasts; the cookie is refused after that", positive
    )
    secure_cookies: bool = setting(
        False, "mark cookies Secure (sent over HTTPS only): set it when a TLS reverse proxy is in front"
    )
    behind_proxy: bool = setting(
        False,
        "trust X-Forwarded-For and X-Forwarded-Proto from one reverse proxy (the login rate limit then "
        "counts the real client address); only with a proxy in front, or clients can forge them",
    )
    login_attempts: int = setting(
        5, "failed logins one client address may make per login_window before it is refused", positive
    )
    login_window: float = setting(300.0, "seconds over which failed logins are counted", positive)
    history_size: int = setting(500, "verdicts of the history page read from Redis (newest first)", positive)
    page_size: int = setting(100, "quarantined messages listed per page", positive)
    max_upload_bytes: int = setting(
        10 * 1024 * 1024, "largest message the scan page accepts (pasted or uploaded)", positive
    )


_DSN = re.compile(r"^(?:mysql|mariadb)://[^/?#]*/[^/?#]+(?:\?.*)?$")


def check_dsn(value: str) -> str | None:
    if not value or _DSN.match(value):
        return None
    return 'expected "mysql://USER@HOST:PORT/DATABASE" (or ?unix_socket=/path); empty: host/port/... below'


@dataclass(frozen=True)
class SqlSettings:
    """PostfixAdmin's MySQL/MariaDB tables as a lookup source (filterd.sqllookup, docs/sql.md).

    Off by default.  Each worker keeps the last answer of each table in memory and asks again at
    most every cache_seconds, so the mail path never waits on the database while that answer is
    fresh; on_error says what a lookup gives while the database cannot be reached."""

    enabled: bool = setting(False, "read local domains, recipients, DKIM keys and domain policy from SQL")
    dsn: str = setting(
        "",
        'the database as one URL, "mysql://USER@HOST:PORT/DATABASE" or "mysql://USER@/DATABASE?'
        'unix_socket=/run/mysqld/mysqld.sock"; when set, host/port/unix_socket/user/database are ignored '
        "(keep the password in password_file, not here)",
        check_dsn,
    )
    host: str = setting("127.0.0.1", "the database server's address")
    port: int = setting(3306, "its TCP port", positive)
    unix_socket: str = setting("", "a unix socket to connect to instead of host:port (empty: TCP)")
    user: str = setting("filterd", "the database user; it needs SELECT on the tables, nothing more")
    password_file: str = setting(
        "", "file holding the user's password on its first line, readable by filterd only (empty: none)"
    )
    database: str = setting("postfix", "the database PostfixAdmin uses")
    table_prefix: str = setting(
        "", 'prefix of PostfixAdmin\'s table names (its database_prefix setting), e.g. "pfa_"'
    )
    timeout: float = setting(
        2.0, "seconds to connect or to read one answer; past it the refresh fails (see on_error)", positive
    )
    cache_seconds: float = setting(
        60.0, "seconds an answer is used before the tables are read again (one query per table)", positive
    )
    on_error: Literal["stale", "tempfail", "static"] = setting(
        "stale",
        'while the database cannot be read: "stale" keeps the last good answer (before the first one, '
        'the static TOML values); "tempfail" answers 451 4.3.0 at RCPT through checks.recipient_exists '
        '(other lookups keep the last good answer); "static" uses only the TOML values ([network] '
        "local_domains, [checks.dkim_sign] keys) until it is back",
    )


def without_network(config: Config) -> Config:
    """`config` with every check that declares Cost.NETWORK (DNS, Redis or clamd) off, and DNS
    pointed at a closed local port so that nothing left can wait on a resolver (`filterctl scan
    --local`, the offline symbol vectors)."""
    checks = {
        name: dataclasses.replace(config.check_settings(name), enabled=False)
        for name in network_checks()
        if hasattr(config.checks, name)
    }
    dns = dataclasses.replace(config.dns, nameservers=("127.0.0.1",), port=9, timeout=0.05, attempts=1)
    return dataclasses.replace(config, checks=dataclasses.replace(config.checks, **checks), dns=dns)


def registered_checks() -> tuple[type[Check], ...]:
    """Every check (`filterd.registry` finds them), whose sections ``[checks.<name>]`` are read here."""
    return all_checks()


@cache
def checks_settings_class() -> type:
    """One dataclass with a field per registered check, holding that check's `Settings`."""
    fields = [(name, cls, section(cls, description)) for name, cls, description in settings_sections()]
    return dataclasses.make_dataclass("ChecksSettings", fields, frozen=True)


@dataclass(frozen=True)
class Config:
    milter: MilterSettings = section(MilterSettings, "The milter socket and worker processes")
    log: LogSettings = section(
        LogSettings, "Where the log goes: the mail log (syslog facility mail) by default"
    )
    network: NetworkSettings = section(NetworkSettings, "Which clients are ours")
    actions: ActionSettings = section(ActionSettings, "Score thresholds for each action")
    scoring: ScoringSettings = section(ScoringSettings, "How the symbols become the total score")
    redis: RedisSettings = section(RedisSettings, "Redis, where state shared by several filterd hosts lives")
    dns: DnsSettings = section(DnsSettings, "The DNS resolver every lookup goes through")
    breaker: BreakerSettings = section(
        BreakerSettings,
        "When a backend (clamd, a DNS server, Redis) keeps failing, stop asking it for a while",
    )
    quarantine: QuarantineSettings = section(QuarantineSettings, "Where quarantined messages are kept")
    metrics: MetricsSettings = section(MetricsSettings, "The Prometheus endpoint (off by default)")
    stats: StatsSettings = section(
        StatsSettings, "Verdict counters and the last verdicts in Redis (`filterctl stats`, the web console)"
    )
    web: WebSettings = section(WebSettings, "The web console for reviewing quarantined mail (filterctl web)")
    sql: SqlSettings = section(
        SqlSettings, "PostfixAdmin's SQL tables: local domains, recipients, DKIM keys, domain policy"
    )
    scores: Mapping[str, float] = setting(
        types.MappingProxyType({}), "score overrides, SYMBOL = score (see `filterctl symbols`)"
    )
    # Not read from the file's top level: the registered checks' sections, and where the file was.
    checks: Any = internal(None)  # ChecksSettings, one field per registered check
    # [policy."example.com"] tables: what one recipient domain or address wants (filterd.policy)
    policies: PolicyTable = internal(PolicyTable())
    path: str = internal("")  # "" for the built-in defaults
    warnings: tuple[Problem, ...] = internal(())  # allowed, but probably not meant (config_warnings)

    def score_of(self, symbol: str) -> float:
        if symbol in self.scores:
            return self.scores[symbol]
        return known_symbols().get(symbol, 0.0)

    def check_settings(self, name: str) -> Any:
        return getattr(self.checks, name)


def parse_config(data: Mapping[str, Any], path: str = "") -> Config:
    """Validate a parsed TOML document into a `Config`, or raise `ConfigError` (`ConfigErrors`
    when there are several: every section is read, so one pass names every mistake)."""
    data = dict(data)
    checks_data = data.pop("checks", {})
    collector = Collector()
    config, problems = build_partial(Config, {k: v for k, v in data.items() if k != "policy"})
    collector.problems.extend(problems)
    checks: Any = checks_settings_class()()
    if isinstance(checks_data, dict):
        checks, problems = build_partial(checks_settings_class(), checks_data, "checks")
        collector.problems.extend(problems)
    else:
        collector.add("checks", f"{checks_data!r} is not valid: expected a table of [checks.NAME] sections")
    config = dataclasses.replace(config, checks=checks, path=path)
    if "policy" in data:
        policies, problems = parse_policies(
            data["policy"], config.actions, [c.name for c in registered_checks()]
        )
        collector.problems.extend(problems)
        config = dataclasses.replace(config, policies=policies)
        for policy, actions in merged_actions(policies, config.actions):
            for key, message in threshold_errors(actions):  # as [actions], named by the policy
                where = f"policy.{toml_key(policy.name)}"
                collector.add(key.replace("actions.", f"{where}.", 1), message.replace("actions.", ""))
    scores = data.get("scores")
    if isinstance(scores, dict):  # the names even when a value was wrong
        for key, message in unknown_scores(scores, config):
            collector.add(key, message)
    if "actions" in data:
        for key, message in threshold_errors(config.actions):
            collector.add(key, message)
    for key, message in sql_errors(config):
        collector.add(key, message)
    if collector.problems:  # the checks will not be built to find these: look now
        collector.problems.extend(unreadable_files(config, enabled=True))
    collector.raise_if_any()
    return dataclasses.replace(config, warnings=config_warnings(config))


def unknown_scores(scores: Mapping[str, Any], config: Config) -> list[tuple[str, str]]:
    """[scores] entries naming no symbol of a check, of the pipeline or of a rule."""
    symbols = known_symbols()
    rules = None  # read only when needed: most configurations score only check symbols
    problems = []
    for name in scores:
        if name in symbols:
            continue
        if rules is None:
            rules = rule_names(config.check_settings("rules"))
        if name.startswith("__") and name in rules:
            problems.append((f"scores.{name}", "a __ rule only feeds metas and is never scored"))
        elif name not in rules:
            problems.append(
                (
                    f"scores.{name}",
                    "unknown symbol: no check or rule has it (see `filterctl symbols` for the list)",
                )
            )
    return problems


def rule_names(settings: Any) -> set[str]:
    """The names of the rules in the rule files ``[checks.rules]`` reads (the shipped set and the
    admin's directory), read leniently: a broken file is the rules check's to report."""
    from filterd.rules import shipped_dir  # the rules package compiles RE2: not for every caller

    names: set[str] = set()
    dirs = [Path(settings.default_dir) if settings.default_dir else shipped_dir()]
    if settings.local_dir:
        dirs.append(Path(settings.local_dir))
    for directory in dirs:
        for file in sorted(directory.glob("*.toml")) if directory.is_dir() else []:
            try:
                names.update(tomllib.loads(file.read_text("utf-8")))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                continue
    return names


# The actions that deliver the message (marked) and those that withhold it, mildest first.
_DELIVERING = ("add_header", "rewrite_subject")
_WITHHOLDING = ("quarantine", "reject")


def threshold_errors(actions: ActionSettings) -> list[tuple[str, str]]:
    """Thresholds in an order that gives a higher score a milder action.

    The action taken is the one with the highest threshold reached, so ``reject = 10`` with
    ``add_header = 12`` rejects a message scoring 11 and delivers one scoring 13: never meant."""
    t = actions.thresholds()
    problems = []
    for stronger in _WITHHOLDING:
        for milder in (*_DELIVERING, *_WITHHOLDING[: _WITHHOLDING.index(stronger)]):
            if math.isfinite(t[stronger]) and math.isfinite(t[milder]) and t[stronger] < t[milder]:
                problems.append(
                    (
                        f"actions.{stronger}",
                        f"{t[stronger]:g} is not valid: expected at least actions.{milder} ({t[milder]:g}); "
                        f"a message scoring {t[milder]:g} or more would get {milder}, not {stronger}",
                    )
                )
    return problems


def sql_errors(config: Config) -> list[tuple[str, str]]:
    """[sql] settings that cannot do what they say."""
    sql, checking = config.sql, config.check_settings("recipient_exists").enabled
    if checking and not sql.enabled:
        return [("checks.recipient_exists.enabled", "needs [sql] enabled = true: it reads those tables")]
    if sql.enabled and sql.on_error == "tempfail" and not checking:
        return [
            (
                "sql.on_error",
                '"tempfail" is not valid without checks.recipient_exists: the 451 is given at RCPT by that '
                "check (enable it, or choose stale or static)",
            )
        ]
    return []


def config_warnings(config: Config) -> tuple[Problem, ...]:
    """What is allowed but probably not meant (`filterctl config check` shows these; they do
    not stop filterd)."""
    warnings = []
    t = config.actions.thresholds()
    if math.isfinite(t["greylist"]) and t["greylist"] >= t["reject"]:
        warnings.append(
            Problem(
                "actions.greylist",
                f"{t['greylist']:g} is at or above actions.reject ({t['reject']:g}): messages scoring "
                f"{t['greylist']:g} or more are greylisted (4xx) instead of rejected",
            )
        )
    if not any(math.isfinite(t[a]) for a in (*_DELIVERING, *_WITHHOLDING)):
        warnings.append(
            Problem("actions", "every spam action is inf: no message is ever marked, quarantined or rejected")
        )
    owner = {symbol: c.name for c in registered_checks() for symbol in c.symbols}
    for name in config.scores:
        check = owner.get(name, "rules" if name not in known_symbols() else None)
        if check is not None and not config.check_settings(check).enabled:
            warnings.append(Problem(f"scores.{name}", f"scored, but its check {check} is disabled"))
    listen = config.metrics.listen
    if config.metrics.enabled and not ipaddress.ip_address(listen.rpartition(":")[0].strip("[]")).is_loopback:
        warnings.append(
            Problem(
                "metrics.listen",
                f"{listen} is not a loopback address: whoever reaches it reads the counters (mail "
                "volume, rule hits); let only your Prometheus in",
            )
        )
    warnings.extend(unreadable_files(config, enabled=False))
    warnings.extend(policy_warnings(config))
    return tuple(warnings)


def policy_warnings(config: Config) -> list[Problem]:
    """A policy turning off a check that runs before any recipient is known (CONNECT, HELO,
    MAIL FROM): the message has no policy yet there, so the check runs all the same."""
    early = {c.name: c.stage for c in registered_checks() if c.stage < Stage.RCPT}
    warnings = []
    for policy in config.policies.entries.values():
        for name in sorted(policy.disabled_checks & early.keys()):
            warnings.append(
                Problem(
                    f"policy.{toml_key(policy.name)}.disabled_checks",
                    f"{name} runs at {early[name].label}, before the recipients are known: "
                    "a policy cannot turn it off",
                )
            )
    return warnings


def unreadable_files(config: Config, enabled: bool) -> list[Problem]:
    """The files the enabled (or the disabled) checks name that cannot be read.

    An enabled check reads its files when the pipeline is built and refuses to start without
    them; this quick look finds them too when other errors stop the configuration before that,
    so one pass still names every error.  A disabled check is not built, so its file would fail
    only on the day it is enabled: `config_warnings` says so now."""
    problems = []
    for c in registered_checks():
        settings = config.check_settings(c.name)
        if settings.enabled != enabled:
            continue
        for key, path in named_files(settings, f"checks.{c.name}"):
            try:
                readable = os.access(path, os.R_OK)
                reason = "cannot be read" if os.path.exists(path) else "does not exist"
            except ValueError:  # a NUL byte in the path
                readable, reason = False, "is not a file name"
            if not readable:
                later = "" if enabled else f" (checks.{c.name} is disabled; an error once enabled)"
                problems.append(Problem(key, f"{path!r} {reason}{later}"))
    return problems


def named_files(settings: Any, prefix: str) -> list[tuple[str, str]]:
    """(key, path) of each file a check's settings name: the settings called ``*_file`` and the
    values of a key table (``[checks.dkim_sign] keys``: domain -> selector -> file)."""
    found = []
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        key = f"{prefix}.{field.name}"
        if field.name.endswith("_file") and isinstance(value, str) and value:
            found.append((key, value))
        elif field.name == "keys" and isinstance(value, Mapping):
            for domain, selectors in value.items():
                for selector, path in selectors.items():
                    found.append((f"{key}.{domain}.{selector}", path))
    return found


def load_config(path: Path | str | None) -> Config:
    """Read and validate a configuration file; `None` gives the built-in defaults."""
    return config_from_bytes(read_config_bytes(path), path)


def read_config_bytes(path: Path | str | None) -> bytes:
    """The configuration file's content, read once; `None` (built-in defaults) reads nothing."""
    if path is None:
        return b""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read configuration {path}: {exc.strerror}") from exc


def config_from_bytes(raw: bytes, path: Path | str | None) -> Config:
    """Parse and validate configuration bytes read from `path` (the path names it in errors).

    The daemon's workers never read the file: they are forked with the pipeline the parent built."""
    if path is None:
        return parse_config({})
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"{path}: not valid TOML: {exc}") from exc
    try:
        return parse_config(data, str(path))
    except ConfigError as exc:
        exc.args = (f"{path}: {exc}",)
        raise


def config_table(config: Config) -> Table:
    """The whole configuration as plain data, shaped like the file: the sections, [scores], and
    a [checks.NAME] section per registered check."""
    table = as_table(config)
    table["checks"] = Table({c.name: as_table(config.check_settings(c.name)) for c in registered_checks()})
    if config.policies:
        table["policy"] = config.policies.as_table()
    return table


def render_config(table: Mapping[str, Any]) -> str:
    """TOML for `config_table` (or the part of it that differs from the defaults)."""
    lines = render_table(table)
    return "\n".join(lines) + "\n" if lines else ""


def render_defaults() -> str:
    """The reference configuration: every setting with its default and a comment."""
    config = parse_config({})
    out = [
        "# filterd configuration -- every setting with its default value.",
        "# Generated by `filterctl config defaults`; remove what you do not change.",
        "",
    ]
    for field in dataclasses.fields(Config):
        if field.metadata.get("internal") or field.name == "scores":
            continue
        out.extend(render_section(getattr(config, field.name), field.name, field.metadata["help"]))
        out.append("")
    out.append("# Score overrides: SYMBOL = score.  `filterctl symbols` lists every symbol and its default.")
    out.append("[scores]")
    out.append("")
    out.append("# Policy by recipient domain or address (docs/policy.md): any [actions] key, reject_action,")
    out.append("# disabled_checks, allow_senders, deny_senders, bayes.  None by default; for example:")
    out.append('# [policy."example.com"]')
    out.append("# reject = 25.0")
    out.append('# disabled_checks = ["greylist"]')
    out.append("")
    for c in registered_checks():
        out.extend(
            render_section(
                config.check_settings(c.name),
                f"checks.{c.name}",
                f"{c.name} ({c.stage.label}): {c.description}",
            )
        )
        out.append("")
    return "\n".join(out)
