#!/usr/bin/env python3
"""Write the man pages of filterctl and each of its commands (filterctl.1, filterctl-config-show.1,
...) from the CLI itself, with click-man (a dev dependency), so they cannot drift from --help.

    .venv/bin/python scripts/manpages.py [TARGET_DIR]     # default: build/man
    man -l build/man/filterctl-config-show.1
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's filterd

from click_man.core import write_man_pages

from filterd.cli.filterctl import cli


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else "build/man")
    target.mkdir(parents=True, exist_ok=True)
    write_man_pages("filterctl", cli, version=importlib.metadata.version("filterd"), target_dir=str(target))
    pages = sorted(p.name for p in target.glob("filterctl*.1"))
    print(f"{len(pages)} man pages in {target}: {', '.join(pages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
