"""How a user's own Bayes dictionary layered on the global model changes the figures, and what it costs.

    python bench/bayes_per_user.py [--users 8] [--order date|file] [--weights 1,5,10,30]
                                   [--direction both|sa-global|csdmc-global|none] [--cost N]

Accuracy (filterd_eval's corpora and figures, in-process, no Redis): the messages of one corpus are
split into `--users` pseudo-users by sha1(file name) mod users (fixed); each user's own mail, in
Date (or file) order, is trained into that user's dictionary for its first half and scored for its
second half.  The global model is the one filterd ships (trained on SpamAssassin's public corpus)
for CSDMC2010's users ("sa-global"), and, the other way round, a model trained on all of CSDMC2010
for SpamAssassin's users ("csdmc-global").  Every test message is scored by the global model alone,
by global + w * user for each weight (filterd.bayes.peruser.classify_layered: the code the check
runs), and by the user's dictionary alone; (1-ROCA)% and spam missed at <= 0.1% ham flagged over all
users' test halves pooled (filterd_eval.metrics).  A user with fewer than `min_user_learned` (10)
spam or ham in their first half is scored by the global model alone, as the check does.

Cost (`--cost N`, a private redis-server): the bayes check as the milter runs it on N corpus messages
to one user whose dictionary holds N others, per_user off then on: median wall and CPU per message.

Caveat: pseudo-users cut from one corpus share its senders and its era, so a user's dictionary here
is a small sample of the test distribution; real users' mail differs more from each other's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filterd.bayes.classifier import Features, classify_counts  # noqa: E402
from filterd.bayes.model import Model, message_digest  # noqa: E402
from filterd.bayes.peruser import UserCounts, classify_layered  # noqa: E402
from filterd.bayes.store import shipped_model  # noqa: E402
from filterd.message import Message  # noqa: E402
from filterd_eval.corpus import Item, corpus_root, in_order, load_folder  # noqa: E402
from filterd_eval.metrics import figures  # noqa: E402

MIN_USER_LEARNED = 10


class MemoryDictionary:
    """A user's dictionary as the Redis hash holds it (only the buckets they trained), in memory."""

    def __init__(self, trained: list[tuple[np.ndarray, bool]]) -> None:
        self.nspam = sum(1 for _, spam in trained if spam)
        self.nham = len(trained) - self.nspam
        if trained:
            every = np.concatenate([b for b, _ in trained])
            is_spam = np.concatenate([np.full(len(b), spam) for b, spam in trained])
        else:
            every, is_spam = np.empty(0, np.int64), np.empty(0, bool)
        self.buckets, index = np.unique(every, return_inverse=True)
        self.spam = np.bincount(index, weights=is_spam, minlength=len(self.buckets)).astype(np.int64)
        self.ham = np.bincount(index, weights=~is_spam, minlength=len(self.buckets)).astype(np.int64)

    def lookup(self, buckets: np.ndarray) -> UserCounts:
        at = np.minimum(np.searchsorted(self.buckets, buckets), max(len(self.buckets) - 1, 0))
        hit = (self.buckets[at] == buckets) if len(self.buckets) else np.zeros(len(buckets), bool)
        spam = np.where(hit, self.spam[at] if len(self.spam) else 0, 0)
        ham = np.where(hit, self.ham[at] if len(self.ham) else 0, 0)
        return UserCounts(spam, ham, self.nspam, self.nham)


def user_of(item: Item, users: int) -> int:
    return int.from_bytes(hashlib.sha1(Path(item.name).name.encode()).digest()[:8], "big") % users


def trained_on(items: list[Item]) -> Model:
    model = Model.empty()
    for item in items:
        msg = Message(item.raw)
        _, buckets = model.features(msg)
        model.train(message_digest(msg), buckets, item.label)
    return model


def evaluate(global_model: Model, items: list[Item], users: int, order: str, weights: list[float]) -> None:
    params = global_model.params
    y: list[bool] = []
    scores: dict[str, list[float]] = {"global": [], **{f"w={w:g}": [] for w in weights}, "user alone": []}
    layered_users = 0
    for u in range(users):
        mine = in_order([i for i in items if user_of(i, users) == u], order)
        half = len(mine) // 2
        features = [features_of(global_model, i) for i in mine]
        dictionary = MemoryDictionary(
            [(f.buckets, i.is_spam) for f, i in zip(features[:half], mine[:half], strict=True)]
        )
        used = min(dictionary.nspam, dictionary.nham) >= MIN_USER_LEARNED
        layered_users += used
        for f, item in zip(features[half:], mine[half:], strict=True):
            y.append(item.is_spam)
            alone = global_model.classify_tokens(f, f.buckets, params).spamicity
            scores["global"].append(alone)
            counts = dictionary.lookup(f.buckets)
            for w in weights:
                scores[f"w={w:g}"].append(
                    classify_layered(global_model.counts, f.buckets, f, counts, w, params).spamicity
                    if used
                    else alone
                )
            scores["user alone"].append(
                classify_counts(counts.spam, counts.ham, counts.nspam, counts.nham, f, params).spamicity
            )
    truth = np.array(y)
    print(
        f"  {len(truth)} test messages ({int(truth.sum())} spam), {users} users, "
        f"{layered_users} with >= {MIN_USER_LEARNED} spam and ham trained"
    )
    for name, values in scores.items():
        fig = figures(truth, np.array(values), 0.99)
        print(f"  {name:<11} (1-ROCA)% {fig.roca:7.4f}   spam missed at <= 0.1% ham {fig.fn_at_fp:6.2f}%")


def features_of(model: Model, item: Item) -> Features:
    return model.features(Message(item.raw))[0]


def cost(n: int) -> None:
    """The check as the milter runs it, per_user off and on, on n messages to one trained user."""
    from tests.harness.redis import RedisServer

    every = load_folder(corpus_root() / "csdmc2010")  # both classes, in a fixed mixed order
    items = sorted(every, key=lambda i: hashlib.sha1(i.name.encode()).digest())[: 2 * n]
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            _time_check(server.url, items)
        finally:
            server.stop()


def _time_check(url: str, items: list[Item]) -> None:
    import redis

    from filterd.bayes.peruser import UserDictionaries
    from filterd.config import parse_config, registered_checks
    from filterd.pipeline import Pipeline
    from filterd.transaction import Session, Transaction

    model = Model.load(shipped_model())
    users = UserDictionaries(redis.Redis.from_url(url), "pu:", 86400, 2000)
    train = [(i, model.features(Message(i.raw))[1]) for i in items[0::2]]  # the user's dictionary
    users.train([("alice@example.net", message_digest(Message(i.raw)), b, i.label) for i, b in train])
    print(f"  the user trained {len(train)} messages: {users.totals('alice@example.net')} (spam, ham)")
    items = items[1::2]  # timed on the others
    for per_user, rcpt in (
        (False, "alice@example.net"),
        (True, "alice@example.net"),
        (True, "bob@example.net"),  # never trained: looked up once a minute (UNTRAINED_RECHECK)
    ):
        checks = {c.name: {"enabled": False} for c in registered_checks() if c.name != "bayes"}
        checks["bayes"] = {"enabled": True, "per_user": per_user}
        pipeline = Pipeline.from_config(
            parse_config({"redis": {"url": url, "key_prefix": "pu:"}, "checks": checks})
        )
        check = next(c for c in pipeline.checks if c.name == "bayes")
        wall, cpu = [], []
        for item in items:
            tx = Transaction(session=Session(client_addr="192.0.2.1"), rcpts=[f"<{rcpt}>"])
            tx.raw_message, tx.size = item.raw, len(item.raw)
            tx.message.text  # noqa: B018 -- extracted by the checks before this one in the milter
            w0, c0 = time.perf_counter(), time.process_time()
            list(check.run(tx))
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        pipeline.close()
        print(
            f"  per_user {'on ' if per_user else 'off'}, to {rcpt}: median wall {statistics.median(wall) * 1e3:.3f} ms, "
            f"CPU {statistics.median(cpu) * 1e3:.3f} ms, mean wall {statistics.mean(wall) * 1e3:.3f} ms, "
            f"mean CPU {statistics.mean(cpu) * 1e3:.3f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--order", choices=["date", "file"], default="date")
    parser.add_argument("--weights", default="1,5,10,30")
    parser.add_argument("--direction", choices=["both", "sa-global", "csdmc-global", "none"], default="both")
    parser.add_argument("--cost", type=int, default=0, metavar="N", help="time the check on N messages")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    root = corpus_root()
    if args.direction in ("both", "sa-global"):
        print(f"global: the shipped model (SpamAssassin); users: csdmc2010 ({args.order} order)")
        evaluate(
            Model.load(shipped_model()), load_folder(root / "csdmc2010"), args.users, args.order, weights
        )
    if args.direction in ("both", "csdmc-global"):
        print(f"global: trained on all of csdmc2010; users: spamassassin-public ({args.order} order)")
        glob = trained_on(load_folder(root / "csdmc2010"))
        evaluate(glob, load_folder(root / "spamassassin-public"), args.users, args.order, weights)
    if args.cost:
        print(f"cost of the check, {args.cost} csdmc2010 messages to one user (pid {os.getpid()}):")
        cost(args.cost)


if __name__ == "__main__":
    main()
