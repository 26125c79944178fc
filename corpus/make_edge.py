"""Write the generated edge cases of corpus/edge/ (see corpus/README.md).

Most of corpus/edge/ is written by hand.  The cases here cannot be: their bytes are not text
(a body in UTF-16) or they are too large to commit (an attachment of a megabyte).  As in
make_hostile.py, the small ones are committed and the large ones are made on demand
(tests/test_own_corpus.py calls `cases()`), so every byte of them is reproducible.

    python corpus/make_edge.py            # rewrite the committed small files
    python corpus/make_edge.py --all DIR  # every case, the large one too, into DIR
"""

from __future__ import annotations

import argparse
import base64
import hashlib
from pathlib import Path

HERE = Path(__file__).resolve().parent / "edge"
COMMIT_LIMIT = 40_000  # bytes: larger cases are generated at test time, not committed


def headers(subject: str, message_id: str, *extra: str) -> bytes:
    lines = [
        "Return-Path: <ingrid.holm@example.com>",
        "Received: from smtp.example.com (smtp.example.com [203.0.113.5])",
        "\tby mx.example.net (Postfix) with ESMTPS id 4QkCDf0Kqwz1nR",
        "\tfor <dana@example.net>; Thu, 03 Dec 2026 13:20:05 +0000 (UTC)",
        "From: Ingrid Holm <ingrid.holm@example.com>",
        "To: Dana Whitfield <dana@example.net>",
        f"Subject: {subject}",
        "Date: Thu, 03 Dec 2026 14:20:01 +0100",
        f"Message-ID: <{message_id}@example.com>",
        "MIME-Version: 1.0",
        *extra,
    ]
    return "".join(line + "\r\n" for line in lines).encode("ascii")


UTF16_TEXT = (
    "Hi Dana,\r\n\r\n"
    "the export from the old HR tool writes its mails in UTF-16, as you can see.\r\n"
    "Names with accents survive it: Jürgen, Hélène, Łukasz, Ørjan.\r\n\r\n"
    "Ingrid\r\n"
)


def utf16_base64() -> bytes:
    """A text part in UTF-16 (with its byte-order mark), base64-encoded as a mail program sends it."""
    encoded = base64.encodebytes(UTF16_TEXT.encode("utf-16")).replace(b"\n", b"\r\n")
    return (
        headers(
            "Export from the HR tool (UTF-16)",
            "utf16-base64-20261203",
            'Content-Type: text/plain; charset="utf-16"',
            "Content-Transfer-Encoding: base64",
        )
        + b"\r\n"
        + encoded
    )


def utf16_binary() -> bytes:
    """The same text as raw UTF-16 bytes in the body (Content-Transfer-Encoding: binary).

    Its NUL bytes and the 0x0A of a UTF-16 newline sitting next to a NUL make line-based code
    see lines that are not there; the content is still the same short, harmless text.
    """
    return (
        headers(
            "Export from the HR tool (UTF-16, binary)",
            "utf16-binary-20261203",
            'Content-Type: text/plain; charset="utf-16le"',
            "Content-Transfer-Encoding: binary",
        )
        + b"\r\n"
        + UTF16_TEXT.encode("utf-16-le")
    )


def pseudo_random(size: int, seed: bytes) -> bytes:
    """`size` reproducible bytes that do not compress (like the tarball they stand for)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def big_attachment(size: int = 1_048_576) -> bytes:
    """A short note with a 1 MiB attachment (1.4 MB base64): the scan must stay quick and quiet."""
    payload = base64.encodebytes(pseudo_random(size, b"filterd corpus edge")).replace(b"\n", b"\r\n")
    boundary = b"=_big_attachment_7f3e"
    return (
        headers(
            "Backup of the team wiki, 1 December",
            "big-attachment-20261203",
            f'Content-Type: multipart/mixed; boundary="{boundary.decode()}"',
        )
        + b"\r\n--"
        + boundary
        + b"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + b"Hi Dana,\r\n\r\nhere is the wiki backup from Tuesday, as discussed.\r\n\r\nIngrid\r\n"
        + b"\r\n--"
        + boundary
        + b'\r\nContent-Type: application/gzip; name="wiki-2026-12-01.tar.gz"\r\n'
        + b'Content-Disposition: attachment; filename="wiki-2026-12-01.tar.gz"\r\n'
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + payload
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )


def cases() -> dict[str, bytes]:
    """Every generated edge case by name (the file stem), large ones included."""
    return {
        "utf16-base64": utf16_base64(),
        "utf16-binary": utf16_binary(),
        "big-attachment-1mb": big_attachment(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--all", metavar="DIR", type=Path, help="write every case, large ones too, into DIR")
    args = parser.parse_args()
    target: Path = args.all or HERE
    target.mkdir(parents=True, exist_ok=True)
    for name, raw in cases().items():
        if args.all or len(raw) <= COMMIT_LIMIT:
            (target / f"{name}.eml").write_bytes(raw)
            print(f"{name}.eml\t{len(raw)}")


if __name__ == "__main__":
    main()
