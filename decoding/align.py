"""Forced alignment with Kaldi's aligner (gmm-align-compiled / align-equal-compiled), split over processes.

FST and model objects of the bindings do not pickle cheaply, so jobs are run in forked workers that inherit
them from this module's ``_JOB`` global; only utterance ids go out and integer alignments come back.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np
from tqdm import tqdm

from decoding.hmm import TransitionTables

logger = logging.getLogger(__name__)

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
        self.alignments.update(other.alignments)
        self.failed.update(other.failed)
        self.tot_like += other.tot_like
        self.num_frames += other.num_frames
        self.num_retried += other.num_retried


@dataclass
class _Job:
    trans_model: khg.TransitionModel
    am: khg.AmDiagGmm | None
    graphs: Mapping[str, kaldifst.StdVectorFst]
    feats: Mapping[str, np.ndarray]
    beam: float
    retry_beam: float
    careful: bool


_JOB: _Job | None = None


def _precheck(utt: str, job: _Job) -> str | None:
    """Why an utterance cannot be aligned at all, or None."""
    if utt not in job.feats:
        return "no features"
    if utt not in job.graphs:
        return "no transcript"
    if len(job.feats[utt]) == 0:
        return "zero frames"
    return None


def _align_shard(utts: list[str]) -> AlignResult:
    job = _JOB
    assert job is not None and job.am is not None
    config = khg.AlignConfig(beam=job.beam, retry_beam=job.retry_beam, careful=job.careful)
    out = AlignResult()
    for utt in utts:
        reason = _precheck(utt, job)
        if reason:
            out.failed[utt] = reason
            continue
        graph = kaldifst.StdVectorFst(job.graphs[utt])  # add_transition_probs works in place
        khg.add_transition_probs(job.trans_model, [], TRANSITION_SCALE, SELF_LOOP_SCALE, graph)
        feats = np.ascontiguousarray(job.feats[utt], dtype=np.float32)
        decodable = khg.DecodableAmDiagGmmScaled(job.am, job.trans_model, feats, ACOUSTIC_SCALE)
        done, _err, retried, like, nframes, ali, _words = khg.align_utterance_wrapper(
            config, utt, ACOUSTIC_SCALE, graph, decodable, 0, 0, 0, 0.0, 0)
        if not done or len(ali) != len(feats):
            out.failed[utt] = f"no path within retry beam {job.retry_beam} ({len(feats)} frames)"
            continue
        out.alignments[utt] = np.asarray(ali, np.int32)
        out.tot_like += like
        out.num_frames += nframes
        out.num_retried += retried
    return out


def _equal_align_shard(utts: list[str]) -> AlignResult:
    job = _JOB
    assert job is not None
    out = AlignResult()
    for utt in utts:
        reason = _precheck(utt, job)
        if reason:
            out.failed[utt] = reason
            continue
        num_frames = len(job.feats[utt])
        # Seeded by the utterance id so results do not depend on how utterances are split over jobs.
        seed = zlib.crc32(utt.encode()) & 0x7FFFFFFF
        ok, path = kaldifst.equal_align(job.graphs[utt], num_frames, seed, 10)
        if not ok:
            out.failed[utt] = f"{num_frames} frames too short for the transcript's HMM"
            continue
        ok, ali, _words, _w = kaldifst.get_linear_symbol_sequence(path)
        out.alignments[utt] = np.asarray(ali, np.int32)
        out.num_frames += num_frames
    return out


def _run(worker: Callable[[list[str]], AlignResult], job: _Job, nj: int, desc: str) -> AlignResult:
    """Run ``worker`` over utterance shards (8 per job, for load balance) in ``nj`` forked processes.

    Shard results are merged in shard order, not in the order workers finish, so that the summed objective and
    the failed utterances come out the same whatever ``nj`` and whatever the timing."""
    global _JOB
    utts = sorted(set(job.feats) | set(job.graphs))
    shards = [utts[i::max(1, nj) * 8] for i in range(max(1, nj) * 8)]
    shards = [s for s in shards if s]
    _JOB = job
    result = AlignResult()
    try:
        if nj <= 1:
            parts = map(worker, shards)
            for part in tqdm(parts, total=len(shards), desc=desc, leave=False):
                result.merge(part)
        else:
            with mp.get_context("fork").Pool(nj) as pool:
                for part in tqdm(pool.imap(worker, shards), total=len(shards), desc=desc, leave=False):
                    result.merge(part)
    finally:
        _JOB = None
    result.alignments = dict(sorted(result.alignments.items()))
    result.failed = dict(sorted(result.failed.items()))
    return result


def align_utterances(trans_model: khg.TransitionModel, am: khg.AmDiagGmm,
                     graphs: Mapping[str, kaldifst.StdVectorFst], feats: Mapping[str, np.ndarray], *,
                     beam: float = 10.0, retry_beam: float = 40.0, careful: bool = False, nj: int = 2) -> AlignResult:
    """Viterbi-align every utterance to its training graph (``gmm-align-compiled`` with Kaldi's scales)."""
    return _run(_align_shard, _Job(trans_model, am, graphs, feats, beam, retry_beam, careful), nj, "align")


def equal_align_utterances(trans_model: khg.TransitionModel, graphs: Mapping[str, kaldifst.StdVectorFst],
                           feats: Mapping[str, np.ndarray], nj: int = 2) -> AlignResult:
    """Flat-start alignments: a random path of the right length with equal-length states (align-equal-compiled)."""
    return _run(_equal_align_shard, _Job(trans_model, None, graphs, feats, 0.0, 0.0, False), nj, "equal-align")


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
