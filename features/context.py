"""The paper's DNN input: a window of frames around each frame (20 left, 5 right: 26 x 40 = 1040 values).

Training draws random frames from the whole corpus, so windows are gathered on demand from one matrix of all
utterances concatenated instead of being stored spliced (26x the memory). Frames beyond an utterance's edges
are replaced by its first/last frame, as Kaldi's ``splice-feats`` does, and never come from the neighbouring
utterance in the concatenation.

Two gatherers give the same windows: :class:`ContextWindows` over the plain concatenation (clamped positions,
8 bytes of bounds per frame), and :class:`PaddedWindows` over a copy in which every utterance carries its edge
frames repeated, so that a window is one contiguous run of rows and a batch is a single row copy per frame.
The padded copy is what the training loop gathers from: about 40% faster than clamping, and it may be held in the
dtype the first layer computes in (bf16 under autocast), which halves the bytes a batch moves.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _lengths(utt_lengths: torch.Tensor | Sequence[int], num_frames: int, device: torch.device) -> torch.Tensor:
    lengths = torch.as_tensor(utt_lengths, dtype=torch.int64).to(device)
    if lengths.ndim != 1 or bool((lengths < 0).any()):
        raise ValueError("utt_lengths must be a 1-d sequence of non-negative frame counts")
    if int(lengths.sum()) != num_frames:
        raise ValueError(f"utt_lengths sum to {int(lengths.sum())} but feats has {num_frames} frames")
    return lengths


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
        lengths = _lengths(utt_lengths, feats.shape[0], feats.device)
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
        # index_select on the flat positions copies the same rows as feats[positions], 2-3x faster on a CPU
        return self.feats.index_select(0, positions.view(-1)).view(idx.shape[0], self.output_dim)


def padded_rows(utt_lengths: torch.Tensor | Sequence[int], left: int, right: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The layout of :class:`PaddedWindows` for consecutive whole utterances: (source frame of every padded row
    [N + U*(left+right)], window row of every frame [N]), both int64 on the CPU.

    Utterance u's rows are ``left`` copies of its first frame, its frames, ``right`` copies of its last frame;
    an empty utterance has no rows. Row r of the windows view is padded rows r .. r+left+right, so frame t of
    utterance u (padded start P_u) has its window at row P_u + t.
    """
    lengths = torch.as_tensor(utt_lengths, dtype=torch.int64).cpu()
    lengths = lengths[lengths > 0]
    span = left + right
    padded_lengths = lengths + span
    padded_starts = torch.cumsum(padded_lengths, 0) - padded_lengths
    frame_starts = torch.cumsum(lengths, 0) - lengths
    # every padded row: its offset from its utterance's first frame, clamped into the utterance
    utt_of_row = torch.repeat_interleave(torch.arange(len(lengths)), padded_lengths)
    offset = torch.arange(int(padded_lengths.sum())) - padded_starts[utt_of_row] - left
    source = frame_starts[utt_of_row] + torch.minimum(offset.clamp(min=0), lengths[utt_of_row] - 1)
    utt_of_frame = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    rows = torch.arange(int(lengths.sum())) + span * utt_of_frame
    return source, rows


class PaddedWindows:
    """Context windows over a padded copy of the frames: every window is a contiguous slice, one row each.

    ``padded`` holds the utterances with their edge frames repeated (:func:`padded_rows`), ``rows`` the window row
    of every frame (int64, on ``padded``'s device). Gathering a batch is one ``index_select`` of whole rows from a
    strided view, bitwise the windows :class:`ContextWindows` gives.
    """

    def __init__(self, padded: torch.Tensor, rows: torch.Tensor, left: int, right: int) -> None:
        if padded.ndim != 2:
            raise ValueError(f"padded must be [R, D], got shape {tuple(padded.shape)}")
        self.padded = padded.contiguous()
        self.rows = rows.to(padded.device)
        self.left = left
        self.right = right
        num_rows, dim = self.padded.shape
        span = left + 1 + right
        self.view = self.padded.as_strided((max(0, num_rows - span + 1), span * dim), (dim, 1))

    @classmethod
    def build(cls, feats: torch.Tensor, utt_lengths: torch.Tensor | Sequence[int], left: int = 20, right: int = 5,
              dtype: torch.dtype | None = None) -> PaddedWindows:
        """The padded copy of ``feats`` [N, D] (utterances concatenated) in ``dtype`` (default: feats'), on its
        device."""
        lengths = _lengths(utt_lengths, feats.shape[0], feats.device)
        source, rows = padded_rows(lengths, left, right)
        padded = feats.index_select(0, source.to(feats.device))
        return cls(padded if dtype is None else padded.to(dtype), rows, left, right)

    def __len__(self) -> int:
        return self.rows.shape[0]

    @property
    def output_dim(self) -> int:
        return self.view.shape[1]

    @property
    def nbytes(self) -> int:
        """Memory held: the padded frames and the row index."""
        return self.padded.nbytes + self.rows.nbytes

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """Windows ``[B, (left+1+right)*D]`` of frames ``idx`` ``[B]`` (indices into this set's frames)."""
        return self.view.index_select(0, self.rows[idx])


def splice(feats: np.ndarray, left: int, right: int) -> np.ndarray:
    """Splice one utterance ``[T, D]`` into ``[T, (left+1+right)*D]`` windows (Kaldi ``splice-feats``).

    A plain reference implementation for tests and for decoding one utterance at a time.
    """
    num_frames = feats.shape[0]
    if num_frames == 0:
        return np.zeros((0, (left + 1 + right) * feats.shape[1]), dtype=feats.dtype)
    positions = np.clip(np.arange(num_frames)[:, None] + np.arange(-left, right + 1)[None, :], 0, num_frames - 1)
    return feats[positions].reshape(num_frames, -1)
