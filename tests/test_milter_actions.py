"""The milter adapter's translation of the driver's outcome into milter actions: pure functions,
checked here without libmilter (as purepythonmilter tests its verdict types)."""

from __future__ import annotations

from filterd.driver import PROCEED, Step
from filterd.milter import MilterAction, step_action, verdict_action
from filterd.replies import R451_GREYLISTED, R550_RECIPIENT_DENIED, R550_SPAM
from filterd.results import Action, AddHeader, Discard, Quarantine, Reject, TempFail, Verdict

HEADERS = [AddHeader("X-Spam-Status", "No, score=1.00 required=5.00")]


def verdict(action: Action, decision=None, score: float = 1.0) -> Verdict:  # type: ignore[no-untyped-def]
    return Verdict(score, 5.0, action, [], decision, list(HEADERS))


def test_a_step_goes_on_or_gives_its_decision_now() -> None:
    assert step_action(PROCEED) == MilterAction("continue")
    refused = Step(Reject(R550_RECIPIENT_DENIED, "deny list"))
    assert step_action(refused) == MilterAction("reject", R550_RECIPIENT_DENIED)
    assert step_action(Step(TempFail(R451_GREYLISTED, "g"))) == MilterAction("tempfail", R451_GREYLISTED)
    assert step_action(Step(Discard("virus"))) == MilterAction("discard")


def test_refusals_at_end_of_message_add_nothing() -> None:
    rejected = verdict(Action.REJECT, Reject(R550_SPAM, "score 20 >= 15"), 20.0)
    assert verdict_action(rejected, "store", True, "[SPAM]") == MilterAction("reject", R550_SPAM)
    assert verdict_action(verdict(Action.DISCARD, Discard("x")), "store", True, "[SPAM]").rc == "discard"


def test_delivered_mail_gets_the_headers_and_loses_the_forged_ones() -> None:
    action = verdict_action(verdict(Action.ADD_HEADER), "store", True, "[SPAM]")
    assert action.rc == "accept" and action.remove_forged and action.subject_tag is None
    assert action.add_headers == (("X-Spam-Status", "No, score=1.00 required=5.00"),)
    tagged = verdict_action(verdict(Action.REWRITE_SUBJECT), "store", True, "[SPAM]")
    assert tagged.subject_tag == "[SPAM]"


def test_a_quarantine_is_stored_when_the_message_was_kept_whole_else_held_by_postfix() -> None:
    held = verdict(Action.QUARANTINE, Quarantine("DMARC quarantine for example.org"))
    stored = verdict_action(held, "store", True, "[SPAM]")
    assert stored.rc == "discard" and stored.store and stored.add_headers  # discarded only once stored
    too_big = verdict_action(held, "store", False, "[SPAM]")  # the body was not kept: Postfix keeps it all
    assert too_big.rc == "accept" and too_big.hold == "DMARC quarantine for example.org" and not too_big.store
    hold_mode = verdict_action(verdict(Action.QUARANTINE, None, 9.0), "hold", True, "[SPAM]")
    assert hold_mode.hold == "score 9.0" and hold_mode.remove_forged
