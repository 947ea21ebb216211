"""The DNN stages with every split streamed from disk: a split that fits in one buffer streams in the in-memory
order and is evaluated in the in-memory batches, so the whole DNN side of a run (models, soft targets, predictions,
accuracies) comes out bit for bit as it does in memory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from asr_kd.conf.schema import register
from asr_kd.pipeline.stages import STAGES
from asr_kd.pipeline.workspace import Workspace
from features.errors import InputError

REPO = Path(__file__).resolve().parent.parent
DNN_STAGES = ("baseline", "ensemble", "soft_targets", "distill", "small_data", "students")


@pytest.mark.slow
def test_streamed_dnn_stages_give_the_in_memory_run_bit_for_bit(ci_experiment: Path,
                                                                  ci_experiment_copy: Path) -> None:
    work = ci_experiment_copy
    env = dict(os.environ, KALDI_ROOT="/tmp", PYTHONPATH=str(REPO))  # this checkout's code
    result = subprocess.run(
        [sys.executable, "-m", "asr_kd.cli", "--config-dir", str(REPO / "recipes" / "synth" / "conf"),
         "--config-name", "ci", f"stage='{','.join(DNN_STAGES)}'", "force=true", f"work_dir={work}", "device=cpu",
         "data.stream=true", "data.shard_frames=5000", "data.block_frames=1000"],
        cwd=work, capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    archive = json.loads((work / "exp" / "frames" / "train" / "meta.json").read_text())
    assert len(archive["shards"]) > 1  # read a shard at a time, batches joined across shard edges

    # every model but the transfer stage's: a transfer set with untranscribed audio is held in memory
    models = sorted(p.relative_to(ci_experiment) for p in (ci_experiment / "exp" / "dnn").rglob("model.pt")
                    if p.parent.parent.name != "transfer")
    assert len(models) > 10
    for rel in models:
        assert (work / rel).stat().st_mtime > (ci_experiment / rel).stat().st_mtime, rel  # trained again, streamed
        a, b = (torch.load(root / rel, weights_only=True)["state_dict"] for root in (ci_experiment, work))
        assert all(torch.equal(a[k], b[k]) for k in a), rel
    for soft in (ci_experiment / "exp" / "soft_targets").iterdir():
        for name in ("indices", "probs", "mass_kept"):
            assert np.array_equal(np.load(soft / f"{name}.npy"), np.load(work / soft.relative_to(ci_experiment)
                                                                          / f"{name}.npy")), (soft.name, name)
    preds = sorted(p.relative_to(ci_experiment) for p in (ci_experiment / "exp" / "eval").rglob("pred.ark"))
    assert preds and all((ci_experiment / p).read_bytes() == (work / p).read_bytes() for p in preds)
    for stage in ("baseline", "distill", "small_data"):
        summaries = [json.loads((root / "exp" / "stages" / stage / "summary.json").read_text())["summary"]
                     for root in (ci_experiment, work)]
        assert summaries[0] == summaries[1], stage


@pytest.mark.slow
def test_a_streamed_training_split_stops_the_transfer_stage_with_a_clear_error(ci_experiment_copy: Path) -> None:
    """A transfer set with untranscribed audio is held in memory: with the training split streamed, the stage says
    so and what to do, before it computes anything."""
    register()
    with initialize_config_dir(str(REPO / "recipes" / "synth" / "conf"), version_base="1.3"):
        cfg = compose("ci", overrides=[f"work_dir={ci_experiment_copy}", "data.stream=true", "device=cpu"])
    ws = Workspace(ci_experiment_copy)
    before = sorted(p.stat().st_mtime_ns for p in ws.transfer.rglob("model.pt"))
    with pytest.raises(InputError, match="held in memory"):
        STAGES["transfer"](cfg, ws)
    assert sorted(p.stat().st_mtime_ns for p in ws.transfer.rglob("model.pt")) == before  # nothing lost
