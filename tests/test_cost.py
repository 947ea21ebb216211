"""What a system costs to run (asr_kd.evaluation.cost): parameters and multiply-accumulates per frame against a hand
count for small networks and a small GMM, and the timings normalised to seconds per second of audio."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_kd.bench import random_frame_set
from asr_kd.evaluation import cost
from asr_kd.evaluation.cost import FRAME_SECONDS, dnn_cost, dnn_macs_per_frame, gmm_cost
from asr_kd.nn.inference import save_model
from asr_kd.nn.model import DNN, ModelConfig
from decoding.gmm_accum import GmmParams

# A window of 3 frames of 2 coefficients (input 6), two hidden layers of 3 units, 4 classes: 6x3 + 3x3 + 3x4 = 39
# weights (one multiply-accumulate each per frame) and 3 + 3 + 4 = 10 biases, 49 parameters.
SMALL = ModelConfig(hidden_layers=2, hidden_dim=3, left_context=1, right_context=1, feat_dim=2)
CLASSES = 4
SMALL_MACS, SMALL_PARAMS = 39, 49


def test_dnn_macs_per_frame_is_the_hand_count() -> None:
    assert dnn_macs_per_frame(DNN(SMALL, CLASSES)) == SMALL_MACS
    wider = ModelConfig(hidden_layers=1, hidden_dim=16, left_context=20, right_context=5, feat_dim=40)
    assert dnn_macs_per_frame(DNN(wider, 364)) == 1040 * 16 + 16 * 364  # a CI student's shape


def test_dnn_cost_of_an_ensemble_sums_its_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two members: twice the hand count of parameters and MACs, both files' bytes, and the timing of the members'
    averaged posteriors over the first frames, on one CPU thread, per second of audio."""
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = DNN(SMALL, CLASSES)
        paths.append(tmp_path / f"m{seed}" / "model.pt")
        save_model(paths[-1], SMALL, CLASSES, model.state_dict())
    timed = []

    def fake_seconds(work, device: torch.device, min_seconds: float) -> float:
        timed.append((device.type, torch.get_num_threads(), tuple(work().shape)))
        return 0.25

    monkeypatch.setattr(cost, "_seconds", fake_seconds)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    frames = random_frame_set(SMALL, 130, CLASSES, torch.device("cpu"), utt_len=40)
    threads = torch.get_num_threads()
    result = dnn_cost(paths, frames, max_frames=50)
    assert (result.params, result.macs_per_frame) == (2 * SMALL_PARAMS, 2 * SMALL_MACS)
    assert result.file_bytes == sum(p.stat().st_size for p in paths)
    assert result.frames_timed == 50 and result.gpu_rtf is None
    assert result.cpu1_rtf == pytest.approx(0.25 / (50 * FRAME_SECONDS))
    assert timed == [("cpu", 1, (50, CLASSES))] and torch.get_num_threads() == threads
    assert dnn_cost(paths[:1], frames, max_frames=500).frames_timed == 130  # fewer frames than the cap: all of them


def test_gmm_cost_is_the_hand_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """5 diagonal Gaussians of dimension 3 in 2 pdfs: a weight, a mean and a variance vector each (5 x 7 = 35
    parameters), two dot products of 3 per frame and Gaussian (30 MACs)."""
    rng = np.random.default_rng(0)
    params = GmmParams(offsets=np.array([0, 2, 5]), gconst=np.zeros(5), means_invvars=rng.normal(size=(5, 3)),
                       inv_vars=np.ones((5, 3)), weights=np.full(5, 0.2))
    model_file = tmp_path / "final.mdl"
    model_file.write_bytes(b"x" * 1234)
    monkeypatch.setattr(cost, "_seconds", lambda work, device, min_seconds: (work(), 0.5)[1])
    result = gmm_cost(model_file, params, [rng.normal(size=(70, 3)), rng.normal(size=(50, 3))], max_frames=100)
    assert (result.params, result.macs_per_frame, result.file_bytes) == (35, 30, 1234)
    assert result.frames_timed == 100 and result.cpu1_rtf == pytest.approx(0.5 / (100 * FRAME_SECONDS))


def test_timing_is_the_best_repeat_after_a_warm_up_until_the_minimum_time() -> None:
    calls = []

    def work() -> None:
        calls.append(time.perf_counter())
        time.sleep(0.01)

    best = cost._seconds(work, torch.device("cpu"), min_seconds=0.05)
    assert len(calls) >= 6  # the warm-up, then repeats until 0.05 s were spent
    # a repeat's own timer sits inside the gap between two calls but not exactly on it: microseconds either way
    assert 0.01 <= best <= min(b - a for a, b in zip(calls[1:], calls[2:])) + 5e-4
