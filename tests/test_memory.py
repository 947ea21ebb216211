"""Peak memory of a stage's process tree: the process, its workers and its ranks, counted once each."""
from __future__ import annotations

import subprocess
import sys

from asr_kd.pipeline.memory import PeakMemory, process_tree, pss_bytes, tree_bytes

MB = 2**20


def test_the_peak_counts_a_child_process_and_its_memory() -> None:
    """A worker that holds 400 MB for a second raises the tree's peak by about that much; the parent alone never
    held it."""
    before = tree_bytes(PeakMemory().pid)
    child = "import time, numpy; a = numpy.ones(50_000_000); time.sleep(1.0)"  # 400 MB, touched
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
