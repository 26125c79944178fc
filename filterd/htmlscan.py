"""One pass over an HTML text part: its readable text, its links and the tags it uses.

The markup is parsed by lexbor (through selectolax), an HTML5 parser written in C: it reads any
input in linear time and recovers what a browser would show.  The regular expressions this module
used before were quadratic on hostile markup (80 KB of "<!--" took 15 s, 80 KB of "<a href=" 4 s:
each unclosed construct made `re` scan to the end again), and they lost links a browser still
follows (an unquoted or unclosed attribute).  html.parser.HTMLParser is exact but several times
slower.

What mail needs from the tree: the text outside script/style/head/title, with a line break at
block tags; the href/src links; and which tags and attributes appear (spam signals such as <font>,
<img>, hidden text).  The elements inside <head>, <script>, <style> and <title> are not content:
only the start tag of such an element counts, as before.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import cached_property

from selectolax.lexbor import LexborHTMLParser, LexborNode

MAX_DEPTH = 400  # elements open at once that the parser is given (see `_limit_nesting`)
FEW_TAGS = 2_000  # markup with at most this many "<" is parsed as it is: at worst ~30 ms
MAX_TAGS = 20_000  # elements whose tag and attributes are recorded per part; the text is read in full

# Elements whose content is not readable text; their start tag still counts.
_HIDDEN_CONTENT = ("script", "style", "head", "title", "template")
_HIDDEN_SELECTOR = ", ".join(_HIDDEN_CONTENT)
# Tags that break a line of text; the others (<b>, <font>, <span>) join their text to the words around.
_BREAK_TAGS = frozenset({"br", "p", "div", "tr", "td", "th", "li", "h1", "h2", "h3", "h4", "table"})
# The parser adds <html>, <head>, <body> and a table's <tbody> when the markup leaves them out:
# counted only when written.
_IMPLIED = {name: re.compile(rf"(?i)<{name}[\s/>]") for name in ("html", "head", "body", "tbody")}
_TAG_NAME = re.compile(r"[a-z][a-z0-9]*")
_LINK = re.compile(r"(?i)https?://")
_TAG_OPEN = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)")
# Elements that hold no others (void), or that the next of their kind closes (p, li, td, tr,
# option): counted as not deepening the nesting.
_VOID = frozenset(
    [
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
        "p",
        "li",
        "td",
        "tr",
        "option",
    ]
)


@dataclass(frozen=True)
class HtmlScan:
    text: str  # readable text, entities decoded
    urls: tuple[str, ...]  # http(s) href and src values, in order
    tags: tuple[str, ...]  # lower-case start tag names, in order, repeats kept
    hidden: bool  # some element's style hides it (display:none, visibility:hidden): hidden text
    elements: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (tag, its attributes with a value)

    @cached_property
    def attrs(self) -> tuple[tuple[str, str, str], ...]:
        """(tag, attribute name, value) for every attribute with a value (made only when asked)."""
        return tuple((tag, name, value) for tag, attributes in self.elements for name, value in attributes)


def scan_html(markup: str) -> HtmlScan:
    """The text, links and tags of `markup`; never raises, linear in its length."""
    if "<" not in markup:  # no markup at all (a message without HTML asks too): no parser needed
        return HtmlScan(html.unescape(markup) if "&" in markup else markup, (), (), False, ())
    if "\x00" in markup:
        markup = markup.replace("\x00", "\ufffd")
    root = LexborHTMLParser(_limit_nesting(markup)).root
    if root is None:
        return HtmlScan("", (), (), False, ())
    _drop_hidden_content(root)
    implied = {name for name, written in _IMPLIED.items() if not written.search(markup)}
    text: list[str] = []
    urls: list[str] = []
    tags: list[str] = []
    elements: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    hidden = False
    # One pass in document order; a Python step per node, so only what is needed is read from it.
    for node in root.traverse(include_text=True):
        tag = node.tag or "-"
        if tag == "-text":
            text.append(node.text_content or "")
            continue
        if tag[0] in "-!#":  # a comment, the doctype
            continue
        if tag in _BREAK_TAGS:
            text.append("\n")
        if tag in implied or len(tags) >= MAX_TAGS:
            continue
        tag = _NAMES.get(tag) or _simple_name(tag)
        tags.append(tag)
        attributes = node.attributes
        if not attributes:
            continue
        # lexbor gives attribute names in lower case and values with entities decoded
        values = tuple((name, value.strip()) for name, value in attributes.items() if value is not None)
        elements.append((tag, values))
        for name, value in values:
            if name in ("href", "src") and _LINK.match(value):
                urls.append(value)
            elif name == "style" and not hidden:
                hidden = _hides(value)
    return HtmlScan("".join(text), tuple(urls), tuple(tags), hidden, tuple(elements))


def _limit_nesting(markup: str) -> str:
    """`markup` with start tags that would open more than `MAX_DEPTH` elements at once removed.

    An HTML5 parser checks the stack of open elements at many start tags (is a <p> in scope?), so
    its time grows with the nesting depth times the number of tags: 20,000 unclosed <div> took
    lexbor 0.4 s, 20,000 "<li><ul>" 3 s.  Mail needs no such depth.  Markup with few tags cannot
    nest deeply enough to matter and is passed as it is; otherwise each tag is read once, counting unclosed
    elements (an overestimate: elements closed implicitly still count), and a start tag deeper
    than the limit is dropped, its text kept."""
    if markup.count("<") <= FEW_TAGS:
        return markup
    out: list[str] = []
    depth = kept_to = 0
    gt = -2  # the next ">" at or after the current tag (-1: none): found again only when passed
    for m in _TAG_OPEN.finditer(markup):
        start = m.start()
        if start < kept_to:
            continue  # inside a tag already dropped
        name = m.group(2).lower()
        if m.group(1):
            depth = max(depth - 1, 0)
        elif name not in _VOID:
            depth += 1
            if depth > MAX_DEPTH:
                if gt != -1 and gt < start:
                    gt = markup.find(">", start)
                end = len(markup) if gt == -1 else gt + 1
                out.append(markup[kept_to:start])
                kept_to = end
    out.append(markup[kept_to:])
    return "".join(out)


def _drop_hidden_content(root: LexborNode) -> None:
    """Remove the content of `_HIDDEN_CONTENT` elements, keeping the elements (their start tags
    count).  Later ones first, so an element inside another is emptied before its container."""
    for container in reversed(root.css(_HIDDEN_SELECTOR)):
        for child in list(container.iter(include_text=True)):
            child.decompose()


def _simple_name(tag: str) -> str:
    """A tag name as the tokens have always named it: "o:p" (an Office namespace tag) is "o"."""
    m = _TAG_NAME.match(tag)
    name = m.group() if m else tag
    if len(_NAMES) < 10_000:  # a bound: every message may invent tag names
        _NAMES[tag] = name
    return name


_NAMES: dict[str, str] = {}  # tag name -> simple name, remembered


def _hides(style: str) -> bool:
    lowered = style.lower().replace(" ", "")
    return "display:none" in lowered or "visibility:hidden" in lowered
