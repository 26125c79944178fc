"""The regex engine of the rules: Google's RE2, one combined automaton per text a rule looks at.

Why RE2 and not Python's `re`
-----------------------------
Rules are written by admins and run on text written by spammers.  Python's `re` backtracks, so
a pattern with nested quantifiers (``(\\w+\\s?)+$``) takes exponential time on a crafted line; the
usual defences are a static check for nested quantifiers plus a length cap, and both leak (a
static check misses overlapping alternations such as ``(a|ab)*c``, and a cap only lowers the
exponent's base).  RE2 (the `google-re2` wheel, which bundles the C++ library) compiles to
automata and matches in time linear in the input, whatever the pattern: there is nothing to
check.  What it gives up -- backreferences and lookaround -- content rules do not need; a rule
that wants "does not match" says ``negate = true``.

Measured here.  The hostile inputs of tests/test_rules_shipped.py (13 strings of 64 kB: runs of
spaces, newlines, letters, near-misses built from each pattern's own words) against the 158
patterns of the shipped set:

    Python re    312 s in all; worst pattern 130 s (a "(?m)^\\s*(?:dear|hello)..." greeting rule
                 on 64 kB of blanks: quadratic, no nested quantifier for a checker to find)
    RE2          0.35 s in all; worst pattern 5 ms

And speed, 100 case-insensitive word patterns over a 1 kB text, per message:

    Python re, one search per pattern          2 500 us
    Python re, one alternation of all          6 500 us
    RE2, one search per pattern                  330 us   (3.3 us a call, mostly binding overhead)
    RE2, one RE2::Set of all patterns              2.7 us

So every text a rule can look at (the body, one header, one URL, ...) gets one `re2.Set` holding
all the patterns for it: one pass tells which patterns match.  Only for a report of *what*
matched (``filterctl rules test``) does a pattern run alone, and only on rules that hit.

The one trap of RE2::Set: it runs only the DFA, and when the DFA runs out of memory it returns
"no match" rather than an error (the Python binding hides the error code).  So each set carries a
sentinel, the empty pattern, which matches every text: a result without the sentinel means the
DFA gave up, and the patterns are then run one by one (a single RE2 falls back to its NFA, still
linear).  Texts are encoded to UTF-8 once and matched as bytes, since the binding would otherwise
re-encode the text for every call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import re2

log = logging.getLogger("filterd.rules")

# Memory for one compiled set (RE2's default is 8 MiB; two thirds go to the DFA cache).  A bigger
# cache makes a DFA give up less often on large, varied texts.
MAX_MEM = 64 << 20


def _options() -> re2.Options:
    options = re2.Options()
    options.max_mem = MAX_MEM
    options.log_errors = False  # a bad pattern is reported by us, with its file and rule
    return options


def compile_pattern(pattern: str) -> re2._Regexp:
    """Compile one pattern, or raise `ValueError` with RE2's reason."""
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid pattern"
        if isinstance(reason, bytes):  # the binding passes RE2's own message through as bytes
            reason = reason.decode("utf-8", "replace")
        raise ValueError(str(reason)) from None


class PatternSet:
    """Patterns matched together against one text; `match` returns the indexes that matched."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = list(patterns)
        self.single = [compile_pattern(p) for p in self.patterns]  # also validates each pattern
        self._set: re2.Set | None = None
        if self.patterns:
            s = re2.Set.SearchSet(_options())
            for p in self.patterns:
                s.Add(p)
            self._sentinel = s.Add("")
            s.Compile()
            self._set = s

    def __len__(self) -> int:
        return len(self.patterns)

    def match(self, text: bytes) -> set[int]:
        """Indexes of the patterns found in `text` (UTF-8)."""
        if self._set is None:
            return set()
        found = self._set.Match(text)
        if found is None or self._sentinel not in found:
            return self._one_by_one(text)
        found.remove(self._sentinel)
        return set(found)

    def _one_by_one(self, text: bytes) -> set[int]:
        log.warning("RE2 set gave up on a %d-byte text; matching %d patterns singly", len(text), len(self))
        return {i for i, r in enumerate(self.single) if r.search(text) is not None}

    def first_match(self, index: int, text: bytes) -> str | None:
        """The text pattern `index` matches first in `text`, for reports."""
        m = self.single[index].search(text)
        if m is None:
            return None
        return m.group(0).decode("utf-8", "replace")
