"""Export for deployment: the exported program gives the same scaled log-likelihoods as the package does."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from asr_kd.nn.export import export_model
from asr_kd.nn.frames import FrameSet
from asr_kd.nn.inference import load_model, log_posteriors, save_model
from asr_kd.nn.model import DNN, PRESETS
from asr_kd.nn.priors import log_priors
from decoding.decode import posteriors_to_loglikes
from features.kaldi_io import write_vector


def test_exported_model_matches_the_package_frame_for_frame(tmp_path: Path) -> None:
    cfg = dataclasses.replace(PRESETS["tiny"], left_context=4, right_context=2, feat_dim=8)
    torch.manual_seed(0)
    dnn = DNN(cfg, 7)
    save_model(tmp_path / "model.pt", cfg, 7, dnn.state_dict())
    counts = np.array([50, 0, 3, 20, 7, 1, 9], dtype=np.float32)  # one pdf never seen: floored, not divided by 0
    write_vector(tmp_path / "pdf_counts", counts)
    meta = export_model(tmp_path / "model.pt", tmp_path / "pdf_counts", tmp_path / "am.pt2")
    assert json.loads((tmp_path / "am.json").read_text()) == meta
    assert (meta["left_context"], meta["right_context"], meta["num_pdfs"]) == (4, 2, 7)

    exported = torch.export.load(tmp_path / "am.pt2").module()
    feats = torch.randn(13, 8)  # one utterance, shorter than nothing but longer than the context
    frames = FrameSet.from_tensors(feats, torch.zeros(13, dtype=torch.long), ["u"], [13], left=4, right=2)
    expected = posteriors_to_loglikes(log_posteriors(load_model(tmp_path / "model.pt"), frames).numpy(),
                                      log_priors(counts))
    np.testing.assert_allclose(exported(feats).detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    assert (exported(feats) < 1e3).all()  # the unseen pdf is floored, not made likely
    assert exported(feats[:1]).shape == (1, 7)  # a one-frame utterance: every context frame is itself
