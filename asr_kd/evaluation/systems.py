"""Trained acoustic models as "systems": what decoding and evaluation need from each, uniformly.

A system is one network (baseline, distilled, 3% models) or an ensemble of networks whose posteriors are
averaged. Evaluation and decoding only need frame-level log-posteriors, so that is the whole interface.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asr_kd.distillation.ensemble import combine_log_probs, ensemble_log_posteriors, iter_member_logits_and_targets
from asr_kd.nn.frames import Frames, FrameSet
from asr_kd.nn.inference import iter_log_posteriors_and_targets, load_model, log_posteriors


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

    def iter_log_posteriors(self, frames: Frames, device: str | torch.device = "cpu", batch_size: int = 4096
                            ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(first frame, log-posteriors [b, C] at T=1, targets [b]) batch by batch in frame order, on ``device``: the
        rows of :meth:`log_posteriors` without holding [N, C] (a split streamed from disk)."""
        models = [load_model(p, device=device) for p in self.model_paths]
        if len(models) == 1:
            yield from iter_log_posteriors_and_targets(models[0], frames, batch_size)
            return
        for start, logits, targets in iter_member_logits_and_targets(models, frames, batch_size):
            yield start, combine_log_probs(torch.log_softmax(logits / 1.0, dim=-1), self.combine), targets

    def iter_predictions(self, frames: Frames, device: str | torch.device = "cpu"
                         ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(utterance, arg-max pdf of every frame (int32), its target) for every utterance of ``frames``, in order."""
        batches = ((p.argmax(dim=1).to(torch.int32).cpu().numpy(), y.cpu().numpy())
                   for _, p, y in self.iter_log_posteriors(frames, device))
        yield from per_utterance(batches, frames.utt_ids, frames.utt_lengths.tolist())


class FrameAccuracy:
    """Frame accuracy (%) overall and, with ``utt2subset``, per subset (e.g. seen/unseen voice), counted utterance
    by utterance: the numbers :func:`numpy.mean` of the per-frame hits would give, without holding them."""

    def __init__(self, utt2subset: Mapping[str, str] | None = None) -> None:
        self.utt2subset = utt2subset or {}
        self.counts: dict[str, list[int]] = {}

    def add(self, utt: str, pred: np.ndarray, targets: np.ndarray) -> None:
        hits, frames = int((pred == targets).sum()), int(pred.shape[0])
        keys = ["all", self.utt2subset.get(utt, "other")] if self.utt2subset else ["all"]
        for key in keys:
            count = self.counts.setdefault(key, [0, 0])
            count[0] += hits
            count[1] += frames

    def result(self) -> dict[str, float]:
        """``{"all": %, <subset>: %...}``, subsets in sorted order, each rounded to 2 decimals."""
        out = {}
        for key in ["all", *sorted(k for k in self.counts if k != "all")]:
            hits, frames = self.counts.get(key, (0, 0))
            out[key] = round(100.0 * (hits / frames if frames else float("nan")), 2)
        return out


def per_utterance(batches: Iterable[tuple[np.ndarray, ...]], utt_ids: Sequence[str], utt_lengths: Sequence[int]
                  ) -> Iterator[tuple]:
    """Cut frame-ordered batches of arrays (each tuple's arrays with the same first dimension) into utterances:
    ``(utt, arrays of its frames...)`` in order, holding at most one batch and one utterance."""
    utts = list(zip(utt_ids, utt_lengths, strict=True))
    i, held, have = 0, [], 0
    for batch in batches:
        held.append(batch)
        have += batch[0].shape[0]
        while i < len(utts) and have >= utts[i][1]:
            utt, n = utts[i]
            parts = [np.concatenate([b[j] for b in held]) if len(held) > 1 else held[0][j] for j in range(len(batch))]
            yield (utt, *(p[:n] for p in parts))
            held, have, i = [tuple(p[n:] for p in parts)], have - n, i + 1
    if i < len(utts) or have:
        raise ValueError(f"the batches hold {have} frames beyond the utterances, or too few for {len(utts) - i} "
                         f"of them")


def split_by_utterance(matrix: np.ndarray, frame_set: Frames) -> dict[str, np.ndarray]:
    """Cut a frame-ordered [N, C] matrix back into per-utterance [T, C] pieces (for the decoder)."""
    bounds = np.cumsum([0, *np.asarray(frame_set.utt_lengths.cpu()).tolist()])
    return {u: matrix[bounds[i]:bounds[i + 1]] for i, u in enumerate(frame_set.utt_ids)}


def agreement(reference: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray]) -> float:
    """Share of frames (%) where ``predictions`` pick the pdf ``reference`` picks (a teacher's arg-max), over the
    utterances of ``predictions`` (each must be in ``reference``, frame for frame)."""
    hits = frames = 0
    for utt, pred in predictions.items():
        ref = reference[utt]
        if ref.shape != pred.shape:
            raise ValueError(f"utterance {utt}: {pred.shape[0]} predicted frames, {ref.shape[0]} reference frames")
        hits += int((ref == pred).sum())
        frames += int(pred.shape[0])
    return 100.0 * hits / max(1, frames)
