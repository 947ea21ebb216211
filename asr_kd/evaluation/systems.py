"""Trained acoustic models as "systems": what decoding and evaluation need from each, uniformly.

A system is one network (baseline, distilled, 3% models) or an ensemble of networks whose posteriors are
averaged. Evaluation and decoding only need frame-level log-posteriors, so that is the whole interface.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from asr_kd.distillation.ensemble import ensemble_log_posteriors
from asr_kd.nn.frames import FrameSet
from asr_kd.nn.inference import load_model, log_posteriors


@dataclass
class System:
    """A named acoustic model: one network, or several combined (``combine``: arith | geo mean)."""

    name: str
    model_paths: Sequence[Path]
    combine: str = "arith"

    def log_posteriors(self, frame_set: FrameSet, device: str = "cpu") -> torch.Tensor:
        """[N, C] log-posteriors at T=1, in the frame order of ``frame_set``."""
        models = [load_model(p, device=device) for p in self.model_paths]
        if len(models) == 1:
            return log_posteriors(models[0], frame_set)
        return ensemble_log_posteriors(models, frame_set, temperature=1.0, combine=self.combine)


def frame_accuracies(log_post: torch.Tensor, frame_set: FrameSet,
                     utt2subset: Mapping[str, str] | None = None) -> dict[str, float]:
    """Frame accuracy (%) overall and, when ``utt2subset`` is given, per subset (e.g. seen/unseen voice)."""
    correct = (log_post.argmax(dim=1).to(frame_set.targets.device) == frame_set.targets).cpu().numpy()
    result = {"all": round(100.0 * float(correct.mean()), 2)}
    if utt2subset:
        lengths = np.asarray(frame_set.utt_lengths.cpu())
        labels = np.repeat([utt2subset.get(u, "other") for u in frame_set.utt_ids], lengths)
        for subset in sorted(set(labels)):
            result[subset] = round(100.0 * float(correct[labels == subset].mean()), 2)
    return result


def split_by_utterance(matrix: np.ndarray, frame_set: FrameSet) -> dict[str, np.ndarray]:
    """Cut a frame-ordered [N, C] matrix back into per-utterance [T, C] pieces (for the decoder)."""
    bounds = np.cumsum([0, *np.asarray(frame_set.utt_lengths.cpu()).tolist()])
    return {u: matrix[bounds[i]:bounds[i + 1]] for i, u in enumerate(frame_set.utt_ids)}
