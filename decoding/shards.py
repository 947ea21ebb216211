"""Feature dirs read one shard at a time, so that memory follows the size of a shard, never that of the corpus.

A shard is a contiguous run of the utterances of ``feats.scp`` holding at most ``max_frames`` frames (an utterance
longer than that is a shard of its own), cut from ``utt2num_frames``, which the features stage writes beside
``feats.scp``. For a whole dir only the utterance list, the frame counts and the per-speaker CMVN statistics are
held; a shard's matrices are read from the archives when the shard is processed and dropped after it.

GMM training and alignment work shard by shard: each shard is a unit of :mod:`features.executor` (local
processes or Dask workers), and the shards' results are combined in shard order, never in the order they finish.
Shards are cut by frames, not by ``nj``, so the combined floating-point sums, and everything trained from them,
are the same whatever ``nj``, wherever the units run and whatever the timing.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.cmvn import apply_cmvn
from features.deltas import add_deltas
from features.errors import InputError
from features.kaldi_io import READ_ERRORS, load_mat_scp, read_mat
from features.tables import read_dict, read_table

SHARD_FRAMES = 200_000
"""Default frames per shard for GMM training and alignment (about 33 minutes of audio at 10 ms a frame): what a
process reads at a time. See docs/performance.md for the memory it sets."""

_OFFSET = re.compile(r"^(?P<path>.+):\d+$")


@dataclass(frozen=True)
class Shard:
    """One shard: its position in the dir's shard order, its utterances (``feats.scp`` order) and their frames."""

    index: int
    utts: tuple[str, ...]
    num_frames: int


def cut_shards(frames: Mapping[str, int], max_frames: int) -> list[Shard]:
    """Contiguous runs of ``frames``' utterances (in its order) of at most ``max_frames`` frames each, greedily."""
    if max_frames < 1:
        raise ValueError(f"a shard must hold at least one frame, got max_frames={max_frames}")
    shards: list[Shard] = []
    utts: list[str] = []
    held = 0
    for utt, n in frames.items():
        if utts and held + n > max_frames:
            shards.append(Shard(len(shards), tuple(utts), held))
            utts, held = [], 0
        utts.append(utt)
        held += n
    if utts:
        shards.append(Shard(len(shards), tuple(utts), held))
    return shards


class FeatureShards:
    """The features of a feature dir (``feats.scp``, ``cmvn.scp``, ``utt2spk``, ``utt2num_frames``) in shards.

    Each matrix gets its speaker's CMVN (mean only, or mean and variance with ``norm_vars``) and, with ``deltas``,
    Kaldi's deltas and delta-deltas: exactly what :func:`features.extract.load_feats` (and ``add_deltas``) give for
    the whole dir. A matrix that cannot be read, or whose frame count differs from ``utt2num_frames`` (an archive
    cut short), is an :class:`~features.errors.InputError` naming the archive and the stage that writes it.
    """

    def __init__(self, feats_dir: Path, max_frames: int, *, norm_vars: bool = False, deltas: bool = False) -> None:
        self.feats_dir = Path(feats_dir)
        self.max_frames, self.norm_vars, self.deltas = max_frames, norm_vars, deltas
        scp = self.feats_dir / "feats.scp"
        if not scp.is_file():
            raise InputError("no features: the features stage writes feats.scp", scp)
        self._entries = {utt: (rxspec, line) for line, (utt, rxspec)
                         in enumerate(read_table(scp, require_sorted=False), start=1)}
        if not self._entries:
            raise InputError("no features", scp)
        counts = self.feats_dir / "utt2num_frames"
        if not counts.is_file():
            raise InputError("missing: the features stage writes it beside feats.scp (frames per utterance, which "
                             "cut the dir into shards)", counts)
        listed = read_dict(counts, require_sorted=False)
        self.frames: dict[str, int] = {}
        for utt in self._entries:
            if utt not in listed:
                raise InputError(f"no frame count for utterance {utt!r} of feats.scp", counts)
            try:
                self.frames[utt] = int(listed[utt])
            except ValueError as e:
                raise InputError(f"frame count of {utt!r} is not an integer: {listed[utt]!r}", counts) from e
        self.shards = cut_shards(self.frames, max_frames)
        self._cmvn = load_mat_scp(self.feats_dir / "cmvn.scp")
        self._utt2spk = read_dict(self.feats_dir / "utt2spk")

    @property
    def utts(self) -> list[str]:
        """Every utterance of ``feats.scp``, in its order."""
        return list(self.frames)

    @property
    def num_frames(self) -> int:
        return sum(self.frames.values())

    def read(self, utts: Iterable[str]) -> dict[str, np.ndarray]:
        """The normalised features of ``utts`` (a shard's, or any of the dir's), float32, in the given order."""
        return {utt: self._read_one(utt) for utt in utts}

    def head(self, num_frames: int) -> dict[str, np.ndarray]:
        """The features of the first utterances, as few as hold ``num_frames`` frames (all, if the dir holds fewer)."""
        utts, held = [], 0
        for utt, n in self.frames.items():
            if held >= num_frames:
                break
            utts.append(utt)
            held += n
        return self.read(utts)

    def _read_one(self, utt: str) -> np.ndarray:
        rxspec, line = self._entries[utt]
        scp = self.feats_dir / "feats.scp"
        match = _OFFSET.match(rxspec)
        source = Path(match["path"]) if match else scp
        try:
            mat = read_mat(rxspec)
        except READ_ERRORS as e:
            raise InputError(f"cannot read the features of {utt!r} ({scp} line {line}: {e or type(e).__name__}); the "
                             "archive is missing or cut short: run the features stage again", source) from e
        if mat.ndim != 2 or mat.shape[0] != self.frames[utt]:
            raise InputError(f"utterance {utt!r} has {mat.shape[0] if mat.ndim else 0} frames here but "
                             f"{self.frames[utt]} in utt2num_frames ({scp} line {line}); the archive is cut short or "
                             "from another run: run the features stage again", source)
        spk = self._utt2spk.get(utt)
        if spk is None or spk not in self._cmvn:
            raise InputError(f"no CMVN stats for utterance {utt!r} (speaker {spk!r})", self.feats_dir / "cmvn.scp")
        out = apply_cmvn(mat.astype(np.float32, copy=False), self._cmvn[spk], self.norm_vars)
        return add_deltas(out) if self.deltas else out
