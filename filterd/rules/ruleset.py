"""A compiled rule set: which rules hit a message, and (for reports) what each one saw.

At build time the enabled rules are sorted by the text they look at, and each text gets one
`PatternSet`: the body's patterns are matched in one pass over the body, each header's in one
pass over that header, each URL's in one pass per URL.  Rules that are not regexes (exists,
host lists, MIME structure, helpers) are plain Python over the parsed message.  Metas run last,
in dependency order, over the names that hit so far; a disabled rule counts as not hit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from filterd.message import Message, Part
from filterd.rules.engine import PatternSet, compile_pattern
from filterd.rules.helpers import HELPERS
from filterd.rules.loader import ALL_HEADERS, Rule, meta_order
from filterd.rules.targets import Targets, parent_domains

_TEXT_KINDS = ("body", "rawbody", "full")


@dataclass(frozen=True)
class Hit:
    rule: Rule
    detail: str  # what matched: the text, the header, the URL, the part, the helper's words


class _TextGroup:
    """The rules that match patterns against one text of the message."""

    def __init__(self, rules: list[Rule], header_mode: bool) -> None:
        self.names = [r.name for r in rules]
        # In a header text each value is one line: ^ and $ anchor at each value.
        self.patterns = PatternSet([f"(?m){r.pattern}" if header_mode else str(r.pattern) for r in rules])


class _Mime:
    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.content_type = compile_pattern(rule.content_type) if rule.content_type else None
        self.filename = compile_pattern(rule.filename) if rule.filename else None
        self.extensions = frozenset(rule.extensions)

    def part_matches(self, part: Part) -> str | None:
        """The name that matched (the part's, or a ZIP member's), "" for a rule of no name; None."""
        if self.content_type is not None and self.content_type.search(part.content_type.encode()) is None:
            return None
        if self.filename is None and not self.extensions:
            return ""
        # a name rule also reads the names inside a ZIP attachment: a program comes zipped now
        names = [part.filename] if part.filename is not None else []
        return next((n for n in [*names, *part.members] if self._name_matches(n)), None)

    def _name_matches(self, name: str) -> bool:
        name = name.rstrip(" .")  # Windows ignores trailing dots and blanks: "a.exe. " runs
        if self.filename is not None and self.filename.search(name.encode("utf-8", "replace")) is None:
            return False
        return not self.extensions or name.rpartition(".")[2].lower() in self.extensions

    def check(self, parts: list[Part]) -> str | None:
        r = self.rule
        if r.min_parts is not None and len(parts) < r.min_parts:
            return None
        if r.max_parts is not None and len(parts) > r.max_parts:
            return None
        if self.content_type is None and self.filename is None and not self.extensions:
            return f"{len(parts)} part(s)"
        for part in parts:
            name = self.part_matches(part)
            if name is None:
                continue
            where = f"{part.content_type} {part.filename or ''}".strip()
            return where if name in ("", part.filename) else f"{where}: {name}"
        return None


class RuleSet:
    def __init__(self, rules: Iterable[Rule]) -> None:
        self.all = list(rules)
        self.by_name = {r.name: r for r in self.all}
        active = [r for r in self.all if r.enabled]
        self._order = {r.name: i for i, r in enumerate(self.all)}

        self._texts: dict[str, _TextGroup] = {}
        for kind in _TEXT_KINDS:
            chosen = [r for r in active if r.kind == kind]
            if chosen:
                self._texts[kind] = _TextGroup(chosen, header_mode=False)

        header_rules = [r for r in active if r.kind == "header" and r.pattern is not None]
        self._headers: dict[str, _TextGroup] = {}
        for header in sorted({h for r in header_rules for h in r.headers}):
            chosen = [r for r in header_rules if header in r.headers]
            self._headers[header] = _TextGroup(chosen, header_mode=True)
        self._negated = [r for r in header_rules if r.negate]
        self._exists = [r for r in active if r.kind == "header" and r.exists is not None]

        uri_rules = [r for r in active if r.kind == "uri"]
        with_pattern = [r for r in uri_rules if r.pattern is not None]
        self._uri = _TextGroup(with_pattern, header_mode=False) if with_pattern else None
        self._hosts: dict[str, list[str]] = {}
        for r in uri_rules:
            for host in r.hosts:
                self._hosts.setdefault(host, []).append(r.name)

        self._mime = [_Mime(r) for r in active if r.kind == "mime"]
        self._helpers = [r for r in active if r.kind == "helper"]
        self._metas = meta_order(active)

    def __len__(self) -> int:
        return len(self.all)

    def match(self, message: Message) -> list[Rule]:
        """The enabled rules that hit `message`, `__` ones included, in file order."""
        names = self._match(Targets(message))
        return sorted((self.by_name[n] for n in names), key=lambda r: self._order[r.name])

    def explain(self, message: Message) -> list[Hit]:
        """Like `match`, with what each rule saw: slower, for `filterctl rules test`."""
        targets = Targets(message)
        names = self._match(targets)
        hits = [Hit(self.by_name[n], self._detail(targets, self.by_name[n], names)) for n in names]
        return sorted(hits, key=lambda h: self._order[h.rule.name])

    def _match(self, t: Targets) -> set[str]:
        hits: set[str] = set()
        for kind, group in self._texts.items():
            text: bytes = getattr(t, kind)
            hits.update(group.names[i] for i in group.patterns.match(text))

        matched: set[str] = set()
        for header, group in self._headers.items():
            value = t.all_headers if header == ALL_HEADERS else t.header(header)
            if value is not None:
                matched.update(group.names[i] for i in group.patterns.match(value))
        for r in self._negated:
            if r.name in matched:
                matched.discard(r.name)
            elif any(t.has_header(h.partition(":")[0]) for h in r.headers):
                matched.add(r.name)
        hits |= matched
        for r in self._exists:
            present = any(t.has_header(h.partition(":")[0]) for h in r.headers)
            if present == r.exists:
                hits.add(r.name)

        if self._uri is not None or self._hosts:
            for url in t.urls:
                if self._uri is not None:
                    hits.update(self._uri.names[i] for i in self._uri.patterns.match(url.text.encode()))
                if self._hosts:
                    for domain in parent_domains(url.host):
                        hits.update(self._hosts.get(domain, ()))

        if self._mime:
            parts = t.message.parts
            hits.update(m.rule.name for m in self._mime if m.check(parts) is not None)
        for r in self._helpers:
            if HELPERS[str(r.test)].function(t, r.params) is not None:
                hits.add(r.name)
        for r in self._metas:
            assert r.expression is not None
            if r.expression.evaluate(hits):
                hits.add(r.name)
        return hits

    def _detail(self, t: Targets, rule: Rule, hits: set[str]) -> str:
        """What `rule` saw in the message (it is known to have hit)."""
        if rule.kind in _TEXT_KINDS:
            group = self._texts[rule.kind]
            return _first(group, rule.name, getattr(t, rule.kind)) or ""
        if rule.kind == "header":
            return self._header_detail(t, rule)
        if rule.kind == "uri":
            for url in t.urls:
                if rule.pattern is not None:
                    assert self._uri is not None
                    if _first(self._uri, rule.name, url.text.encode()) is not None:
                        return url.text
                elif any(d in rule.hosts for d in parent_domains(url.host)):
                    return url.text
            return ""
        if rule.kind == "mime":
            mime = next(m for m in self._mime if m.rule is rule)
            return mime.check(t.message.parts) or ""
        if rule.kind == "helper":
            return HELPERS[str(rule.test)].function(t, rule.params) or ""
        assert rule.expression is not None
        used = sorted(n for n in rule.expression.names if n in hits)
        return f"{rule.expression.source}  [hit: {', '.join(used) or 'none'}]"

    def _header_detail(self, t: Targets, rule: Rule) -> str:
        if rule.exists is not None:
            return ", ".join(rule.headers) + (" present" if rule.exists else " absent")
        for header in rule.headers:
            value = t.all_headers if header == ALL_HEADERS else t.header(header)
            if value is None:
                continue
            if rule.negate:
                return f"{header}: {value.decode('utf-8', 'replace')[:120]}"
            found = _first(self._headers[header], rule.name, value)
            if found is not None:
                return f"{header}: {found}"
        return ""


def _first(group: _TextGroup, name: str, text: bytes) -> str | None:
    return group.patterns.first_match(group.names.index(name), text)
