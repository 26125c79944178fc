"""What hostile messages cost each content check, against the corpus's ordinary mail.

Inputs: every message of corpus/hostile/ (built by corpus/make_hostile.py) when it exists, plus
messages generated here from one spam with the fuzz harness's disguises (tests/fuzz/mutations.py):
deep nesting, many parts, re-encodings, long and many headers, unclosed HTML, 8-bit and NUL
bytes, and a big body.  Each input is run

- through the message views the checks share (`parse`: headers, MIME tree, text, URLs, parts),
- through each content check (headers and end of message) on its own, the message already parsed,
- through the whole offline pipeline (tests/fuzz/offline.py: content checks, rules, bayes),

and its CPU time (this thread's) is printed in ms per column, beside the corpus baseline: the
median and the maximum of each column over a sample of the shared corpus.  The last lines name
the slowest input and check, and the inputs whose pipeline run went over [milter] cpu_budget.

    python bench/hostile.py [--corpus-sample N] [--scale S] [--only SUBSTRING]

--scale multiplies the sizes of the generated inputs (1: up to ~50 KB headers and 20k
repeated tags; 2 reaches Postfix's default header_size_limit of 100 KB).  Before the hardening
of issue 12 the slowest input at scale 1 took 1.4 s (the tokenizer's quadratic regexes) and scale 2
took minutes; now the slowest at scale 2 is about 66 ms.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filterd.check import Check, Stage  # noqa: E402
from filterd.driver import scan  # noqa: E402
from filterd.message import Message  # noqa: E402
from filterd.pipeline import Pipeline  # noqa: E402
from filterd.transaction import Session, Transaction  # noqa: E402
from tests.fuzz import mutations as m  # noqa: E402
from tests.fuzz.offline import offline_pipeline  # noqa: E402
from tests.fuzz.strategies import BUILTIN_SEEDS, corpus_files, hostile_messages, spam_files  # noqa: E402

SPAM = BUILTIN_SEEDS[2]


def generated(base: bytes, scale: float) -> list[tuple[str, bytes]]:
    """Hostile variants of `base`, sizes multiplied by `scale`."""

    def n(x: int) -> int:
        return max(1, int(x * scale))

    html_part = (
        b"From: h@example.biz\r\nSubject: html\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n<html><body>"
    )
    return [
        ("nest-100", m.nest(base, n(100))),
        ("multipart-190", m.wrap_in_multipart(base, n(190))),
        ("base64", m.reencode(m.nest(base, 1), "base64")),
        ("qp-nest-20", m.nest(m.reencode(base, "quoted-printable"), n(20))),
        ("forwarded-x10", _times(m.as_attachment_forward, base, n(10))),
        ("received-x5000", m.many_headers(base, n(5000))),
        ("subject-50k-spaced", m.long_header(base, b"Subject", n(50_000), True)),
        ("subject-50k-word", m.long_header(base, b"Subject", n(50_000), False)),
        ("from-20k-word", m.long_header(base, b"From", n(20_000), False)),
        ("to-20k-word", m.long_header(base, b"To", n(20_000), False)),
        ("received-20k-dotted", m.add_header(base, b"Received: " + b"1.2.3." * n(3_300))),
        ("encoded-words-x2000", m.add_header(base, b"Subject: " + encoded_words(n(125)))),
        ("folded-every-word", m.fold_headers(base, 1)),
        ("nul-and-8bit", m.insert(m.insert(base, 40, b"\x00\xff\xfe" * n(2000)), 300, b"\x80\x00" * n(2000))),
        ("html-unclosed-comments-20k", html_part + b"<!--" * n(5_000)),
        ("html-unclosed-a-href", html_part + b"<a href='http://x.example/\n" * n(2_000)),
        ("html-unclosed-script", html_part + b"<script>" * n(20_000)),
        ("html-20k-tags", html_part + b"<b>x</b>" * n(20_000)),
        ("url-heavy-text", m.add_header(b"\r\n" + b"http://a.example/x " * n(20_000), b"Subject: urls")),
        (
            "text-9MB",
            b"From: a@example.org\r\nSubject: big\r\n\r\n" + b"lorem ipsum dolor sit amet\r\n" * 330_000,
        ),
        ("attachment-8MB", m.wrap_in_multipart(base, 1)[:-40] + _attachment(8 << 20)),
    ]


def encoded_words(rounds: int) -> bytes:
    """RFC 2047 words in every charset of the list, `rounds` times over, B and Q alternating."""
    charsets = m.CHARSETS * rounds
    return b" ".join(m.encoded_word(b"caf\xe9 offer", cs, i % 2 == 0) for i, cs in enumerate(charsets))


def _times(f: Callable[[bytes], bytes], raw: bytes, count: int) -> bytes:
    for _ in range(count):
        raw = f(raw)
    return raw


def _attachment(size: int) -> bytes:
    import base64

    return (
        b'\r\n--=_filterd_fuzz_0_x\r\nContent-Type: application/octet-stream; name="big.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(bytes(range(256)) * (size // 256)).replace(b"\n", b"\r\n")
        + b"--=_filterd_fuzz_0_x--\r\n"
    )


def cpu(call: Callable[[], object]) -> float:
    started = time.thread_time()
    call()
    return time.thread_time() - started


def content_checks(pipeline: Pipeline) -> list[Check]:
    return [c for c in pipeline.checks if c.stage in (Stage.HEADERS, Stage.EOM)]


def parse(raw: bytes) -> Message:
    """The views of the message the checks share, computed (what the first content check pays)."""
    msg = Message(raw)
    _ = (msg.headers, msg.mime, msg.parts, msg.text, msg.urls, msg.html_scan)
    return msg


def forget_caches() -> None:
    """Empty the tokenizer's caches of header tokens: an attacker varies the headers of each
    message, so every measurement here starts cold (the same input is read three times)."""
    from filterd.bayes import tokenizer

    for name in ("_HEADER_CACHE",):
        cache = getattr(tokenizer, name, None)
        if hasattr(cache, "clear"):
            cache.clear()
    if hasattr(tokenizer.registered_domain, "cache_clear"):
        tokenizer.registered_domain.cache_clear()


def measure(pipeline: Pipeline, raw: bytes) -> tuple[dict[str, float], bool]:
    """ms per column for one message, and whether the whole pipeline went over its CPU budget."""
    forget_caches()
    row = {"parse": cpu(lambda: parse(raw)) * 1000}
    tx = Transaction.start(Session(client_addr="192.0.2.1"))
    tx.raw_message, tx.size = raw, len(raw)
    _ = (tx.message.headers, tx.message.mime, tx.message.parts, tx.message.text, tx.message.urls)
    # the shared views are warm: each check below pays only its own work
    forget_caches()
    for check in content_checks(pipeline):
        row[check.name] = cpu(lambda c=check: list(c.run(tx))) * 1000  # type: ignore[misc]
    result: list[object] = []
    forget_caches()
    row["pipeline"] = cpu(lambda: result.append(scan(pipeline, raw))) * 1000
    _, verdict = result[0]  # type: ignore[misc]
    over = any(s.name == "TIME_BUDGET" for s in verdict.symbols)
    return row, over


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus-sample", type=int, default=400, help="corpus messages for the baseline")
    ap.add_argument("--scale", type=float, default=1.0, help="size multiplier of the generated inputs")
    ap.add_argument("--only", default="", help="run only the inputs whose name contains this")
    args = ap.parse_args()
    logging.getLogger("filterd").setLevel(logging.ERROR)  # the TIME_BUDGET column says it already

    pipeline = offline_pipeline()
    budget = pipeline.config.milter.cpu_budget
    spam = spam_files()
    base = m.reencode(spam[len(spam) // 2].read_bytes(), "quoted-printable") if spam else SPAM
    inputs = [(f"hostile/{name}", raw) for name, raw in hostile_messages()] + generated(base, args.scale)
    inputs = [(name, raw) for name, raw in inputs if args.only in name]

    files = corpus_files()
    sample = files[:: max(1, len(files) // args.corpus_sample)] if files else []
    baseline: dict[str, list[float]] = {}
    for path in sample[:3]:  # warm up: RE2 builds its DFA states, numpy its buffers, on first use
        measure(pipeline, path.read_bytes())
    for path in sample:
        row, _ = measure(pipeline, path.read_bytes())
        for col, ms in row.items():
            baseline.setdefault(col, []).append(ms)
    columns = ["parse", *(c.name for c in content_checks(pipeline)), "pipeline"]
    short = {c: c.replace("header_", "h_").replace("_heuristics", "_heur")[:9] for c in columns}

    header = f"{'input (ms of CPU per check)':<30}{'KB':>7}" + "".join(f"{short[c]:>10}" for c in columns)
    print(
        f"{len(inputs)} hostile inputs; corpus baseline from {len(sample)} messages; cpu_budget {budget:g} s"
    )
    print(header)
    print("-" * len(header))
    if baseline:
        for label, f in (("corpus median", statistics.median), ("corpus max", max)):
            print(f"{label:<30}{'':>7}" + "".join(f"{f(baseline[c]):>10.2f}" for c in columns))
        print("-" * len(header))
    slowest: tuple[float, str, str] = (0.0, "", "")
    over_budget = []
    for name, raw in inputs:
        row, over = measure(pipeline, raw)
        cells = "".join(f"{row.get(c, 0.0):>10.2f}" for c in columns)
        print(f"{name[:30]:<30}{len(raw) / 1024:>7.0f}{cells}{'  TIME_BUDGET' if over else ''}", flush=True)
        for col in columns:
            if col != "pipeline" and row.get(col, 0.0) > slowest[0]:
                slowest = (row[col], name, col)
        if over:
            over_budget.append(name)
    print("-" * len(header))
    if slowest[1]:
        median = statistics.median(baseline[slowest[2]]) if baseline else float("nan")
        print(
            f"slowest: {slowest[1]} in {slowest[2]}: {slowest[0]:.1f} ms "
            f"({slowest[0] / median:.0f}x the corpus median of {median:.3f} ms)"
            if median
            else f"slowest: {slowest[1]} in {slowest[2]}: {slowest[0]:.1f} ms"
        )
    print(f"over the {budget:g} s CPU budget (TIME_BUDGET): {', '.join(over_budget) or 'none'}")


if __name__ == "__main__":
    main()
