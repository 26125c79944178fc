"""One fast pass over an HTML text part: its readable text, its links and the tags it uses.

`html.parser.HTMLParser` is exact but slow: measured on 1,008 SpamAssassin-corpus messages it took
half of the time of `Message.text` + `Message.urls` (two parser passes over every HTML part, about
7.5 ms per HTML message).  Mail HTML needs less than a browser's parse: the text between tags, the
href/src links, and which tags and attributes appear (spam signals such as <font>, <img>, hidden
text).  A regular expression over the tags does that in one pass, about ten times faster, and never
raises on broken markup -- an unclosed tag or comment just ends the scan.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

MAX_TAGS = 20_000  # tags looked at per part: bounds the work on a pathological part

# A tag, a comment, or a declaration (<!DOCTYPE ...>); group 1 is "/" for an end tag.
_MARKUP = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)\b([^>]*)>|<!--.*?-->|<![^>]*>|<\?[^>]*>", re.S)
_ATTR = re.compile(r"""([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*=\s*("[^"]*"|'[^']*'|[^\s"'=<>`]+)""")
_LINK = re.compile(r"(?i)https?://")
# Whose content is not readable text.  <title> belongs to <head>; both are skipped, as before.
_SKIP = frozenset({"script", "style", "head", "title"})
# Tags that break a line of text; the others (<b>, <font>, <span>) join their text to the words around.
_SKIP_END = {tag: re.compile(rf"</{tag}\s*>", re.I) for tag in _SKIP}
_BREAK = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "table", "td"})


@dataclass(frozen=True)
class HtmlScan:
    text: str  # readable text, entities decoded
    urls: tuple[str, ...]  # http(s) href and src values, in order
    tags: tuple[str, ...]  # lower-case start tag names, in order, repeats kept
    attrs: tuple[tuple[str, str, str], ...]  # (tag, attribute name, value) for every attribute with a value


def scan_html(markup: str) -> HtmlScan:
    chunks: list[str] = []
    urls: list[str] = []
    tags: list[str] = []
    attrs: list[tuple[str, str, str]] = []
    pos = 0
    n = len(markup)
    while pos < n and len(tags) < MAX_TAGS:
        m = _MARKUP.search(markup, pos)
        if m is None:
            chunks.append(markup[pos:])
            break
        if m.start() > pos:
            chunks.append(markup[pos : m.start()])
        pos = m.end()
        name = m.group(2)
        if name is None or m.group(1):  # comment, declaration or end tag
            continue
        tag = name.lower()
        tags.append(tag)
        attr_text = m.group(3)
        if "=" in attr_text:
            for a, v in _ATTR.findall(attr_text):
                value = v.strip("\"'").strip()
                if "&" in value:
                    value = html.unescape(value)
                attrs.append((tag, a.lower(), value))
                if a.lower() in ("href", "src") and _LINK.match(value):
                    urls.append(value)
        if tag in _SKIP:
            end = _SKIP_END[tag].search(markup, pos)
            pos = end.end() if end else n
        elif tag in _BREAK:
            chunks.append("\n")
    return HtmlScan(html.unescape("".join(chunks)), tuple(urls), tuple(tags), tuple(attrs))
