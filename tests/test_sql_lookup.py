"""[sql]: PostfixAdmin's tables in a real, private MariaDB (tests/harness/mariadb.py).

The lookups themselves; the cache (one query per table per refresh, none while fresh); the
database stopped mid-run under each on_error policy; recipient_exists; and through the real
Postfix + filterd: a domain and DKIM row added in SQL get signed with no filterd edit, and mail
keeps flowing (stale) or is deferred with 4xx (tempfail) while the database is down.
"""

from __future__ import annotations

import dataclasses
import logging
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest

from filterd.check import Site
from filterd.config import parse_config
from filterd.pipeline import Pipeline, site_of
from filterd.services import Services
from filterd.settings import ConfigError
from filterd.sqllookup import SqlLookup, SqlUnavailable, policies_from_rows
from tests.harness.auth import PublishedKey, message, run, symbols, unique
from tests.harness.dns import LocalDns
from tests.harness.mariadb import MariaDb
from tests.harness.stack import Stack, make_message

pytestmark = pytest.mark.stack
OUTBOUND = "127.0.0.2"  # a source address in [network] internal_networks: outbound mail, signed


@pytest.fixture(scope="module")
def db() -> Iterator[MariaDb]:
    server = MariaDb()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def running(db: MariaDb) -> Iterator[MariaDb]:
    """The database, guaranteed up at the start and again at the end of the test."""
    if db.proc is None:
        db.start()
    yield db
    if db.proc is None:
        db.start()


def add_domain(db: MariaDb, domain: str, active: int = 1, backupmx: int = 0) -> None:
    db.execute(
        "INSERT INTO domain (domain, active, backupmx) VALUES (%s, %s, %s)", (domain, active, backupmx)
    )


def add_mailbox(db: MariaDb, address: str, active: int = 1) -> None:
    local, _, domain = address.partition("@")
    db.execute(
        "INSERT INTO mailbox (username, local_part, domain, maildir, active) VALUES (%s, %s, %s, %s, %s)",
        (address, local, domain, f"{domain}/{local}/", active),
    )


def add_alias(db: MariaDb, address: str, goto: str, active: int = 1) -> None:
    domain = address.rpartition("@")[2]
    db.execute(
        "INSERT INTO alias (address, goto, domain, active) VALUES (%s, %s, %s, %s)",
        (address, goto, domain, active),
    )


def sql_config(db: MariaDb, sql: dict[str, Any] | None = None, **top: Any) -> Any:
    return parse_config({"sql": db.settings(**(sql or {})), **top})


def lookup(db: MariaDb, static: tuple[str, ...] = (), on_error: str = "stale", **sql: Any) -> SqlLookup:
    """A lookup as filterd builds it (first answer read now); on_error set past the config's
    cross-check (tempfail needs checks.recipient_exists, which these tests call directly)."""
    settings = dataclasses.replace(sql_config(db, sql).sql, on_error=on_error)
    found = SqlLookup(settings, static)
    found.refresh(force=True)
    return found


def select_count(db: MariaDb) -> int:
    """Queries the server has answered since it started (SELECTs of every client, ours included)."""
    with db.root() as conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")
        return int(cur.fetchone()[1])


# -- the lookups ---------------------------------------------------------------------------------


def test_local_domains_are_active_non_backup_domains_joined_with_the_static_list(running: MariaDb) -> None:
    d = unique("pfa")
    add_domain(running, d)
    add_domain(running, "off." + d, active=0)
    add_domain(running, "backup." + d, backupmx=1)
    db_domains = lookup(running, static=("static.example",))
    domains = db_domains.local_domains()
    assert domains[0] == "static.example" and d in domains
    assert "off." + d not in domains and "backup." + d not in domains
    assert "all" not in domains  # PostfixAdmin's superadmin pseudo-domain, when present


def test_site_local_domains_come_from_sql_through_the_pipeline(running: MariaDb) -> None:
    d = unique("site")
    add_domain(running, d)
    config = sql_config(running, network={"local_domains": ["static.example"]})
    site = site_of(config, Services(config))
    assert site.sql is not None
    assert "static.example" in site.local_domains and d in site.local_domains
    assert Site(static_local_domains=("x.example",)).local_domains == ("x.example",)  # no [sql]


def test_recipients_mailboxes_aliases_catch_all_and_delimiter(running: MariaDb) -> None:
    d, catch = unique("rcpt"), unique("catch")
    for domain in (d, catch):
        add_domain(running, domain)
    add_mailbox(running, f"bob@{d}")
    add_mailbox(running, f"gone@{d}", active=0)
    add_alias(running, f"sales@{d}", f"bob@{d}")
    add_alias(running, f"@{catch}", f"bob@{d}")
    found = lookup(running)
    assert found.recipient_known(f"<Bob@{d.upper()}>") is True  # case-insensitive, brackets
    assert found.recipient_known(f"sales@{d}") is True
    assert found.recipient_known(f"bob+news@{d}", "+") is True
    assert found.recipient_known(f"bob+news@{d}", "") is False
    assert found.recipient_known(f"gone@{d}") is False  # inactive mailbox
    assert found.recipient_known(f"nobody@{d}") is False
    assert found.recipient_known(f"anyone@{catch}") is True  # the catch-all
    assert found.recipient_known("someone@not-ours.example") is None  # not judged


def test_dkim_rows_and_domain_policies(running: MariaDb) -> None:
    d = unique("pol")
    add_domain(running, d)
    running.execute(
        "INSERT INTO filterd_dkim (domain, selector, key_path) VALUES (%s, 's1', '/k/a'), (%s, 's2', '/k/b')",
        (d, d),
    )
    running.execute(
        "INSERT INTO filterd_dkim (domain, selector, key_path, active) VALUES (%s, 'old', '/k/c', 0)", (d,)
    )
    rows = [
        ("reject", "20"),
        ("add_header", "4.5"),
        ("reject_action", '"quarantine"'),
        ("greylist", "false"),
        ("subject_tag", "[SPAM]"),  # not TOML: taken as the plain string
        ("checks.bayes", "false"),  # a dotted key nests
        ("allow", '["a@x.example", "b@x.example"]'),
    ]
    for key, value in rows:
        running.execute(
            "INSERT INTO filterd_policy (domain, `key`, value) VALUES (%s, %s, %s)", (d, key, value)
        )
    found = lookup(running)
    assert [(r.selector, r.key_path) for r in found.dkim_rows() if r.domain == d] == [
        ("s1", "/k/a"),
        ("s2", "/k/b"),
    ]
    assert found.domain_policies()[d] == {
        "reject": 20,
        "add_header": 4.5,
        "reject_action": "quarantine",
        "greylist": False,
        "subject_tag": "[SPAM]",
        "checks": {"bayes": False},
        "allow": ["a@x.example", "b@x.example"],
    }


def test_policy_rows_parse_as_the_toml_table_would() -> None:
    import tomllib

    toml = tomllib.loads('[policy."a.example"]\nreject = 12\ngreylist = true\nchecks.spf = false\n')
    rows = [
        ("A.example", "reject", "12"),
        ("a.example", "greylist", "true"),
        ("a.example", "checks.spf", "false"),
    ]
    assert policies_from_rows(rows) == toml["policy"]


def test_missing_own_tables_mean_no_rows_not_an_outage(running: MariaDb) -> None:
    running.execute("RENAME TABLE filterd_policy TO filterd_policy_away")
    try:
        found = lookup(running)
        assert not found.down and found.domain_policies() == {}
    finally:
        running.execute("RENAME TABLE filterd_policy_away TO filterd_policy")


def test_password_file_and_dsn(running: MariaDb, tmp_path: Path) -> None:
    dsn = f"mysql://filterd@127.0.0.1:{running.port}/postfix"
    assert not lookup(running, dsn=dsn, host="192.0.2.1", port=1).down  # the dsn wins
    wrong = tmp_path / "pw"
    wrong.write_text("not-the-password\n")
    assert lookup(running, password_file=str(wrong)).down  # refused: a failed refresh, not a crash
    with pytest.raises(ConfigError, match=r"sql\.password_file"):
        lookup(running, password_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"sql\.dsn"):
        parse_config({"sql": {"dsn": "postgres://x/y"}})


# -- the cache -----------------------------------------------------------------------------------


def test_one_query_per_table_per_refresh_and_none_while_fresh(running: MariaDb) -> None:
    d = unique("cache")
    add_domain(running, d)
    add_mailbox(running, f"bob@{d}")
    found = lookup(running, cache_seconds=1.5)
    before = select_count(running)
    for _ in range(2000):  # a busy period: every message asks
        assert d in found.local_domains()
        assert found.recipient_known(f"bob@{d}") is True
        found.dkim_rows()
        found.domain_policies()
    assert select_count(running) - before == 0  # (SHOW STATUS is not counted as a SELECT)
    add_mailbox(running, f"new@{d}")
    assert found.recipient_known(f"new@{d}") is False  # not yet: the answer is still fresh
    time.sleep(1.6)
    before = select_count(running)
    assert found.recipient_known(f"new@{d}") is True
    for _ in range(500):
        found.local_domains()
    assert select_count(running) - before == 5  # five tables, once
    assert found.refreshes == 2


# -- the database stopped mid-run ----------------------------------------------------------------


def test_database_down_stale_keeps_last_answer_logs_once_and_recovers(
    running: MariaDb, caplog: pytest.LogCaptureFixture
) -> None:
    d = unique("stale")
    add_domain(running, d)
    add_mailbox(running, f"bob@{d}")
    found = lookup(running, cache_seconds=0.2, timeout=1.0)
    caplog.set_level(logging.WARNING, logger="filterd.sql")
    running.stop()
    for _ in range(3):
        time.sleep(0.25)
        assert d in found.local_domains()  # the last good answer
        assert found.recipient_known(f"bob@{d}") is True
        assert found.recipient_known(f"nobody@{d}") is False
    assert found.down
    outage = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(outage) == 1 and "keeping the last good answer" in outage[0]  # once per outage
    running.start()
    time.sleep(0.25)
    assert d in found.local_domains() and not found.down
    assert sum("the database is back" in r.getMessage() for r in caplog.records) == 1


def test_database_down_static_and_tempfail(running: MariaDb) -> None:
    d = unique("down")
    add_domain(running, d)
    add_mailbox(running, f"bob@{d}")
    static = lookup(running, static=("static.example",), cache_seconds=0.2, on_error="static")
    tempfail = lookup(running, cache_seconds=0.2, on_error="tempfail")
    running.stop()
    time.sleep(0.25)
    assert static.local_domains() == ("static.example",)  # the TOML values only
    assert static.recipient_known(f"bob@{d}") is None  # no opinion: accepted
    with pytest.raises(SqlUnavailable):
        tempfail.recipient_known(f"bob@{d}")
    assert d in tempfail.local_domains()  # the other lookups keep the last good answer


def test_database_down_at_start_uses_static_values(tmp_path: Path) -> None:
    dead = MariaDb(tmp_path)  # never started: nothing listens on its port
    (tmp_path / "password").write_text("x\n")
    config = parse_config(
        {"sql": {**dead.settings(timeout=0.5)}, "network": {"local_domains": ["static.example"]}}
    )
    found = Services(config).sql
    assert found is not None and found.down
    assert found.local_domains() == ("static.example",)
    assert found.dkim_rows() == () and found.domain_policies() == {}


# -- recipient_exists ----------------------------------------------------------------------------


def test_recipient_exists_config_rules(running: MariaDb) -> None:
    with pytest.raises(ConfigError, match=r"checks\.recipient_exists\.enabled: needs \[sql\]"):
        parse_config({"checks": {"recipient_exists": {"enabled": True}}})
    with pytest.raises(ConfigError, match=r"sql\.on_error"):
        sql_config(running, {"on_error": "tempfail"})
    assert parse_config({}).check_settings("recipient_exists").enabled is False


def test_recipient_exists_in_the_pipeline(running: MariaDb, local_dns: LocalDns) -> None:
    d = unique("pipe")
    add_domain(running, d)
    add_mailbox(running, f"bob@{d}")
    add_alias(running, f"info@{d}", f"bob@{d}")
    config = sql_config(
        running,
        dns={"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.4},
        checks={"recipient_exists": {"enabled": True}},
    )
    p = Pipeline.from_config(config, Services(config))
    try:
        tx, verdict = run(
            p,
            message(),
            client_addr="203.0.113.9",
            mail_from="a@example.org",
            rcpts=(f"bob@{d}", f"nobody@{d}", f"info@{d}", "x@elsewhere.example"),
        )
    finally:
        p.close()
    assert tx.rcpts == [f"bob@{d}", f"info@{d}", "x@elsewhere.example"]
    [(rcpt, decision)] = tx.refused
    assert rcpt == f"nobody@{d}"
    assert decision.reply.code == 550 and decision.reply.dsn == "5.1.1"
    assert "User unknown" in decision.reply.text
    assert "CHECK_ERROR" not in symbols(verdict)


def test_a_sql_domain_is_ours_for_the_helo_heuristic(running: MariaDb, local_dns: LocalDns) -> None:
    d = unique("helo")
    config = sql_config(
        running,
        {"cache_seconds": 0.5},
        dns={"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.4},
    )
    p = Pipeline.from_config(config, Services(config))
    try:
        context = {"client_addr": "203.0.113.9", "helo": f"mail.{d}", "mail_from": "a@example.org"}
        assert "HELO_IS_OURS" not in symbols(run(p, message(), **context)[1])
        add_domain(running, d)  # added while filterd runs: no edit, no reload
        time.sleep(0.6)
        reason = symbols(run(p, message(), **context)[1])["HELO_IS_OURS"]
        assert f"claims our domain {d}" in reason
    finally:
        p.close()


# -- end to end: Postfix -> filterd -> sink ------------------------------------------------------


@pytest.fixture
def e2e(stack: Stack, running: MariaDb, local_dns: LocalDns) -> dict[str, Any]:
    return {
        "dns": {"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.5, "attempts": 1},
        "network": {"hostname": "mx.filterd.test", "internal_networks": [f"{OUTBOUND}/32"]},
        "sql": running.settings(cache_seconds=1.0, timeout=1.0),
    }


def send(stack: Stack, data: bytes, mail_from: str, rcpts: list[str], source: str = "127.0.0.1") -> dict:
    with smtplib.SMTP(
        "127.0.0.1",
        stack.postfix.port,
        local_hostname="client.example.org",
        timeout=60,
        source_address=(source, 0),
    ) as smtp:
        return smtp.sendmail(mail_from, rcpts, data)


def txt_lookup(local_dns: LocalDns) -> Callable[..., bytes]:
    """dkimpy's dnsfunc, asking the tests' DNS server."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], local_dns.port

    def txt(name: bytes, timeout: float = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT", lifetime=timeout)
        return b"".join(b"".join(r.strings) for r in answer)

    return txt


def test_e2e_domain_and_dkim_row_added_in_sql_are_signed_without_filterd_edit(
    stack: Stack, running: MariaDb, local_dns: LocalDns, e2e: dict[str, Any], tmp_path: Path
) -> None:
    d = unique("newdom")
    key = PublishedKey(local_dns, d, "sql1")
    key_file = key.write(tmp_path / "sql1.key")
    with stack.configured(e2e):
        msg, marker = make_message("before", sender=f"alice@{d}")
        assert send(stack, msg, f"alice@{d}", ["bob@example.net"], OUTBOUND) == {}
        assert stack.sink.find(marker).header("DKIM-Signature") == []  # no key yet
        add_domain(running, d)
        running.execute(
            "INSERT INTO filterd_dkim (domain, selector, key_path) VALUES (%s, 'sql1', %s)",
            (d, str(key_file)),
        )
        time.sleep(1.2)  # cache_seconds: each worker reads the tables again on its next message
        signed = []
        for _ in range(4):  # every worker (one per core) has refreshed by its next message
            msg, marker = make_message("after", sender=f"alice@{d}")
            assert send(stack, msg, f"alice@{d}", ["bob@example.net"], OUTBOUND) == {}
            got = stack.sink.find(marker)
            signed.append(got.header("DKIM-Signature"))
    assert all(len(s) == 1 and f"d={d}" in s[0] and "s=sql1" in s[0] for s in signed)
    assert dkim.verify(got.data, dnsfunc=txt_lookup(local_dns))  # the key of the SQL row signed it


def test_e2e_database_stopped_stale_mail_keeps_flowing(
    stack: Stack, running: MariaDb, e2e: dict[str, Any]
) -> None:
    d = unique("flow")
    add_domain(running, d)
    add_mailbox(running, f"bob@{d}")
    add_alias(running, f"@{unique('catchall')}", f"bob@{d}")
    config = {**e2e, "checks": {"recipient_exists": {"enabled": True}}}
    with stack.configured(config) as filterd:
        before = select_count(running)
        for i in range(10):  # fresh answers (read by the parent at start): no query on the mail path
            msg, marker = make_message(f"up {i}", to=f"bob@{d}")
            assert send(stack, msg, "a@example.org", [f"bob@{d}"]) == {}
            stack.sink.find(marker)
        assert select_count(running) - before <= 5 * 2  # at most one refresh per worker, if 1 s passed
        running.stop()
        time.sleep(1.2)
        delivered = []
        for i in range(6):
            msg, marker = make_message(f"down {i}", to=f"bob@{d}")
            assert send(stack, msg, "a@example.org", [f"bob@{d}"]) == {}
            delivered.append(stack.sink.find(marker))
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:  # still judged by the last answer
            send(stack, msg, "a@example.org", [f"nobody@{d}"])
        [(code, text)] = info.value.recipients.values()
        assert code == 550 and text.startswith(b"5.1.1")
        assert len(delivered) == 6
        assert "cannot read the database" in filterd.log()


def test_e2e_database_stopped_tempfail_defers_then_delivers(
    stack: Stack, running: MariaDb, e2e: dict[str, Any]
) -> None:
    d = unique("defer")
    add_domain(running, d)
    add_mailbox(running, f"bob@{d}")
    config = {
        **e2e,
        "sql": {**e2e["sql"], "on_error": "tempfail"},
        "checks": {"recipient_exists": {"enabled": True}},
    }
    with stack.configured(config):
        running.stop()
        time.sleep(1.2)
        msg, marker = make_message("deferred", to=f"bob@{d}")
        for _ in range(3):
            with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                send(stack, msg, "a@example.org", [f"bob@{d}"])
            [(code, text)] = info.value.recipients.values()
            assert 400 <= code < 500 and text.startswith(b"4.3.0")  # 4xx: the client keeps it
        assert stack.sink.count(marker) == 0
        running.start()
        time.sleep(1.2)
        for _ in range(4):  # the retry, once each worker has read the tables again
            try:
                send(stack, msg, "a@example.org", [f"bob@{d}"])
                break
            except smtplib.SMTPRecipientsRefused as exc:
                assert all(400 <= c < 500 for c, _ in exc.recipients.values())
                time.sleep(0.5)
        assert stack.sink.find(marker).rcpts == (f"bob@{d}",)


def test_settings_render_in_the_reference_config() -> None:
    from filterd.config import render_defaults

    text = render_defaults()
    assert "[sql]" in text and 'on_error = "stale"' in text and "[checks.recipient_exists]" in text
    assert dataclasses.asdict(parse_config({}).sql)["enabled"] is False


GTUBE = (
    b"From: a@example.org\r\nTo: x@example.net\r\nSubject: test\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <gtube@example.org>\r\n\r\n"
    b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n"
)


def test_policy_rows_apply_under_the_files_tables(running: MariaDb, caplog: pytest.LogCaptureFixture) -> None:
    """filterd_policy rows are recipients' policies like [policy."..."] tables: validated the same
    way (a bad row is left out with a warning, never a refusal), and the file wins on the same key."""
    held, bad, both = unique("held"), unique("bad"), unique("both")
    for domain, key, value in (
        (held, "reject_action", '"quarantine"'),
        (held, "add_header", "1"),
        (bad, "reject_action", '"quarantine"'),
        (bad, "reject", '"soon"'),  # not a number: this domain's row is left out
        (both, "reject_action", '"quarantine"'),
    ):
        running.execute(
            "INSERT INTO filterd_policy (domain, `key`, value) VALUES (%s, %s, %s)", (domain, key, value)
        )
    config = sql_config(running, policy={both: {"add_header": 2.0}})
    p = Pipeline.from_config(config, Services(config))
    try:
        with caplog.at_level(logging.WARNING, logger="filterd.pipeline"):
            outcomes = {
                d: run(p, GTUBE, mail_from="a@example.org", rcpts=(f"u@{d}",))[1].action.value
                for d in (held, bad, both)
            }
    finally:
        p.close()
    assert outcomes == {held: "quarantine", bad: "reject", both: "reject"}
    assert any(
        f"row of {bad} left out" in r.getMessage() and "reject" in r.getMessage() for r in caplog.records
    )
