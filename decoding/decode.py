"""Hybrid DNN-HMM decoding: pdf log-likelihoods -> HCLG -> words (Kaldi's ``decode-faster-mapped``).

A DNN gives log p(s|x) per frame and tied state (pdf); Bayes' rule turns it into a scaled likelihood
log p(x|s) = log p(s|x) - log p(s) + const, which is what an HMM decoder needs. HCLG's input labels are
transition-ids, so each utterance's [T, num_pdfs] matrix is expanded to [T, num_transition_ids] columns through
the transition model's transition-id -> pdf table, scaled by the acoustic scale, and searched by
kaldi_decoder's FasterDecoder (beam search, max-active pruning). Utterances are spread over forked processes.
"""
from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import kaldi_decoder
import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np
from tqdm import tqdm

from decoding.lang import read_symbol_table
from decoding.score import WerResult, compute_wer
from features.errors import InputError

__all__ = ["DecodeConfig", "DecodeResult", "TunedDecode", "decode_loglikes", "posteriors_to_loglikes",
           "search_scale", "tune_and_decode"]

logger = logging.getLogger(__name__)

FRAME_SHIFT_SECONDS = 0.01


@dataclass
class DecodeConfig:
    """``acoustic_scale`` multiplies the log-likelihoods (0.1: Kaldi's default for DNN and GMM systems, where
    frames are correlated and acoustic scores otherwise swamp the LM); ``beam`` and ``max_active`` prune the
    search (Kaldi's decode-faster defaults 13 and 7000 for our scale of graph). How many processes share the
    utterances is not part of it (it never changes the result): :func:`decode_loglikes` takes ``nj``."""

    acoustic_scale: float = 0.1
    beam: float = 13.0
    max_active: int = 7000


@dataclass
class DecodeResult:
    """Best word sequence per utterance, and what the search cost.

    ``seconds`` is the summed per-utterance decoding time (CPU time of the workers), so ``real_time_factor``
    = seconds / audio seconds is per core; ``wall_seconds`` is the elapsed time of the whole call. ``failed``:
    utterances with no surviving path (no hypothesis; scored as all deletions). ``partial``: utterances whose
    best path did not reach a final state of HCLG (Kaldi's ``--allow-partial=true`` keeps them, and so do we).
    """

    hyps: dict[str, list[str]]
    frames: int
    seconds: float
    wall_seconds: float
    real_time_factor: float
    failed: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    acoustic_scale: float = 0.1


def posteriors_to_loglikes(log_post: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """Scaled log-likelihoods log p(x|s) - log p(x) = log p(s|x) - log p(s) for a [T, num_pdfs] matrix.

    ``log_prior`` is log p(s), [num_pdfs], from pdf frame counts of the training alignments. Pdfs with zero
    prior (never seen in training) must be floored by the caller before the log, or they get +inf.
    """
    log_post, log_prior = np.asarray(log_post), np.asarray(log_prior)
    if log_post.ndim != 2 or log_prior.shape != (log_post.shape[1],):
        raise ValueError(f"expected [T, P] posteriors and [P] priors, got {log_post.shape} and {log_prior.shape}")
    return (log_post - log_prior).astype(np.float32)


@dataclass
class _Job:
    graph: kaldifst.StdVectorFst
    tid2pdf: np.ndarray
    words: dict[int, str]
    loglikes: Mapping[str, np.ndarray]
    cfg: DecodeConfig


_JOB: _Job | None = None  # set in the parent before forking, so workers share the graph copy-on-write


def _decode_shard(utts: list[str]) -> list[tuple[str, list[str] | None, bool, int, float]]:
    """(utt, words or None if failed, reached_final, frames, seconds) for each utterance of a shard."""
    job = _JOB
    assert job is not None
    opts = kaldi_decoder.FasterDecoderOptions(beam=job.cfg.beam, max_active=job.cfg.max_active)
    decoder = kaldi_decoder.FasterDecoder(job.graph, opts)
    out = []
    for utt in utts:
        t0 = time.process_time()
        mat = np.ascontiguousarray(job.loglikes[utt][:, job.tid2pdf] * job.cfg.acoustic_scale, dtype=np.float32)
        decoder.decode(kaldi_decoder.DecodableCtc(mat, offset=0))
        reached_final = decoder.reached_final()
        ok, best = decoder.get_best_path(use_final_probs=reached_final)
        words = None
        if ok:
            got, _tids, word_ids, _weight = kaldifst.get_linear_symbol_sequence(best)
            if got:
                words = [job.words[w] for w in word_ids]
        out.append((utt, words, reached_final, mat.shape[0], time.process_time() - t0))
    return out


def _load_job(graph_dir: Path, transition_model: Path | khg.TransitionModel, loglikes: Mapping[str, np.ndarray],
              cfg: DecodeConfig) -> _Job:
    graph_dir = Path(graph_dir)
    if not (graph_dir / "HCLG.fst").is_file():
        raise InputError("missing decoding graph", graph_dir / "HCLG.fst")
    if not isinstance(transition_model, khg.TransitionModel):
        from decoding.model_io import read_model

        transition_model = read_model(Path(transition_model))[0]
    tid2pdf = np.asarray(transition_model.transition_id_to_pdf_array(), dtype=np.int64)[1:]
    num_pdfs = transition_model.num_pdfs
    for utt, mat in loglikes.items():
        if mat.ndim != 2 or mat.shape[1] != num_pdfs:
            raise InputError(f"utterance {utt}: log-likelihoods have shape {mat.shape}, the model has {num_pdfs} "
                             "pdfs")
    words = {i: w for w, i in read_symbol_table(graph_dir / "words.txt").items()}
    hclg = graph_dir / "HCLG.fst"
    return _Job(_read_graph(hclg, hclg.stat().st_mtime_ns), tid2pdf, words, loglikes, cfg)


@functools.lru_cache(maxsize=1)
def _read_graph(path: Path, mtime_ns: int) -> kaldifst.StdVectorFst:
    """HCLG, kept for the next call on the same unchanged file (tuning decodes dev once per scale; reading a
    2M-state graph takes seconds). ``mtime_ns`` is part of the key so a rebuilt graph is read again."""
    return kaldifst.StdVectorFst.read(str(path))


def decode_loglikes(graph_dir: Path, transition_model: Path | khg.TransitionModel,
                    loglikes: Mapping[str, np.ndarray], cfg: DecodeConfig | None = None, nj: int = 1) -> DecodeResult:
    """Decode every utterance of ``loglikes`` (pdf-level [T, num_pdfs] log-likelihoods) with ``graph_dir``'s HCLG.

    ``transition_model`` is the one the graph was built with (object, or a ``final.mdl`` path). Utterances go
    to ``nj`` forked workers in shards; with ``nj == 1`` everything runs in this process.
    """
    global _JOB
    cfg = cfg or DecodeConfig()
    t_wall = time.perf_counter()
    _JOB = _load_job(graph_dir, transition_model, loglikes, cfg)
    utts = sorted(loglikes)
    num_shards = max(1, nj) * 8
    shards = [s for s in (utts[i::num_shards] for i in range(num_shards)) if s]
    results = []
    try:
        if nj <= 1:
            for shard in tqdm(shards, desc="decode", leave=False):
                results += _decode_shard(shard)
        else:
            with mp.get_context("fork").Pool(nj) as pool:
                for part in tqdm(pool.imap_unordered(_decode_shard, shards), total=len(shards), desc="decode",
                                 leave=False):
                    results += part
    finally:
        _JOB = None
    hyps, failed, partial, frames, seconds = {}, [], [], 0, 0.0
    for utt, words, reached_final, num_frames, secs in sorted(results):
        frames += num_frames
        seconds += secs
        if words is None:
            failed.append(utt)
            continue
        hyps[utt] = words
        if not reached_final:
            partial.append(utt)
    audio_seconds = frames * FRAME_SHIFT_SECONDS
    result = DecodeResult(hyps=hyps, frames=frames, seconds=seconds, wall_seconds=time.perf_counter() - t_wall,
                          real_time_factor=seconds / audio_seconds if audio_seconds else 0.0, failed=failed,
                          partial=partial, acoustic_scale=cfg.acoustic_scale)
    if failed or partial:
        logger.warning("decode: %d utterances without a path, %d did not reach a final state", len(failed),
                       len(partial))
    logger.info("decoded %d utterances, %d frames, RTF %.4f per core (%.0f frames/s), acoustic scale %g",
                len(utts), frames, result.real_time_factor, frames / seconds if seconds else 0.0,
                cfg.acoustic_scale)
    return result


@dataclass
class TunedDecode:
    """The outcome of :func:`tune_and_decode`: the scale dev chose, dev WER at every scale, and both decodes."""

    acoustic_scale: float
    dev_wer: dict[float, WerResult]
    dev: DecodeResult
    test: DecodeResult


def search_scale(wer_at: Callable[[float], float], acoustic_scales: Sequence[float], extend_edges: int = 0
                 ) -> float:
    """The scale with the lowest ``wer_at(scale)`` (ties to the larger scale: faster search), over the grid and,
    while the best is at an end of what was tried, up to ``extend_edges`` further steps beyond that end.

    A fixed grid (Kaldi's LMWT 7-17) answers "which of these", not "which scale": a choice at its end says only that
    dev wanted to go further. Each step out has the spacing of the grid's last two points on that side, and a
    scale must stay above 0. ``wer_at`` is called once per scale tried.
    """
    grid = sorted(set(acoustic_scales))
    if not grid:
        raise ValueError("choosing an acoustic scale needs at least one scale")
    if extend_edges < 0:
        raise ValueError(f"extend_edges must be >= 0, got {extend_edges}")
    wer = {s: wer_at(s) for s in grid}

    def best() -> float:
        return min(wer, key=lambda s: (wer[s], -s))

    for _ in range(extend_edges if len(grid) > 1 else 0):
        chosen, tried = best(), sorted(wer)
        step = (grid[-1] - grid[-2]) if chosen == tried[-1] else -(grid[1] - grid[0]) if chosen == tried[0] else 0.0
        scale = round(chosen + step, 6)
        if step == 0.0 or scale <= 0:
            break
        wer[scale] = wer_at(scale)
    return best()


def tune_and_decode(graph_dir: Path, transition_model: Path | khg.TransitionModel,
                    dev_loglikes: Mapping[str, np.ndarray], dev_refs: Mapping[str, Sequence[str]],
                    test_loglikes: Mapping[str, np.ndarray], cfg: DecodeConfig | None = None,
                    acoustic_scales: Sequence[float] = (0.06, 0.08, 0.1, 0.12, 0.15), nj: int = 1,
                    extend_edges: int = 0) -> TunedDecode:
    """Pick the acoustic scale with the lowest dev WER (:func:`search_scale` over ``acoustic_scales``, beyond
    an end of it by up to ``extend_edges`` steps while dev still improves there), then decode test with it.

    Only dev chooses: the test set is decoded once, so its WER stays an unbiased estimate. Dev is decoded once per
    scale tried, test once.
    """
    cfg = cfg or DecodeConfig()
    if not isinstance(transition_model, khg.TransitionModel):
        from decoding.model_io import read_model

        transition_model = read_model(Path(transition_model))[0]
    dev_wer, dev_results = {}, {}

    def wer_at(scale: float) -> float:
        dev_results[scale] = decode_loglikes(graph_dir, transition_model, dev_loglikes,
                                             replace(cfg, acoustic_scale=scale), nj)
        dev_wer[scale] = compute_wer(dev_refs, dev_results[scale].hyps)
        logger.info("dev WER at acoustic scale %g: %.2f%%", scale, dev_wer[scale].wer)
        return dev_wer[scale].wer

    best = search_scale(wer_at, acoustic_scales, extend_edges)
    test = decode_loglikes(graph_dir, transition_model, test_loglikes, replace(cfg, acoustic_scale=best), nj)
    return TunedDecode(best, dict(sorted(dev_wer.items())), dev_results[best], test)
