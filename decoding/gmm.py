"""GMM-HMM training and forced alignment: Kaldi's train_mono.sh, train_deltas.sh and align_si.sh in Python.

The HMM machinery (transition model, training graphs, Viterbi alignment, transition re-estimation) is Kaldi's
own code through the kaldi-hmm-gmm bindings, with alignment spread over ``nj`` processes (:mod:`decoding.align`).
Statistics, the GMM update and mixing up are Kaldi's algorithms vectorised in numpy (:mod:`decoding.gmm_accum`,
tested against the bindings), since the bindings work one frame per call. The tree is :mod:`decoding.tree`.
Every directory written follows Kaldi's layout (``final.mdl``, ``tree``, ``ali.scp``), so Kaldi tools can
read the results.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np
from tqdm import tqdm

from decoding import tree as tree_mod
from decoding.align import AlignResult, align_utterances, equal_align_utterances, frame_contexts
from decoding.gmm_accum import (
    GmmParams,
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
    TransitionTables,
    compile_training_graphs,
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
from decoding.tree_stats import accumulate_tree_stats
from features.atomic import atomic_write, write_text_atomic
from features.errors import InputError
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


# ----------------------------------------------------------------------------------------------- inputs
def load_gmm_feats(feats_dir: Path) -> dict[str, np.ndarray]:
    """MFCC with per-speaker mean normalisation plus deltas and delta-deltas (13 -> 39 dims): train_deltas' input."""
    from features.deltas import add_deltas
    from features.extract import load_feats

    return {utt: add_deltas(mat) for utt, mat in load_feats(Path(feats_dir), cmvn="speaker", norm_vars=False).items()}


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
    """The state of one EM run: the model being trained plus the fixed training data."""

    trans_model: khg.TransitionModel
    am: khg.AmDiagGmm
    feats: Mapping[str, np.ndarray]
    graphs: Mapping[str, kaldifst.StdVectorFst]
    lang: Lang
    nj: int
    rng: np.random.Generator
    history: list[dict] = field(default_factory=list)

    def realign(self, beam: float, retry_beam: float, careful: bool, silence_boost: float) -> AlignResult:
        am = boost_silence(self.am, _silence_pdfs(self.trans_model, self.lang), silence_boost)
        result = align_utterances(self.trans_model, am, self.graphs, self.feats, beam=beam, retry_beam=retry_beam,
                                  careful=careful, nj=self.nj)
        if result.failed:
            logger.warning("%d of %d utterances failed to align (e.g. %s)", len(result.failed),
                           len(result.failed) + len(result.alignments), next(iter(result.failed.items())))
        return result

    def update(self, alignments: Mapping[str, np.ndarray], target_gauss: int, power: float,
               min_gaussian_occupancy: float = 10.0) -> dict:
        """One gmm-acc-stats-ali + gmm-est pass: returns the iteration's numbers for the log."""
        tables = transition_tables(self.trans_model)
        labels = {u: tables.pdf[a] for u, a in alignments.items()}
        params = GmmParams.from_am(self.am)
        stats = accumulate_utterances(params, self.feats, labels)
        pdfs = mle_update(params, stats, MleOptions(min_gaussian_occupancy=min_gaussian_occupancy))
        pdfs = mix_up(pdfs, stats.pdf_occupancy(params.offsets), target_gauss, _MIXUP_PERTURB, power,
                      _MIXUP_MIN_COUNT, self.rng)
        self.am = to_am(pdfs)
        self.trans_model.mle_update(transition_counts(self.trans_model.num_transition_ids, alignments.values()),
                                    khg.MleTransitionUpdateConfig())
        return {"avg_loglike": stats.tot_loglike / max(stats.num_frames, 1), "frames": stats.num_frames,
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


def _load_training_data(feats_dir: Path, lang_dir: Path, text: Path | None
                        ) -> tuple[dict[str, np.ndarray], dict[str, list[str]], Lang]:
    feats = load_gmm_feats(feats_dir)
    texts = read_text(Path(text) if text is not None else Path(feats_dir) / "text")
    if not feats:
        raise InputError("no features", Path(feats_dir) / "feats.scp")
    return feats, texts, load_lang(lang_dir)


# ----------------------------------------------------------------------------------------------- mono
def _init_mono_am(num_pdfs: int, feats: Mapping[str, np.ndarray]) -> khg.AmDiagGmm:
    """gmm-init-mono: every pdf starts as one Gaussian with the global mean and variance."""
    allf = np.concatenate(list(feats.values())).astype(np.float64)
    mean, var = allf.mean(0), np.maximum(allf.var(0), 1e-3)
    am = khg.AmDiagGmm()
    am.init(diag_gmm(np.ones(1), mean[None], var[None]), num_pdfs)
    return am


def train_mono_feats(feats: Mapping[str, np.ndarray], texts: Mapping[str, list[str]], lang: Lang,
                     out_dir: Path, cfg: MonoConfig | None = None, nj: int = 2) -> dict:
    """Flat-start monophone training on in-memory features (the body of :func:`train_mono`)."""
    cfg = cfg or MonoConfig()
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    topo = make_topology(lang)
    ctx = monophone_tree(topo)
    tm = transition_model(ctx, topo)
    graphs = compile_training_graphs(tm, ctx, lang, {u: w for u, w in texts.items() if u in feats})
    trainer = _Trainer(tm, _init_mono_am(tm.num_pdfs, feats), feats, graphs, lang, nj,
                       np.random.default_rng(cfg.seed))

    ali = equal_align_utterances(tm, graphs, feats, nj=nj)
    if ali.failed:
        logger.warning("equal alignment failed for %d utterances (e.g. %s)", len(ali.failed),
                       next(iter(ali.failed.items())))
    num_gauss = tm.num_pdfs
    inc = _gauss_schedule(num_gauss, cfg.max_gauss, cfg.max_iter_inc)
    numbers = trainer.update(ali.alignments, num_gauss, cfg.power, cfg.first_min_gaussian_occupancy)
    trainer.log_iteration(0, numbers, ali)
    beams = (cfg.initial_beam, 4 * cfg.initial_beam)  # train_mono.sh: retry beam 4x the beam
    for it in tqdm(range(1, cfg.num_iters), desc="mono EM", leave=False):
        realigned = None
        if it in cfg.realign_iters:
            realigned = ali = trainer.realign(*beams, cfg.careful, cfg.boost_silence)
            beams = (cfg.beam, cfg.retry_beam)
        if it <= cfg.max_iter_inc:
            num_gauss += inc
        trainer.log_iteration(it, trainer.update(ali.alignments, num_gauss, cfg.power), realigned)

    write_model(out_dir / "final.mdl", tm, trainer.am)
    _write_ctx(ctx, out_dir / "tree")
    final = trainer.realign(cfg.beam, cfg.retry_beam, cfg.careful, cfg.boost_silence)
    _write_alignments(out_dir, final, transition_tables(tm))
    summary = {"num_pdfs": tm.num_pdfs, "num_gauss": trainer.am.num_gauss, "num_utts": len(feats),
               "avg_loglike": trainer.history[-1]["avg_loglike"],
               "avg_loglike_first": trainer.history[0]["avg_loglike"],
               "num_failed": len(final.failed), "seconds": round(time.time() - t0, 2), "config": asdict(cfg)}
    _write_log(out_dir, trainer.history, summary)
    logger.info("mono: %d pdfs, %d Gaussians, avg loglike %.3f, %.1f s", summary["num_pdfs"],
                summary["num_gauss"], summary["avg_loglike"], summary["seconds"])
    return summary


def train_mono(feats_dir: Path, lang_dir: Path, out_dir: Path, cfg: MonoConfig | None = None, nj: int = 2,
               text: Path | None = None) -> dict:
    """steps/train_mono.sh: flat start, EM with realignment and mixing up; writes final.mdl, tree, ali, log/.

    ``text`` defaults to the transcripts the feature dir carries (``feats_dir/text``). The alignments in
    ``out_dir/ali.scp`` are made with the final model (what align_si.sh would add), ready for tree building.
    """
    feats, texts, lang = _load_training_data(feats_dir, lang_dir, text)
    return train_mono_feats(feats, texts, lang, out_dir, cfg, nj)


# ----------------------------------------------------------------------------------------------- tri
def _convert_alignments(alignments: Mapping[str, np.ndarray], old: TransitionTables,
                        new_pdfs: Mapping[str, np.ndarray], new_tm: khg.TransitionModel) -> dict[str, np.ndarray]:
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
        k = key(old.phone[ali], old.hmm_state[ali], new_pdfs[utt], old.trans_index[ali])
        pos = np.clip(np.searchsorted(new_keys, k, sorter=order), 0, len(order) - 1)
        found = order[pos]
        if not np.array_equal(new_keys[found], k):
            raise ValueError(f"alignment of {utt} has a (phone, state, pdf) the new transition model lacks")
        out[utt] = (found + 1).astype(np.int32)
    return out


def train_tri_feats(feats: Mapping[str, np.ndarray], texts: Mapping[str, list[str]], lang: Lang,
                    alignments: Mapping[str, np.ndarray], ali_model: Path, out_dir: Path,
                    cfg: TriConfig | None = None, nj: int = 2) -> dict:
    """Triphone training on in-memory features (the body of :func:`train_tri`)."""
    cfg = cfg or TriConfig()
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old_tm, _ = read_model(ali_model)
    old = transition_tables(old_tm)
    alignments = {u: a for u, a in alignments.items() if u in feats and len(a) == len(feats[u])}
    if not alignments:
        raise InputError("no usable alignment (missing, or lengths differ from the features)", ali_model.parent)
    contexts = {u: frame_contexts(a, old) for u, a in alignments.items()}
    pdf_classes = {u: old.pdf_class[a] for u, a in alignments.items()}

    # acc-tree-stats, cluster-phones, build-tree, gmm-init-model.
    stats = accumulate_tree_stats(feats, contexts, pdf_classes, ci_phones=lang.silence_phones)
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
    new_pdfs = {u: tree.leaf_ids(contexts[u], pdf_classes[u]) for u in alignments}
    ali_dict = _convert_alignments(alignments, old, new_pdfs, tm)
    graphs = compile_training_graphs(tm, ctx, lang, {u: w for u, w in texts.items() if u in feats})
    trainer = _Trainer(tm, am, feats, graphs, lang, nj, rng)
    inc = _gauss_schedule(num_gauss, cfg.max_gauss, cfg.max_iter_inc)
    for it in tqdm(range(1, cfg.num_iters), desc="tri EM", leave=False):
        realigned = None
        if it in cfg.realign_iters:
            realigned = trainer.realign(cfg.beam, cfg.retry_beam, cfg.careful, cfg.boost_silence)
            ali_dict = realigned.alignments
        if it <= cfg.max_iter_inc:
            num_gauss += inc
        trainer.log_iteration(it, trainer.update(ali_dict, num_gauss, cfg.power), realigned)

    write_model(out_dir / "final.mdl", tm, trainer.am)
    summary = {"num_pdfs": tm.num_pdfs, "num_gauss": trainer.am.num_gauss, "num_utts": len(alignments),
               "avg_loglike": trainer.history[-1]["avg_loglike"],
               "avg_loglike_first": trainer.history[0]["avg_loglike"],
               "seconds": round(time.time() - t0, 2), "config": asdict(cfg)}
    _write_log(out_dir, trainer.history, summary)
    logger.info("tri: %d tied states, %d Gaussians, avg loglike %.3f, %.1f s", summary["num_pdfs"],
                summary["num_gauss"], summary["avg_loglike"], summary["seconds"])
    return summary


def train_tri(feats_dir: Path, lang_dir: Path, ali_dir: Path, out_dir: Path, cfg: TriConfig | None = None,
              nj: int = 2, text: Path | None = None) -> dict:
    """steps/train_deltas.sh: tree from ``ali_dir``'s alignments (and its final.mdl), then triphone EM.

    ``ali_dir`` is a monophone training dir or an :func:`align` output dir (``ali.scp`` + ``final.mdl``).
    """
    feats, texts, lang = _load_training_data(feats_dir, lang_dir, text)
    ali_dir = Path(ali_dir)
    alignments = load_vec_int_scp(ali_dir / "ali.scp")
    return train_tri_feats(feats, texts, lang, alignments, ali_dir / "final.mdl", out_dir, cfg, nj)


# ----------------------------------------------------------------------------------------------- align
def align_feats(model_dir: Path, feats: Mapping[str, np.ndarray], texts: Mapping[str, list[str]], lang: Lang,
                out_dir: Path, nj: int = 2, beam: float = 10.0, retry_beam: float = 40.0) -> dict:
    """Align in-memory features with a trained model (the body of :func:`align`)."""
    t0 = time.time()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tm, am = read_model(model_dir / "final.mdl")
    ctx = tree_mod.read_tree(model_dir / "tree")
    graphs = compile_training_graphs(tm, ctx, lang, {u: w for u, w in texts.items() if u in feats})
    result = align_utterances(tm, am, graphs, feats, beam=beam, retry_beam=retry_beam, nj=nj)
    tables = transition_tables(tm)
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
               "avg_loglike": _avg_loglike(am, tables, feats, result.alignments),
               "seconds": round(time.time() - t0, 2)}
    if result.failed:
        logger.warning("%s: %d of %d utterances failed to align; listed in failed.txt and excluded",
                       out_dir, len(result.failed), num_utts)
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    logger.info("aligned %d/%d utterances (%d frames), avg loglike/frame %.3f, %.1f s", summary["num_aligned"],
                num_utts, summary["num_frames"], summary["avg_loglike"], summary["seconds"])
    return summary


def _avg_loglike(am: khg.AmDiagGmm, tables: TransitionTables, feats: Mapping[str, np.ndarray],
                 alignments: Mapping[str, np.ndarray]) -> float:
    """Acoustic log-likelihood per frame of the aligned pdfs (gmm-acc-stats-ali's 'avg like per frame')."""
    if not alignments:
        return float("nan")
    stats = accumulate_utterances(GmmParams.from_am(am), feats, {u: tables.pdf[a] for u, a in alignments.items()})
    return stats.tot_loglike / max(stats.num_frames, 1)


def align(model_dir: Path, feats_dir: Path, lang_dir: Path, out_dir: Path, nj: int = 2, beam: float = 10.0,
          retry_beam: float = 40.0, text: Path | None = None) -> dict:
    """steps/align_si.sh for one split.

    Writes ``out_dir``/ali.{ark,scp} (transition-ids), pdf.{ark,scp} (pdf ids: the DNN targets), failed.txt
    (utterances that did not align, with the reason; excluded and counted, never silently dropped),
    num_pdfs, pdf_counts (Kaldi vector of per-pdf frame counts: the priors) and copies of final.mdl and tree.
    """
    feats, texts, lang = _load_training_data(feats_dir, lang_dir, text)
    return align_feats(model_dir, feats, texts, lang, out_dir, nj, beam, retry_beam)


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
