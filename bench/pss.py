"""Memory and CPU of a set of processes, read from /proc.

PSS (proportional set size, /proc/PID/smaps_rollup) charges each shared page to the processes that
map it in equal parts, so the PSS of a parent and its forked workers adds up to the memory they
really hold together; RSS would count a page shared by three processes three times.  CPU is
utime + stime from /proc/PID/stat, in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (children, grandchildren...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def pss_mib(pids: list[int]) -> float:
    """The summed PSS of `pids`, in MiB (processes that are gone count 0)."""
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
                    break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total_kib / 1024


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids` so far, in seconds (processes that are gone count 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total / tick
