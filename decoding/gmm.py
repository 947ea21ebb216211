"""GMM-HMM training and forced alignment: Kaldi's train_mono.sh, train_deltas.sh and align_si.sh in Python.

The HMM machinery (transition model, training graphs, Viterbi alignment, transition re-estimation) is Kaldi's
own code through the kaldi-hmm-gmm bindings. Statistics, the GMM update and mixing up are Kaldi's algorithms
vectorised in numpy (:mod:`decoding.gmm_accum`, tested against the bindings), since the bindings work one frame per
call. The tree is :mod:`decoding.tree`. Every directory written follows Kaldi's layout (``final.mdl``, ``tree``,
``ali.scp``), so Kaldi tools can read the results.

The features stay on disk. Every pass over the data (an EM iteration, an alignment) goes through it one shard at
a time (:mod:`decoding.shards`): each shard is a unit of :mod:`features.executor` (one of ``nj`` local processes,
or a Dask worker) that reads the shard, compiles its training graphs, aligns it when the pass realigns, and
accumulates its statistics, loading the pass's model from the file the driver published; the driver adds the
shards' statistics in shard order and updates the model. Memory is therefore set by a shard (``shard_frames``) per
process, never by the corpus, and neither ``nj`` nor where the units run changes a result. Statistics are summed
within a shard, then shard after shard, so with one shard they are exactly the whole-corpus sums; with several
they differ from those by float rounding only.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import kaldi_hmm_gmm as khg
import numpy as np
from tqdm import tqdm

from decoding import tree as tree_mod
from decoding.align import AlignResult, align_utterances, equal_align_utterances, frame_contexts
from decoding.decode import ShardedLoglikes, decode_shard_frames
from decoding.gmm_accum import (
    GmmParams,
    GmmStats,
    MleOptions,
    PdfGmm,
    accumulate_utterances,
    diag_gmm,
    mix_up,
    mle_update,
    to_am,
    transition_counts,
)
from decoding.hmm import (
    GraphCompiler,
    TransitionTables,
    make_topology,
    monophone_tree,
    read_model,
    transition_model,
    transition_tables,
    tree_extra_questions,
    tree_roots,
    write_model,
)
from decoding.lang import Lang, load_lang
from decoding.shards import SHARD_FRAMES, FeatureShards
from decoding.tree_stats import TreeStats, TreeStatsAccumulator
from features.atomic import atomic_write, write_text_atomic
from features.errors import InputError
from features.executor import Unit, cached, executor_for, load_pickle, publish
from features.kaldi_io import load_vec_int_scp, write_vec_int_ark_scp, write_vector
from features.tables import read_text, write_table

logger = logging.getLogger(__name__)

_MIXUP_PERTURB = 0.01   # gmm-est --perturb-factor
_MIXUP_MIN_COUNT = 20.0  # gmm-est --min-count


@dataclass
class MonoConfig:
    """steps/train_mono.sh options (Kaldi defaults except the shorter schedule)."""

    num_iters: int = 25
    max_gauss: int = 1000  # --totgauss
    max_iter_inc: int = 15  # mix up until this iteration (Kaldi: num_iters - 10)
    realign_iters: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23)
    boost_silence: float = 1.0
    initial_beam: float = 6.0  # the first realignment, from the flat-start model, uses a narrow beam
    beam: float = 10.0
    retry_beam: float = 40.0
    careful: bool = False
    power: float = 0.25  # exponent of the occupancy when sharing Gaussians out at mixing up
    first_min_gaussian_occupancy: float = 3.0  # gmm-est on the equal alignment
    seed: int = 0  # mixing-up perturbations
    shard_frames: int = SHARD_FRAMES  # frames read (per process) at a time; statistics are summed per shard


@dataclass
class TriConfig:
    """steps/train_deltas.sh options plus the decision tree's."""

    num_leaves: int = 500
    max_gauss: int = 8000  # --totgauss
    num_iters: int = 35
    max_iter_inc: int = 25
    realign_iters: tuple[int, ...] = (10, 20, 30)
    boost_silence: float = 1.0
    beam: float = 10.0
    retry_beam: float = 40.0
    careful: bool = False
    power: float = 0.25
    tree_min_count: float = 100.0  # frames each side of a tree split
    tree_split_thresh: float = 300.0  # build-tree --thresh (log-likelihood gain)
    var_floor: float = 0.01  # tree stats / gmm-init-model variance floor
    seed: int = 0  # mixing-up perturbations
    shard_frames: int = SHARD_FRAMES  # frames read (per process) at a time; statistics are summed per shard


# ----------------------------------------------------------------------------------------------- inputs
def gmm_features(feats_dir: Path, shard_frames: int = SHARD_FRAMES) -> FeatureShards:
    """MFCC with per-speaker mean normalisation plus deltas and delta-deltas (13 -> 39 dims), train_deltas' input,
    read shard by shard."""
    return FeatureShards(feats_dir, shard_frames, norm_vars=False, deltas=True)


def _shared_features(feats_dir: Path, shard_frames: int) -> FeatureShards:
    """:func:`gmm_features`, once per process while the files of its index are unchanged: the driver's copy is the
    one local workers inherit, and a worker reads a feature dir's index once for all its units."""
    index = [feats_dir / name for name in ("feats.scp", "utt2num_frames", "cmvn.scp", "utt2spk")]
    return cached(_features_of, feats_dir, shard_frames, *index)


def _features_of(feats_dir: Path, shard_frames: int, *_index: Path) -> FeatureShards:
    return gmm_features(feats_dir, shard_frames)


@dataclass
class _Data:
    """Training data: the features stay on disk in shards; transcripts (of the utterances with features) and the
    lang dir are held."""

    feats: FeatureShards
    texts: dict[str, list[str]]
    lang: Lang


def _load_training_data(feats_dir: Path, lang_dir: Path, text: Path | None, shard_frames: int) -> _Data:
    feats = _shared_features(Path(feats_dir).resolve(), shard_frames)
    texts = read_text(Path(text) if text is not None else Path(feats_dir) / "text")
    return _Data(feats, {u: w for u, w in texts.items() if u in feats.frames}, load_lang(lang_dir))


# ----------------------------------------------------------------------------------------------- passes
@dataclass(frozen=True)
class _Viterbi:
    """Viterbi alignment with the pass's model, its silence pdfs' weights times ``boost_silence``."""

    beam: float
    retry_beam: float
    careful: bool
    boost_silence: float = 1.0


_PASSES = ".passes"  # beside a training or alignment dir's outputs: the model of the pass under way, for its units
_EQUAL = "equal"  # the flat start: every utterance's frames shared out equally over its graph's states


@dataclass(frozen=True)
class _ShardPass(Unit[tuple[AlignResult | None, GmmStats | None]]):
    """What shard ``index`` of a feature dir goes through in one pass over the data: read its features; align it
    (``align``: flat start or Viterbi, on graphs compiled from ``texts``) or take its ``alignments``; with
    ``accumulate``, add up its statistics under the pass's GMMs. ``model`` is the pass's (transition model, tree,
    GMMs) as :func:`features.executor.publish` wrote them; the process running the unit loads it, the features'
    index and the lang dir once (:func:`features.executor.cached`). A shard's alignments and statistics come back.
    """

    feats_dir: Path
    shard_frames: int
    index: int
    lang_dir: Path
    model: Path
    align: _Viterbi | str | None = None
    texts: Mapping[str, list[str]] = field(default_factory=dict)
    alignments: Mapping[str, np.ndarray] = field(default_factory=dict)
    accumulate: bool = True

    def describe(self) -> str:
        return f"shard {self.index} of {self.feats_dir / 'feats.scp'}"

    def run(self) -> tuple[AlignResult | None, GmmStats | None]:
        feats = _shared_features(self.feats_dir, self.shard_frames)
        tm, _ctx, _am = cached(load_pickle, self.model)
        tables = cached(_tables, self.model)
        shard_feats = feats.read(feats.shards[self.index].utts)
        ali = None
        alignments = self.alignments
        if self.align is not None:
            graphs = cached(_compiler, self.model, self.lang_dir).compile(self.texts)
            if self.align == _EQUAL:
                ali = equal_align_utterances(graphs, shard_feats)
            else:
                assert isinstance(self.align, _Viterbi)
                am = cached(_boosted, self.model, self.lang_dir, self.align.boost_silence)
                ali = align_utterances(tm, am, graphs, shard_feats, beam=self.align.beam,
                                       retry_beam=self.align.retry_beam, careful=self.align.careful)
            alignments = ali.alignments
        stats = None
        if self.accumulate and alignments:
            stats = accumulate_utterances(cached(_params, self.model), shard_feats,
                                          {u: tables.pdf[a] for u, a in alignments.items()})
        return ali, stats


def _tables(model: Path) -> TransitionTables:
    return transition_tables(cached(load_pickle, model)[0])


def _params(model: Path) -> GmmParams:
    return GmmParams.from_am(cached(load_pickle, model)[2])


def _compiler(model: Path, lang_dir: Path) -> GraphCompiler:
    tm, ctx, _ = cached(load_pickle, model)
    return GraphCompiler(tm, ctx, cached(load_lang, lang_dir))


def _boosted(model: Path, lang_dir: Path, factor: float) -> khg.AmDiagGmm:
    tm, _, am = cached(load_pickle, model)
    return boost_silence(am, _silence_pdfs(tm, cached(load_lang, lang_dir)), factor)


@dataclass
class _PassModel:
    """The model of a pass, published for its units under ``directory`` (one file at a time: the last pass's
    goes when the next is published, and the directory when training ends)."""

    directory: Path
    path: Path | None = None

    def publish(self, trans_model: khg.TransitionModel, ctx: khg.ContextDependency, am: khg.AmDiagGmm) -> Path:
        path = publish((trans_model, ctx, am), self.directory)
        if self.path is not None and self.path != path:
            self.path.unlink(missing_ok=True)
        self.path = path
        return path

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.path = None


def _run_pass(data: _Data, model: Path, nj: int, desc: str, align: _Viterbi | str | None = None,
              alignments: Mapping[str, np.ndarray] | None = None, accumulate: bool = True
              ) -> tuple[AlignResult | None, GmmStats | None]:
    """Every shard through one pass (:class:`_ShardPass`), as units of the executor (``nj`` local processes, or
    the Dask cluster the pipeline connected to); alignments and statistics added up in shard order."""
    feats, texts = data.feats, data.texts
    units = [_ShardPass(feats.feats_dir, feats.max_frames, shard.index, data.lang.lang_dir.resolve(),
                        model, align,
                        texts={u: texts[u] for u in shard.utts if u in texts} if align is not None else {},
                        alignments={u: alignments[u] for u in shard.utts if u in alignments}
                        if align is None and alignments is not None else {},
                        accumulate=accumulate)
             for shard in feats.shards]
    runner = executor_for(nj)
    runner.preload(load_pickle, model)
    ali = AlignResult() if align is not None else None
    stats: GmmStats | None = None  # the first shard's statistics start the sums: exactly them with one shard
    for part_ali, part_stats in runner.map(units, desc):
        if ali is not None and part_ali is not None:
            ali.merge(part_ali)
        if part_stats is not None:
            if stats is None:
                stats = part_stats
            else:
                stats.add(part_stats)
    if ali is not None:
        ali.alignments = dict(sorted(ali.alignments.items()))
        ali.failed = dict(sorted(ali.failed.items()))
    return ali, stats


# ----------------------------------------------------------------------------------------------- model pieces
def _write_ctx(ctx: khg.ContextDependency, path: Path) -> None:
    """Binary Kaldi tree file, written via a temp name so a killed run leaves no half file."""
    tmp = path.with_name(f".{path.name}.tmp")
    ctx.write(True, str(tmp))
    tmp.replace(path)


def boost_silence(am: khg.AmDiagGmm, silence_pdfs: list[int], factor: float) -> khg.AmDiagGmm:
    """gmm-boost-silence: silence pdfs' weights times ``factor`` (left unnormalised, as Kaldi does)."""
    if factor == 1.0 or not silence_pdfs:
        return am
    out = khg.AmDiagGmm()
    out.copy_from_am_diag_gmm(am)
    for p in silence_pdfs:
        gmm = out.get_pdf(p)
        gmm.set_weights(np.asarray(gmm.weights, np.float32) * factor)
        gmm.compute_gconsts()
    return out


def _silence_pdfs(trans_model: khg.TransitionModel, lang: Lang) -> list[int]:
    tables = transition_tables(trans_model)
    return sorted(set(tables.pdf[1:][np.isin(tables.phone[1:], lang.silence_phones)].tolist()))


@dataclass
class _Trainer:
    """The state of one EM run: the model being trained (transition model, tree, GMMs) and the training data; each
    pass publishes the model for its units under ``passes`` (:class:`_PassModel`)."""

    trans_model: khg.TransitionModel
    ctx: khg.ContextDependency
    am: khg.AmDiagGmm
    data: _Data
    nj: int
    rng: np.random.Generator
    passes: _PassModel
    history: list[dict] = field(default_factory=list)

    def align(self, aligner: _Viterbi) -> AlignResult:
        """A pass that only aligns (the final alignments)."""
        model = self.passes.publish(self.trans_model, self.ctx, self.am)
        ali, _ = _run_pass(self.data, model, self.nj, "align", aligner, accumulate=False)
        assert ali is not None
        _warn_failed(ali)
        return ali

    def iterate(self, aligner: _Viterbi | str | None, alignments: Mapping[str, np.ndarray], target_gauss: int,
                power: float, min_gaussian_occupancy: float = 10.0) -> tuple[AlignResult | None, dict]:
        """One EM iteration, gmm-acc-stats-ali + gmm-est: one pass over the shards that realigns each first when
        an ``aligner`` is given (:class:`_Viterbi` with the current model, or the flat start's equal alignment;
        else uses ``alignments``) and accumulates its statistics, then the update.

        Returns the new alignments (None when not realigned) and the iteration's numbers for the log.
        """
        params = GmmParams.from_am(self.am)
        model = self.passes.publish(self.trans_model, self.ctx, self.am)
        ali, stats = _run_pass(self.data, model, self.nj, "EM pass", aligner, alignments)
        if ali is not None:
            _warn_failed(ali)
            alignments = ali.alignments
        if stats is None:
            raise ValueError("no utterance has both features and an alignment")
        pdfs = mle_update(params, stats, MleOptions(min_gaussian_occupancy=min_gaussian_occupancy))
        pdfs = mix_up(pdfs, stats.pdf_occupancy(params.offsets), target_gauss, _MIXUP_PERTURB, power,
                      _MIXUP_MIN_COUNT, self.rng)
        self.am = to_am(pdfs)
        self.trans_model.mle_update(transition_counts(self.trans_model.num_transition_ids, alignments.values()),
                                    khg.MleTransitionUpdateConfig())
        return ali, {"avg_loglike": stats.tot_loglike / max(stats.num_frames, 1), "frames": stats.num_frames,
                     "num_gauss": self.am.num_gauss}

    def log_iteration(self, it: int, numbers: dict, ali: AlignResult | None) -> None:
        row = {"iter": it, **numbers}
        if ali is not None:
            row.update(align_like_per_frame=ali.tot_like / max(ali.num_frames, 1), align_failed=len(ali.failed),
                       align_retried=ali.num_retried)
        self.history.append(row)
        logger.info("iter %d: avg loglike/frame %.3f over %d frames, %d Gaussians%s", it, row["avg_loglike"],
                    row["frames"], row["num_gauss"],
                    f", realigned ({row['align_failed']} failed)" if ali is not None else "")


def _warn_failed(ali: AlignResult) -> None:
    if ali.failed:
        logger.warning("%d of %d utterances failed to align (e.g. %s)", len(ali.failed),
                       len(ali.failed) + len(ali.alignments), next(iter(ali.failed.items())))


def _gauss_schedule(start: int, target: int, max_iter_inc: int) -> int:
    """Gaussians added per iteration (Kaldi: incgauss = (totgauss - numgauss) / max_iter_inc)."""
    return max(0, (target - start) // max(1, max_iter_inc))


def _write_alignments(out_dir: Path, result: AlignResult, tables: TransitionTables) -> None:
    write_vec_int_ark_scp(result.alignments.items(), out_dir / "ali.ark", out_dir / "ali.scp")
    write_vec_int_ark_scp(((u, tables.pdf[a]) for u, a in result.alignments.items()),
                          out_dir / "pdf.ark", out_dir / "pdf.scp")
    write_table(out_dir / "failed.txt", result.failed)


def _write_log(out_dir: Path, history: list[dict], summary: dict) -> None:
    log_dir = out_dir / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(log_dir / "iterations.jsonl") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------- mono
def _init_mono_am(num_pdfs: int, feats: FeatureShards) -> khg.AmDiagGmm:
    """gmm-init-mono: every pdf starts as one Gaussian with the global mean and variance.

    Two passes over the shards, mean then variance, each a sum that goes on from shard to shard in frame order
    (numpy adds the rows of a column one after another), so both equal numpy's ``mean(0)`` and ``var(0)`` of all
    frames at once, bit for bit, whatever the shard size.
    """
    def frames_of(shard_utts: tuple[str, ...]) -> np.ndarray:
        return np.concatenate(list(feats.read(shard_utts).values())).astype(np.float64)

    total: np.ndarray | None = None
    for shard in feats.shards:
        x = frames_of(shard.utts)
        total = x.sum(0) if total is None else np.concatenate([total[None], x]).sum(0)
    assert total is not None
    mean = total / feats.num_frames
    squares: np.ndarray | None = None
    for shard in feats.shards:
        d = frames_of(shard.utts) - mean
        d *= d
        squares = d.sum(0) if squares is None else np.concatenate([squares[None], d]).sum(0)
    assert squares is not None
    var = np.maximum(squares / feats.num_frames, 1e-3)
    am = khg.AmDiagGmm()
    am.init(diag_gmm(np.ones(1), mean[None], var[None]), num_pdfs)
    return am


def train_mono(feats_dir: Path, lang_dir: Path, out_dir: Path, cfg: MonoConfig | None = None, nj: int = 2,
               text: Path | None = None) -> dict:
    """steps/train_mono.sh: flat start, EM with realignment and mixing up; writes final.mdl, tree, ali, log/.

    ``text`` defaults to the transcripts the feature dir carries (``feats_dir/text``). The alignments in
    ``out_dir/ali.scp`` are made with the final model (what align_si.sh would add), ready for tree building.
    """
    cfg = cfg or MonoConfig()
    data = _load_training_data(feats_dir, lang_dir, text, cfg.shard_frames)
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    topo = make_topology(data.lang)
    ctx = monophone_tree(topo)
    tm = transition_model(ctx, topo)
    GraphCompiler(tm, ctx, data.lang).count_oov(data.texts)
    trainer = _Trainer(tm, ctx, _init_mono_am(tm.num_pdfs, data.feats), data, nj, np.random.default_rng(cfg.seed),
                       _PassModel(out_dir / _PASSES))

    num_gauss = tm.num_pdfs
    inc = _gauss_schedule(num_gauss, cfg.max_gauss, cfg.max_iter_inc)
    ali, numbers = trainer.iterate(_EQUAL, {}, num_gauss, cfg.power, cfg.first_min_gaussian_occupancy)
    assert ali is not None
    trainer.log_iteration(0, numbers, ali)
    beams = (cfg.initial_beam, 4 * cfg.initial_beam)  # train_mono.sh: retry beam 4x the beam
    for it in tqdm(range(1, cfg.num_iters), desc="mono EM", leave=False):
        aligner = None
        if it in cfg.realign_iters:
            aligner = _Viterbi(*beams, cfg.careful, cfg.boost_silence)
            beams = (cfg.beam, cfg.retry_beam)
        if it <= cfg.max_iter_inc:
            num_gauss += inc
        realigned, numbers = trainer.iterate(aligner, ali.alignments, num_gauss, cfg.power)
        if realigned is not None:
            ali = realigned
        trainer.log_iteration(it, numbers, realigned)

    write_model(out_dir / "final.mdl", tm, trainer.am)
    _write_ctx(ctx, out_dir / "tree")
    final = trainer.align(_Viterbi(cfg.beam, cfg.retry_beam, cfg.careful, cfg.boost_silence))
    trainer.passes.remove()
    _write_alignments(out_dir, final, transition_tables(tm))
    summary = {"num_pdfs": tm.num_pdfs, "num_gauss": trainer.am.num_gauss, "num_utts": len(data.feats.frames),
               "avg_loglike": trainer.history[-1]["avg_loglike"],
               "avg_loglike_first": trainer.history[0]["avg_loglike"],
               "num_failed": len(final.failed), "seconds": round(time.time() - t0, 2), "config": asdict(cfg)}
    _write_log(out_dir, trainer.history, summary)
    logger.info("mono: %d pdfs, %d Gaussians, avg loglike %.3f, %.1f s", summary["num_pdfs"],
                summary["num_gauss"], summary["avg_loglike"], summary["seconds"])
    return summary


# ----------------------------------------------------------------------------------------------- tri
def _tree_stats(data: _Data, alignments: Mapping[str, np.ndarray], tables: TransitionTables) -> TreeStats:
    """acc-tree-stats over the aligned utterances, read one shard at a time in this process (the accumulator's
    sums do not depend on how the utterances are read, so they are exactly the whole-corpus ones)."""
    acc = TreeStatsAccumulator(ci_phones=data.lang.silence_phones)
    for shard in tqdm(data.feats.shards, desc="tree stats", leave=False):
        _add_tree_stats(acc, data.feats.read(u for u in shard.utts if u in alignments), alignments, tables)
    return acc.result()


def _add_tree_stats(acc: TreeStatsAccumulator, feats: Mapping[str, np.ndarray],
                    alignments: Mapping[str, np.ndarray], tables: TransitionTables) -> None:
    """One shard's utterances into ``acc`` (a function of its own, so the shard's matrices go when it returns)."""
    for utt, x in feats.items():
        ali = alignments[utt]
        acc.add(utt, x, frame_contexts(ali, tables), tables.pdf_class[ali])


def _convert_alignments(alignments: Mapping[str, np.ndarray], old: TransitionTables, tree: tree_mod.Tree,
                        new_tm: khg.TransitionModel) -> dict[str, np.ndarray]:
    """convert-ali: same phones, HMM states and transitions, transition-ids of the new tree's pdfs."""
    new = transition_tables(new_tm)
    n_tr = int(max(old.trans_index.max(), new.trans_index.max())) + 1
    n_st = int(max(old.hmm_state.max(), new.hmm_state.max())) + 1
    n_pdf = new_tm.num_pdfs

    def key(phone: np.ndarray, state: np.ndarray, pdf: np.ndarray, index: np.ndarray) -> np.ndarray:
        return ((phone.astype(np.int64) * n_st + state) * n_pdf + pdf) * n_tr + index

    new_keys = key(new.phone[1:], new.hmm_state[1:], new.pdf[1:], new.trans_index[1:])
    order = np.argsort(new_keys)
    out = {}
    for utt, ali in alignments.items():
        new_pdfs = tree.leaf_ids(frame_contexts(ali, old), old.pdf_class[ali])
        k = key(old.phone[ali], old.hmm_state[ali], new_pdfs, old.trans_index[ali])
        pos = np.clip(np.searchsorted(new_keys, k, sorter=order), 0, len(order) - 1)
        found = order[pos]
        if not np.array_equal(new_keys[found], k):
            raise ValueError(f"alignment of {utt} has a (phone, state, pdf) the new transition model lacks")
        out[utt] = (found + 1).astype(np.int32)
    return out


def train_tri(feats_dir: Path, lang_dir: Path, ali_dir: Path, out_dir: Path, cfg: TriConfig | None = None,
              nj: int = 2, text: Path | None = None) -> dict:
    """steps/train_deltas.sh: tree from ``ali_dir``'s alignments (and its final.mdl), then triphone EM.

    ``ali_dir`` is a monophone training dir or an :func:`align` output dir (``ali.scp`` + ``final.mdl``).
    """
    cfg = cfg or TriConfig()
    data = _load_training_data(feats_dir, lang_dir, text, cfg.shard_frames)
    t0 = time.time()
    out_dir, ali_dir = Path(out_dir), Path(ali_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old_tm, _ = read_model(ali_dir / "final.mdl")
    old = transition_tables(old_tm)
    frames = data.feats.frames
    alignments = {u: a for u, a in load_vec_int_scp(ali_dir / "ali.scp").items() if frames.get(u) == len(a)}
    if not alignments:
        raise InputError("no usable alignment (missing, or lengths differ from the features)", ali_dir)
    lang = data.lang

    # acc-tree-stats, cluster-phones, build-tree, gmm-init-model.
    stats = _tree_stats(data, alignments, old)
    topo = make_topology(lang)
    tcfg = tree_mod.TreeConfig(num_leaves=cfg.num_leaves, min_count=cfg.tree_min_count,
                               split_thresh=cfg.tree_split_thresh, var_floor=cfg.var_floor)
    questions = tree_mod.cluster_phones_into_questions(stats, lang.real_phones, tree_extra_questions(lang), tcfg)
    num_classes = topo.get_phone_to_num_pdf_classes()
    roots = tree_roots(lang)
    tree = tree_mod.build_tree(stats, [r.phones for r in roots], {p: num_classes[p] for p in lang.real_phones},
                               questions, tcfg, shared_roots=[r.shared for r in roots],
                               split_roots=[r.split for r in roots])
    tree_mod.write_tree(tree, out_dir / "tree")
    ctx = tree.to_context_dependency()
    tm = transition_model(ctx, topo)
    counts, means, variances = tree_mod.gaussian_init_from_stats(stats, tree, cfg.var_floor)
    rng = np.random.default_rng(cfg.seed)
    num_gauss = cfg.num_leaves
    pdfs = [PdfGmm(np.ones(1), means[p][None], variances[p][None]) for p in range(tree.num_pdfs)]
    # gmm-mixup --mix-up=$numleaves: the tree usually stops short of num_leaves (min_count, split_thresh);
    # the spare Gaussians go to the pdfs with the most frames.
    am = to_am(mix_up(pdfs, counts, num_gauss, _MIXUP_PERTURB, cfg.power, _MIXUP_MIN_COUNT, rng))
    logger.info("tree: %d tied states from %d monophone-aligned utterances", tree.num_pdfs, len(alignments))

    # The first accumulation labels frames with the new tree's pdfs through the converted alignments.
    ali_dict = _convert_alignments(alignments, old, tree, tm)
    GraphCompiler(tm, ctx, lang).count_oov(data.texts)
    trainer = _Trainer(tm, ctx, am, data, nj, rng, _PassModel(out_dir / _PASSES))
    inc = _gauss_schedule(num_gauss, cfg.max_gauss, cfg.max_iter_inc)
    for it in tqdm(range(1, cfg.num_iters), desc="tri EM", leave=False):
        aligner = None
        if it in cfg.realign_iters:
            aligner = _Viterbi(cfg.beam, cfg.retry_beam, cfg.careful, cfg.boost_silence)
        if it <= cfg.max_iter_inc:
            num_gauss += inc
        realigned, numbers = trainer.iterate(aligner, ali_dict, num_gauss, cfg.power)
        if realigned is not None:
            ali_dict = realigned.alignments
        trainer.log_iteration(it, numbers, realigned)

    write_model(out_dir / "final.mdl", tm, trainer.am)
    trainer.passes.remove()
    summary = {"num_pdfs": tm.num_pdfs, "num_gauss": trainer.am.num_gauss, "num_utts": len(alignments),
               "avg_loglike": trainer.history[-1]["avg_loglike"],
               "avg_loglike_first": trainer.history[0]["avg_loglike"],
               "seconds": round(time.time() - t0, 2), "config": asdict(cfg)}
    _write_log(out_dir, trainer.history, summary)
    logger.info("tri: %d tied states, %d Gaussians, avg loglike %.3f, %.1f s", summary["num_pdfs"],
                summary["num_gauss"], summary["avg_loglike"], summary["seconds"])
    return summary


# ----------------------------------------------------------------------------------------------- align
def align(model_dir: Path, feats_dir: Path, lang_dir: Path, out_dir: Path, nj: int = 2, beam: float = 10.0,
          retry_beam: float = 40.0, text: Path | None = None, shard_frames: int = SHARD_FRAMES) -> dict:
    """steps/align_si.sh for one split, shard by shard (``shard_frames`` per process at a time).

    Writes ``out_dir``/ali.{ark,scp} (transition-ids), pdf.{ark,scp} (pdf ids: the DNN targets), failed.txt
    (utterances that did not align, with the reason; excluded and counted, never silently dropped),
    num_pdfs, pdf_counts (Kaldi vector of per-pdf frame counts: the priors) and copies of final.mdl and tree.
    The summary's ``avg_loglike`` is gmm-acc-stats-ali's acoustic log-likelihood per aligned frame, accumulated
    in the same pass.
    """
    data = _load_training_data(feats_dir, lang_dir, text, shard_frames)
    t0 = time.time()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tm, am = read_model(model_dir / "final.mdl")
    ctx = tree_mod.read_tree(model_dir / "tree")
    GraphCompiler(tm, ctx, data.lang).count_oov(data.texts)
    tables = transition_tables(tm)
    passes = _PassModel(out_dir / _PASSES)
    result, stats = _run_pass(data, passes.publish(tm, ctx, am), nj, "align", _Viterbi(beam, retry_beam, False))
    passes.remove()
    assert result is not None
    _write_alignments(out_dir, result, tables)
    counts = np.zeros(tm.num_pdfs, np.int64)
    for ali in result.alignments.values():
        counts += np.bincount(tables.pdf[ali], minlength=tm.num_pdfs)
    write_text_atomic(out_dir / "num_pdfs", f"{tm.num_pdfs}\n")
    write_vector(out_dir / "pdf_counts", counts)
    for name in ("final.mdl", "tree"):
        if (model_dir / name).resolve() != (out_dir / name).resolve():
            with atomic_write(out_dir / name, "wb") as f:
                f.write((model_dir / name).read_bytes())
    num_utts = len(result.alignments) + len(result.failed)
    summary = {"num_utts": num_utts, "num_aligned": len(result.alignments), "num_failed": len(result.failed),
               "num_frames": result.num_frames, "num_pdfs": tm.num_pdfs,
               "align_like_per_frame": result.tot_like / max(result.num_frames, 1),
               "avg_loglike": stats.tot_loglike / max(stats.num_frames, 1) if stats is not None else float("nan"),
               "seconds": round(time.time() - t0, 2)}
    if result.failed:
        logger.warning("%s: %d of %d utterances failed to align; listed in failed.txt and excluded",
                       out_dir, len(result.failed), num_utts)
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    logger.info("aligned %d/%d utterances (%d frames), avg loglike/frame %.3f, %.1f s", summary["num_aligned"],
                num_utts, summary["num_frames"], summary["avg_loglike"], summary["seconds"])
    return summary


# ----------------------------------------------------------------------------------------------- decoding
_PARAMS_CACHE: dict[tuple[str, float], GmmParams] = {}


def gmm_params(model_dir: Path) -> GmmParams:
    """The GMMs of ``model_dir/final.mdl`` as matrices, cached per model file (by path and modification time), so
    decoding many utterances reads final.mdl once."""
    path = Path(model_dir) / "final.mdl"
    key = (str(path.resolve()), path.stat().st_mtime)
    params = _PARAMS_CACHE.get(key)
    if params is None:
        _PARAMS_CACHE.clear()
        params = _PARAMS_CACHE[key] = GmmParams.from_am(read_model(path)[1])
    return params


def gmm_loglikes(model_dir: Path, feats: np.ndarray) -> np.ndarray:
    """[T, num_pdfs] per-pdf GMM log-likelihoods of one utterance (for decoding with the GMM as acoustic model)."""
    return gmm_params(model_dir).pdf_loglikes(feats)


def gmm_loglike_shards(model_dir: Path, feats_dir: Path) -> ShardedLoglikes:
    """A split's GMM log-likelihoods for the decoder, one shard of utterances at a time (shards sized so that a
    shard's log-likelihood matrices stay within :data:`decoding.decode.DECODE_SHARD_BYTES`)."""
    feats = gmm_features(feats_dir, decode_shard_frames(gmm_params(model_dir).num_pdfs))
    return ShardedLoglikes(feats, lambda shard: {u: gmm_loglikes(model_dir, f) for u, f in shard.items()})
