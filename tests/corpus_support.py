"""The corpus generator scripts (corpus/make_*.py), loaded as modules: they are scripts, not a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def load_corpus_script(name: str) -> ModuleType:
    """corpus/NAME.py as a module (e.g. "make_hostile", "make_edge")."""
    spec = importlib.util.spec_from_file_location(name, CORPUS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
