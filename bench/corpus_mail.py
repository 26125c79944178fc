"""The bench's mail: corpus messages as they are, each with its own envelope sender, and the DNS
records that make their senders' SPF, DKIM and DMARC checks real.

Every message keeps its own headers and MIME structure.  Its envelope sender is the address of its
From header (or, when that is not a usable address, one of a set of bench domains), and the local
DNS server publishes for each sending domain an SPF record that passes for 127.0.0.1 and a DMARC
record (p=reject).  With `sign=True` a DKIM-Signature (RSA 2048) and a second one (Ed25519) for
the From domain are put on top of the original headers, and the keys are published under that
domain, so that SPF, two DKIM verifications and DMARC all run and pass; without it the corpus'
own signatures (if any) are checked against keys that are not published.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from filterd.auth.keys import generate, parse_private_key, split_txt, txt_value

_ADDRESS = re.compile(r"[A-Za-z0-9._%+=-]{1,64}@([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}")
_FROM = re.compile(rb"^From:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.MULTILINE | re.IGNORECASE)
FALLBACK_DOMAINS = tuple(f"sender{i}.bench.test" for i in range(20))
RECIPIENTS = tuple(f"user{i}@rcpt.bench.test" for i in range(50))
SELECTORS = (("benchrsa", "rsa", b"rsa-sha256"), ("benched", "ed25519", b"ed25519-sha256"))


@dataclass(frozen=True)
class Mail:
    sender: str  # MAIL FROM
    rcpt: str  # RCPT TO
    data: bytes  # the message, CRLF line ends
    label: str  # "ham" or "spam"


def corpus_rows(corpus: Path) -> list[tuple[str, str]]:
    """(path, label) of every corpus message, from its manifest."""
    manifest = corpus / "manifest.csv"
    if not manifest.exists():
        raise SystemExit(
            f"corpus not found at {corpus}: set FILTERD_CORPUS to the shared/corpus folder "
            "(the SpamAssassin public corpus, https://spamassassin.apache.org/old/publiccorpus/)"
        )
    rows = [line.split(",", 2)[:2] for line in manifest.read_text().splitlines()[1:]]
    return [(path, label) for path, label in rows]


def split_sample(corpus: Path, count: int, extra: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """`count` messages half ham and half spam, chosen by a hash of the path (stable), and `extra`
    others of each class that are not in the sample (warm-up traffic, the peer's Bayes training)."""
    by_label: dict[str, list[str]] = {"ham": [], "spam": []}
    for path, label in corpus_rows(corpus):
        by_label.setdefault(label, []).append(path)
    chosen: list[tuple[str, str]] = []
    others: list[tuple[str, str]] = []
    for label in ("ham", "spam"):
        paths = sorted(by_label[label], key=lambda p: hashlib.sha256(p.encode()).hexdigest())
        take = count // 2 if label == "ham" else count - count // 2
        chosen += [(p, label) for p in paths[:take]]
        others += [(p, label) for p in paths[take : take + extra]]
    chosen.sort(key=lambda row: hashlib.sha256(row[0].encode()).hexdigest())
    return chosen, others


def crlf(raw: bytes) -> bytes:
    """The message as it goes over SMTP: CRLF line ends, without the corpus file's mbox "From "
    line (sent as is, it would end the header block at once and make every header body text)."""
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def from_address(raw: bytes) -> str | None:
    """The address of the first From header, when it is a plain address a DNS name can hold."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    match = _FROM.search(head)
    if match is None:
        return None
    value = match.group(1).decode("latin-1").replace("\r\n", "")
    _, address = email.utils.parseaddr(value)
    address = address.strip().lower()
    return address if _ADDRESS.fullmatch(address) else None


class SenderDomains:
    """The sending domains of the bench's mail and their records; one RSA and one Ed25519 key
    serve every domain (each publishes them), since generating a key per domain would cost more
    than the run."""

    def __init__(self) -> None:
        self.domains: set[str] = set()
        self.keys: list[tuple[str, bytes, bytes, str]] = []  # selector, private key, algorithm, TXT
        for selector, key_type, algorithm in SELECTORS:
            pem, public = generate(key_type, 2048)  # type: ignore[arg-type]
            _, _, private, _ = parse_private_key(pem, selector)
            txt = " ".join(f'"{s}"' for s in split_txt(txt_value(key_type, public)))  # type: ignore[arg-type]
            self.keys.append((selector, private, algorithm, txt))

    def zone(self) -> str:
        """Every domain's SPF (pass for 127.0.0.1), DMARC (p=reject) and DKIM key records."""
        lines = []
        for name in sorted(self.domains):
            lines.append(f'{name}. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"')
            lines.append(f'_dmarc.{name}. 300 IN TXT "v=DMARC1; p=reject"')
            for selector, _, _, txt in self.keys:
                lines.append(f"{selector}._domainkey.{name}. 300 IN TXT {txt}")
        return "\n".join(lines) + "\n"

    def sign(self, raw: bytes, domain: str) -> bytes | None:
        """`raw` with two DKIM-Signatures of `domain` on top (None when dkimpy cannot sign it)."""
        import dkim

        signatures = b""
        for selector, private, algorithm, _ in self.keys:
            try:
                signatures += dkim.DKIM(raw).sign(
                    selector.encode(),
                    domain.encode(),
                    private,
                    signature_algorithm=algorithm,
                    canonicalize=(b"relaxed", b"relaxed"),
                )
            except Exception:  # a corpus message dkimpy cannot parse: sent unsigned, and counted
                return None
        return signatures + raw


def load(
    corpus: Path, rows: list[tuple[str, str]], domains: SenderDomains, sign: bool
) -> tuple[list[Mail], int]:
    """The messages of `rows` with their envelopes (and signatures); also how many could not be signed."""
    mails: list[Mail] = []
    unsigned = 0
    for n, (path, label) in enumerate(rows):
        raw = crlf((corpus / path).read_bytes())
        address = from_address(raw)
        if address is None:  # no usable From: an envelope sender at one of the bench's domains
            address = f"sender{n}@{FALLBACK_DOMAINS[n % len(FALLBACK_DOMAINS)]}"
        domain = address.rsplit("@", 1)[1]
        domains.domains.add(domain)
        if sign:
            signed = domains.sign(raw, domain)
            if signed is None:
                unsigned += 1
            else:
                raw = signed
        mails.append(Mail(address, RECIPIENTS[n % len(RECIPIENTS)], raw, label))
    return mails, unsigned
