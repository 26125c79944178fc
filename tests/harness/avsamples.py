"""Test messages for the antivirus tests, built at run time.

The EICAR string is assembled from two halves so that no file in the repository is itself a
"virus" to a scanner on a developer's machine.  Messages use CRLF line endings, as Postfix hands
them to a milter and as SMTP carries them.
"""

from __future__ import annotations

import base64
import io
import zipfile

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
assert len(EICAR) == 68


def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def headers(subject: str, to: str = "rcpt@example.test", msgid: str = "<1@example.test>") -> str:
    return (
        "From: Sender <sender@example.test>\n"
        f"To: {to}\n"
        f"Subject: {subject}\n"
        f"Message-ID: {msgid}\n"
        "Date: Mon, 01 Jan 2024 00:00:00 +0000\n"
    )


def clean(subject: str = "hello", to: str = "rcpt@example.test", msgid: str = "<1@example.test>") -> bytes:
    return _crlf(headers(subject, to, msgid) + "\nJust a friendly note, nothing attached.\n")


def eicar_plain() -> bytes:
    """EICAR as the text of a plain message, followed by a newline (as a person would paste it)."""
    return _crlf(headers("eicar plain") + "\n") + EICAR + b"\r\n"


def attachment(subject: str, filename: str, ctype: str, payload: bytes) -> bytes:
    encoded = base64.encodebytes(payload).decode()
    return _crlf(
        headers(subject) + "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b0undary"\n'
        "\n"
        "--b0undary\n"
        "Content-Type: text/plain\n"
        "\n"
        "See the attachment.\n"
        "--b0undary\n"
        f"Content-Type: {ctype}\n"
        "Content-Transfer-Encoding: base64\n"
        f'Content-Disposition: attachment; filename="{filename}"\n'
        "\n" + encoded + "--b0undary--\n"
    )


def eicar_base64() -> bytes:
    """EICAR as a base64 attachment: the raw message never contains the string itself."""
    return attachment("eicar base64", "eicar.com", "application/octet-stream", EICAR)


def eicar_zip() -> bytes:
    """EICAR deflated inside a zip, base64-encoded: clamd must decode MIME, then unpack the archive."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        # a fixed date: writestr(name) would stamp the current time, and two calls a second apart
        # would give two different messages
        info = zipfile.ZipInfo("eicar.com", date_time=(2024, 1, 1, 0, 0, 0))
        z.writestr(info, EICAR, compress_type=zipfile.ZIP_DEFLATED)
    data = buf.getvalue()
    assert EICAR not in data
    return attachment("eicar zip", "eicar.zip", "application/zip", data)


# -- samples past clamd's limits (MaxRecursion, MaxFileSize, MaxScanSize) ------------------------
# Each hides EICAR where a clamd running with its default limits stops looking, and without
# AlertExceedsMax clamd then answers OK for it.  Generated here, cheaply: the big ones are zeros
# deflated as they are written, a few KiB per MiB.


def zip_of(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def nested_zip(depth: int, inner: bytes = EICAR, inner_name: str = "eicar.com") -> bytes:
    """`inner` inside `depth` zips, each the only member of the next."""
    data, name = inner, inner_name
    for level in range(depth):
        data, name = zip_of([(name, data)]), f"level{depth - level}.zip"
    return data


def eicar_nested_zip(depth: int = 18) -> bytes:
    """EICAR inside `depth` nested zips, the outer one attached to the message."""
    return attachment(f"eicar in {depth} zips", "nested.zip", "application/zip", nested_zip(depth))


def eicar_nested_multipart(depth: int = 19) -> bytes:
    """EICAR as a base64 attachment inside `depth` nested multipart/mixed containers (the root
    counted), so its MIME depth is `depth`."""
    encoded = base64.encodebytes(EICAR).decode()
    inner = (
        "Content-Type: application/octet-stream\n"
        "Content-Transfer-Encoding: base64\n"
        'Content-Disposition: attachment; filename="eicar.com"\n'
        "\n" + encoded
    )
    for level in range(depth, 1, -1):
        b = f"=_level{level:03d}_"  # no boundary is a prefix of another
        inner = f'Content-Type: multipart/mixed; boundary="{b}"\n\n--{b}\n' + inner + f"--{b}--\n"
    return _crlf(
        headers(f"eicar in {depth} multiparts") + "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="=_level001_"\n'
        "\n"
        "--=_level001_\n"
        "Content-Type: text/plain\n"
        "\n"
        "See the attachment.\n"
        "--=_level001_\n" + inner + "--=_level001_--\n"
    )


def zip_with_big_member(big_size: int, eicar_in_big: bool = False) -> bytes:
    """A zip whose first member is `big_size` zeros (deflated while written, never held whole) and
    whose second is EICAR; with `eicar_in_big` EICAR is instead the tail of the big member."""
    buf = io.BytesIO()
    zeros = bytes(1024 * 1024)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo("big.bin", date_time=(2024, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=big_size > 2**31) as f:
            left = big_size
            while left > 0:
                f.write(zeros[: min(left, len(zeros))])
                left -= len(zeros)
            if eicar_in_big:
                f.write(EICAR)
        if not eicar_in_big:
            z.writestr(
                zipfile.ZipInfo("eicar.com", date_time=(2024, 1, 1, 0, 0, 0)), EICAR, zipfile.ZIP_DEFLATED
            )
    return buf.getvalue()


def eicar_behind_big_member(big_size: int = 25 * 1024 * 1024 + 1, eicar_in_big: bool = False) -> bytes:
    """A zip attachment with a member of `big_size` bytes and EICAR (after it, or at its end)."""
    data = zip_with_big_member(big_size, eicar_in_big)
    return attachment(f"eicar behind {big_size} bytes", "big.zip", "application/zip", data)
