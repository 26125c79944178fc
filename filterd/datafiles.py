"""Where the data filterd ships (rule files, models) is found."""

from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent  # the repository, in a source checkout


def shipped(relative: str) -> Path:
    """`relative` (e.g. ``models/bayes.npz``, ``rules``) beside the package in a source checkout,
    else under ``<prefix>/share/filterd`` where the wheel installs it (pyproject's data-files)."""
    checkout = _CHECKOUT / relative
    if checkout.exists():
        return checkout
    return Path(sys.prefix) / "share" / "filterd" / relative
