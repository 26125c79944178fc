"""Symbol vectors of labelled mail: what the offline pipeline finds in each message of a corpus.

This is the data the score combination is fitted and measured on (`filterd.combination_fit`,
`filterctl rules stats|fit|eval`).  For every message of a labelled folder it records the symbols
the configured checks emit and their table scores, and the message's Bayes features (token
buckets), so a spamicity can be computed later by a model trained on *other* messages only.

Three things make the vectors honest on old corpora:

- **Forgeable upstream headers are stripped first** (X-Spam-*, X-DSPAM-*, X-Bogosity, X-Virus-*):
  a corpus collected behind another filter carries that filter's verdict, which a rule or the
  classifier would otherwise learn to read.
- **No network.**  SPF, DKIM, ARC, DMARC (and the Authentication-Results they feed), reverse-DNS
  and sender-domain lookups, Redis-backed state (reputation, greylisting, rate limits) and clamd
  are off, and the resolver points at a closed local port in case anything is left.  What DNS
  said about a 2002 message in 2002 cannot be asked today (keys rotated, domains gone); asking
  anyway would teach the combination what today's DNS thinks of old mail.  Those symbols are not
  in the fitted model and keep their table scores at run time (`filterd.combination`).
- **The message's age is neutralised**: header_sanity's clock is set, per message, to the time
  the message was received -- the date of its topmost Received header (the last hop, the
  recipient's own server), else its Date.  filterd meets a message at that moment, so
  DATE_IN_PAST / DATE_IN_FUTURE mean what they mean in production (a Date far from the time of
  receipt), instead of firing on every message of a 2002 corpus.  Dropping the two symbols
  would also remove the age, but would lose the real signal of spam with forged dates.
"""

from __future__ import annotations

import csv
import dataclasses
import email.utils
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filterd.check import Stage
from filterd.config import Config, without_network
from filterd.registry import all_checks, network_checks

if TYPE_CHECKING:
    import numpy as np

    from filterd.pipeline import Pipeline

SPAM, HAM = "spam", "ham"

# Headers written by filters upstream of the corpus's collector: their verdicts, not the message.
UPSTREAM_VERDICT_PREFIXES = (b"x-spam-", b"x-dspam-", b"x-bogosity", b"x-virus-")

# Checks whose answer depends on the network or on state built from other mail (see above): the
# ones that declare Cost.NETWORK (asking blocklists today about old mail says nothing of then),
# the finishers (they only write headers), and the classifier (its spamicity is computed apart,
# from a model that never saw the message).
NETWORK_CHECKS = (
    *network_checks(),
    *(c.name for c in all_checks() if c.stage is Stage.FINISH),
    "bayes",
)


def default_corpus_root() -> Path:
    """$FILTERD_CORPUS, else ../shared/corpus beside the source checkout."""
    here = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("FILTERD_CORPUS", here.parent / "shared" / "corpus"))


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    label: str  # SPAM or HAM

    @property
    def is_spam(self) -> bool:
        return self.label == SPAM


def labelled_files(folder: Path) -> list[LabelledFile]:
    """The messages of a labelled folder: its manifest.csv (path,label,...) when it has one, else
    every file under its spam/ and ham/ subdirectories.  Sorted by path, so runs are repeatable."""
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        files = [LabelledFile(folder / r["path"], r["label"]) for r in rows]
        bad = [f for f in files if f.label not in (SPAM, HAM)]
        if bad:
            raise ValueError(f"{manifest}: label {bad[0].label!r} of {bad[0].path} is neither spam nor ham")
    else:
        files = []
        for label in (SPAM, HAM):
            sub = folder / label
            if not sub.is_dir():
                raise ValueError(f"{folder} has no manifest.csv and no {label}/ subdirectory")
            files += [
                LabelledFile(p, label) for p in sub.rglob("*") if p.is_file() and not p.name.startswith(".")
            ]
    return sorted(files, key=lambda f: str(f.path))


def from_dirs(ham: Path, spam: Path) -> list[LabelledFile]:
    """An admin's own mail: every file under a ham and a spam directory."""
    out = []
    for folder, label in ((ham, HAM), (spam, SPAM)):
        out += [
            LabelledFile(p, label) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
        ]
    return sorted(out, key=lambda f: str(f.path))


def in_second_half(path: Path) -> bool:
    """The fixed hash-half split used everywhere: odd first byte of sha256(file name)."""
    return hashlib.sha256(path.name.encode()).digest()[0] & 1 == 1


def strip_upstream_verdicts(raw: bytes) -> bytes:
    """`raw` without the header fields (folds included) that carry an upstream filter's verdict."""
    end = _header_end(raw)
    kept: list[bytes] = []
    dropping = False
    for line in raw[:end].splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):  # a fold: belongs to the field above
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(UPSTREAM_VERDICT_PREFIXES)
        if not dropping:
            kept.append(line)
    return b"".join(kept) + raw[end:]


def _header_end(raw: bytes) -> int:
    ends = [i + len(sep) // 2 for sep in (b"\r\n\r\n", b"\n\n") if (i := raw.find(sep)) >= 0]
    return min(ends) if ends else len(raw)


def received_time(headers: Sequence[tuple[str, str]]) -> float | None:
    """When the message was received: the date of the topmost Received header, else its Date."""
    received = [v for n, v in headers if n.lower() == "received"]
    candidates = [received[0].rpartition(";")[2]] if received else []
    candidates += [v for n, v in headers if n.lower() == "date"][:1]
    for text in candidates:
        try:
            return email.utils.parsedate_to_datetime(text.strip()).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
    return None


def offline_config(config: Config) -> Config:
    """`config` without the network (`without_network`), without the finishers and the classifier
    (see NETWORK_CHECKS), and with no CPU budget."""
    config = without_network(config)
    checks = config.checks
    changes = {
        name: dataclasses.replace(getattr(checks, name), enabled=False)
        for name in NETWORK_CHECKS
        if hasattr(checks, name)
    }
    milter = dataclasses.replace(config.milter, cpu_budget=0.0)  # a loaded machine must not change hits
    return dataclasses.replace(config, checks=dataclasses.replace(checks, **changes), milter=milter)


@dataclass
class Vector:
    """One message: its label, the symbols hit (with their table scores) and its Bayes buckets."""

    file: str
    spam: bool
    symbols: dict[str, float]
    buckets: np.ndarray | None = None


class OfflineScanner:
    """The configured pipeline, offline and with the message's age neutralised (see the module)."""

    def __init__(self, config: Config) -> None:
        from filterd.checks.header_sanity import HeaderSanity
        from filterd.pipeline import Pipeline

        self.pipeline: Pipeline = Pipeline.from_config(offline_config(config))
        self.clocked = [c for c in self.pipeline.checks if isinstance(c, HeaderSanity)]

    def symbols(self, raw: bytes) -> dict[str, float]:
        from filterd.driver import scan
        from filterd.message import Message

        when = received_time(Message(raw).headers)
        for check in self.clocked:
            check.clock = functools.partial(float, when) if when is not None else time.time
        _, verdict = scan(self.pipeline, raw)
        out: dict[str, float] = {}
        for s in verdict.symbols:
            out[s.name] = out.get(s.name, 0.0) + s.score
        return out

    def close(self) -> None:
        self.pipeline.close()


def vectors(
    files: Sequence[LabelledFile],
    config: Config,
    with_buckets: bool = True,
    progress: Callable[[int], None] = lambda n: None,
) -> list[Vector]:
    """Scan every file offline; the Bayes buckets come from the default-size hasher."""
    scanner = OfflineScanner(config)
    hasher = _bayes_features() if with_buckets else None
    out: list[Vector] = []
    try:
        for n, item in enumerate(files):
            raw = strip_upstream_verdicts(item.path.read_bytes())
            vec = Vector(str(item.path), item.is_spam, scanner.symbols(raw))
            if hasher is not None:
                vec.buckets = hasher(raw)
            out.append(vec)
            if n % 500 == 499:
                progress(n + 1)
    finally:
        scanner.close()
    return out


def _bayes_features() -> Callable[[bytes], np.ndarray]:
    from filterd.bayes.model import Model
    from filterd.message import Message

    model = Model.empty()

    def features(raw: bytes) -> np.ndarray:
        return model.features(Message(raw))[1]

    return features


# -- a cache for iterating (never in the repository: pass a directory such as /tmp/...) --------


def cache_key(files: Sequence[LabelledFile], config: Config) -> str:
    """Changes when the files, the rule files, the configuration or the tokenizer change."""
    from filterd.bayes import tokenizer
    from filterd.rules import shipped_dir

    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.path}\0{f.label}\0{f.path.stat().st_size}\n".encode())
    rules = config.check_settings("rules")
    for d in (rules.default_dir or str(shipped_dir()), rules.local_dir):
        if d and Path(d).is_dir():
            for p in sorted(Path(d).glob("*.toml")):
                h.update(p.name.encode() + p.read_bytes())
    h.update(repr(config).encode())
    h.update(str(getattr(tokenizer, "TOKENIZER_VERSION", "")).encode())
    for module in ("filterd/checks", "filterd/rules"):  # the checks' code decides what hits
        for p in sorted((Path(__file__).resolve().parent.parent / module).glob("*.py")):
            h.update(p.read_bytes())
    return h.hexdigest()[:20]


def cached_vectors(
    files: Sequence[LabelledFile],
    config: Config,
    cache_dir: Path | None,
    progress: Callable[[int], None] = lambda n: None,
) -> list[Vector]:
    """`vectors`, read from (or written to) `cache_dir` when one is given."""
    import numpy as np

    if cache_dir is None:
        return vectors(files, config, progress=progress)
    key = cache_key(files, config)
    meta, arrays = cache_dir / f"vectors-{key}.json", cache_dir / f"vectors-{key}.npz"
    if meta.is_file() and arrays.is_file():
        rows = json.loads(meta.read_text())
        with np.load(arrays, allow_pickle=False) as data:
            flat, offsets = data["buckets"], data["offsets"]
        return [
            Vector(r["file"], r["spam"], r["symbols"], flat[offsets[i] : offsets[i + 1]])
            for i, r in enumerate(rows)
        ]
    out = vectors(files, config, progress=progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps([_row(v) for v in out]))
    sizes = [len(v.buckets) if v.buckets is not None else 0 for v in out]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = np.concatenate([v.buckets for v in out if v.buckets is not None] or [np.empty(0, np.int64)])
    np.savez(arrays, buckets=flat, offsets=offsets)
    return out


def _row(v: Vector) -> dict[str, Any]:
    return {"file": v.file, "spam": v.spam, "symbols": v.symbols}
