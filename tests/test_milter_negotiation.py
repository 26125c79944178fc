"""The milter's no-reply negotiation, with a stand-in for libmilter's context (unit tests of the
class; tests/test_e2e_milter.py drives the same code through a real Postfix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import Milter
import pytest

from filterd import milter as fm
from filterd.config import parse_config
from filterd.pipeline import Pipeline


class Context:
    """What FilterdMilter calls on pymilter's milterContext, recording the replies it sets."""

    def __init__(self) -> None:
        self.priv: Any = None
        self.replies: list[tuple[str, ...]] = []

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


def connect(config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[fm.FilterdMilter, Context]:
    parsed = parse_config(config)
    monkeypatch.setattr(fm, "holder", fm.PipelineHolder(build=lambda: Pipeline.from_config(parsed)))
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


def test_a_failure_at_connect_is_held_and_given_at_mail_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    deny = tmp_path / "deny.txt"
    deny.write_text("spammer@example.com\n")  # a check that may refuse at MAIL FROM: Postfix awaits it
    m, ctx = connect({**FOUNDATION, "checks": {"sender_lists": {"deny_file": str(deny)}}}, monkeypatch)
    assert not m._protocol & Milter.P_NR_MAIL
    with monkeypatch.context() as patch:
        patch.setattr(m, "_session_stage", broken)
        assert m.connect("client.example.org", 2, ("192.0.2.10", 40000)) == Milter.NOREPLY
    assert m.hello("client.example.org") == Milter.NOREPLY
    assert ctx.replies == []  # nothing could be said yet
    assert fm.on_mail(ctx, b"<a@example.org>") == Milter.TEMPFAIL
    assert ctx.replies[0][0] == "451"


def test_with_no_reply_at_mail_from_a_failure_at_connect_is_given_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m, ctx = connect(FOUNDATION, monkeypatch)
    assert m._protocol & Milter.P_NR_MAIL
    with monkeypatch.context() as patch:
        patch.setattr(m, "_session_stage", broken)
        assert m.connect("client.example.org", 2, ("192.0.2.10", 40000)) == Milter.NOREPLY
    assert fm.on_mail(ctx, b"<a@example.org>") == Milter.NOREPLY
    assert fm.on_rcpt(ctx, b"<b@example.net>") == Milter.NOREPLY
    assert fm.on_eom(ctx) == Milter.TEMPFAIL
    assert ctx.replies[0][0] == "451"
