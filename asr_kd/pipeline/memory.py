"""Peak memory of a stage: the process that runs it and every process it starts (workers, torchrun ranks).

A stage's memory is what decides the machine it needs, and it grows with the corpus at a rate that differs from
stage to stage. ``ru_maxrss`` sees one process only, and a stage spreads its work over ``nj`` worker processes
or ``procs`` torchrun ranks, so a background thread samples the whole process tree instead. It adds each
process's proportional set size (PSS: a page shared by n processes counts 1/n in each), so the libraries that
forked workers share with their parent are counted once, not once per worker. Sampling misses a peak shorter than
its interval; the stages' peaks come from arrays that live for seconds. Reading a process's PSS walks its page
tables (tens of milliseconds for a process that has loaded torch), so the sampler waits at least
:data:`IDLE_PER_BUSY` times as long as its last sample took: it never takes more than a few percent of one core
from the stage it measures.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType

PROC = Path("/proc")
IDLE_PER_BUSY = 50
"""The sampler sleeps at least this many times as long as a sample took (at most 2% of a core)."""


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from /proc/<pid>/stat (field 4, after the command name in parentheses)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children = _children_by_parent()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (its resident size where the kernel has no smaps_rollup); 0 once it
    has ended."""
    for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            for line in (PROC / str(pid) / name).read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return 0


def tree_bytes(pid: int) -> int:
    """Memory of ``pid`` and its descendants now (sum of their PSS)."""
    return sum(pss_bytes(p) for p in process_tree(pid))


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.bytes``: the largest memory of this process tree seen while
    the block ran (None where the system has no /proc to read)."""

    def __init__(self, interval_s: float = 0.2, pid: int | None = None) -> None:
        self.interval_s = interval_s
        self.pid = os.getpid() if pid is None else pid
        self.bytes: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)

    def _sample(self) -> None:
        while True:
            started = time.perf_counter()
            self.bytes = max(self.bytes or 0, tree_bytes(self.pid))
            if self._stop.wait(max(self.interval_s, IDLE_PER_BUSY * (time.perf_counter() - started))):
                return

    def __enter__(self) -> PeakMemory:
        if PROC.is_dir():
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
