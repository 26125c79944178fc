"""How much the shipped rule set costs per message, against the text extraction it shares.

For each corpus message: parse it and extract what rules read (headers, decoded text parts, HTML
reduced to text, URLs, MIME leaves) -- the work `filterd.message.Message` does once and shares
with the Bayes tokenizer -- then run the shipped rule set on the extracted message.  Prints the
median, p90, p99 and max of each, the share of time spent in each, and whether the median cost
of the rules is within the goal (1 ms).  Each message is matched once, as on the mail path: the
DFA states RE2 caches are warm from earlier messages, not from this one.

    python bench/rules_speed.py [--limit N] [--repeat R]

The corpus is $FILTERD_CORPUS/spamassassin-public (default ../shared/corpus from the repo root).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filterd.config import known_symbols  # noqa: E402
from filterd.message import Message  # noqa: E402
from filterd.rules import load_rule_set  # noqa: E402

GOAL_MS = 1.0


def extract(raw: bytes) -> Message:
    """Everything a content check reads, computed once (what the rules and Bayes share)."""
    msg = Message(raw)
    msg.headers  # noqa: B018 -- cached properties: touching them does the work
    msg.text  # noqa: B018
    msg.urls  # noqa: B018
    msg.parts  # noqa: B018
    return msg


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="use every Nth message so about this many are timed")
    ap.add_argument(
        "--repeat", type=int, default=3, help="time the rules this many times per message, keep the best"
    )
    args = ap.parse_args()

    corpus = Path(os.environ.get("FILTERD_CORPUS", ROOT.parent / "shared" / "corpus")) / "spamassassin-public"
    files = sorted(p for label in ("ham", "spam") for p in (corpus / label).iterdir() if p.is_file())
    if not files:
        sys.exit(f"no corpus at {corpus}")
    if args.limit:
        files = files[:: max(1, len(files) // args.limit)]

    started = time.perf_counter()
    rules = load_rule_set(reserved=known_symbols())
    load_ms = (time.perf_counter() - started) * 1e3
    reported = sum(1 for r in rules.all if not r.hidden)

    extract_ms: list[float] = []
    match_ms: list[float] = []
    for path in files:
        raw = path.read_bytes()
        t0 = time.perf_counter()
        msg = extract(raw)
        t1 = time.perf_counter()
        best = float("inf")
        for _ in range(max(1, args.repeat)):
            t2 = time.perf_counter()
            rules.match(msg)  # a fresh Targets each time: the rules' own work is all counted
            best = min(best, time.perf_counter() - t2)
        extract_ms.append((t1 - t0) * 1e3)
        match_ms.append(best * 1e3)
    total_ms = [a + b for a, b in zip(extract_ms, match_ms, strict=True)]

    print(f"corpus: {corpus} ({len(files)} messages)")
    print(f"rule set: {len(rules)} rules ({reported} reported), loaded and compiled in {load_ms:.0f} ms")
    print()
    print(f"{'per message (ms)':<34} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8} {'share':>7}")
    whole = sum(total_ms)
    for label, values in (
        ("text extraction (shared, baseline)", extract_ms),
        ("rules (match + their own prep)", match_ms),
        ("extraction + rules", total_ms),
    ):
        print(
            f"{label:<34} {statistics.median(values):8.3f} {pct(values, 0.90):8.3f} {pct(values, 0.99):8.3f} "
            f"{max(values):8.3f} {sum(values) / whole:7.1%}"
        )
    ratio = statistics.median(match_ms) / statistics.median(extract_ms)
    print()
    print(f"rules / extraction, medians: {ratio:.2f}x")
    median = statistics.median(match_ms)
    verdict = "OK" if median <= GOAL_MS else "OVER"
    print(f"goal: rules <= {GOAL_MS:g} ms for the median message: {median:.3f} ms -- {verdict}")


if __name__ == "__main__":
    main()
