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


def _attachment(subject: str, filename: str, ctype: str, payload: bytes) -> bytes:
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
    return _attachment("eicar base64", "eicar.com", "application/octet-stream", EICAR)


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
    return _attachment("eicar zip", "eicar.zip", "application/zip", data)
