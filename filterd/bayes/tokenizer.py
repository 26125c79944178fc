"""Message -> tokens: the strings the classifier counts.

The tokenizer owns the mapping from a parsed `filterd.message.Message` to a list of distinct token
strings; the classifier (classifier.py) knows nothing about mail.  Each token carries a prefix that
says where it came from, so "free" in the Subject and "free" in the body are different evidence:

    word              a body word, lower-cased                    money
    bi:w1 w2          two adjacent body words (DSPAM's "chain")   bi:click here
    subject:w         a Subject word (also subject bigrams)       subject:free
    from:/to:/...     addresses, domains and display-name words   from:domain:msn.com
    rcvd:             hosts and /24 networks in Received headers  rcvd:net:216.150.8
    h:NAME:w          words of a few telling headers              h:x-mailer:outlook
    hn:NAME           that a header is present at all              hn:x-mailing-list
    url:              link hosts, registered domains, paths       url:dom:example.com
    tag:/attr:        HTML tags, and text hidden by style         tag:font attr:style:hidden
    part:             MIME structure                              part:ct:image/gif
    cjk:ab            two adjacent CJK characters                 cjk:免费
    skip:c N          a long word: first char and length bucket    skip:h 30

Lab notes (split (a) of the SpamAssassin public corpus, see docs/bayes.md for the commands):

- Bodies are lower-cased.  Keeping case grows the vocabulary by about a third and did not move
  (1-ROCA) measurably; SpamBayes made the same call.
- Word pairs are the largest single gain over words alone (DSPAM's "chained tokens"): "click here"
  and "remove you" are far stronger than their words.  Sparse pairs (OSB, skipping a word) cost
  another 60% of tokens for no measurable gain here, so only adjacent pairs are made.
- Header names present are strong evidence on this corpus (mailing list software leaves List-* and
  X-Mailing-List on ham); the words of only a few headers are (X-Mailer, List-Id, Precedence...).  The headers another filter adds
  (X-Spam-*, X-DSPAM-*, X-Bogosity, ours X-Filterd-*) are dropped: they are forgeable, and
  learning them would learn the other filter's opinion instead of the message.
- Numbers alone are not words (a date, an order number): they made noise tokens, one per message.
- CJK scripts are written without spaces: a run of Han/Kana/Hangul characters is split into
  overlapping character bigrams, the usual trick for those languages.

Lab notes, second round (issue 17): measured across two corpora, SpamAssassin (SA, 2002) and CSDMC
(2009-10), with `python bench/bayes_tune.py` -- the tuning views only: each corpus's hash halves the
other way round from the ones `filterctl eval` reports, and A -> the even half of B.  Figures are
(1-ROCA)% / spam missed at <= 0.1% ham flagged; "SA swap, SA->CSDMC" below.

- What fooled the SA-trained model on CSDMC was not ham but spam: 2010 "salad" spam, HTML pages
  whose text and `<a name=...>` attributes are sentences cut from Wikipedia ("the fall of the roman
  empire"), scoring 0.0000 on dozens of words and pairs the model had only seen in ham.  Robinson's
  s did most (classifier.py); of the tokenizer changes only the Received words stayed.
- Received lines: bogofilter and SpamBayes read their words, we read only hosts and networks.  Their
  words too ("unknown", "helo", relay software, "with smtp"), without the ones holding a digit
  (queue ids, times: new tokens in every line): SA swap 0.032 / 6.3% -> 0.027 / 4.6%, SA->CSDMC
  1.08 / 24.3% -> 1.51 / 23.2%, CSDMC->SA 9.93 / 80% -> 10.0 / 82% (all with s = 0.1).  Mixed
  across corpora but better where the training set is large; kept.  With the digits kept it was a
  little better on the cross views (1.26 / 22.7%) and ~5% slower; left out.
- The words of every header (bogofilter's "head:" tokens): SA swap 0.032 -> 0.033, SA->CSDMC
  1.08 -> 1.46, CSDMC->SA FN 80% -> 79%: no gain; still only the few telling headers.
- HTML tag tokens are not what hurts across corpora: without them SA->CSDMC went 2.24 -> 3.76
  (before s = 0.1), with the MIME part tokens gone too 3.99.  Kept.
- Without word pairs: SA->CSDMC 1.26 / 22.7% -> 1.19 / 13.7% (salad pairs double the ham
  evidence), but SA swap 0.027 / 4.6% -> 0.038 / 10.0%.  Pairs stay; with salad spam in mind this
  is the next thing to look at (pairs that count once with their words).
- More verdict headers of other filters are ignored (`is_verdict_header`): CSDMC's ham carries a
  renamed SpamAssassin verdict (XStatus, XLevel) and its spam Barracuda's (X-Barracuda-*, X-ASG-*):
  the label itself, to a filter that learns header names.
- Tokenizer version 4: the date stamp's words of a Received line (weekdays, months, time zones) are
  no longer Received words.  Found by a hand-written 2026 spam (corpus/spam): "rcvd:w:utc" scored
  0.012, because 2002 ham says "edt"/"pdt" and today's Postfix writes "(UTC)" on every line.
  (`filterctl eval`, trained on SA only as before) SA->CSDMC 1.452 -> 1.350, CSDMC->SA 9.94 -> 9.70,
  chrono SA 0.784 -> 0.806, chrono CSDMC 0.018 -> 0.022, hash medians of 3 splits 0.0341 -> 0.0344
  (SA) and 0 -> 0 (CSDMC): better across corpora, within noise or a little worse in one.  Kept,
  because when a relay wrote a line is no evidence about the mail.

Work is bounded: `MAX_TEXT_CHARS` characters of text and `MAX_TOKENS` distinct tokens per message.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from filterd.message import Message, decode_words

TOKENIZER_VERSION = 4  # stored in the model: a model is only valid with the tokenizer it was trained by

MAX_TEXT_CHARS = 60_000  # body text tokenized; the rest of a long message adds little evidence
MAX_TOKENS = 6_000  # distinct tokens kept per message
MAX_URLS = 50
MAX_RECEIVED = 6
MAX_RECEIVED_CHARS = 300  # of one Received line read for words
MAX_HEADER_CHARS = 4_000  # of one header value tokenized: a 34 KB To: adds nothing but work
MAX_CACHED_HEADER = 1_000  # longer values are not kept in the header cache (memory)
MAX_WORD = 24  # longer words become a skip: token (base64 runs, hashes)

# Headers a filter adds: never learned from (they are the other filter's opinion, and forgeable).
# Beyond the usual names, any field whose name says it carries a spam or virus verdict: CSDMC's
# mail came through a Barracuda (X-Barracuda-Spam-*, X-ASG-*) and amavis (X-AmavisStatus), and
# its ham through a list server whose SpamAssassin verdict was renamed (XStatus, XLevel).  Learning
# them learns another filter, and a spammer writes "X-Virus-Scanned: clean" as easily as anyone.
_VERDICT_HEADER = re.compile(
    r"x-spam|x-dspam|x-bogosity|x-virus|x-filterd|x-asg-"
    r"|[a-z0-9-]*(?:spam|virus|amavis|barracuda|bogo|mailscanner)"
    r"|x(?:status|level|score|checker-version)$"
    r"|x-(?:cm|vr|cloudmark|sbb)-?score$"
)


@functools.lru_cache(maxsize=4096)  # header names repeat from message to message
def is_verdict_header(name: str) -> bool:
    """True for a header field (lower-case name) that carries some filter's verdict."""
    return _VERDICT_HEADER.match(name) is not None


# Headers whose words are tokens.  Words of every other header (dates, ids, relay software versions)
# were tried: on split (a) they made (1-ROCA) worse, 0.027 -> 0.021 without them -- mostly noise that
# is unique to one message or to one mailbox of the corpus.  Their names still count (hn:).
_WORD_HEADERS = frozenset(
    {
        "x-mailer",
        "user-agent",
        "x-mailer-version",
        "organization",
        "list-id",
        "list-unsubscribe",
        "precedence",
        "x-priority",
        "x-msmail-priority",
        "importance",
        "mime-version",
        "x-mimeole",
        "content-disposition",
        "errors-to",
        "mailing-list",
    }
)
_ADDRESS_HEADERS = ("from", "to", "cc", "reply-to", "sender", "return-path")

# A word: starts with a letter (or $), may hold ' . - $ % _ inside, ends on a letter or digit.
_WORD = re.compile(r"[$]?[^\W\d_][^\W_]*(?:[_'$.\-%]+[^\W_]+)*")  # no backtracking: 10% faster
# The same words in lower-case ASCII text: plain ranges instead of Unicode categories, a third
# faster, and most mail is ASCII.
_WORD_ASCII = re.compile(r"[$]?[a-z][a-z0-9]*(?:[_'$.\-%]+[a-z0-9]+)*")
_HEADER_WORD = re.compile(r"[^\s<>()\[\]\",;:=]+")
# A word of a Received line: letters, dots and hyphens, not touching a digit or another word character.
_RECEIVED_WORD = re.compile(r"(?<![\w.\-])[a-z][a-z.\-]{0,29}(?![\w.\-])")
# The date stamp's words say when and in which time zone a relay wrote the line, not what the mail
# is: a 2002 corpus has "edt"/"pdt" on its ham and almost no "utc", which today's Postfix writes on
# every line ("+0000 (UTC)"), so "rcvd:w:utc" scored 0.012 and leaned every modern message to ham.
# fmt: off
_DATE_WORDS = frozenset((
    "mon", "tue", "wed", "thu", "fri", "sat", "sun",
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    "ut", "utc", "gmt", "z", "est", "edt", "cst", "cdt", "mst", "mdt", "pst", "pdt", "akst", "akdt",
    "hst", "cet", "cest", "met", "mest", "wet", "west", "eet", "eest", "bst", "ist", "msk", "jst",
    "kst", "hkt", "sgt", "awst", "acst", "aest", "aedt", "nzst", "nzdt",
))
# fmt: on
_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]{2,}")
_HAS_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_ADDRESS = re.compile(r"[\w.+\-=&'/]+@([\w\-]+\.)+[\w\-]+")  # what `_address_spans` finds, for reading
_DOMAIN = re.compile(r"(?:[\w\-]+\.)+[\w\-]+")
MAX_LOCAL_PART = 256  # characters read back from an "@" (RFC 5321 allows 64)
MAX_DOMAIN = 256  # characters read on from it (RFC 1035 allows 253)
_IPV4 = re.compile(r"\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\b")
# The same without the leading \b, which makes `re` try every position: `_networks` checks it.
_IPV4_AHEAD = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.\d{1,3}\b")
_HOSTNAME = re.compile(r"\b(?:[a-z0-9](?:[a-z0-9\-]{0,62})\.)+[a-z]{2,24}\b")
_URL_PARTS = re.compile(r"(?i)^(?:https?://)?([^/?#:]*)(?::(\d+))?([^?#]*)")
_PATH_WORD = re.compile(r"[a-z][a-z0-9]{2,20}")
# Second-level labels under which registrations sit one level deeper (example.co.uk).
_SECOND_LEVEL = frozenset({"co", "com", "net", "org", "ac", "gov", "edu", "ne", "or", "go"})


@dataclass(frozen=True)
class Tokens:
    """A message's tokens: the distinct named ones, and the body words, each a token and each adjacent
    pair of them a token too.

    Word pairs are not made into strings here: they are most of a message's distinct tokens and
    nearly all of them new, so the classifier hashes them from the hashes of their two words
    (classifier.Hasher.pair_buckets) and names only the few it reports."""

    names: list[str]
    words: list[str]  # body words in order; "" where the chain breaks (no pair across it)

    def word_names(self) -> list[str]:
        return [w for w in self.words if w]

    def pair_names(self) -> list[str]:
        return ["bi:" + a + " " + b for a, b in itertools.pairwise(self.words) if a and b]


def tokens(msg: Message) -> Tokens:
    """The message's tokens, at most `MAX_TOKENS` names and `MAX_TOKENS` words (words may repeat:
    the classifier counts each bucket once)."""
    names = list(_header_tokens(msg))
    body_names, words = _body(msg)
    names += body_names
    return Tokens(list(dict.fromkeys(names))[:MAX_TOKENS], words[:MAX_TOKENS])


def tokenize(msg: Message) -> list[str]:
    """Every distinct token of `msg` as a string, pairs included (`bi:w1 w2`): for reading and tests."""
    t = tokens(msg)
    return list(dict.fromkeys(t.names + t.word_names() + t.pair_names()))


def _header_tokens(msg: Message) -> list[str]:
    found: list[str] = []
    received = 0
    for name, value in msg.headers:
        key = name.lower()
        if is_verdict_header(key):
            continue
        if key == "received":  # different in every message: never worth caching
            found.append("hn:received")
            received += 1
            if received <= MAX_RECEIVED:
                value = value[:MAX_HEADER_CHARS]
                found += _received_tokens((value if value.isascii() else _clean(value)).lower())
            continue
        if key == "message-id":  # unique too
            found += _one_header(key, value)
            continue
        if len(value) > MAX_CACHED_HEADER:
            found += _one_header(key, value)
            continue
        cached = _HEADER_CACHE.get((key, value))
        if cached is None:
            if len(_HEADER_CACHE) >= HEADER_CACHE_SIZE:
                _HEADER_CACHE.clear()  # a crude bound: refilling costs some misses
            cached = _HEADER_CACHE[key, value] = tuple(_one_header(key, value))
        found += cached
    return found


# A header's tokens depend on its name and value only, and most headers other than Received and
# Message-ID repeat from message to message (a list's Sender and List-*, a mailer's Content-Type):
# on the SpamAssassin corpus 50-90% of them were seen before.
HEADER_CACHE_SIZE = 50_000
_HEADER_CACHE: dict[tuple[str, str], tuple[str, ...]] = {}


def _one_header(key: str, value: str) -> Iterable[str]:
    yield "hn:" + key
    value = value[:MAX_HEADER_CHARS]
    if not value.isascii():
        value = _clean(value)
    if key == "subject":
        words = _WORD.findall(decode_words(value).lower())
        for w in words:
            yield "subject:" + w
        for a, b in itertools.pairwise(words):
            yield f"subject:{a} {b}"
        if value.isupper():
            yield "subject:ALLCAPS"
    elif key in _ADDRESS_HEADERS:
        yield from _address_tokens(key, decode_words(value))
    elif key == "message-id":
        _, _, domain = value.strip("<> ").rpartition("@")
        yield "mid:" + domain.lower()[:40]
    elif key in ("content-type", "content-transfer-encoding"):
        yield f"h:{key}:" + value.split(";")[0].strip().lower()[:40]
    elif key in _WORD_HEADERS:
        for w in _HEADER_WORD.findall(value[:300].lower()):
            yield f"h:{key}:{w[:30]}"


def _clean(value: str) -> str:
    """A header value that came with undecodable 8-bit bytes (kept as surrogates) as plain text.

    Each such byte becomes its Latin-1 character: the token is stable, and a hasher that encodes
    to UTF-8 accepts it."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("latin-1")


def _address_tokens(key: str, value: str) -> Iterable[str]:
    lowered = value.lower()
    spans = _address_spans(lowered)
    addresses = [lowered[start:end] for start, end in spans]
    for address in addresses[:5]:
        local, _, domain = address.rpartition("@")
        yield f"{key}:addr:{address}"
        yield f"{key}:domain:{domain}"
        if local.isdigit() or any(c.isdigit() for c in local[:1]):
            yield f"{key}:local:digit"
    if not addresses:
        yield f"{key}:none"
    # The text around the addresses (display names), as `_ADDRESS.sub(" ", lowered)` leaves it.
    ends = [0] + [end for _, end in spans]
    starts = [start for start, _ in spans] + [len(lowered)]
    name = " ".join(lowered[a:b] for a, b in zip(ends, starts, strict=True))
    for w in _WORD.findall(name)[:10]:
        yield f"{key}:name:{w}"


def _address_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each address in `text`, as `_ADDRESS.finditer` finds them, in linear time.

    The regular expression alone is quadratic on a long run of address characters without an "@"
    (34 KB of "a." in a To: took 4 s): `re` tries it from every start position.  Here the search is
    anchored on each "@" instead, the local part read backwards and the domain forwards from it,
    each at most a few hundred characters, so every character is looked at a bounded number of
    times."""
    spans: list[tuple[int, int]] = []
    floor = 0  # a match never overlaps the one before it
    at = text.find("@")
    while at >= 0:
        start = at
        while start > max(floor, at - MAX_LOCAL_PART) and _is_local_char(text[start - 1]):
            start -= 1
        m = _DOMAIN.match(text, at + 1, at + 1 + MAX_DOMAIN) if start < at else None
        if m:
            spans.append((start, m.end()))
            floor = m.end()
        at = text.find("@", max(at + 1, floor))
    return spans


def _is_local_char(c: str) -> bool:
    """A character of `_ADDRESS`'s local part: a word character or one of .+-=&'/"""
    return c.isalnum() or c in "_.+-=&'/"


def _received_tokens(value: str) -> Iterable[str]:
    for net in _networks(value):
        yield "rcvd:net:" + net
    for host in _HOSTNAME.findall(value)[:6]:
        yield "rcvd:host:" + host
        yield "rcvd:dom:" + registered_domain(host)
    if "with esmtp" in value:
        yield "rcvd:esmtp"
    # The line's words too, as bogofilter and SpamBayes (mine_received_headers) read it: "unknown",
    # "helo", the relay software, "with smtp" against "esmtpa"...  Only words without digits: the
    # queue ids, times and numbered hosts were one new token per line (new hash work, and noise).
    for word in _RECEIVED_WORD.findall(value, 0, MAX_RECEIVED_CHARS):
        if word not in _DATE_WORDS:
            yield "rcvd:w:" + word


def _networks(value: str) -> Iterable[str]:
    """The /24 ("a.b.c") of each IPv4 address in `value` that starts at a word boundary."""
    pos = 0
    while m := _IPV4_AHEAD.search(value, pos):
        start = m.start()
        if start and (value[start - 1].isalnum() or value[start - 1] == "_"):
            pos = start + 1  # inside a word or a longer number: maybe an address further on
            continue
        yield ".".join(m.groups())
        pos = m.end()


@functools.lru_cache(maxsize=20_000)  # the same relays and link hosts again and again
def registered_domain(host: str) -> str:
    """The domain a name is registered under, by a two-rule guess (no public-suffix list on the hot path)."""
    labels = host.rstrip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def _body(msg: Message) -> tuple[list[str], list[str]]:
    """The body's named tokens, and its words in order for the pairs."""
    text = msg.readable[:MAX_TEXT_CHARS].lower()
    names: list[str] = []
    ascii_only = text.isascii()
    if not ascii_only and _HAS_CJK.search(text):
        for run in _CJK_RUN.findall(text):
            names += ["cjk:" + run[i : i + 2] for i in range(len(run) - 1)]
        text = _CJK_RUN.sub(" ", text)
    words = (_WORD_ASCII if ascii_only else _WORD).findall(text)
    if words and max(map(len, words)) > MAX_WORD:
        # a long word (base64, a hash) becomes a skip: token and breaks the chain of pairs.  The
        # lengths are compared in numpy: a Python step per word cost more than the rest of _body.
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        for i in np.flatnonzero(lengths > MAX_WORD).tolist():
            names.append(f"skip:{words[i][0]} {len(words[i]) // 10 * 10}")
            words[i] = ""
    names += _url_tokens(msg.urls)
    if msg.html:
        names += _html_tokens(msg)
    names += _part_tokens(msg)
    return names, words


def _url_tokens(urls: list[str]) -> Iterable[str]:
    for url in urls[:MAX_URLS]:
        m = _URL_PARTS.match(url)
        if not m:
            continue
        host = m.group(1).lower().rpartition("@")[2]
        if _IPV4.fullmatch(host):
            yield "url:ip"
            yield "url:net:" + host.rpartition(".")[0]
        elif host:
            yield "url:host:" + host
            yield "url:dom:" + registered_domain(host)
        if m.group(2):
            yield "url:port:" + m.group(2)
        for w in _PATH_WORD.findall(m.group(3).lower())[:4]:
            yield "url:path:" + w


def _html_tokens(msg: Message) -> Iterable[str]:
    """Which tags the HTML uses, and text hidden by style.  Attribute values (colours, sizes, widths)
    were tried as tokens too: one token per distinct value, mostly unique to one sender's template,
    and (1-ROCA) on split (a) improved from 0.037 to 0.027 when they were dropped."""
    scan = msg.html_scan
    for tag in set(scan.tags):
        yield "tag:" + tag
    if scan.hidden:
        yield "attr:style:hidden"


def _part_tokens(msg: Message) -> Iterable[str]:
    # The MIME leaves' types and file names.  Not `Message.parts`: it decodes every payload for
    # its size, which says nothing the type and the name do not.
    leaves = msg.leaves
    for leaf in leaves[:20]:
        yield "part:ct:" + leaf.content_type
        if leaf.filename:
            yield "part:ext:" + leaf.filename.rpartition(".")[2].lower()[:10]
    yield f"part:count:{min(len(leaves), 10)}"
