"""Peak memory of a stage's process tree: the process, its workers and its ranks, counted once each."""
from __future__ import annotations

import subprocess
import time
import sys

from asr_kd.pipeline.memory import PeakMemory, process_tree, pss_bytes, tree_bytes

MB = 2**20


def test_the_peak_counts_a_child_process_and_its_memory(monkeypatch) -> None:
    """A worker that holds 400 MB for two seconds raises the tree's peak by about that much; the parent alone never
    held it. The sampler's pacing is set to its interval here: a pytest process that has loaded torch takes tens of
    milliseconds per sample, and the pacing (tested below) would otherwise sleep through the child's lifetime."""
    from asr_kd.pipeline import memory

    monkeypatch.setattr(memory, "IDLE_PER_BUSY", 1)
    before = tree_bytes(PeakMemory().pid)
    child = "import time, numpy; a = numpy.ones(50_000_000); time.sleep(2.0)"  # 400 MB, touched
    with PeakMemory(interval_s=0.05) as peak:
        subprocess.run([sys.executable, "-c", child], check=True)
    assert peak.bytes is not None and peak.bytes - before > 350 * MB
    assert pss_bytes(PeakMemory().pid) - before < 100 * MB  # the parent itself did not grow


def test_the_tree_holds_the_process_and_its_descendants() -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"]) as child:
        try:
            tree = process_tree(PeakMemory().pid)
            assert tree[0] == PeakMemory().pid and child.pid in tree
            assert pss_bytes(child.pid) > 0
        finally:
            child.kill()
    assert pss_bytes(child.pid) == 0  # an ended process holds nothing


def test_a_slow_sample_makes_the_sampler_wait_longer(monkeypatch) -> None:
    """A sample that takes 20 ms (a torch process's page tables) is followed by at least a second of sleep, so the
    sampler takes a few percent of a core from the stage, not the third of it that a fixed interval would."""
    from asr_kd.pipeline import memory

    calls = []

    def slow_tree_bytes(pid: int) -> int:
        calls.append(time.perf_counter())
        while time.perf_counter() - calls[-1] < 0.02:  # busy, as reading smaps is
            pass
        return 1

    monkeypatch.setattr(memory, "tree_bytes", slow_tree_bytes)
    with PeakMemory(interval_s=0.01) as peak:
        time.sleep(2.5)
    assert peak.bytes == 1
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert 2 <= len(calls) <= 4 and all(g >= memory.IDLE_PER_BUSY * 0.02 for g in gaps), gaps
