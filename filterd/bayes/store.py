"""Where a process gets its model: the file, reloaded when it changes, or the shared model in Redis.

`storage = "file"`: the model file is the model.  `filterctl train` rewrites it (atomically) and
every filterd process notices the new file within `sync_interval` seconds (one stat call) and
reloads it.

`storage = "redis"`: the file is only the seed; the model is the seed (or the shared snapshot) plus
the shared training log (see shared.py), followed every `sync_interval` seconds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filterd.bayes.model import Model, ModelError
from filterd.bayes.shared import SharedModel
from filterd.datafiles import shipped

log = logging.getLogger("filterd.bayes")


def shipped_model() -> Path:
    """The model filterd ships: models/bayes.npz beside the package in a source checkout, else
    <prefix>/share/filterd/models/bayes.npz where the wheel installs it (pyproject's data-files)."""
    return shipped("models/bayes.npz")


SHIPPED_MODEL = shipped_model()


def model_path(setting: str) -> Path:
    return Path(setting) if setting else SHIPPED_MODEL


def load_or_empty(path: Path) -> Model:
    """The model at `path`; an empty model when there is no file yet (a first training creates it)."""
    if not path.exists():
        log.warning("no bayes model at %s: starting from an empty model", path)
        return Model.empty()
    return Model.load(path)


class ModelHolder:
    def __init__(
        self,
        path: Path,
        storage: str,
        redis: Callable[[], Any],
        key_prefix: str,
        log_max: int = 100_000,
        sync_interval: float = 2.0,
    ) -> None:
        self.path = path
        self.storage = storage
        self.sync_interval = sync_interval
        self._stat = _stat(path)
        self.seed = load_or_empty(path)
        self._redis = redis
        self._key_prefix = key_prefix
        self._log_max = log_max
        self.shared: SharedModel | None = None
        self._next_refresh = 0.0

    @property
    def model(self) -> Model:
        return self.shared.model if self.shared is not None and self.shared.loaded else self.seed

    def client(self) -> SharedModel:
        """The shared model's Redis side, not loaded: enough for signatures."""
        if self.shared is None:
            self.shared = SharedModel(self._redis(), self._key_prefix, self.seed, self._log_max)
        return self.shared

    def connect(self) -> SharedModel:
        """The shared model (storage = "redis"), loading it on first use.  Raises Redis errors."""
        shared = self.client()
        if not shared.loaded:
            shared.load()
        return shared

    def refresh(self, follow_shared: bool = True, force: bool = False) -> None:
        """At most every `sync_interval` s: reload a changed file, and (storage = "redis",
        `follow_shared`) apply the shared log.  A Redis error propagates for the caller's policy;
        the model in use stays."""
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return
        self._next_refresh = now + self.sync_interval
        stat = _stat(self.path)
        if stat != self._stat:
            try:
                seed = load_or_empty(self.path)
            except ModelError as exc:
                log.error("keeping the loaded bayes model: %s", exc)
            else:
                self._stat, self.seed = stat, seed
                log.info("reloaded the bayes model %s (%d spam, %d ham)", self.path, seed.nspam, seed.nham)
                if self.shared is not None:
                    self.shared.seed = seed
                    self.shared.loaded = False
        if self.storage == "redis" and follow_shared:
            self.connect().sync()


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
