"""filterctl scan, as an admin uses it on stored messages."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from filterd.cli.filterctl import cli


def write(tmp_path: Path, name: str, raw: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(raw)
    return p


def test_scan_prints_a_line_per_message(tmp_path: Path) -> None:
    write(tmp_path, "a.eml", b"Subject: x\r\n\r\nbody\r\n")
    write(tmp_path, "b.eml", b"From: a@example.org\r\nMessage-ID: <1@e.org>\r\n\r\nbody\r\n")
    result = CliRunner().invoke(cli, ["scan", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(str(tmp_path / "a.eml")) and "MISSING_FROM(2)" in lines[0]
    assert "accept" in lines[1] and "MISSING_DATE(1)" in lines[1]


def test_scan_json_with_smtp_context_and_stdin(tmp_path: Path) -> None:
    deny = write(tmp_path, "deny", b"192.0.2.0/24\n")
    cfg = write(tmp_path, "f.toml", f"[checks.client_lists]\ndeny_file = '{deny}'\n".encode())
    result = CliRunner().invoke(
        cli,
        ["--config", str(cfg), "scan", "--json", "--client-ip", "192.0.2.5", "-"],
        input=b"Subject: x\r\n\r\nbody\r\n",
    )
    assert result.exit_code == 1, result.output  # rejected: not ham (as spamc -c)
    out = json.loads(result.output)
    assert out["file"] == "<stdin>" and out["action"] == "reject"
    assert out["reply"].startswith("550 5.7.1 Client host [192.0.2.5]")


def test_scan_refuses_a_denied_recipient_alone_as_postfix_does(tmp_path: Path) -> None:
    deny = write(tmp_path, "deny", b"denied@example.net\n")
    cfg = write(tmp_path, "f.toml", f"[checks.recipient_lists]\ndeny_file = '{deny}'\n".encode())
    msg = (
        b"From: a@example.org\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@e.org>\r\n\r\nhi\r\n"
    )
    args = ["--config", str(cfg), "scan", "--rcpt", "ok@example.net", "--rcpt", "denied@example.net"]
    result = CliRunner().invoke(cli, [*args, "--json", "-"], input=msg)
    out = json.loads(result.output)
    assert out["action"] != "reject"  # the message goes on for ok@ (the old scan rejected it whole)
    assert [(r["rcpt"], r["reply"][:9]) for r in out["refused"]] == [("denied@example.net", "550 5.7.1")]
    result = CliRunner().invoke(cli, [*args, "-"], input=msg)
    assert "refused <denied@example.net>: 550 5.7.1" in result.output


def test_scan_of_a_missing_path_is_a_clear_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["scan", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no such file or directory" in result.output


def test_symbols_lists_every_symbol_with_its_check() -> None:
    result = CliRunner().invoke(cli, ["symbols"])
    assert result.exit_code == 0
    assert "MISSING_DATE" in result.output and "header_sanity (headers)" in result.output


SPAMMY = (
    b"From: Winner <promo@cheap-pills.example.biz>\r\nTo: you@example.net\r\nSubject: FREE VIAGRA!!! "
    b"Claim your prize now\r\nMessage-ID: <1@cheap-pills.example.biz>\r\nContent-Type: text/html\r\n\r\n"
    b"<html><body><font size=7>Click here to claim your FREE prize! Cheap viagra, no prescription, "
    b"limited time offer. To be removed from our mailing list click here "
    b"<a href=http://cheap-pills.example.biz/remove>remove</a></font></body></html>\r\n"
)


def test_scan_json_gives_the_bayes_spamicity_as_a_number_at_full_precision(tmp_path: Path) -> None:
    path = write(tmp_path, "spammy.eml", SPAMMY)
    result = CliRunner().invoke(cli, ["--config", "/dev/null", "scan", "--json", str(path)])
    out = json.loads(result.output)
    bayes = next(s for s in out["symbols"] if s["name"].startswith("BAYES_"))
    assert isinstance(out["spamicity"], float) and 0.0 <= out["spamicity"] <= 1.0
    assert f"spamicity {out['spamicity']:.4f}" in bayes["reason"]  # the reason's is the same, rounded


def test_scan_exit_status_tells_spam_from_ham_and_errors_apart(tmp_path: Path) -> None:
    ham = write(
        tmp_path,
        "ham.eml",
        b"From: a@example.org\r\nDate: Thu, 3 Dec 2026 10:00:00 +0000\r\n"
        b"Message-ID: <1@example.org>\r\nSubject: the agenda\r\n\r\nSee you at the meeting.\r\n",
    )
    strict = write(tmp_path, "strict.toml", b"[actions]\nadd_header = -100.0\n")
    assert CliRunner().invoke(cli, ["--config", "/dev/null", "scan", str(ham)]).exit_code == 0
    # flagged (here: every message, by an add_header threshold below any score) -> 1
    flagged = CliRunner().invoke(cli, ["--config", str(strict), "scan", str(ham)])
    assert flagged.exit_code == 1, flagged.output
    assert CliRunner().invoke(cli, ["scan", "--no-such-option", str(ham)]).exit_code == 2
    broken = write(tmp_path, "broken.toml", b"[actions\n")
    assert CliRunner().invoke(cli, ["--config", str(broken), "scan", str(ham)]).exit_code == 3
    usage = CliRunner().invoke(cli, ["scan", "--help"])
    assert "Exit status: 0 every message is ham" in usage.output


def test_bayes_is_on_by_default_with_the_shipped_model(tmp_path: Path) -> None:
    path = write(tmp_path, "spammy.eml", SPAMMY)
    result = CliRunner().invoke(cli, ["--config", "/dev/null", "scan", str(path)])
    assert "BAYES_SPAM" in result.output or "BAYES_UNSURE" in result.output, result.output


def test_an_offline_scan_never_touches_redis_when_the_model_is_a_file(tmp_path: Path) -> None:
    """Signatures on, storage = "file", [redis] at a port that counts connections: none comes."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    cfg = write(
        tmp_path,
        "f.toml",
        f'[redis]\nurl = "redis://127.0.0.1:{port}/0"\ntimeout = 0.5\n'
        f'[checks.bayes]\nstorage = "file"\nsignature = true\non_error = "closed"\n'.encode(),
    )
    path = write(tmp_path, "spammy.eml", SPAMMY)
    try:
        result = CliRunner().invoke(cli, ["--config", str(cfg), "scan", "--json", str(path)])
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert result.exit_code in (0, 1), result.output
    assert json.loads(result.output)["spamicity"] is not None
    assert accepted == []


def test_config_check_warns_when_the_bayes_model_is_missing(tmp_path: Path) -> None:
    cfg = write(tmp_path, "f.toml", f'[checks.bayes]\nmodel = "{tmp_path}/none.npz"\n'.encode())
    result = CliRunner().invoke(cli, ["--config", str(cfg), "config", "check"])
    assert result.exit_code == 0
    assert f"warning: checks.bayes: no model at {tmp_path}/none.npz" in result.output
    assert "BAYES_UNTRAINED" in result.output and "(1 warning(s))" in result.output
    ok = CliRunner().invoke(cli, ["--config", "/dev/null", "config", "check"])
    assert ok.exit_code == 0 and "warning" not in ok.output


def test_scan_local_asks_no_dns_and_runs_the_local_checks(tmp_path: Path) -> None:
    """--local (spamassassin -L): the checks that declare Cost.NETWORK are off, no DNS query leaves;
    without it the same message makes DNS queries (SPF, DMARC...), so the count can tell."""
    import socket

    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.1", 0))
    dns.setblocking(False)
    port = dns.getsockname()[1]
    cfg = write(
        tmp_path, "dns.toml", f'[dns]\nnameservers = ["127.0.0.1"]\nport = {port}\ntimeout = 0.2\n'.encode()
    )
    path = write(tmp_path, "spammy.eml", SPAMMY)

    def queries() -> int:
        n = 0
        while True:
            try:
                dns.recv(4096)
            except BlockingIOError:
                return n
            n += 1

    try:
        local = CliRunner().invoke(cli, ["--config", str(cfg), "scan", "--local", "--json", str(path)])
        asked_local = queries()
        full = CliRunner().invoke(
            cli, ["--config", str(cfg), "scan", "--json", "--mail-from", "a@spammer.example", str(path)]
        )
        asked_full = queries()
    finally:
        dns.close()
    assert local.exit_code in (0, 1) and full.exit_code in (0, 1), local.output + full.output
    assert asked_local == 0 and asked_full > 0
    names = {s["name"] for s in json.loads(local.output)["symbols"]}
    assert not any(n.startswith(("SPF_", "DKIM_", "DMARC_", "ARC_")) for n in names)
    assert json.loads(local.output)["spamicity"] is not None  # the classifier is local: it ran
