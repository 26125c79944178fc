from __future__ import annotations

from filterd.htmlscan import scan_html
from filterd.message import Message


def test_text_links_and_tags() -> None:
    scan = scan_html(
        "<html><head><title>T</title><style>p {color: red}</style></head><body>"
        '<p>Hello&nbsp;<b>world</b></p><a href="https://example.com/x?a=1&amp;b=2">here</a>'
        '<img src="http://img.example.net/a.gif" width=1><script>var x = "<p>no</p>";</script>'
        "<!-- a comment --> tail</body></html>"
    )
    assert "Hello\xa0world" in scan.text
    assert "here" in scan.text and "tail" in scan.text
    assert "color" not in scan.text and "var x" not in scan.text and "T" not in scan.text.split()
    assert scan.urls == ("https://example.com/x?a=1&b=2", "http://img.example.net/a.gif")
    assert scan.tags[:3] == ("html", "head", "body") or "p" in scan.tags
    assert ("img", "width", "1") in scan.attrs


def test_broken_markup_never_raises() -> None:
    for markup in (
        "<a href='x",
        "<<<>>>",
        "<p>unclosed <b",
        "<script>never closed",
        "<!-- open",
        "a < b > c",
    ):
        scan = scan_html(markup)
        assert isinstance(scan.text, str)
    assert scan_html("a < b > c").text == "a < b > c"
    assert scan_html("<script>never closed").text == ""


def test_message_uses_one_scan_for_text_and_urls() -> None:
    raw = (
        b"From: a@example.org\r\nSubject: x\r\nContent-Type: text/html\r\n\r\n"
        b'<p>Buy <a href="http://shop.example.com/now">now</a></p>'
    )
    msg = Message(raw)
    assert msg.text == "Buy now"
    assert msg.urls == ["http://shop.example.com/now"]
    assert "a" in msg.html_scan.tags
