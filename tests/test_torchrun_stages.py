"""Stages under torchrun: with procs=2 the CLI re-launches a stage that trains independent models under torchrun,
ensemble members are spread over the ranks (2 CPU processes, gloo), and rank 0 keeps the books."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_ensemble_stage_spreads_members_over_two_ranks(ci_experiment_copy: Path):
    work = ci_experiment_copy  # force=true: the copy's members are removed and trained again
    env = dict(os.environ, KALDI_ROOT="/tmp", PYTHONPATH=str(REPO))  # this checkout's code
    result = subprocess.run(
        [sys.executable, "-m", "asr_kd.cli", "--config-dir", str(REPO / "recipes" / "synth" / "conf"),
         "--config-name", "ci", "stage=ensemble", "force=true", f"work_dir={work}", "device=cpu", "train.epochs=1",
         "procs=2"], cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stage = work / "exp" / "stages" / "ensemble"
    log0, log1 = (stage / "log.txt").read_text(), (stage / "log.rank1.txt").read_text()
    assert "rank 0/2 trains members [0, 2]" in log0 and "rank 1/2 trains members [1]" in log1
    members = sorted(p.parent.name for p in (work / "exp" / "dnn" / "ensemble").glob("member*/model.pt"))
    assert members == ["member00", "member01", "member02"]
    summary = json.loads((stage / "summary.json").read_text())["summary"]
    assert len(summary["members"]["dev"]["members"]) == 3  # evaluated after both ranks finished
    assert (stage / ".done").exists()
