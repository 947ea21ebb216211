"""The paper's DNN input: a window of frames around each frame (20 left, 5 right: 26 x 40 = 1040 values).

Training draws random frames from the whole corpus, so windows are gathered on demand from one matrix of all
utterances concatenated instead of being stored spliced (26x the memory). Frames beyond an utterance's edges
are replaced by its first/last frame, as Kaldi's ``splice-feats`` does, and never come from the neighbouring
utterance in the concatenation.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class ContextWindows:
    """Gather spliced context windows for a batch of global frame indices with a few tensor ops.

    ``feats`` is ``[N, D]`` (all utterances concatenated, any dtype, CPU or GPU); ``utt_lengths`` the frame
    count of each utterance in order (summing to ``N``). Per-frame first/last frame indices of the owning
    utterance are precomputed (int32, 8 bytes per frame) on ``feats``' device, so a call is one clamp and one
    gather with no per-frame Python.
    """

    def __init__(self, feats: torch.Tensor, utt_lengths: torch.Tensor | Sequence[int], left: int = 20,
                 right: int = 5) -> None:
        if feats.ndim != 2:
            raise ValueError(f"feats must be [N, D], got shape {tuple(feats.shape)}")
        if left < 0 or right < 0:
            raise ValueError(f"context must be non-negative, got left={left}, right={right}")
        lengths = torch.as_tensor(utt_lengths, dtype=torch.int64).to(feats.device)
        if lengths.ndim != 1 or bool((lengths < 0).any()):
            raise ValueError("utt_lengths must be a 1-d sequence of non-negative frame counts")
        if int(lengths.sum()) != feats.shape[0]:
            raise ValueError(f"utt_lengths sum to {int(lengths.sum())} but feats has {feats.shape[0]} frames")
        if feats.shape[0] >= 2 ** 31:
            raise ValueError("more than 2^31 frames are not supported (int32 frame bounds)")
        ends = torch.cumsum(lengths, 0)
        starts = ends - lengths
        self.feats = feats
        self.left = left
        self.right = right
        self.first = torch.repeat_interleave(starts, lengths).to(torch.int32)
        self.last = torch.repeat_interleave(ends - 1, lengths).to(torch.int32)
        self.offsets = torch.arange(-left, right + 1, device=feats.device)

    def __len__(self) -> int:
        return self.feats.shape[0]

    @property
    def output_dim(self) -> int:
        """Width of one window: ``(left + 1 + right) * D``."""
        return (self.left + 1 + self.right) * self.feats.shape[1]

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """Windows ``[B, (left+1+right)*D]`` for global frame indices ``idx`` ``[B]``, earliest frame first."""
        positions = idx[:, None] + self.offsets[None, :]
        positions = torch.maximum(positions, self.first[idx].long()[:, None])
        positions = torch.minimum(positions, self.last[idx].long()[:, None])
        return self.feats[positions].reshape(idx.shape[0], self.output_dim)


def splice(feats: np.ndarray, left: int, right: int) -> np.ndarray:
    """Splice one utterance ``[T, D]`` into ``[T, (left+1+right)*D]`` windows (Kaldi ``splice-feats``).

    A plain reference implementation for tests and for decoding one utterance at a time.
    """
    num_frames = feats.shape[0]
    if num_frames == 0:
        return np.zeros((0, (left + 1 + right) * feats.shape[1]), dtype=feats.dtype)
    positions = np.clip(np.arange(num_frames)[:, None] + np.arange(-left, right + 1)[None, :], 0, num_frames - 1)
    return feats[positions].reshape(num_frames, -1)
