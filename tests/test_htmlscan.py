from __future__ import annotations

import time

import pytest

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


def _cost(markup: str) -> float:
    started = time.process_time()
    scan_html(markup)
    return time.process_time() - started


@pytest.mark.parametrize(
    "unit",
    [
        "<!--",  # the regex scanner: 80 KB took 15 s
        "<a href=",  # 4 s
        "<a href=\"http://x.example/ title='",  # unclosed quotes: 0.9 s
        "<a",
        "<!",
        "<?",
        "<p ",
        "<script>",
        "<div>",  # lexbor's scope checks: 20,000 unclosed took 0.4 s before the nesting limit
        "<li><ul>",  # 3 s
        "<table><tr><td>",
        "<b><p></b>",
    ],
)
def test_hostile_markup_is_scanned_in_linear_time(unit: str) -> None:
    def markup(size: int) -> str:
        return "<p>FREE gift</p>" + unit * (size // len(unit))

    _cost(markup(8_000))  # warm up
    small = min(_cost(markup(8_000)) for _ in range(3))
    large = _cost(markup(80_000))
    assert large < 30 * max(small, 0.002), (small, large)


def test_links_a_browser_follows_are_found() -> None:
    """The regex scanner lost these: an unquoted value ending at ">", a value with a line break,
    attributes in upper case and a tag split over lines."""
    scan = scan_html(
        "<a href=http://a.example/x>a</a>"
        '<a href="http://b.example/\n?q=1">b</a>'
        "<A HREF='http://c.example/'>c</A>"
        '<img\nsrc="http://d.example/i.gif"\n>'
    )
    assert scan.urls == (
        "http://a.example/x",
        "http://b.example/\n?q=1",
        "http://c.example/",
        "http://d.example/i.gif",
    )


def test_implied_elements_are_not_counted_but_written_ones_are() -> None:
    assert scan_html("<table><tr><td>x</td></tr></table>").tags == ("table", "tr", "td")
    assert scan_html("<html><body><p>x</p></body></html>").tags == ("html", "body", "p")
    assert "o" in scan_html("<p>x<o:p></o:p></p>").tags  # Office's namespace tags keep their old name


def test_deep_nesting_keeps_the_text() -> None:
    scan = scan_html("<div>" * 5_000 + "deep words" + "</div>" * 5_000)
    assert scan.text.strip() == "deep words"
    assert len(scan.tags) <= 5_000


def test_text_without_markup_needs_no_parser() -> None:
    assert scan_html("") == scan_html("")
    assert scan_html("fish &amp; chips").text == "fish & chips"
    assert scan_html("plain").tags == () and scan_html("plain").urls == ()
