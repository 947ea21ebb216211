"""Hybrid DNN-HMM decoding: pdf log-likelihoods -> HCLG -> words (Kaldi's ``decode-faster-mapped``).

A DNN gives log p(s|x) per frame and tied state (pdf); Bayes' rule turns it into a scaled likelihood
log p(x|s) = log p(s|x) - log p(s) + const, which is what an HMM decoder needs. HCLG's input labels are
transition-ids, so each utterance's [T, num_pdfs] matrix is expanded to [T, num_transition_ids] columns through
the transition model's transition-id -> pdf table, scaled by the acoustic scale, and searched by
kaldi_decoder's FasterDecoder (beam search, max-active pruning). Each utterance is a unit of
:mod:`features.executor` (local processes, or the workers of a Dask cluster).

A split's log-likelihoods come in shards of utterances (:data:`LoglikeShards`): the caller computes one shard
(a GMM or a DNN over that shard's features), it is decoded, at every scale asked for, and dropped before the next
is computed. A split's log-likelihoods (4 bytes per frame and pdf: tens of GB for a LibriSpeech dev set under a
DNN with thousands of states) are never held at once; :data:`DECODE_SHARD_BYTES` sizes the shards.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import kaldi_decoder
import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np
from tqdm import tqdm

from decoding.lang import read_symbol_table
from decoding.score import WerResult, compute_wer
from decoding.shards import FeatureShards
from features.errors import InputError
from features.executor import Unit, cached, executor_for

__all__ = ["DECODE_SHARD_BYTES", "DecodeConfig", "DecodeResult", "LoglikeShards", "ShardedLoglikes", "TunedDecode",
           "decode_loglikes", "decode_shard_frames", "posteriors_to_loglikes", "search_scale", "tune_and_decode"]

logger = logging.getLogger(__name__)

FRAME_SHIFT_SECONDS = 0.01

DECODE_SHARD_BYTES = 256 * 2**20
"""float32 log-likelihoods one decoding shard holds (frames x pdfs x 4 bytes): 13k frames, about two minutes of
audio, for a model with 5000 pdfs. A larger shard saves no computation: utterances are decoded one by one."""

LoglikeShards = Iterable[Mapping[str, np.ndarray]]
"""A split's pdf-level log-likelihoods, shard by shard: each item maps its utterances to [T, num_pdfs] matrices.
Tuning iterates dev more than once when it tries a scale beyond its grid, so give an object whose ``__iter__``
computes the shards again (:class:`ShardedLoglikes`) or a list."""


def decode_shard_frames(num_pdfs: int) -> int:
    """Frames of a decoding shard whose log-likelihoods fill :data:`DECODE_SHARD_BYTES`."""
    return max(1, DECODE_SHARD_BYTES // (4 * max(1, num_pdfs)))


class ShardedLoglikes:
    """Log-likelihoods computed from a feature dir one shard at a time, each time it is iterated.

    ``loglikes`` turns one shard's features (utterance -> matrix, :class:`~decoding.shards.FeatureShards` order)
    into its log-likelihoods; the features are dropped once it returns, and a shard's log-likelihoods once the
    consumer moves on to the next, so only one shard of either is held.
    """

    def __init__(self, feats: FeatureShards,
                 loglikes: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> None:
        self.feats = feats
        self.loglikes = loglikes

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for shard in self.feats.shards:
            yield self.loglikes(self.feats.read(shard.utts))


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

    ``seconds`` is the summed per-utterance decoding time (CPU time of the decoding thread), so ``real_time_factor``
    = seconds / audio seconds is per core; ``wall_seconds`` is the elapsed time of decoding (computing the
    log-likelihoods excluded; scales decoded together in one pass each get the pass's time). ``failed``:
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


_Decoded = tuple[list[str] | None, bool, int, float]
"""One utterance at one scale: words (None: no path), reached a final state, frames, seconds."""


@dataclass(frozen=True)
class _DecodeUnit(Unit[tuple[str, list[_Decoded]]]):
    """One utterance's log-likelihoods decoded at each of ``scales`` with ``graph_dir``'s HCLG (one decoder, reset
    by every search). The process running it reads the graph and words.txt once (:func:`features.executor.cached`);
    ``tid2pdf`` maps the graph's transition-ids to the columns of ``loglikes``."""

    graph_dir: Path
    tid2pdf: np.ndarray
    cfg: DecodeConfig
    utt: str
    loglikes: np.ndarray
    scales: tuple[float, ...]

    def describe(self) -> str:
        return f"utterance {self.utt!r} on {self.graph_dir / 'HCLG.fst'}"

    def run(self) -> tuple[str, list[_Decoded]]:
        decoder = cached(_decoder, self.graph_dir / "HCLG.fst", self.cfg.beam, self.cfg.max_active)[1]
        words = cached(_words, self.graph_dir / "words.txt")
        expanded = self.loglikes[:, self.tid2pdf]
        out = []
        for scale in self.scales:
            t0 = time.thread_time()  # this thread only: the decoder runs in it
            mat = np.ascontiguousarray(expanded * scale, dtype=np.float32)
            decoder.decode(kaldi_decoder.DecodableCtc(mat, offset=0))
            reached_final = decoder.reached_final()
            ok, best = decoder.get_best_path(use_final_probs=reached_final)
            hyp = None
            if ok:
                got, _tids, word_ids, _weight = kaldifst.get_linear_symbol_sequence(best)
                if got:
                    hyp = [words[w] for w in word_ids]
            out.append((hyp, reached_final, mat.shape[0], time.thread_time() - t0))
        return self.utt, out


def _decoder(hclg: Path, beam: float, max_active: int) -> tuple[kaldifst.StdVectorFst, kaldi_decoder.FasterDecoder]:
    """HCLG and a decoder searching it (the decoder keeps a reference to the graph, which must outlive it). Reading
    a 2M-state graph takes seconds: :func:`features.executor.cached` keeps both for the next utterance."""
    graph = kaldifst.StdVectorFst.read(str(hclg))
    return graph, kaldi_decoder.FasterDecoder(graph, kaldi_decoder.FasterDecoderOptions(beam=beam,
                                                                                          max_active=max_active))


def _words(path: Path) -> dict[int, str]:
    return {i: w for w, i in read_symbol_table(path).items()}


def _check_shapes(loglikes: Mapping[str, np.ndarray], num_pdfs: int) -> None:
    for utt, mat in loglikes.items():
        if mat.ndim != 2 or mat.shape[1] != num_pdfs:
            raise InputError(f"utterance {utt}: log-likelihoods have shape {mat.shape}, the model has {num_pdfs} "
                             "pdfs")


def _as_model(transition_model: Path | khg.TransitionModel) -> khg.TransitionModel:
    if isinstance(transition_model, khg.TransitionModel):
        return transition_model
    from decoding.model_io import read_model

    return read_model(Path(transition_model))[0]


def _as_shards(loglikes: Mapping[str, np.ndarray] | LoglikeShards) -> LoglikeShards:
    """A mapping of utterances is one shard."""
    return [loglikes] if isinstance(loglikes, Mapping) else loglikes


def _decode_at_scales(graph_dir: Path, transition_model: Path | khg.TransitionModel,
                      loglikes: Mapping[str, np.ndarray] | LoglikeShards, scales: Sequence[float],
                      cfg: DecodeConfig, nj: int) -> dict[float, DecodeResult]:
    """One pass over the shards: each utterance decoded at every scale of ``scales`` while its shard is held.

    A shard's utterances are units of the executor (``nj`` local processes, which share the graph this process
    read before forking them, or a Dask cluster's workers, which read it once each); each utterance's matrix goes
    to the process that decodes it, so the pass holds one shard of log-likelihoods plus one utterance per worker.
    ``wall_seconds`` of every scale is the pass's decoding time, log-likelihood computation excluded.
    """
    graph_dir = Path(graph_dir).resolve()
    if not (graph_dir / "HCLG.fst").is_file():
        raise InputError("missing decoding graph", graph_dir / "HCLG.fst")
    model = _as_model(transition_model)
    tid2pdf = np.asarray(model.transition_id_to_pdf_array(), dtype=np.int32)[1:]
    runner = executor_for(nj)
    runner.preload(_decoder, graph_dir / "HCLG.fst", cfg.beam, cfg.max_active)
    t_wall = 0.0
    decoded: dict[str, list[_Decoded]] = {}
    with tqdm(desc="decode", unit="utt", leave=False) as bar:
        for shard in _as_shards(loglikes):
            _check_shapes(shard, model.num_pdfs)
            t0 = time.perf_counter()
            units = [_DecodeUnit(graph_dir, tid2pdf, cfg, utt, shard[utt], tuple(scales)) for utt in sorted(shard)]
            for utt, rows in runner.map(units, "decode"):
                decoded[utt] = rows
                bar.update()
            t_wall += time.perf_counter() - t0
            del shard, units  # before the next shard is computed
    return {scale: _result(decoded, i, scale, t_wall) for i, scale in enumerate(scales)}


def _result(decoded: Mapping[str, list[_Decoded]], i: int, scale: float, wall_seconds: float) -> DecodeResult:
    """The :class:`DecodeResult` of the ``i``-th scale of a pass (utterances in sorted order)."""
    hyps, failed, partial, frames, seconds = {}, [], [], 0, 0.0
    for utt in sorted(decoded):
        words, reached_final, num_frames, secs = decoded[utt][i]
        frames += num_frames
        seconds += secs
        if words is None:
            failed.append(utt)
            continue
        hyps[utt] = words
        if not reached_final:
            partial.append(utt)
    audio_seconds = frames * FRAME_SHIFT_SECONDS
    result = DecodeResult(hyps=hyps, frames=frames, seconds=seconds, wall_seconds=wall_seconds,
                          real_time_factor=seconds / audio_seconds if audio_seconds else 0.0, failed=failed,
                          partial=partial, acoustic_scale=scale)
    if failed or partial:
        logger.warning("decode: %d utterances without a path, %d did not reach a final state", len(failed),
                       len(partial))
    logger.info("decoded %d utterances, %d frames, RTF %.4f per core (%.0f frames/s), acoustic scale %g",
                len(decoded), frames, result.real_time_factor, frames / seconds if seconds else 0.0, scale)
    return result


def decode_loglikes(graph_dir: Path, transition_model: Path | khg.TransitionModel,
                    loglikes: Mapping[str, np.ndarray] | LoglikeShards, cfg: DecodeConfig | None = None,
                    nj: int = 1) -> DecodeResult:
    """Decode every utterance of ``loglikes`` (pdf-level [T, num_pdfs] log-likelihoods: one mapping, or shards of
    them) with ``graph_dir``'s HCLG at ``cfg.acoustic_scale``.

    ``transition_model`` is the one the graph was built with (object, or a ``final.mdl`` path). Utterances go
    to ``nj`` local processes (or the Dask cluster the pipeline connected to); with ``nj == 1`` everything runs in
    this process.
    """
    cfg = cfg or DecodeConfig()
    return _decode_at_scales(graph_dir, transition_model, loglikes, [cfg.acoustic_scale], cfg, nj)[cfg.acoustic_scale]


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
                    dev_loglikes: Mapping[str, np.ndarray] | LoglikeShards, dev_refs: Mapping[str, Sequence[str]],
                    test_loglikes: Mapping[str, np.ndarray] | LoglikeShards, cfg: DecodeConfig | None = None,
                    acoustic_scales: Sequence[float] = (0.06, 0.08, 0.1, 0.12, 0.15), nj: int = 1,
                    extend_edges: int = 0) -> TunedDecode:
    """Pick the acoustic scale with the lowest dev WER (:func:`search_scale` over ``acoustic_scales``, beyond
    an end of it by up to ``extend_edges`` steps while dev still improves there), then decode test with it.

    Only dev chooses: the test set is decoded once, so its WER stays an unbiased estimate. One pass over dev's
    shards decodes every scale of the grid, so each shard's log-likelihoods are computed once for all of them. A
    scale beyond an end of the grid is known only once the whole grid's dev WERs are, so each such step is one more
    pass over dev that computes the log-likelihoods again: keeping them instead would mean holding all of dev's,
    which is what the shards avoid (and computing them costs less than decoding them at one scale).
    """
    cfg = cfg or DecodeConfig()
    transition_model = _as_model(transition_model)
    grid = sorted(set(acoustic_scales))
    dev_results = _decode_at_scales(graph_dir, transition_model, dev_loglikes, grid, cfg, nj) if grid else {}
    dev_wer = {}

    def wer_at(scale: float) -> float:
        if scale not in dev_results:
            dev_results.update(_decode_at_scales(graph_dir, transition_model, dev_loglikes, [scale], cfg, nj))
        dev_wer[scale] = compute_wer(dev_refs, dev_results[scale].hyps)
        logger.info("dev WER at acoustic scale %g: %.2f%%", scale, dev_wer[scale].wer)
        return dev_wer[scale].wer

    best = search_scale(wer_at, acoustic_scales, extend_edges)
    test = _decode_at_scales(graph_dir, transition_model, test_loglikes, [best], cfg, nj)[best]
    return TunedDecode(best, dict(sorted(dev_wer.items())), dev_results[best], test)
