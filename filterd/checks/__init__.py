"""The registry of checks.  A new check is one module here and one line in `ALL_CHECKS`.

Order matters only within a stage: checks run in this order, and the first decision stops the rest,
so cheap checks that may decide early come first.
"""

from __future__ import annotations

from filterd.check import Check
from filterd.checks.antivirus import Antivirus
from filterd.checks.arc import Arc
from filterd.checks.auth_results import AuthResults
from filterd.checks.bayes import Bayes
from filterd.checks.dkim import Dkim
from filterd.checks.dkim_sign import DkimSign
from filterd.checks.dmarc import Dmarc
from filterd.checks.greylist import Greylist
from filterd.checks.header_sanity import HeaderSanity
from filterd.checks.lists import ClientLists, RecipientAllowed, RecipientLists, SenderLists
from filterd.checks.message_size import MessageSize
from filterd.checks.mime_structure import MimeStructure
from filterd.checks.ratelimit import RateLimit
from filterd.checks.reputation import AuthReputation, Reputation
from filterd.checks.rules import Rules
from filterd.checks.smtp_behaviour import ClientDns, HeaderHeuristics, HeloHeuristics, SenderDns
from filterd.checks.spf import Spf

ALL_CHECKS: tuple[type[Check], ...] = (
    ClientLists,
    SenderLists,
    Spf,
    RecipientLists,
    RecipientAllowed,  # end of message (headers): the recipient allow list, when every recipient is on it
    RateLimit,  # RCPT, one token per recipient: after the deny list (a refused one costs none), before greylisting
    HeaderSanity,
    MessageSize,
    ClientDns,  # CONNECT: after the client lists, so a denied client costs no lookup
    HeloHeuristics,
    SenderDns,
    Reputation,  # MAIL FROM: after SPF, so an SPF-pass domain is known
    Greylist,  # RCPT (or end of message in content mode): after the lists and reputation
    Antivirus,  # end of message: after greylisting (a deferred message costs no scan), before DKIM
    Dkim,  # EOM: dkim, arc and dmarc before auth_results, which writes their header
    Arc,
    Dmarc,
    AuthResults,
    DkimSign,
    HeaderHeuristics,  # end of message: after DKIM (reads which domains authenticated)
    AuthReputation,  # end of message: after DKIM
    MimeStructure,
    Rules,  # end of message; greylisting in content mode still runs after it (after_scoring)
    Bayes,  # last: autolearn reads the scores of the checks before it
)
