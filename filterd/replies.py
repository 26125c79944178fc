"""The SMTP replies filterd sends, in one table.

Each reply is named after its code (the aiosmtpd convention), and a unit test checks that every
name matches its code.  The reply and decision types themselves (`Reply`, `Reject`, `TempFail`,
`Discard`, `Quarantine`) live in `filterd.results` and are re-exported here, so a check imports a
decision and its reply from one place.
"""

from __future__ import annotations

# re-exported (the "X as X" form): a check imports a decision and its reply from here
from filterd.results import Decision as Decision
from filterd.results import Discard as Discard
from filterd.results import Quarantine as Quarantine
from filterd.results import Reject as Reject
from filterd.results import Reply as Reply
from filterd.results import TempFail as TempFail

# The replies filterd sends.  The name carries the code so a reader of a test or a log line
# knows the class of the answer without looking it up.
R451_CHECK_FAILED = Reply(451, "4.3.0", "Temporary failure in the content filter, please try again later")
R451_GREYLISTED = Reply(451, "4.7.1", "Message scored as suspicious, please try again later")
R451_VIRUS_SCAN_FAILED = Reply(451, "4.3.0", "Virus scanner unavailable, please try again later")
R452_TOO_BIG_TO_SCAN = Reply(452, "4.3.4", "Message too large for the virus scanner, please try again later")
R554_VIRUS_FOUND = Reply(554, "5.7.1", "Message rejected: virus found")
R451_GREYLIST_DEFERRED = Reply(451, "4.7.1", "Greylisted: first attempt deferred, please try again later")
R451_RATE_LIMITED = Reply(451, "4.7.1", "Too many messages from you, please try again later")
R550_SPAM = Reply(550, "5.7.1", "Message rejected as spam")
R550_CLIENT_DENIED = Reply(550, "5.7.1", "Client host is on this site's deny list")
R550_SENDER_DENIED = Reply(550, "5.7.1", "Sender address is on this site's deny list")
R550_RECIPIENT_DENIED = Reply(550, "5.7.1", "Recipient address is on this site's deny list")
R552_MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds the limit of this site's content filter")
# Sender authentication (enhanced codes from RFC 7372).
R550_SPF_FAIL = Reply(550, "5.7.23", "SPF validation failed")
R550_SPF_PERMERROR = Reply(550, "5.7.24", "SPF validation error")
R451_SPF_TEMPERROR = Reply(451, "4.7.24", "SPF validation error, please try again later")
R451_SPF_DEFERRED = Reply(451, "4.7.1", "SPF validation failed, please try again later")
R550_DMARC_REJECT = Reply(550, "5.7.26", "Rejected by the DMARC policy of the From domain")
R550_FROM_AMBIGUOUS = Reply(550, "5.7.1", "Message has From addresses of several domains")
