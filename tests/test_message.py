"""The parsed message: headers, text extraction, URLs, and malformed input that must not raise."""

from __future__ import annotations

from filterd.message import MAX_TEXT_CHARS, Message, decode_words


def test_headers_unfolded_in_order_and_case_insensitive() -> None:
    m = Message(b"Subject: one\r\n two\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody")
    assert m.header("subject") == "one two"
    assert m.header_values("X-A") == ["1", "2"]
    assert m.header("Missing") is None


def test_rfc2047_words_decoded_even_with_bad_charsets() -> None:
    assert decode_words("=?utf-8?q?J=C3=BCrgen?=") == "Jürgen"
    assert decode_words("=?no-such-charset?q?abc?=") == "abc"
    assert decode_words("plain") == "plain"


def test_text_from_plain_and_html_parts_with_urls() -> None:
    raw = (
        b"From: a@b\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Gr=C3=BC=C3=9Fe, see https://example.com/a.\r\n"
        b"--B\r\nContent-Type: text/html\r\n\r\n<html><style>x{}</style><p>Click <a href='http://evil.example/x'>"
        b"here</a></p><script>var a;</script></html>\r\n--B--\r\n"
    )
    m = Message(raw)
    assert "Grüße" in m.text and "Click here" in m.text
    assert "var a" not in m.text and "x{}" not in m.text
    assert m.urls == ["https://example.com/a", "http://evil.example/x"]


def test_attachments_listed_with_names() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
        b'filename="invoice.pdf.exe"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--B--\r\n'
    )
    parts = Message(raw).parts
    assert [p.filename for p in parts] == [None, "invoice.pdf.exe"]
    assert parts[1].is_attachment and parts[1].size == 12


def test_malformed_input_never_raises() -> None:
    samples = [
        b"",
        b"\x00\x01\x02",
        b"no header block at all",
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--",
        b"Content-Type: text/plain; charset=x-unknown\r\nContent-Transfer-Encoding: base64\r\n\r\n@@@@",
        b"Content-Type: text/html\r\n\r\n<a href=" + b"<" * 10000,
        b"Subject: =?utf-8?b?!!!?=\r\n\r\n\xff\xfe\x00",
    ]
    for raw in samples:
        m = Message(raw)
        _ = (m.headers, m.text, m.urls, m.parts, m.mime, m.html)


def test_text_is_bounded() -> None:
    raw = b"Content-Type: text/plain\r\n\r\n" + b"word " * (MAX_TEXT_CHARS // 2)
    assert len(Message(raw).text) <= MAX_TEXT_CHARS
