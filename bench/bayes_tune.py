"""Try classifier variants on the tuning views of both corpora, never on the halves reported.

    python bench/bayes_tune.py [--chrono] VARIANT...      # e.g. base "drop=tag:|part:" robs=0.1+min_dev=0.3 drop=pairs

A variant is `bogofilter` (its figures on the same views), `base` or comma-free settings joined by `+`: `drop=P1|P2` (token-name prefixes
removed; `drop=pairs`: no word pairs), or a `Params` field (`robx=0.45`).  Views (the halves `filterctl eval` reports are never
used here):

    SA hash-swap, CSDMC hash-swap     train on the odd half of sha1(file name), test the even one
    SA->CSDMC/dev, CSDMC->SA/dev       train on all of A, test the even half of B

--chrono: the views are each corpus's first half in Date order, split in two (train, test).

Prints (1-ROCA)% and spam missed at <= 0.1% and <= 1% of ham flagged for each view, filterd only.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import filterd.bayes.model as model_module  # noqa: E402
from filterd.bayes.params import Params  # noqa: E402
from filterd.bayes.tokenizer import Tokens, tokens  # noqa: E402
from filterd_eval.corpus import Item, corpus_root, in_order, in_second_half, load_folder  # noqa: E402
from filterd_eval.learners import Bogofilter, filterd_bayes  # noqa: E402
from filterd_eval.metrics import figures  # noqa: E402
from filterd_eval.runs import train_test  # noqa: E402


def variant(spec: str) -> tuple[Params, tuple[str, ...]]:
    from filterd.bayes import tokenizer

    params, drop = Params(), ()
    tokenizer._HEADER_CACHE.clear()
    for part in spec.split("+"):
        if part == "base":
            continue
        key, _, value = part.partition("=")
        if key == "drop":
            drop = tuple(value.split("|"))
        else:
            kind = type(getattr(params, key))
            params = dataclasses.replace(params, **{key: kind(value)})
    return params, drop


def _cell(test: list[Item], scores: np.ndarray) -> str:
    y = np.array([i.is_spam for i in test])
    f = figures(y, scores, 0.99)
    fpr, tpr, _ = roc_curve(y, scores)
    at1 = 100.0 * (1.0 - float(tpr[fpr <= 0.01].max()))  # less driven by a few outliers
    return f"{f.roca:>8.3f} {f.fn_at_fp:>6.2f}% {at1:>6.2f}%"


def main() -> None:
    root = corpus_root()
    sa = load_folder(root / "spamassassin-public")
    cs = load_folder(root / "csdmc2010")
    views = [
        ("SA swap", [i for i in sa if in_second_half(i)], [i for i in sa if not in_second_half(i)]),
        ("CSDMC swap", [i for i in cs if in_second_half(i)], [i for i in cs if not in_second_half(i)]),
        ("SA->CSDMC/dev", sa, [i for i in cs if not in_second_half(i)]),
        ("CSDMC->SA/dev", cs, [i for i in sa if not in_second_half(i)]),
    ]
    if sys.argv[1:2] == ["--chrono"]:
        # inside the first half in Date order (what `filterctl eval`'s chrono run trains on):
        # train on its first half, test its second -- never the second half that run reports
        sys.argv.pop(1)
        views = []
        for name, items in (("SA", sa), ("CSDMC", cs)):
            ordered = in_order(items, "date")[: len(items) // 2]
            views.append((f"{name} chrono/dev", ordered[: len(ordered) // 2], ordered[len(ordered) // 2 :]))
    print("each view: (1-ROCA)%, spam missed at <= 0.1% and at <= 1% of ham flagged")
    print(f"{'variant':<34}" + "".join(f"{name:>24}" for name, _, _ in views) + "   seconds")
    for spec in sys.argv[1:]:
        if spec == "bogofilter":  # the same views, bogofilter's figures
            started = time.time()
            cells = []
            for _, train, test in views:
                scores = train_test(Bogofilter(), train, test)
                cells.append(_cell(test, scores))
            print(f"{spec:<34}" + "".join(f"{c:>24}" for c in cells) + f"   {time.time() - started:7.0f}")
            continue
        params, drop = variant(spec)

        def filtered(msg, drop=drop):  # type: ignore[no-untyped-def]
            t = tokens(msg)
            if not drop:
                return t
            words = t.words
            if "pairs" in drop:  # every word alone: "" between words breaks every pair
                words = [w for word in words for w in (word, "")]
            return Tokens([n for n in t.names if not n.startswith(drop)], words)

        model_module.tokens = filtered  # type: ignore[assignment]
        started = time.time()
        cells = []
        for _, train, test in views:
            scores = train_test(filterd_bayes(params), train, test)
            cells.append(_cell(test, scores))
        print(
            f"{spec:<34}" + "".join(f"{c:>24}" for c in cells) + f"   {time.time() - started:7.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
