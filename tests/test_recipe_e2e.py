"""The whole recipe, corpus to report, on a CI-sized corpus: every stage's outputs exist, the report has every
row, and re-running is idempotent (every stage skipped)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "recipes" / "synth" / "run.sh"


def _run(work_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ASR_KD_VENV=str(Path(sys.executable).parent.parent))
    return subprocess.run(["bash", str(RUN), "--config", "ci", "--work-dir", str(work_dir), *args],
                          capture_output=True, text=True, env=env, timeout=1500)


@pytest.mark.slow
def test_recipe_end_to_end(tmp_path):
    work = tmp_path / "exp1"
    first = _run(work)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]

    for split in ("train", "dev", "test"):
        assert (work / "data" / split / "wav.scp").exists()
        assert (work / "data" / "fbank" / split / "feats.scp").exists()
        assert (work / "exp" / "tri1_ali" / split / "pdf.scp").exists()
    assert (work / "exp" / "tri1" / "graph" / "HCLG.fst").exists()
    for system in ("baseline", "distilled", "small_hard", "small_soft"):
        assert (work / "exp" / "dnn" / system / "model.pt").exists(), system
    assert len(list((work / "exp" / "dnn" / "ensemble").glob("member*/model.pt"))) >= 2
    stages = sorted(p.parent.name for p in (work / "exp" / "stages").glob("*/.done"))
    assert len(stages) == 13, stages

    report = json.loads((work / "exp" / "report" / "report.json").read_text())
    for system in ("baseline", "ensemble", "distilled"):
        row = report["table1"][system]
        for key in ("dev_frame_acc", "test_frame_acc", "dev_wer", "test_wer", "test_wer_unseen"):
            assert isinstance(row[key], (int, float)), (system, key, row)
    small = report["small_data"]["systems"]
    for system in ("baseline_full", "small_hard", "small_soft"):
        assert isinstance(small[system]["train"], (int, float)) and isinstance(small[system]["test"], (int, float))
    md = (work / "exp" / "report" / "report.md").read_text()
    for row in ("baseline single model", "ensemble", "distilled single model", "baseline, 20%", "soft targets, 20%"):
        assert row in md
    for png in ("training_curves.png", "temperature_sweep.png", "table1.png"):
        assert (work / "exp" / "report" / png).stat().st_size > 1000
    assert (work / "RESULTS.md").read_text().startswith("# RESULTS")

    started = time.time()
    again = _run(work)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already done") == 13 or again.stdout.count("already done") == 13
    assert time.time() - started < 120
