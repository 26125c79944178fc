"""The milter's no-reply negotiation, with a stand-in for libmilter's context (unit tests of the
class; tests/test_e2e_milter.py drives the same code through a real Postfix)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import Milter
import pytest

from filterd import milter as fm
from filterd import worker
from filterd.config import parse_config
from filterd.pipeline import Pipeline


class Context:
    """What FilterdMilter calls on pymilter's milterContext, recording the replies it sets."""

    def __init__(self) -> None:
        self.priv: Any = None
        self.replies: list[tuple[str, ...]] = []
        self.added = []

    def setpriv(self, priv: Any) -> None:
        self.priv = priv

    def getpriv(self) -> Any:
        return self.priv

    def getsymval(self, name: str) -> str | None:
        return {"i": "QID1", "j": "mx.example.net"}.get(name)

    def setsymlist(self, stage: int, macros: str) -> None:
        pass

    def setreply(self, *args: str) -> None:
        self.replies.append(args)

    added: list[tuple[str, str]]
    failing_header: str | None = None  # addheader of this name raises, as pymilter does on bad text

    def addheader(self, name: str, value: str, idx: int = -1) -> None:
        if name == self.failing_header:
            raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")
        self.added.append((name, value))

    def chgheader(self, name: str, idx: int, value: str | None) -> None:
        self.added.append((f"-{name}", str(idx)))

    def quarantine(self, reason: str) -> None:
        self.added.append(("quarantine", reason))


def connect(config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[fm.FilterdMilter, Context]:
    parsed = parse_config(config)
    monkeypatch.setattr(worker, "holder", worker.PipelineHolder(Pipeline.from_config(parsed)))
    ctx = Context()
    m = fm.FilterdMilter()
    m._setctx(ctx)
    opts = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]  # everything Postfix 3.7 offers
    m.negotiate(opts)
    return m, ctx


FOUNDATION = {"checks": {"spf": {"enabled": False}}}


def broken(stage: Any) -> None:
    raise RuntimeError("bug")


def test_no_reply_is_awaited_at_connect_and_helo(monkeypatch: pytest.MonkeyPatch) -> None:
    m, _ = connect(FOUNDATION, monkeypatch)
    assert m._protocol & Milter.P_NR_CONN and m._protocol & Milter.P_NR_HELO
    assert m.connect("client.example.org", 2, ("192.0.2.10", 40000)) == Milter.NOREPLY
    assert m.hello("client.example.org") == Milter.NOREPLY


def report_of(ctx: Context) -> str:
    return "".join(v for n, v in ctx.added if n == "X-Spam-Report")


def test_a_failure_at_connect_is_not_a_tempfail_the_message_goes_on_marked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    deny = tmp_path / "deny.txt"
    deny.write_text("spammer@example.com\n")  # a check that may refuse at MAIL FROM: Postfix awaits it
    m, ctx = connect({**FOUNDATION, "checks": {"sender_lists": {"deny_file": str(deny)}}}, monkeypatch)
    assert not m._protocol & Milter.P_NR_MAIL
    with monkeypatch.context() as patch:
        patch.setattr(m.driver, "connect", broken)
        assert m.connect("client.example.org", 2, ("192.0.2.10", 40000)) == Milter.NOREPLY
    assert m.hello("client.example.org") == Milter.NOREPLY
    assert fm.on_mail(ctx, b"<a@example.org>") == Milter.CONTINUE  # was 451: the next try fails alike
    fm.on_rcpt(ctx, b"<b@example.net>")
    assert fm.on_eom(ctx) == Milter.ACCEPT
    assert ctx.replies == []
    assert "INTERNAL_ERROR" in report_of(ctx)


def test_with_no_reply_at_mail_from_a_failure_at_connect_is_reported_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m, ctx = connect(FOUNDATION, monkeypatch)
    assert m._protocol & Milter.P_NR_MAIL
    with monkeypatch.context() as patch:
        patch.setattr(m.driver, "connect", broken)
        assert m.connect("client.example.org", 2, ("192.0.2.10", 40000)) == Milter.NOREPLY
    assert fm.on_mail(ctx, b"<a@example.org>") == Milter.NOREPLY
    assert fm.on_rcpt(ctx, b"<b@example.net>") == Milter.NOREPLY
    assert fm.on_eom(ctx) == Milter.ACCEPT
    assert "INTERNAL_ERROR" in report_of(ctx)


def start_message(ctx: Context, *headers: tuple[str, bytes]) -> None:
    fm.on_mail(ctx, b"<a@example.org>")
    fm.on_rcpt(ctx, b"<b@example.net>")
    for name, value in headers:
        fm.on_header(ctx, name, value)
    fm.on_body(ctx, b"Hello\r\n")


def test_a_failure_while_adding_headers_delivers_with_forged_ones_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m, ctx = connect(FOUNDATION, monkeypatch)
    m.connect("client.example.org", 2, ("192.0.2.10", 40000))
    start_message(ctx, ("From", b" a@example.org"), ("X-Spam-Flag", b" NO"))
    ctx.failing_header = "X-Spam-Status"
    assert fm.on_eom(ctx) == Milter.ACCEPT
    assert ("-X-Spam-Flag", "1") in ctx.added
    assert [n for n, _ in ctx.added].count("X-Spam-Report") == 1
    assert "INTERNAL_ERROR" in report_of(ctx)


def test_a_failure_after_a_reject_verdict_keeps_the_5xx(monkeypatch: pytest.MonkeyPatch) -> None:
    m, ctx = connect({**FOUNDATION, "scores": {"MISSING_FROM": 20.0}}, monkeypatch)
    m.connect("client.example.org", 2, ("192.0.2.10", 40000))
    start_message(ctx, ("Subject", b" hi"))
    monkeypatch.setattr(m.driver, "message_done", lambda verdict: 1 / 0)  # fails after the verdict
    monkeypatch.setattr(m, "_carry_out", lambda action: 1 / 0)
    assert fm.on_eom(ctx) == Milter.REJECT
    assert ctx.replies[0][0] == "550"


def test_out_of_memory_is_a_tempfail(monkeypatch: pytest.MonkeyPatch) -> None:
    m, ctx = connect(FOUNDATION, monkeypatch)
    m.connect("client.example.org", 2, ("192.0.2.10", 40000))
    start_message(ctx, ("From", b" a@example.org"))

    def out_of_memory(*args: Any) -> None:
        raise MemoryError

    monkeypatch.setattr(m.pipeline, "run_stage", out_of_memory)
    assert fm.on_eom(ctx) == Milter.TEMPFAIL
    assert ctx.replies[0][:2] == ("452", "4.3.1")


def test_eight_bit_bytes_reach_libmilter_as_text_it_can_carry() -> None:
    assert fm.milter_text("plain") == "plain"
    assert fm.milter_text("caf\udce9 \u00e9t\u00e9\0") == "caf\u00e9 \u00e9t\u00e9"
    fm.milter_text("\udcff").encode("utf-8")


def test_drop_fields_removes_whole_folded_fields_by_place() -> None:
    raw = b"A: 1\r\nX-Spam-Flag: NO\r\n\tfolded\r\nB: 2\r\n\r\nbody X-Spam-Flag: x\r\n"
    assert fm.drop_fields(raw, {1}) == b"A: 1\r\nB: 2\r\n\r\nbody X-Spam-Flag: x\r\n"


def test_heartbeat_reports_the_oldest_callback_in_progress() -> None:
    beats: list[float] = []
    stuck = time.monotonic() - 100.0
    worker.busy[12345] = stuck  # a callback that started 100 s ago and never returned
    try:
        worker.start_heartbeat(lambda t: beats.append(t) if len(beats) < 1000 else None, interval=0.01)
        deadline = time.monotonic() + 5
        while not beats and time.monotonic() < deadline:
            time.sleep(0.01)
        assert beats and beats[-1] == stuck
    finally:
        del worker.busy[12345]
    time.sleep(0.05)
    assert len(beats) == 1000 or time.monotonic() - beats[-1] < 1.0  # nothing stuck: the beat is now
