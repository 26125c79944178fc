from __future__ import annotations

import pytest

from filterd import replies
from filterd.replies import Reject, Reply, TempFail


def test_every_named_reply_carries_the_code_of_its_name() -> None:
    named = {n: v for n, v in vars(replies).items() if n.startswith("R") and isinstance(v, Reply)}
    assert named
    for name, reply in named.items():
        assert name[1:4] == str(reply.code), name


def test_decision_classes_fix_the_code_class() -> None:
    with pytest.raises(ValueError):
        Reject(Reply(451, "4.7.1", "x"), "r")
    with pytest.raises(ValueError):
        TempFail(Reply(550, "5.7.1", "x"), "r")
    with pytest.raises(ValueError):
        Reply(550, "4.7.1", "mismatched enhanced code")
    with pytest.raises(ValueError):
        Reply(250, "2.0.0", "not an error")
    assert str(Reply(550, "5.7.1", "go away").with_text("a\r\nb")) == "550 5.7.1 a b"
