"""Named helper tests: the few signals a regex cannot express.

A rule of kind ``helper`` names one of these with ``test = "..."`` and sets its parameters as
ordinary keys of the rule.  Each helper returns None (no hit) or a short text saying what it saw,
which ``filterctl rules test`` prints.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from filterd.auth.dmarc import org_domain
from filterd.rules.targets import Targets, normalise_url

# A web address shown as link text: "https://bank.com/login", "www.bank.com".  A bare "News.com"
# is not taken: newsletters name their site that way and link through a click counter on another
# domain (33 of 2075 ham in the SpamAssassin corpus did, against 8 spam).
_SHOWN_DOMAIN = re.compile(
    r"(?i)^\s*(?:https?://|(?=www\.))((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24})(?![a-z0-9.-])"
)


@dataclass(frozen=True)
class Param:
    kind: type  # int or float
    default: float
    low: float
    high: float


@dataclass(frozen=True)
class Helper:
    function: Callable[[Targets, Mapping[str, Any]], str | None]
    params: Mapping[str, Param]
    help: str


def image_text_ratio(t: Targets, p: Mapping[str, Any]) -> str | None:
    """Hits when the message shows at least `min_images` images and at most `max_text_chars`
    characters of text: the picture carries the message.

    Not characters *per image*: HTML newsletters lay out with dozens of 1x1 spacer images, and a
    per-image ratio flagged 50 of 2075 ham in the SpamAssassin corpus (86 spam); a cap on the
    text itself (500) flags 2 ham and 55 spam."""
    images = t.image_count
    if images < p["min_images"]:
        return None
    chars = len(t.message.text)
    if chars > p["max_text_chars"]:
        return None
    return f"{images} image(s), {chars} characters of text"


def mixed_script_words(t: Targets, p: Mapping[str, Any]) -> str | None:
    """Hits when at least `min_words` words of the text mix Latin letters with Cyrillic or Greek
    look-alikes ("Ѵіаgrа"): no language writes a word so, a filter evader does
    (filterd/confusables.py; the other rules and the classifier read those words folded)."""
    n = t.message.mixed_script_words
    return f"{n} words mix Latin with Cyrillic or Greek letters" if n >= p["min_words"] else None


def subject_caps(t: Targets, p: Mapping[str, Any]) -> str | None:
    """Hits when at least `min_ratio` of the letters of the Subject are capitals (and it has at
    least `min_letters` letters; scripts without case, such as Chinese, are not counted)."""
    value = t.message.header("Subject")
    if value is None:
        return None
    subject = t.decode(value)
    upper = sum(1 for c in subject if c.isupper())
    lower = sum(1 for c in subject if c.islower())
    letters = upper + lower
    if letters < p["min_letters"] or upper < p["min_ratio"] * letters:
        return None
    return f"{upper} of {letters} letters are capitals"


def link_domain_mismatch(t: Targets, p: Mapping[str, Any]) -> str | None:
    """Hits when the text of a link shows one domain and its href goes to another
    (``<a href="http://evil.example/">www.mybank.com</a>``), the classic phishing disguise."""
    for link in t.links:
        shown = _SHOWN_DOMAIN.match(link.text)
        if shown is None or not link.href.lower().startswith(("http://", "https://")):
            continue
        target = normalise_url(link.href)
        if target is None:
            continue
        # Organisational domains from the Public Suffix List (the one DMARC uses): a link from
        # www.bank.co.uk to secure.bank.co.uk is one site.
        shown_domain = org_domain(shown.group(1))
        target_domain = org_domain(target.host)
        # Same name under another top-level domain (example.com / example.net): one owner.
        if shown_domain.split(".")[0] != target_domain.split(".")[0]:
            return f"link shows {shown.group(1)!r} but goes to {target.host}"
    return None


def base64_plain_text(t: Targets, p: Mapping[str, Any]) -> str | None:
    """Hits when a text/plain part is base64-encoded although it is plain ASCII: real mail
    programs use base64 only for text that needs it; bulk mailers use it to hide words."""
    raw = t.message.raw
    if b"ase64" not in raw and b"ASE64" not in raw:  # no base64 part at all: skip the MIME walk
        return None
    for leaf in t.message.leaves[:50]:
        if leaf.content_type != "text/plain" or leaf.filename or leaf.transfer_encoding != "base64":
            continue
        data = leaf.payload()
        if len(data) >= p["min_bytes"] and data.isascii():
            return f"text/plain part of {len(data)} ASCII bytes sent as base64"
    return None


def _addresses(t: Targets, header: str) -> set[str]:
    value = t.header(f"{header}:addr")
    return (
        {a.strip().lower() for a in value.decode("utf-8", "replace").split("\n") if a.strip()}
        if value
        else set()
    )


_ADDRESS_IN_NAME = re.compile(r"(?i)([a-z0-9._%+-]+)@([a-z0-9-]+(?:\.[a-z0-9-]+)+)")


def reply_to_elsewhere(t: Targets, p: Mapping[str, Any]) -> str | None:
    """Hits when Reply-To names an address the From header does not: replies go to someone
    else.  A sender whose Reply-To is their own address is not (13 of 1,213 CSDMC ham, list
    posters with a free-mail From, set Reply-To to it)."""
    replies = _addresses(t, "Reply-To")
    others = sorted(replies - _addresses(t, "From"))
    return f"Reply-To {others[0]} is not the sender" if others else None


def from_name_other_address(t: Targets, p: Mapping[str, Any]) -> str | None:
    """Hits when the From display name holds an address other than the sender's (compared by
    the part before @: "me@gmail.com" <me@googlemail.com> is one person)."""
    value = t.header("From:name")
    if not value:
        return None
    locals_ = {a.partition("@")[0] for a in _addresses(t, "From")}
    for m in _ADDRESS_IN_NAME.finditer(value.decode("utf-8", "replace")):
        if m.group(1).lower() not in locals_:
            return f"display name shows {m.group(0)}"
    return None


HELPERS: Mapping[str, Helper] = {
    "image_text_ratio": Helper(
        image_text_ratio,
        {
            "min_images": Param(int, 1, 1, 1000),
            "max_text_chars": Param(int, 500, 0, 1_000_000),
        },
        "images with little text",
    ),
    "mixed_script_words": Helper(
        mixed_script_words,
        {"min_words": Param(int, 3, 1, 100_000)},
        "words that mix Latin with Cyrillic or Greek look-alike letters",
    ),
    "subject_caps": Helper(
        subject_caps,
        {"min_letters": Param(int, 12, 1, 1000), "min_ratio": Param(float, 0.7, 0.0, 1.0)},
        "share of capitals among the Subject's letters",
    ),
    "link_domain_mismatch": Helper(
        link_domain_mismatch, {}, "link text shows one domain, the href goes to another"
    ),
    "reply_to_elsewhere": Helper(reply_to_elsewhere, {}, "Reply-To names someone other than From"),
    "from_name_other_address": Helper(
        from_name_other_address, {}, "the From display name holds another address"
    ),
    "base64_plain_text": Helper(
        base64_plain_text,
        {"min_bytes": Param(int, 1, 0, 1e9)},
        "ASCII text/plain sent as base64",
    ),
}
