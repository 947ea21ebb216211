"""Frame-level training sets: every utterance of a split concatenated, with one pdf target per frame.

A DNN acoustic model is trained on frames shuffled across utterances, so a split is held as one [N, 40] feature
matrix and one [N] target vector on the training device (on a GPU the whole matrix lives there and context windows
are gathered there: 10M frames x 40 x 4 B = 1.6 GB, a gather runs at tens of millions of frames/s). A frame is
addressed by its global index; :class:`features.context.ContextWindows` turns indices into 26-frame windows that
never cross an utterance boundary.

A split too large for memory is read from disk instead (:class:`asr_kd.nn.stream.StreamedFrames`); both answer the
questions of :class:`Frames`, and whoever only needs the frames in order (evaluation, soft targets) goes through
:func:`iter_windows`, which reads a streamed split a shard at a time and a FrameSet in one piece.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from features.context import ContextWindows
from features.errors import InputError
from features.extract import load_feats
from features.kaldi_io import load_vec_int_scp
from features.tables import read_table

logger = logging.getLogger(__name__)


@dataclass
class FrameSet:
    """One split: features [N, D], pdf targets [N] (int64), utterance ids and lengths, and the window gatherer."""

    feats: torch.Tensor
    targets: torch.Tensor
    utt_ids: list[str]
    utt_lengths: torch.Tensor
    windows: ContextWindows
    left: int = 20
    right: int = 5
    columns: dict[str, torch.Tensor] = field(default_factory=dict)  # per-frame side data [N, ...] (soft targets)

    @classmethod
    def from_tensors(
        cls,
        feats: torch.Tensor,
        targets: torch.Tensor,
        utt_ids: list[str],
        utt_lengths: torch.Tensor | Iterable[int],
        left: int = 20,
        right: int = 5,
    ) -> FrameSet:
        """Build a set from concatenated tensors (all on one device); checks that the lengths add up."""
        lengths = torch.as_tensor(utt_lengths if torch.is_tensor(utt_lengths) else list(utt_lengths),
                                  dtype=torch.int64).cpu()
        if len(utt_ids) != len(lengths):
            raise ValueError(f"{len(utt_ids)} utterance ids but {len(lengths)} lengths")
        if int(lengths.sum()) != feats.shape[0] or targets.shape[0] != feats.shape[0]:
            raise ValueError(
                f"utterance lengths sum to {int(lengths.sum())}, feats have {feats.shape[0]} rows, "
                f"targets {targets.shape[0]}"
            )
        targets = targets.to(device=feats.device, dtype=torch.int64)
        windows = ContextWindows(feats, lengths, left=left, right=right)
        return cls(feats, targets, list(utt_ids), lengths, windows, left, right)

    @property
    def num_frames(self) -> int:
        return int(self.feats.shape[0])

    @property
    def device(self) -> torch.device:
        return self.feats.device

    def utt_offsets(self) -> torch.Tensor:
        """Start frame of every utterance (CPU, int64)."""
        return torch.cumsum(self.utt_lengths, 0) - self.utt_lengths

    def frame_indices(self, utt_ids: Iterable[str]) -> torch.Tensor:
        """Global indices (on this set's device) of the frames of the given utterances, in the given order.

        ``self.subset(u)`` holds exactly the frames ``self.frame_indices(u)``: per-frame data computed on the full
        set (soft targets) is mapped onto a subset with it.
        """
        wanted = list(utt_ids)
        position = {u: i for i, u in enumerate(self.utt_ids)}
        missing = [u for u in wanted if u not in position]
        if missing:
            raise KeyError(f"{len(missing)} utterances not in this set, e.g. {missing[:3]}")
        rows = [position[u] for u in wanted]
        starts, lengths = self.utt_offsets()[rows].tolist(), self.utt_lengths[rows].tolist()
        idx = [torch.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)]
        return (torch.cat(idx) if idx else torch.zeros(0, dtype=torch.int64)).to(self.device)

    def subset(self, utt_ids: Iterable[str]) -> FrameSet:
        """The frames of the given utterances (in the given order), on the same device (the 3%-data experiment)."""
        wanted = list(utt_ids)
        idx = self.frame_indices(wanted)
        position = {u: i for i, u in enumerate(self.utt_ids)}
        lengths = self.utt_lengths[[position[u] for u in wanted]]
        return FrameSet.from_tensors(self.feats[idx], self.targets[idx], wanted, lengths,
                                     left=self.left, right=self.right)

    def to(self, device: str | torch.device) -> FrameSet:
        """The same set on another device (windows rebuilt there; the columns stay where they are: a training step
        moves only its batch's rows)."""
        moved = FrameSet.from_tensors(self.feats.to(device), self.targets.to(device), self.utt_ids,
                                      self.utt_lengths, left=self.left, right=self.right)
        return moved.with_columns(self.columns)

    def with_columns(self, columns: dict[str, torch.Tensor]) -> FrameSet:
        """The same frames with per-frame side data (``[N, ...]`` in frame order, e.g. stored soft targets) that
        every training batch carries the rows of."""
        for name, col in columns.items():
            if col.shape[0] != self.num_frames:
                raise ValueError(f"column {name} has {col.shape[0]} rows, the set {self.num_frames} frames")
        return FrameSet(self.feats, self.targets, self.utt_ids, self.utt_lengths, self.windows, self.left,
                        self.right, dict(columns))

    @classmethod
    def concat(cls, sets: list[FrameSet]) -> FrameSet:
        """The sets' frames one after the other (a transfer set: the training frames, then unlabeled ones). Frame i
        of set k becomes frame (frames of the sets before k) + i, so per-frame data computed on each set (soft
        targets) joins in the same order. An utterance id may appear in one set only."""
        first = sets[0]
        if any((s.left, s.right) != (first.left, first.right) for s in sets):
            raise ValueError("frame sets with different context windows cannot be joined")
        ids = [u for s in sets for u in s.utt_ids]
        if len(set(ids)) != len(ids):
            dup = next(u for i, u in enumerate(ids) if u in ids[:i])
            raise ValueError(f"utterance {dup} is in more than one of the sets joined")
        return cls.from_tensors(torch.cat([s.feats for s in sets]), torch.cat([s.targets for s in sets]), ids,
                                torch.cat([s.utt_lengths for s in sets]), left=first.left, right=first.right)

    @property
    def labeled(self) -> torch.Tensor:
        """[N] bool: the frames that have a target (:data:`NO_TARGET` marks those that have none)."""
        return self.targets != NO_TARGET

    @property
    def target_range(self) -> tuple[int, int]:
        """The smallest and largest target (0, -1 for an empty set)."""
        if not self.num_frames:
            return 0, -1
        return int(self.targets.min()), int(self.targets.max())

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, FrameSet]]:
        """(first frame, chunk) of the frames in order: the set itself, in one piece (see :func:`iter_windows`)."""
        yield 0, self


class Frames(Protocol):
    """A split as the DNN side reads it: a :class:`FrameSet` in memory, or one streamed from disk
    (:class:`asr_kd.nn.stream.StreamedFrames`)."""

    left: int
    right: int

    @property
    def num_frames(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def utt_ids(self) -> list[str]: ...

    @property
    def utt_lengths(self) -> torch.Tensor: ...

    @property
    def target_range(self) -> tuple[int, int]: ...

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, FrameSet]]: ...

    def subset(self, utt_ids: Iterable[str]) -> FrameSet: ...

    def to(self, device: str | torch.device) -> Frames: ...


def iter_windows(frames: Frames, batch_size: int, start: int = 0, stop: int | None = None
                 ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(first frame, windows [b, D], targets [b]) of frames ``[start, stop)`` in order, ``batch_size`` at a time,
    on the frames' device. A batch that straddles two chunks of a streamed split is joined from both, so the batches
    are the same whether a split is streamed or held: so are the numbers computed from them."""
    stop = frames.num_frames if stop is None else stop
    held: list[tuple[torch.Tensor, torch.Tensor]] = []
    first, count = start, 0
    for offset, chunk in frames.chunks(start, stop):
        pos, hi = max(start - offset, 0), min(stop - offset, chunk.num_frames)
        while pos < hi:
            take = min(batch_size - count, hi - pos)
            idx = torch.arange(pos, pos + take, device=chunk.device)
            held.append((chunk.windows(idx), chunk.targets[idx]))
            pos, count = pos + take, count + take
            if count == batch_size:
                yield first, *_joined(held)
                held, first, count = [], first + count, 0
    if held:
        yield first, *_joined(held)


def _joined(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def load_frameset(
    feats_dir: Path, ali_dir: Path, device: str | torch.device = "cpu", left: int = 20, right: int = 5
) -> FrameSet:
    """Join fbank features (per-speaker CMVN) with pdf alignments into a :class:`FrameSet` on ``device``.

    ``feats_dir`` is ``data/fbank/<split>`` (feats.scp + cmvn.scp), ``ali_dir`` is ``exp/tri1_ali/<split>``
    (pdf.scp, failed.txt). Utterances without an alignment (listed in failed.txt or simply absent) are excluded
    and counted in a log line; an alignment whose frame count differs from the features is an InputError naming
    the utterance, because it means features and alignments come from different front-ends or data.
    """
    feats_dir, ali_dir = Path(feats_dir), Path(ali_dir)
    feats = load_feats(feats_dir, cmvn="speaker", norm_vars=True)
    pdf_scp = ali_dir / "pdf.scp"
    if not pdf_scp.exists():
        raise InputError("no pdf alignments", pdf_scp)
    alis = load_vec_int_scp(pdf_scp)
    failed = _read_failed(ali_dir / "failed.txt")
    scp_line = _scp_lines(pdf_scp)

    kept: list[str] = []
    for utt in feats:
        ali = alis.get(utt)
        if ali is None:
            continue
        if len(ali) != feats[utt].shape[0]:
            raise InputError(
                f"utterance {utt}: {len(ali)} alignment frames but {feats[utt].shape[0]} feature frames "
                f"(features in {feats_dir})",
                pdf_scp,
                scp_line.get(utt),
            )
        kept.append(utt)
    unaligned = len(feats) - len(kept)
    orphans = sum(1 for u in alis if u not in feats)
    logger.info(
        "%s: %d utterances with alignments, %d excluded without one (%d listed in failed.txt)%s",
        feats_dir, len(kept), unaligned, len(failed & feats.keys()),
        f"; {orphans} alignments have no features and are ignored" if orphans else "",
    )
    if not kept:
        raise InputError(f"no utterance of {feats_dir} has an alignment", pdf_scp)
    lengths = [feats[u].shape[0] for u in kept]
    x = torch.from_numpy(np.concatenate([feats[u] for u in kept]).astype(np.float32, copy=False)).to(device)
    y = torch.from_numpy(np.concatenate([alis[u] for u in kept]).astype(np.int64, copy=False)).to(device)
    return FrameSet.from_tensors(x, y, kept, lengths, left=left, right=right)


def load_unlabeled_frameset(feats_dir: Path, device: str | torch.device = "cpu", left: int = 20, right: int = 5
                            ) -> FrameSet:
    """The fbank features of untranscribed audio (per-speaker CMVN, as for a labeled split) as a :class:`FrameSet`
    whose every target is :data:`NO_TARGET`: frames a teacher labels with soft targets and no hard label exists for."""
    feats = load_feats(Path(feats_dir), cmvn="speaker", norm_vars=True)
    if not feats:
        raise InputError("no utterances in this unlabeled feature dir", Path(feats_dir) / "feats.scp")
    utts = list(feats)
    x = torch.from_numpy(np.concatenate([feats[u] for u in utts]).astype(np.float32, copy=False)).to(device)
    y = torch.full((x.shape[0],), NO_TARGET, dtype=torch.int64, device=device)
    return FrameSet.from_tensors(x, y, utts, [feats[u].shape[0] for u in utts], left=left, right=right)


def _read_failed(path: Path) -> set[str]:
    """Utterance ids listed in failed.txt, with or without a reason (a missing file means none failed)."""
    return {key for key, _ in read_table(path, allow_empty_value=True)} if path.exists() else set()


def _scp_lines(path: Path) -> dict[str, int]:
    """1-based line number of every key in an scp file, so errors can point at the line."""
    return {key: n for n, (key, _) in enumerate(read_table(path, require_sorted=False), start=1)}


NO_TARGET = -1
"""Target of every frame of an unaligned set (PyTorch's usual "ignore" marker): there is no label to compare to."""
