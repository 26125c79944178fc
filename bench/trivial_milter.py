"""A trivial pymilter milter (adds one header, accepts everything): the floor any Python milter pays.

    python bench/trivial_milter.py unix:/path/to.sock

Run by bench/throughput.py --trivial as a reference row: how much of filterd's cost is pymilter
and the milter protocol itself, measured on the same machine in the same run.
"""

from __future__ import annotations

import sys

import Milter


class Trivial(Milter.Base):  # type: ignore[misc]
    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        return Milter.CONTINUE

    def eom(self) -> int:
        self.addheader("X-Trivial", "yes")
        return Milter.ACCEPT


if __name__ == "__main__":
    Milter.factory = Trivial
    Milter.runmilter("trivial", sys.argv[1], timeout=60)
