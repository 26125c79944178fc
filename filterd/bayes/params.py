"""The classifier's scoring parameters (classifier.py explains each).  Kept apart from the numpy code so
the configuration schema can name the defaults without importing numpy and scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Params:
    robs: float = 0.1  # Robinson's s: how many messages the prior x is worth (classifier.py: why 0.1)
    robx: float = 0.52  # Robinson's x: the spam probability of a token never seen
    min_dev: float = 0.4  # tokens with |f - 0.5| below this are not evidence
    max_clues: int = 500  # at most this many of the strongest tokens are combined
    prior_messages: float = 1.0  # k: how many messages the prior token rate r0 is worth, per class
    prior_rate: float = 0.03  # r0: the rate of a token in a class before any message of it is seen
