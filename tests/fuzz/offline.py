"""The offline pipeline the fuzz tests and bench/hostile.py drive: content checks only, no network.

The default configuration with the checks that talk to DNS, Redis or clamd turned off, the
shipped rules on and the classifier on with the shipped model (models/bayes.npz) read from its
file, no signature.  DNS points at a closed local port, so a check left on by mistake fails fast
instead of reaching out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from filterd.config import Config, parse_config
from filterd.pipeline import Pipeline
from filterd.registry import network_checks

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("FILTERD_CORPUS", ROOT.parent / "shared" / "corpus"))
HOSTILE = ROOT / "corpus" / "hostile"

# Checks that need DNS, Redis or clamd (they declare it: Cost.NETWORK): off offline.
NETWORK_CHECKS = network_checks()


def offline_config(**milter: Any) -> Config:
    """The default configuration, network checks off, rules and bayes on; `milter` overrides [milter]."""
    checks: dict[str, Any] = {name: {"enabled": False} for name in NETWORK_CHECKS}
    checks["rules"] = {"enabled": True}
    checks["bayes"] = {"enabled": True, "storage": "file", "signature": False}
    return parse_config(
        {
            "milter": milter,
            "dns": {"nameservers": ["127.0.0.1"], "port": 9, "timeout": 0.2},
            "checks": checks,
        }
    )


def offline_pipeline(**milter: Any) -> Pipeline:
    return Pipeline.from_config(offline_config(**milter))
