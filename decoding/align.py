"""Forced alignment with Kaldi's aligner (gmm-align-compiled / align-equal-compiled), one shard of utterances at
a time; each shard is a unit of :mod:`features.executor`, which loads the model in the process that aligns it (the
bindings' FST objects do not pickle) and sends only alignments back.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np

from decoding.hmm import TransitionTables

# Kaldi's scale options for GMM alignment (steps/train_mono.sh, align_si.sh).
TRANSITION_SCALE = 1.0
SELF_LOOP_SCALE = 0.1
ACOUSTIC_SCALE = 0.1


@dataclass
class AlignResult:
    """Transition-id alignments, the utterances that failed (id -> reason) and the aligner's objective.

    ``tot_like`` is gmm-align-compiled's: graph (transition, lexicon) plus scaled acoustic cost, divided by
    the acoustic scale, i.e. in acoustic log-likelihood units.
    """

    alignments: dict[str, np.ndarray] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    tot_like: float = 0.0
    num_frames: int = 0
    num_retried: int = 0

    def merge(self, other: AlignResult) -> None:
        """Add another shard's results (callers merge shards in shard order: the summed objective is then the same
        whatever the number of processes)."""
        self.alignments.update(other.alignments)
        self.failed.update(other.failed)
        self.tot_like += other.tot_like
        self.num_frames += other.num_frames
        self.num_retried += other.num_retried


def _precheck(utt: str, feats: Mapping[str, np.ndarray], graphs: Mapping[str, kaldifst.StdVectorFst]) -> str | None:
    """Why an utterance cannot be aligned at all, or None."""
    if utt not in graphs:
        return "no transcript"
    if len(feats[utt]) == 0:
        return "zero frames"
    return None


def align_utterances(trans_model: khg.TransitionModel, am: khg.AmDiagGmm,
                     graphs: Mapping[str, kaldifst.StdVectorFst], feats: Mapping[str, np.ndarray], *,
                     beam: float = 10.0, retry_beam: float = 40.0, careful: bool = False) -> AlignResult:
    """Viterbi-align every utterance of ``feats`` to its training graph (``gmm-align-compiled`` with Kaldi's
    scales), in ``feats``' order: one shard's work (:mod:`decoding.shards` spreads shards over processes)."""
    config = khg.AlignConfig(beam=beam, retry_beam=retry_beam, careful=careful)
    out = AlignResult()
    for utt in feats:
        reason = _precheck(utt, feats, graphs)
        if reason:
            out.failed[utt] = reason
            continue
        graph = kaldifst.StdVectorFst(graphs[utt])  # add_transition_probs works in place
        khg.add_transition_probs(trans_model, [], TRANSITION_SCALE, SELF_LOOP_SCALE, graph)
        mat = np.ascontiguousarray(feats[utt], dtype=np.float32)
        decodable = khg.DecodableAmDiagGmmScaled(am, trans_model, mat, ACOUSTIC_SCALE)
        done, _err, retried, like, nframes, ali, _words = khg.align_utterance_wrapper(
            config, utt, ACOUSTIC_SCALE, graph, decodable, 0, 0, 0, 0.0, 0)
        if not done or len(ali) != len(mat):
            out.failed[utt] = f"no path within retry beam {retry_beam} ({len(mat)} frames)"
            continue
        out.alignments[utt] = np.asarray(ali, np.int32)
        out.tot_like += like
        out.num_frames += nframes
        out.num_retried += retried
    return out


def equal_align_utterances(graphs: Mapping[str, kaldifst.StdVectorFst], feats: Mapping[str, np.ndarray]
                           ) -> AlignResult:
    """Flat-start alignments of every utterance of ``feats``: a random path of the right length with equal-length
    states (align-equal-compiled). Only the frame counts of ``feats`` are used."""
    out = AlignResult()
    for utt in feats:
        reason = _precheck(utt, feats, graphs)
        if reason:
            out.failed[utt] = reason
            continue
        num_frames = len(feats[utt])
        # Seeded by the utterance id so results do not depend on how utterances are split over shards.
        seed = zlib.crc32(utt.encode()) & 0x7FFFFFFF
        ok, path = kaldifst.equal_align(graphs[utt], num_frames, seed, 10)
        if not ok:
            out.failed[utt] = f"{num_frames} frames too short for the transcript's HMM"
            continue
        ok, ali, _words, _w = kaldifst.get_linear_symbol_sequence(path)
        out.alignments[utt] = np.asarray(ali, np.int32)
        out.num_frames += num_frames
    return out


def phone_instances(ali: np.ndarray, tables: TransitionTables) -> tuple[np.ndarray, np.ndarray]:
    """Kaldi SplitToPhones on one alignment: (phone ids [N], start frames [N+1 with the end appended]).

    A phone's last state is the one whose frame carries the transition into the HMM's final state. Training
    graphs are compiled with ``reorder=True`` (Kaldi's default), which puts a state's self-loops *after* its
    forward transition, so the phone ends only after the self-loops of that state that follow; without
    reordering there are none and the phone ends on the final transition itself.
    """
    ali = np.asarray(ali)
    tstate = tables.transition_state[ali]
    continues = tables.is_self_loop[ali[1:]] & (tstate[1:] == tstate[:-1])
    breaks = np.append(np.flatnonzero(~continues), len(ali) - 1)
    finals = np.flatnonzero(tables.ends_phone[ali])
    ends = np.unique(breaks[np.searchsorted(breaks, finals)] + 1)
    if len(ends) == 0 or ends[-1] != len(ali):
        raise ValueError("alignment does not end at the end of a phone")
    starts = np.concatenate([[0], ends])
    return tables.phone[ali[starts[:-1]]], starts


def frame_contexts(ali: np.ndarray, tables: TransitionTables) -> np.ndarray:
    """[T, 3] (left, center, right) phone of each frame's phone instance, 0 beyond the utterance."""
    phones, starts = phone_instances(ali, tables)
    padded = np.concatenate([[0], phones, [0]])
    per_instance = np.stack([padded[:-2], padded[1:-1], padded[2:]], axis=1)
    return np.repeat(per_instance, np.diff(starts), axis=0).astype(np.int32)
