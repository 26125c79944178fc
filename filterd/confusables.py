"""Words written with look-alike letters from another script, read as the words they imitate.

"Ѵіаgrа" is Cyrillic Ѵ, і, а with Latin g and r: it looks like "Viagra" and matches no rule and no
token the classifier learned.  Real text does not mix scripts inside a word -- a Russian word is
all Cyrillic, an English one all Latin -- so a word holding both Latin letters and Cyrillic or
Greek ones is disguised, and is read here with each look-alike letter replaced by the Latin letter
it imitates (a small table of the letters Unicode's confusables list, UTS #39, gives as the same
shape).  Words in one script are left alone, so Russian or Greek mail reads as it is.

How many such words a text holds is itself the signal (the rule MIXED_SCRIPT_WORDS).
"""

from __future__ import annotations

import re

# Cyrillic and Greek letters with a Latin twin of the same shape (UTS #39 confusables, the clear ones)
_TWINS = str.maketrans(
    "АВЕЅІЈКМНОРСТХУаеорсухѕіјһԁԛԝѵѴӏ" + "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧονρι",
    "ABESIJKMHOPCTXYaeopcyxsijhdqwvVl" + "ABEZHIKMNOPTYXovpi",
)
_NON_ASCII_WORD = re.compile(r"\b\w*?[^\W\x00-\x7f]\w*")  # from a word start only: linear
_LATIN = re.compile(r"[A-Za-z]")
_CYRILLIC_OR_GREEK = re.compile(r"[\u0370-\u03ff\u0400-\u04ff\u0500-\u052f]")


def _mixed(word: str) -> bool:
    return _LATIN.search(word) is not None and _CYRILLIC_OR_GREEK.search(word) is not None


def fold(text: str) -> tuple[str, int]:
    """`text` with its mixed-script words read in Latin, and how many words were mixed."""
    if text.isascii() or _CYRILLIC_OR_GREEK.search(text) is None:
        return text, 0  # most mail, accented Latin and CJK included: one scan in C, no words built
    count = 0

    def read(m: re.Match[str]) -> str:
        nonlocal count
        word = m.group()
        if not _mixed(word):
            return word
        count += 1
        return word.translate(_TWINS)

    return _NON_ASCII_WORD.sub(read, text), count
