"""Write the hostile test messages of corpus/hostile/ (see corpus/README.md).

Each case is a message built to break a filter: a malformed encoded word, deep MIME nesting,
markup that makes a naive scanner quadratic, a header thousands of bytes long.  The small ones are
committed in corpus/hostile/; the large ones are made here on demand (tests/test_hostile.py calls
`cases()` directly), so the repository stays small and every byte of them is reproducible.

    python corpus/make_hostile.py            # rewrite the committed small files
    python corpus/make_hostile.py --all DIR  # every case, large ones too, into DIR
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent / "hostile"
COMMIT_LIMIT = 40_000  # bytes: larger cases are generated at test time, not committed

# A short spam of our own words, so every case has content for the rules and the classifier.
SPAM_TEXT = (
    "Dear friend, you have been selected to receive a FREE gift card worth $1000!\r\n"
    "Act now: this limited time offer expires today. Click here to claim your cash prize,\r\n"
    "no credit check, 100% guaranteed. Make money fast from home, work from home and earn $5000\r\n"
    "a week. Lose weight fast with our miracle pills. Visit http://free-prize.example/claim now.\r\n"
    "To be removed from our mailing list reply with REMOVE in the subject.\r\n"
)


def head(
    *extra: bytes, subject: bytes = b"You have won a FREE gift card", sender: bytes | None = None
) -> bytes:
    """A plain header block (without the blank line) with `extra` header lines added."""
    lines = [
        b"From: " + (sender if sender is not None else b"Prize Team <prize@free-prize.example>"),
        b"To: victim@example.net",
        b"Subject: " + subject,
        b"Date: Thu, 03 Dec 2026 10:00:00 +0000",
        b"Message-ID: <hostile@free-prize.example>",
        b"MIME-Version: 1.0",
        *extra,
    ]
    return b"".join(line + b"\r\n" for line in lines)


def plain(headers: bytes, body: str = SPAM_TEXT) -> bytes:
    return headers + b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + body.encode()


def spam_part(body: str = SPAM_TEXT) -> bytes:
    return b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + body.encode()


# -- wrappers: any message's content moved behind hostile MIME structure ------------------------


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """(the header lines that are not Content-*/MIME-Version, the entity: Content-* headers + body)."""
    sep = raw.find(b"\r\n\r\n")
    eol = b"\r\n"
    if sep < 0 or 0 <= raw.find(b"\n\n") < sep:
        sep, eol = raw.find(b"\n\n"), b"\n"
    header_block, body = raw[:sep], raw[sep + 2 * len(eol) :]
    lines: list[bytes] = []
    for line in header_block.split(eol):
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += eol + line
        else:
            lines.append(line)
    outer = [ln for ln in lines if not ln.lower().startswith((b"content-", b"mime-version"))]
    inner = [ln for ln in lines if ln.lower().startswith(b"content-")]
    entity = b"".join(ln + b"\r\n" for ln in inner) + b"\r\n" + body
    return b"".join(ln + b"\r\n" for ln in outer), entity


def wrap_after_empty_parts(raw: bytes, empty: int = 200) -> bytes:
    """`raw`'s content as the last part of a multipart/mixed, after `empty` empty text parts."""
    outer, entity = split_message(raw)
    b = b"EMPTY-PARTS-BOUNDARY"
    parts = b"".join(b"--" + b + b"\r\nContent-Type: text/plain\r\n\r\n\r\n" for _ in range(empty))
    return (
        outer
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="'
        + b
        + b'"\r\n\r\n'
        + parts
        + b"--"
        + b
        + b"\r\n"
        + entity
        + b"\r\n--"
        + b
        + b"--\r\n"
    )


def wrap_nested(raw: bytes, depth: int) -> bytes:
    """`raw`'s content at the bottom of `depth` nested multipart/mixed containers (no boundary is a
    prefix of another: some parsers match boundaries by prefix, which would read another tree)."""
    outer, entity = split_message(raw)
    opens = b"".join(
        b'Content-Type: multipart/mixed; boundary="n%dz"\r\n\r\n--n%dz\r\n' % (i, i) for i in range(depth)
    )
    closes = b"".join(b"\r\n--n%dz--" % i for i in reversed(range(depth)))
    return outer + b"MIME-Version: 1.0\r\n" + opens + entity + closes + b"\r\n"


# -- the cases -----------------------------------------------------------------------------------


def _multipart(headers: bytes, *parts: bytes, boundary: bytes = b"B") -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return (
        headers
        + b'Content-Type: multipart/mixed; boundary="'
        + boundary
        + b'"\r\n\r\n'
        + body
        + b"--"
        + boundary
        + b"--\r\n"
    )


def _html(headers: bytes, markup: bytes) -> bytes:
    return headers + b"Content-Type: text/html; charset=us-ascii\r\n\r\n" + markup


def _arc_sets(n: int) -> bytes:
    lines = []
    for i in range(1, n + 1):
        lines += [
            b"ARC-Seal: i=%d; a=rsa-sha256; cv=pass; d=relay.example; s=arc; t=1; b=AAAA" % i,
            b"ARC-Message-Signature: i=%d; a=rsa-sha256; c=relaxed/relaxed; d=relay.example; s=arc; "
            b"h=from:to:subject; bh=AAAA; b=AAAA" % i,
            b"ARC-Authentication-Results: i=%d; relay.example; spf=pass smtp.mailfrom=example.com" % i,
        ]
    return b"\r\n".join(lines)


def _truncated_base64() -> bytes:
    data = base64.encodebytes(SPAM_TEXT.encode()).replace(b"\n", b"\r\n")
    part = b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    return _multipart(head(), part + data[: len(data) - 7])


CASES: dict[str, Callable[[], bytes]] = {
    "subject-bad-base64-word": lambda: plain(head(subject=b"=?utf-8?b?A?= FREE gift card")),
    "from-bad-base64-word": lambda: plain(head(sender=b"=?utf-8?b?A?= <prize@free-prize.example>")),
    "subject-unknown-charset": lambda: plain(head(subject=b"=?x-no-such-charset?q?FREE_gift_card?=")),
    "subject-8bit": lambda: plain(head(subject=b"Gr\xfc\xdfe \xff\xfe =?utf-8?q?caf=C3?= \xe9")),
    "content-disposition-8bit": lambda: _multipart(
        head(),
        spam_part(),
        b'Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="f\xe9\xff.txt"'
        b"\r\n\r\nhello",
    ),
    "empty-parts-200": lambda: wrap_after_empty_parts(plain(head()), 200),
    "nested-250": lambda: wrap_nested(plain(head()), 250),
    "nested-1000": lambda: wrap_nested(plain(head()), 1000),
    "nested-10000": lambda: wrap_nested(plain(head()), 10000),
    "html-80k-comment-openers": lambda: _html(head(), b"<p>FREE gift card</p>" + b"<!--" * 20_000),
    "html-80k-open-hrefs": lambda: _html(head(), b"<p>FREE gift card</p>" + b"<a href=" * 10_000),
    "html-unclosed-quotes": lambda: _html(
        head(), b"<p>FREE gift card</p>" + b"<a href=\"http://x.example/ title='" * 2_000
    ),
    "html-unclosed-script": lambda: _html(head(), b"<p>FREE</p>" + b"<script>" * 10_000),
    "to-34k": lambda: plain(
        head().replace(
            b"To: victim@example.net",
            b"To: " + b", ".join(b"User %d <user%d@example.net>" % (i, i) for i in range(1_300)),
        )
    ),
    "dkim-signature-bad-b": lambda: plain(
        head(
            b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=free-prize.example; s=sel;"
            b" h=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=A==="
        )
    ),
    "from-1000-groups": lambda: plain(head(sender=b"prize@free-prize.example" + b", g:g:" * 1000)),
    "from-two-domains": lambda: plain(head(sender=b"a@free-prize.example, b@bank.example")),
    "headers-10000": lambda: plain(head(*(b"X-Filler-%d: value %d" % (i, i) for i in range(10_000)))),
    "from-8bit-domain": lambda: plain(head(sender=b"Prize <prize@free-pr\xffize.example>")),
    "arc-200-sets": lambda: plain(head(_arc_sets(200))),
    "truncated-base64": _truncated_base64,
    "huge-boundary-line": lambda: _multipart(head(), spam_part(), spam_part(), boundary=b"b" * 20_000),
    "nul-bytes": lambda: plain(head(b"X-Nul: a\x00b"), SPAM_TEXT.replace("gift", "gi\x00ft")),
    "bare-cr-line-ends": lambda: plain(head(), SPAM_TEXT).replace(b"\r\n", b"\r"),
}


def cases() -> dict[str, bytes]:
    """Every hostile message by name."""
    return {name: make() for name, make in CASES.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--all", action="store_true", help="write the large cases too")
    parser.add_argument("dir", nargs="?", type=Path, default=HERE)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    for name, raw in cases().items():
        if args.all or len(raw) <= COMMIT_LIMIT:
            (args.dir / f"{name}.eml").write_bytes(raw)


if __name__ == "__main__":
    main()
