"""The parsed message: headers, text extraction, URLs, and malformed input that must not raise."""

from __future__ import annotations

import base64
import time

from filterd.message import MAX_PARTS, MAX_TEXT_CHARS, Message, decode_words


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


def test_broken_encoded_words_never_raise() -> None:
    """email.header.decode_header raised HeaderParseError on these: the rules and the classifier
    were then skipped (CHECK_ERROR), and a spam scoring 16.9 scored 1.0."""
    assert decode_words("=?utf-8?b?A?=") == ""
    assert decode_words("=?utf-8?b?SGVsbG8?= world") == "Hello world"  # missing padding
    assert decode_words("=?utf-8?b?!!!?=") == ""
    assert decode_words("=?utf-8*en?q?a_b?=") == "a b"  # RFC 2231 language
    assert decode_words("=?utf-8?q?a?= =?utf-8?q?b?= c") == "ab c"
    assert decode_words("=?utf-8?b?w6?= =?utf-8?b?k=?=") == "\ufffd"  # a character split across words
    assert decode_words("x =?iso-8859-1?q?caf=E9?= y") == "x café y"
    for value in ("=?rot13?q?abc?=", "=?base64?q?abc?=", "=?idna?q?=FF?=", "=?utf-8?b?\udcff?=", "=?=?=?"):
        assert isinstance(decode_words(value), str)


def test_a_broken_encoded_subject_still_gives_headers_and_text() -> None:
    raw = b"Subject: =?utf-8?b?A?= Win\r\nFrom: =?utf-8?b?A?= <a@example.com>\r\n\r\nbody words\r\n"
    m = Message(raw)
    assert m.decoded_header("Subject") == " Win" and m.decoded_header("From") == " <a@example.com>"
    assert m.text == "body words"


def test_eight_bit_content_disposition_in_either_parser() -> None:
    part = (
        b"--B\r\nContent-Type: text/plain\r\n\r\nhello there\r\n"
        b'--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="\xe9\xff.txt"'
        b"\r\n\r\ndata\r\n--B--\r\n"
    )
    fast = b"Content-Type: multipart/mixed; boundary=B\r\n\r\n" + part
    # 300 levels: past fast_mail_parser's cap, so filterd.mimetree reads it
    deep = (
        b"".join(
            b"Content-Type: multipart/mixed; boundary=n%dz\r\n\r\n--n%dz\r\n" % (i, i) for i in range(300)
        )
        + b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
        + part
    )
    for raw in (fast, deep):
        m = Message(raw)
        assert "hello there" in m.text
        attachment = m.parts[-1]
        assert attachment.is_attachment and attachment.filename is not None
        assert attachment.filename.endswith(".txt")


def _nested(depth: int, body: bytes = b"the hidden body words") -> bytes:
    opens = b"".join(
        b"Content-Type: multipart/mixed; boundary=n%dz\r\n\r\n--n%dz\r\n" % (i, i) for i in range(depth)
    )
    closes = b"".join(b"\r\n--n%dz--" % i for i in reversed(range(depth)))
    return b"Subject: x\r\n" + opens + b"Content-Type: text/plain\r\n\r\n" + body + closes + b"\r\n"


def test_the_body_under_any_nesting_is_read_and_the_depth_counted() -> None:
    for depth in (0, 3, 250, 257, 1000, 10_000):
        m = Message(_nested(depth))
        assert m.text == "the hidden body words", depth
        assert m.mime_depth == depth and m.mime_nodes_total == depth + 1


def test_deep_nesting_is_read_in_linear_time() -> None:
    def cost(depth: int) -> float:
        raw = _nested(depth)
        started = time.process_time()
        assert Message(raw).text
        return time.process_time() - started

    cost(1000)  # warm up
    small, large = min(cost(1000) for _ in range(3)), cost(10_000)
    assert large < 30 * max(small, 0.001)


def test_empty_parts_in_front_do_not_hide_the_body() -> None:
    empties = b"".join(b"--B\r\nContent-Type: text/plain\r\n\r\n\r\n" for _ in range(1000))
    raw = (
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
        + empties
        + b"--B\r\nContent-Type: application/octet-stream\r\n\r\nxx\r\n" * 300
        + b"--B\r\nContent-Type: text/plain\r\n\r\nthe body at the end\r\n--B--\r\n"
    )
    m = Message(raw)
    assert m.text == "the body at the end"
    assert m.mime_nodes_total == 1302 and m.mime_depth == 1
    # the empty and the binary parts are capped, each on its own; the text is not
    assert len(m.mime) == 1 + MAX_PARTS + 200 + 1


def test_truncated_base64_keeps_the_text_that_decodes() -> None:
    data = base64.encodebytes(b"Click here for the free prize money " * 5)
    raw = (
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + data[:-7] + b"\r\n--B--\r\n"
    )
    assert Message(raw).text.startswith("Click here for the free prize money")


def test_many_encoded_words_are_read_in_linear_time() -> None:
    """fast_mail_parser's header decoding is quadratic in the encoded words of a header."""

    def cost(n: int) -> float:
        raw = b"Subject: " + b"=?utf-8?q?a?= " * n + b"\r\nContent-Type: text/plain\r\n\r\nbody"
        started = time.process_time()
        assert Message(raw).text == "body"
        return time.process_time() - started

    cost(2_400)
    small, large = min(cost(2_400) for _ in range(3)), cost(24_000)
    assert large < 30 * max(small, 0.001)


def test_a_leading_mbox_line_is_skipped_by_both_parsers() -> None:
    body = b"From someone@example.com Thu Dec  3 10:00:00 2026\nContent-Type: text/html\n\n<p>hi there</p>\n"
    assert Message(body).text == "hi there"
    assert Message(_nested(300).replace(b"Subject: x\r\n", b"From x@y Thu Dec 3\r\n", 1)).mime_depth == 300


def test_an_undecodable_text_part_past_the_text_budget_does_not_raise() -> None:
    big = b"word " * (MAX_TEXT_CHARS * 4 // 5 + 10)
    broken = base64.encodebytes(b"late words " * 20)[:-7]
    raw = (
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n"
        + big
        + b"\r\n--B\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + broken
        + b"\r\n--B--\r\n"
    )
    m = Message(raw)
    assert m.text.startswith("word word") and len(m.parts) == 2
