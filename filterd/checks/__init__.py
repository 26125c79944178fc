"""The registry of checks.  A new check is one module here and one line in `ALL_CHECKS`.

Order matters only within a stage: checks run in this order, and the first decision stops the rest,
so cheap checks that may decide early come first.
"""

from __future__ import annotations

from filterd.check import Check
from filterd.checks.arc import Arc
from filterd.checks.auth_results import AuthResults
from filterd.checks.bayes import Bayes
from filterd.checks.dkim import Dkim
from filterd.checks.dkim_sign import DkimSign
from filterd.checks.dmarc import Dmarc
from filterd.checks.header_sanity import HeaderSanity
from filterd.checks.lists import ClientLists, RecipientLists, SenderLists
from filterd.checks.message_size import MessageSize
from filterd.checks.spf import Spf

ALL_CHECKS: tuple[type[Check], ...] = (
    ClientLists,
    SenderLists,
    Spf,
    RecipientLists,
    HeaderSanity,
    MessageSize,
    Dkim,  # EOM: dkim, arc and dmarc before auth_results, which writes their header
    Arc,
    Dmarc,
    AuthResults,
    DkimSign,
    Bayes,  # last: autolearn reads the scores of the checks before it
)
