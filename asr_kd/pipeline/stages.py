"""The recipe's stages, corpus to report, each a function ``(cfg, ws) -> summary``; :data:`STAGES` is their order.

These are the only places where the packages meet: each stage reads what earlier stages left in the
:class:`~asr_kd.pipeline.workspace.Workspace`, calls one library function per step, and returns a small JSON-able
summary that :mod:`asr_kd.pipeline.report` turns into tables. ``recipes/<corpus>/run.sh`` runs them by number
through :mod:`asr_kd.cli`; :func:`asr_kd.pipeline.runner.run_stage` adds the ``.done`` markers, logs and configs.
:data:`STAGES` is the one definition of the stage list: ``run.sh --help``, the recipes' numbered stages and the
README table are checked against it by the tests. :data:`NEEDS` says what each stage reads from the earlier ones,
so that a stage started too early says which stage to run first.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from asr_kd.corpus.kaldi_dir import UNLABELED
from asr_kd.corpus.registry import corpus_for
from asr_kd.distillation.distill import temperature_sweep
from asr_kd.distillation.ensemble import evaluate_ensemble, member_dir, train_ensemble
from asr_kd.distillation.small_data import run_small_data
from asr_kd.distillation.soft_targets import (
    SoftTargetConfig,
    SoftTargets,
    compute_soft_targets,
    compute_soft_targets_at,
    compute_soft_targets_to,
    concat_saved,
)
from asr_kd.distillation.transfer import (
    TransferConfig,
    describe_pool,
    distill_on_transfer_set,
    draw_pool,
    pool_frames,
)
from asr_kd.evaluation.cost import dnn_cost, gmm_cost
from asr_kd.evaluation.systems import System, agreement
from asr_kd.nn.device import dist_context, launch_env
from asr_kd.nn.frames import Frames, FrameSet, load_unlabeled_frameset
from asr_kd.nn.inference import load_model
from asr_kd.nn.model import num_parameters
from asr_kd.nn.stream import StreamedFrames
from asr_kd.nn.train import train, trained
from asr_kd.pipeline import experiment as xp
from asr_kd.pipeline.report import write_report
from asr_kd.pipeline.runner import Need
from asr_kd.pipeline.students import train_students
from asr_kd.pipeline.workspace import SPLITS, Workspace
from decoding.align_eval import boundary_accuracy
from decoding.decode import LoglikeShards, tune_and_decode
from decoding.gmm import align, gmm_features, gmm_loglike_shards, gmm_params, train_mono, train_tri
from decoding.graph import make_hclg
from decoding.lang import prepare_dict, prepare_lang
from decoding.lm import lm_vocabulary, make_lang_test, perplexity, train_lm
from features.atomic import write_text_atomic
from features.errors import InputError
from features.extract import make_feats
from features.tables import read_dict, read_text, write_text

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- data prep
def stage_corpus(cfg: DictConfig, ws: Workspace) -> dict:
    """The corpus as Kaldi data dirs data/{train,dev,test} (built-in TTS corpus, or the user's)."""
    _, corpus = corpus_for(OmegaConf.get_type(cfg.corpus))
    return corpus.prepare(ws.corpus, xp.to_object(cfg.corpus), cfg.nj).to_dict()


def stage_features(cfg: DictConfig, ws: Workspace) -> dict:
    """40-d log-mel fbank (the DNN input) and 13-d MFCC (the GMM input), per-speaker CMVN stats; fbank of the
    untranscribed audio, when the corpus has some."""
    summary = {}
    for kind, node, out in (("fbank", cfg.fbank, ws.fbank), ("mfcc", cfg.mfcc, ws.mfcc)):
        for split in SPLITS:
            summary[f"{kind}/{split}"] = make_feats(ws.data(split), out(split), xp.to_object(node), cfg.nj)
    if (ws.data(UNLABELED) / "wav.scp").exists():  # untranscribed audio: the DNN input only (nothing to align)
        summary[f"fbank/{UNLABELED}"] = make_feats(ws.data(UNLABELED), ws.fbank(UNLABELED), xp.to_object(cfg.fbank),
                                                   cfg.nj)
    return summary


def _lm_extra_text(cfg: DictConfig, ws: Workspace) -> list:
    """The part of the corpus's extra LM text this experiment uses (it sets the vocabulary and the HCLG size)."""
    if not ws.lm_extra.exists() or cfg.lm_extra_sentences == 0:
        return []
    if cfg.lm_extra_sentences < 0:
        return [ws.lm_extra]
    with ws.lm_extra.open(encoding="utf-8") as f:
        lines = [line for _, line in zip(range(cfg.lm_extra_sentences), f)]
    write_text_atomic(ws.lm_extra_used, "".join(lines))
    return [ws.lm_extra_used]


def stage_lang(cfg: DictConfig, ws: Workspace) -> dict:
    """Lexicon, L.fst, a trigram LM, G.fst, dev/test perplexity and OOV rate."""
    extra = _lm_extra_text(cfg, ws)
    texts = [ws.data(s) / "text" for s in SPLITS] + extra
    oov = prepare_dict(texts, ws.dict_dir, xp.to_object(cfg.dict))
    prepare_lang(ws.dict_dir, ws.lang, xp.to_object(cfg.lang))
    arpa = train_lm([ws.data("train") / "text"] + extra, ws.lm_dir, xp.to_object(cfg.lm))
    make_lang_test(ws.lang, arpa, ws.lang_test)
    ppl = {split: perplexity(arpa, ws.data(split) / "text") for split in ("dev", "test")}
    xp.write_json(ws.perplexity, ppl)
    return {"oov": oov, "perplexity": ppl, "vocabulary": len(lm_vocabulary(arpa) - {"<s>", "</s>"})}


# ---------------------------------------------------------------------------------------------- GMM-HMM
def stage_mono(cfg: DictConfig, ws: Workspace) -> dict:
    """Flat-start monophone GMM-HMM (Kaldi train_mono)."""
    return train_mono(ws.mfcc("train"), ws.lang, ws.mono, xp.to_object(cfg.mono), nj=cfg.nj)


def stage_tri(cfg: DictConfig, ws: Workspace) -> dict:
    """Tied-state triphones (our decision tree); alignments of every split (the DNN targets)."""
    summary = {"train": train_tri(ws.mfcc("train"), ws.lang, ws.mono, ws.tri, xp.to_object(cfg.tri), nj=cfg.nj)}
    for split in SPLITS:
        summary[f"align/{split}"] = align(ws.tri, ws.mfcc(split), ws.lang, ws.ali(split), nj=cfg.nj,
                                          shard_frames=cfg.tri.shard_frames)
        ctm = ws.data(split) / "phones.ctm"
        if split != "train" and ctm.exists():
            summary[f"boundaries/{split}"] = boundary_accuracy(ws.ali(split), ws.model, ctm, ws.lang / "phones.txt",
                                                               groups=read_dict(ws.data(split) / "utt2spk"))
    return summary


def _decode_tuned(cfg: DictConfig, ws: Workspace, system: str, loglikes: Callable[[str], LoglikeShards]) -> dict:
    """Pick the acoustic scale on dev by WER, then decode test with it (test never tunes anything); score both.

    ``loglikes(split)`` gives a split's log-likelihoods shard by shard: each shard is computed, decoded (at every
    scale of the grid, on dev) and dropped before the next (:func:`decoding.decode.tune_and_decode`)."""
    tuned = tune_and_decode(ws.graph, ws.model, loglikes("dev"), read_text(ws.data("dev") / "text"), loglikes("test"),
                            xp.to_object(cfg.decode.decoder), list(cfg.decode.acoustic_scales), nj=cfg.nj,
                            extend_edges=cfg.decode.extend_edges)
    result: dict = {"acoustic_scale": tuned.acoustic_scale,
                    "dev_wer_by_scale": {s: w.wer for s, w in tuned.dev_wer.items()},
                    "rtf": tuned.test.real_time_factor}
    for split, decoded in (("dev", tuned.dev), ("test", tuned.test)):
        write_text(ws.decode(system, split) / "hyp.txt", decoded.hyps)
        result[split], _ = xp.score_split(ws, system, split, decoded.hyps)
        result[split].update(no_path=decoded.failed, no_final_state=decoded.partial)
    xp.write_json(ws.decode_tuning(system), result)
    log.info("%s: dev WER %.2f%%, test WER %.2f%% (acoustic scale %g)", system, result["dev"]["all"],
             result["test"]["all"], tuned.acoustic_scale)
    return result


def stage_graph(cfg: DictConfig, ws: Workspace) -> dict:
    """HCLG for the triphone model + trigram LM; the GMM baseline's WER (Kaldi's tri1 number)."""
    graph = make_hclg(ws.lang_test, ws.tri / "tree", ws.model, ws.graph, xp.to_object(cfg.graph))
    return {"graph": graph, "gmm": _decode_tuned(cfg, ws, "gmm", lambda split: gmm_loglike_shards(ws.tri,
                                                                                                  ws.mfcc(split)))}


# ---------------------------------------------------------------------------------------------- DNNs
def stage_baseline(cfg: DictConfig, ws: Workspace) -> dict:
    """The baseline: one DNN on hard alignment targets."""
    device = xp.device_of(cfg)
    out = ws.dnn("baseline")
    train(xp.to_object(cfg.model), xp.train_config(cfg, ws), xp.frames(cfg, ws, "train", device),
          xp.frames(cfg, ws, "dev", device), out, xp.num_pdfs(ws), device=device)
    return xp.evaluate_system(cfg, ws, System("baseline", [out / "model.pt"]), splits=("train", "dev", "test"))


def stage_ensemble(cfg: DictConfig, ws: Workspace) -> dict:
    """N members differing only in their random initialisation; each member and their average evaluated."""
    device = xp.device_of(cfg)
    train_ensemble(xp.to_object(cfg.model), xp.train_config(cfg, ws), xp.to_object(cfg.ensemble),
                   xp.frames(cfg, ws, "train", device), xp.frames(cfg, ws, "dev", device), ws.dnn("ensemble"),
                   xp.num_pdfs(ws), device)
    ranks = dist_context(device)
    ranks.barrier()  # under torchrun each rank trained its share; rank 0 evaluates once all are there
    if not ranks.is_main:
        return {}
    sets = {split: xp.frames(cfg, ws, split, device) for split in ("dev", "test")}
    members = evaluate_ensemble([p.parent for p in xp.member_paths(ws)], sets, cfg.ensemble.combine)
    acc = xp.evaluate_system(cfg, ws, System("ensemble", xp.member_paths(ws), cfg.ensemble.combine))
    return {"members": members, "ensemble": acc}


def _ensemble_targets(cfg: DictConfig, ws: Workspace, frames: Frames, teacher: str,
                      temperatures: list[float]) -> dict[float, dict] | None:
    """The ensemble's top-k soft targets on ``frames`` at each temperature, saved as ``ws.soft_targets(teacher, T)``;
    their ``meta.json`` on the main rank (None on the others).

    Under torchrun each rank computes a contiguous share of the utterances; rank 0 joins the shares in order. A
    streamed split is read and its targets written a batch at a time.
    """
    device = xp.device_of(cfg)
    ranks = dist_context(device)
    lo, hi = (r * len(frames.utt_ids) // ranks.world for r in (ranks.rank, ranks.rank + 1))
    teachers = [load_model(p, device=device) for p in xp.member_paths(ws)]
    shares = {t: ws.soft_targets_share(teacher, t, ranks.rank) for t in temperatures}
    streamed = isinstance(frames, StreamedFrames)
    if streamed:
        compute_soft_targets_to(teachers, frames.utt_range(lo, hi), xp.to_object(cfg.soft_targets), shares)
    else:
        sweep = compute_soft_targets_at(teachers, frames.subset(frames.utt_ids[lo:hi]),
                                        xp.to_object(cfg.soft_targets), temperatures)
        for temperature, soft in sweep.items():
            soft.save(shares[temperature])
    ranks.barrier()
    if not ranks.is_main:
        return None
    metas = {}
    for temperature in temperatures:
        parts = [ws.soft_targets_share(teacher, temperature, r) for r in range(ranks.world)]
        out = ws.soft_targets(teacher, temperature)
        if streamed:
            metas[temperature] = concat_saved(parts, out)
        else:
            SoftTargets.concat([SoftTargets.load(p, mmap=False) for p in parts]).save(out)
            metas[temperature] = SoftTargets.read_meta(out)
        for p in parts:
            shutil.rmtree(p)
    return metas


def stage_soft_targets(cfg: DictConfig, ws: Workspace) -> dict:
    """The ensemble's temperature-softened posteriors on the training frames, top-k, stored once (at T=1 its top
    class is also kept as the ensemble's training-frame predictions)."""
    train_set = xp.frames(cfg, ws, "train", xp.device_of(cfg))
    temperatures = [float(t) for t in cfg.distill.temperatures_sweep]
    metas = _ensemble_targets(cfg, ws, train_set, "ensemble", temperatures)
    if metas is None:
        return {}
    if 1.0 in metas:  # the ensemble's own arg-max on its training frames (the report's fidelity row)
        xp.write_predictions(ws, "ensemble", "train", xp.stored_top_class(ws.soft_targets("ensemble", 1.0), train_set))
    return {f"T={t:g}": {"bytes_per_frame": m["bytes_per_frame"], "mean_mass_kept": m["mean_mass_kept"]}
            for t, m in metas.items()}


def stage_distill(cfg: DictConfig, ws: Workspace) -> dict:
    """Students on the ensemble's stored soft targets, one per temperature; the best on dev is "distilled"."""
    device = xp.device_of(cfg)
    train_set = xp.frames(cfg, ws, "train", device)
    soft = {float(t): ws.soft_targets("ensemble", t) if isinstance(train_set, StreamedFrames)
            else SoftTargets.load(ws.soft_targets("ensemble", t), device=device)
            for t in cfg.distill.temperatures_sweep}
    train_cfg = xp.with_run_numerics(cfg, ws, xp.student_train_config(cfg))
    sweep = temperature_sweep(xp.to_object(cfg.model), train_cfg, xp.to_object(cfg.distill), train_set,
                              xp.frames(cfg, ws, "dev", device), soft, ws.distill_sweep, xp.num_pdfs(ws), device)
    if not dist_context(device).is_main:  # the other ranks trained their temperatures; rank 0 evaluates
        return {}
    best = sweep["best_temperature"]
    accuracy = {}
    for tag, row in sweep["per_temperature"].items():
        student = ws.distill_sweep / f"T{tag}" / "model.pt"
        accuracy[float(tag)] = xp.evaluate_system(cfg, ws, System(f"distilled_T{tag}", [student]))
        accuracy[float(tag)]["epochs_run"] = row["epochs_run"]
    ws.dnn("distilled").mkdir(parents=True, exist_ok=True)
    shutil.copy2(ws.distill_sweep / f"T{best:g}" / "model.pt", ws.dnn("distilled") / "model.pt")
    distilled = xp.evaluate_system(cfg, ws, System("distilled", [ws.dnn("distilled") / "model.pt"]),
                                   splits=("train", "dev", "test"))
    return {"best_temperature": best, "sweep": accuracy, "distilled": distilled,
            "schedules": {"students": train_cfg.lr_schedule, "members": cfg.train.lr_schedule}}


def stage_small_data(cfg: DictConfig, ws: Workspace) -> dict:
    """The 3% experiment: hard vs soft targets (from a full-data teacher) on 3% of the utterances."""
    device = xp.device_of(cfg)
    sets = {split: xp.frames(cfg, ws, split, device) for split in SPLITS}
    teachers = {"baseline": [ws.dnn("baseline") / "model.pt"], "ensemble": xp.member_paths(ws)}
    summary = run_small_data(xp.to_object(cfg.model), xp.train_config(cfg, ws), xp.to_object(cfg.small_data),
                             xp.to_object(cfg.distill), sets, read_dict(ws.data("train") / "utt2spk"), teachers,
                             ws.small_data, xp.num_pdfs(ws))
    if not dist_context(device).is_main:
        return {}
    for name in summary["systems"]:  # their predictions, for the report's paired intervals
        if name != "baseline_full":
            xp.evaluate_system(cfg, ws, System(name, [ws.small_data / name / "model.pt"]))
    return summary


def _unlabeled_pool(cfg: DictConfig, ws: Workspace, device: torch.device) -> FrameSet:
    """The untranscribed audio's frames (fbank + per-speaker CMVN), no targets."""
    return load_unlabeled_frameset(ws.fbank(UNLABELED), device, cfg.model.left_context, cfg.model.right_context)


def stage_transfer(cfg: DictConfig, ws: Workspace) -> dict:
    """Distillation on a transfer set with untranscribed audio: train + the unlabeled pool, and the 3% model with it.

    The ensemble labels the pool (stored top-k targets at the sweep's temperature, at the 3% soft model's, and at
    T=1 for its arg-max); ``distilled_unlabeled`` learns from the training set plus the pool, ``small_soft_unlabeled``
    from the 3% subset plus the pool, each with its own arm's objective, schedule and temperature; the research
    curve's students (``transfer.sizes`` x ``transfer.widths``) likewise. Models are spread over torchrun ranks.
    Without a ``data/unlabeled`` (a corpus with no untranscribed audio) there is nothing to do.
    """
    if not (ws.fbank(UNLABELED) / "feats.scp").exists():
        log.info("transfer: no untranscribed audio (%s): nothing to do", ws.data(UNLABELED))
        return {"skipped": f"no untranscribed audio in {ws.data(UNLABELED)}"}
    device = xp.device_of(cfg)
    tcfg: TransferConfig = xp.to_object(cfg.transfer)
    train_set = xp.frames(cfg, ws, "train", device)
    if isinstance(train_set, StreamedFrames):
        raise InputError("a transfer set with untranscribed audio is held in memory, and the training split is "
                         "streamed here: give the run the memory (data.memory_gb) or a smaller pool (transfer.pool)",
                         ws.fbank("train"))
    dev_set = xp.frames(cfg, ws, "dev", device)
    best = float(json.loads((ws.distill_sweep / "sweep.json").read_text())["best_temperature"])
    small = json.loads((ws.small_data / "small_data.json").read_text()) if tcfg.small_data else None
    small_t = float(small["systems"]["small_soft"]["temperature"]) if small else None
    temperatures = sorted({1.0, best, *([small_t] if small_t else [])})
    full_pool = _unlabeled_pool(cfg, ws, device)
    wanted = None if tcfg.pool is None else pool_frames(train_set.num_frames, 1.0 + tcfg.pool)
    curve = tcfg.curve()
    curve_frames = {name: pool_frames(train_set.num_frames, size) for name, (size, _) in curve.items()}
    pool = draw_pool(full_pool, max([*curve_frames.values(), full_pool.num_frames if wanted is None else wanted]),
                     tcfg.seed)
    if not _pool_targets_current(ws, temperatures, pool.num_frames):  # a resumed stage keeps them
        _ensemble_targets(cfg, ws, pool, "ensemble_unlabeled", temperatures)
    dist_context(device).barrier()
    pool_soft = {t: SoftTargets.load(ws.soft_targets("ensemble_unlabeled", t)) for t in temperatures}
    model_cfg, num_classes = xp.to_object(cfg.model), xp.num_pdfs(ws)
    shapes = {name: dataclasses.replace(model_cfg, hidden_dim=round(model_cfg.hidden_dim * width))
              for name, (_, width) in curve.items()}
    draws = {name: draw_pool(pool, frames, tcfg.seed) for name, frames in curve_frames.items()}
    student_cfg = xp.with_run_numerics(cfg, ws, xp.student_train_config(cfg))
    if tcfg.train_sized_epochs:
        student_cfg = dataclasses.replace(student_cfg, epoch_frames=train_set.num_frames)
    dcfg = dataclasses.replace(xp.to_object(cfg.distill), temperature=best)
    train_soft = SoftTargets.load(ws.soft_targets("ensemble", best))

    def arm(draw: FrameSet, temperature: float = best) -> tuple[FrameSet, SoftTargets]:
        """A draw of the pool and its frames' soft targets (stored for the whole pool) at ``temperature``."""
        return draw, pool_soft[temperature].take(pool.frame_indices(draw.utt_ids))

    models: dict[str, Callable[[], None]] = {}
    main_pool = draw_pool(pool, wanted, tcfg.seed)
    models[xp.UNLABELED_STUDENT] = lambda: distill_on_transfer_set(
        model_cfg, student_cfg, dcfg, train_set, train_soft, *arm(main_pool), dev_set,
        ws.transfer / xp.UNLABELED_STUDENT, num_classes, device)
    if small:
        subset = (ws.small_data / "small_data_subset.txt").read_text().split()
        labeled = train_set.subset(subset)
        scfg = xp.to_object(cfg.small_data)
        k = cfg.soft_targets.top_k
        small_obj = dataclasses.replace(xp.to_object(cfg.distill), temperature=small_t, hard_weight=scfg.hard_weight,
                                        top_k=k)

        def small_model() -> None:
            labeled_soft = compute_soft_targets([load_model(p, device=device) for p in xp.member_paths(ws)], labeled,
                                                SoftTargetConfig(temperature=small_t, top_k=k,
                                                                 combine=cfg.ensemble.combine))
            distill_on_transfer_set(model_cfg, student_cfg, small_obj, labeled, labeled_soft,
                                    *arm(main_pool, small_t), dev_set, ws.transfer / xp.SMALL_UNLABELED, num_classes,
                                    device)

        models[xp.SMALL_UNLABELED] = small_model
    for name, (size, width) in curve.items():
        if (size, width) == (1.0, 1.0):  # the training set alone at a member's width: the sweep's student at T=best
            models[name] = lambda name=name: shutil.copytree(ws.distill_sweep / f"T{best:g}", ws.transfer / name,
                                                             dirs_exist_ok=True)
        else:
            models[name] = lambda name=name: distill_on_transfer_set(
                shapes[name], student_cfg, dcfg, train_set, train_soft, *arm(draws[name]), dev_set, ws.transfer / name,
                num_classes, device)
    # Dealt out largest first (a student's step costs about its parameters), so that round-robin shares balance.
    params = {name: num_parameters(shapes.get(name, model_cfg), num_classes) for name in models}
    ranks = dist_context(device)
    for name in launch_env().share(sorted(models, key=lambda n: -params[n])):
        if not trained(ws.transfer / name):  # a finished model is kept (an interrupted stage resumes the others)
            models[name]()
    ranks.barrier()
    # The report's agreement on the transfer set: these systems' arg-max on the pool, shared out over the ranks.
    for name in launch_env().share(["baseline", "distilled", xp.UNLABELED_STUDENT]):
        files = xp.system_paths(ws, [])[name] if name != xp.UNLABELED_STUDENT else [ws.transfer / name / "model.pt"]
        xp.write_predictions(ws, name, UNLABELED, ((u, p) for u, p, _ in System(name, files).iter_predictions(
            main_pool, device)))
    ranks.barrier()
    if not ranks.is_main:
        return {}
    ensemble_pool = dict(xp.stored_top_class(ws.soft_targets("ensemble_unlabeled", 1.0), pool))
    xp.write_predictions(ws, "ensemble", UNLABELED, ((u, ensemble_pool[u]) for u in main_pool.utt_ids))
    summary: dict = {"temperature": best, "small_data_temperature": small_t,
                     "pool": describe_pool(train_set.num_frames, main_pool), "models": {}}
    reference = {"train": xp.predictions(ws, "ensemble", "train"), "dev": xp.predictions(ws, "ensemble", "dev")}
    for name in models:
        path = ws.transfer / name / "model.pt"
        row = xp.evaluate_system(cfg, ws, System(name, [path]), splits=(
            ("train", "dev", "test") if name != xp.SMALL_UNLABELED else ("dev", "test")))
        row["epochs_run"] = len(json.loads((path.parent / "metrics.json").read_text())["epochs"])
        if name in curve:  # agreement with the ensemble on its own transfer set and on dev
            size, width = curve[name]
            on_draw = {u: p for u, p, _ in System(name, [path]).iter_predictions(draws[name], device)}
            row.update(size=size, width=width, hidden_dim=shapes[name].hidden_dim,
                       unlabeled_frames=draws[name].num_frames, agreement={
                           "transfer": agreement({**reference["train"], **{u: ensemble_pool[u] for u in on_draw}},
                                                 {**xp.predictions(ws, name, "train"), **on_draw}),
                           "dev": agreement(reference["dev"], xp.predictions(ws, name, "dev"))})
        summary["models"][name] = row
    return summary


def _pool_targets_current(ws: Workspace, temperatures: list[float], num_frames: int) -> bool:
    """Whether the pool's stored soft targets cover these frames at these temperatures and are newer than every
    member (an ensemble trained again makes them stale)."""
    metas = [ws.soft_targets("ensemble_unlabeled", t) / "meta.json" for t in temperatures]
    if not all(m.exists() for m in metas):
        return False
    members = max(p.stat().st_mtime_ns for p in xp.member_paths(ws))
    return all(json.loads(m.read_text())["num_frames"] == num_frames and m.stat().st_mtime_ns > members
               for m in metas)


def stage_students(cfg: DictConfig, ws: Workspace) -> dict:
    """Extra students of a research config (ablations, other sizes); none in the default config."""
    return train_students(cfg, ws)


# ---------------------------------------------------------------------------------------------- decoding
def stage_decode(cfg: DictConfig, ws: Workspace) -> dict:
    """Hybrid decoding of every DNN system: (log posterior - log prior) x scale -> HCLG -> WER."""
    device = xp.device_of(cfg)
    prior = xp.decode_prior(ws)
    # Every utterance is decoded, also those the GMM failed to align (they have no frame-accuracy label, but
    # they do have a reference transcript and count in the WER).
    summary = {}
    for name, system in xp.dnn_systems(cfg, ws).items():
        summary[name] = _decode_tuned(cfg, ws, name, lambda split, s=system: xp.hybrid_loglike_shards(
            cfg, ws, s, split, prior, device))
    return summary


_COST_FRAMES = 20000
"""Frames of dev the GMM's one-thread time is measured on (the first utterances')."""


def stage_cost(cfg: DictConfig, ws: Workspace) -> dict:
    """What each system costs to run: parameters, MACs/frame, file size, measured one-thread time, decoding RTF."""
    fs = xp.frames(cfg, ws, "dev", xp.device_of(cfg))
    mfcc = gmm_features(ws.mfcc("dev")).head(_COST_FRAMES)  # the GMM is timed on these frames only
    costs = {"gmm": gmm_cost(ws.model, gmm_params(ws.tri), mfcc.values(), max_frames=_COST_FRAMES)}
    costs.update({name: dnn_cost(system.model_paths, fs) for name, system in xp.dnn_systems(cfg, ws).items()})
    summary = {}
    for name, cost in costs.items():
        tuning = ws.decode_tuning(name)
        rtf = json.loads(tuning.read_text()).get("rtf") if tuning.exists() else None
        summary[name] = {**cost.to_dict(), "decode_rtf": rtf}
    return summary


def stage_report(cfg: DictConfig, ws: Workspace) -> dict:
    """The comparison report (Markdown + JSON + PNG) and the config's RESULTS.md."""
    return write_report(cfg, ws, list(STAGES))


RANK_PARALLEL: dict[str, Callable[[DictConfig], int]] = {
    "ensemble": lambda cfg: cfg.ensemble.num_members,
    "soft_targets": lambda cfg: cfg.procs,  # frames: always as many shares as ranks
    "distill": lambda cfg: len(cfg.distill.temperatures_sweep),
    "small_data": lambda cfg: len(xp.to_object(cfg.small_data).models()),  # hard + each teacher at each T
    "transfer": lambda cfg: 1 + bool(cfg.transfer.small_data) + len(xp.to_object(cfg.transfer).curve()),
    "students": lambda cfg: len(cfg.students),
}
"""Stages whose work splits into independent shares (models, or frames for the soft targets), and how many shares a
config gives them: spread over ``procs`` torchrun ranks when there are at least two (see :mod:`asr_kd.cli`)."""

MODELS: dict[str, Callable[[DictConfig, Workspace], list[Path]]] = {
    "ensemble": lambda cfg, ws: [member_dir(ws.dnn("ensemble"), m) for m in range(cfg.ensemble.num_members)],
    "distill": lambda cfg, ws: [ws.distill_sweep / f"T{t:g}"
                                for t in sorted({float(t) for t in cfg.distill.temperatures_sweep})],
    "small_data": lambda cfg, ws: [ws.small_data / model for model in xp.to_object(cfg.small_data).models()],
    "students": lambda cfg, ws: [ws.student(name) for name in cfg.students],
}
"""The directories of the independent models each stage of :data:`RANK_PARALLEL` trains (all but the soft targets,
whose shares are frames, and the transfer stage, whose models share the pool's targets its ranks compute first),
in the order its shares deal them out: share ``i`` of ``N`` trains ``models[i::N]``. With
``jobs.backend=submitit`` share ``i`` of ``len(models)`` is one job, which trains model ``i``
(:mod:`asr_kd.pipeline.jobs`)."""

STAGES: dict[str, Callable[[DictConfig, Workspace], dict]] = {
    "corpus": stage_corpus,
    "features": stage_features,
    "lang": stage_lang,
    "mono": stage_mono,
    "tri": stage_tri,
    "graph": stage_graph,
    "baseline": stage_baseline,
    "ensemble": stage_ensemble,
    "soft_targets": stage_soft_targets,
    "distill": stage_distill,
    "small_data": stage_small_data,
    "transfer": stage_transfer,
    "students": stage_students,
    "decode": stage_decode,
    "cost": stage_cost,
    "report": stage_report,
}


# ---------------------------------------------------------------------------------------------- what each stage reads
def _transcripts(ws: Workspace, splits: tuple[str, ...]) -> list[tuple[Path, str]]:
    return [(ws.data(s) / "text", "corpus") for s in splits]


def _mfcc(ws: Workspace, splits: tuple[str, ...]) -> list[tuple[Path, str]]:
    return [(ws.mfcc(s) / "feats.scp", "features") for s in splits]


def _lang(ws: Workspace) -> tuple[Path, str]:
    return ws.lang / "phones.txt", "lang"


def _frames(ws: Workspace, splits: tuple[str, ...] = SPLITS) -> list[tuple[Path, str]]:
    """What :func:`asr_kd.pipeline.experiment.frames` joins: fbank features and pdf alignments of each split."""
    return [*((ws.fbank(s) / "feats.scp", "features") for s in splits),
            *((ws.ali(s) / "pdf.scp", "tri") for s in splits)]


def _classes(ws: Workspace) -> tuple[Path, str]:
    """The DNN's number of outputs (:func:`asr_kd.pipeline.experiment.num_pdfs`)."""
    return ws.num_pdfs_file, "tri"


def _members(cfg: DictConfig, ws: Workspace) -> list[tuple[Path, str]]:
    """Every member of the config's ensemble: a teacher missing one would be a smaller ensemble, silently."""
    return [(member_dir(ws.dnn("ensemble"), m) / "model.pt", "ensemble") for m in range(cfg.ensemble.num_members)]


def _soft_targets(cfg: DictConfig, ws: Workspace) -> list[tuple[Path, str]]:
    """The ensemble's stored soft targets at every temperature of the distill stage's sweep."""
    return [(ws.soft_targets("ensemble", float(t)) / "meta.json", "soft_targets")
            for t in cfg.distill.temperatures_sweep]


def _small_data_needs(cfg: DictConfig, ws: Workspace) -> list[tuple[Path, str]]:
    """The baseline is always read (the full-data reference); the ensemble only when it teaches a 3% model."""
    teachers = xp.to_object(cfg.small_data).teacher_names()
    return [*_frames(ws), _classes(ws), (ws.data("train") / "utt2spk", "corpus"),
            (ws.dnn("baseline") / "model.pt", "baseline"), *(_members(cfg, ws) if "ensemble" in teachers else [])]


def _transfer_needs(cfg: DictConfig, ws: Workspace) -> list[tuple[Path, str]]:
    """Nothing without untranscribed audio. With it: the members (they label the pool), the stored training-set
    targets and the temperature the sweep chose, and the 3% subset and temperature when its arm is on."""
    if not (ws.data(UNLABELED) / "wav.scp").exists():
        return []
    small = [(ws.small_data / "small_data.json", "small_data")] if cfg.transfer.small_data else []
    return [*_frames(ws), _classes(ws), (ws.fbank(UNLABELED) / "feats.scp", "features"), *_members(cfg, ws),
            *_soft_targets(cfg, ws), (ws.distill_sweep / "sweep.json", "distill"), *small]


def _students_needs(cfg: DictConfig, ws: Workspace) -> list[tuple[Path, str]]:
    """Nothing without extra students. A soft student is taught by the ensemble's members (the stored soft targets
    it reads instead, when they hold enough classes, were computed from them); a member's budget is their epochs."""
    if not cfg.students:
        return []
    members = any(spec.targets == "soft" or spec.budget == "member" for spec in cfg.students.values())
    return [*_frames(ws), _classes(ws), *(_members(cfg, ws) if members else [])]


def _decode_needs(cfg: DictConfig, ws: Workspace) -> list[tuple[Path, str]]:
    """The priors and the dev/test features always; the graph, the transition model and the transcripts once there
    is a system to decode. Which DNN systems those are is up to the stages run so far: none of them is a need."""
    decoding = [(ws.graph / "HCLG.fst", "graph"), (ws.model, "tri"), *_transcripts(ws, ("dev", "test"))]
    return [(ws.pdf_counts, "tri"), *((ws.fbank(s) / "feats.scp", "features") for s in ("dev", "test")),
            *(decoding if xp.dnn_systems(cfg, ws) else [])]


NEEDS: dict[str, Callable[[DictConfig, Workspace], list[tuple[Path, str]]]] = {
    "corpus": lambda cfg, ws: [],  # its own source only (the corpus config's)
    "features": lambda cfg, ws: [(ws.data(s) / "wav.scp", "corpus") for s in SPLITS],
    "lang": lambda cfg, ws: _transcripts(ws, SPLITS),
    "mono": lambda cfg, ws: [*_mfcc(ws, ("train",)), _lang(ws)],
    "tri": lambda cfg, ws: [*_mfcc(ws, SPLITS), _lang(ws), (ws.mono / "final.mdl", "mono"),
                            (ws.mono / "ali.scp", "mono")],
    "graph": lambda cfg, ws: [*_transcripts(ws, ("dev", "test")), *_mfcc(ws, ("dev", "test")),
                              (ws.lang_test / "G.fst", "lang"), (ws.tri / "tree", "tri"), (ws.model, "tri")],
    "baseline": lambda cfg, ws: [*_frames(ws), _classes(ws)],
    "ensemble": lambda cfg, ws: [*_frames(ws), _classes(ws)],
    "soft_targets": lambda cfg, ws: [*_frames(ws, ("train",)), *_members(cfg, ws)],
    "distill": lambda cfg, ws: [*_frames(ws), _classes(ws), *_soft_targets(cfg, ws)],
    "small_data": _small_data_needs,
    "transfer": _transfer_needs,
    "students": _students_needs,
    "decode": _decode_needs,
    "cost": lambda cfg, ws: [*_frames(ws, ("dev",)), *_mfcc(ws, ("dev",)), (ws.model, "tri")],
    "report": lambda cfg, ws: [],  # it shows whatever the stages run so far left
}
"""What each stage always reads from earlier stages, for a config and a work dir: ``(file, the stage that makes it)``.

One file stands for an output its stage writes as a whole (a feature dir's ``feats.scp``, a lang dir's
``phones.txt``). What a stage reads only when it is there (the corpus's extra LM text, the synthesizer's timings,
the trained systems that decode, cost and the report find, ``exp/numerics.json``) is no need. The runner checks
a stage's needs just before the stage runs, so a need made by an earlier stage of the same run.sh is there by then.
"""


TRAINS: dict[str, Callable[[Workspace], list[Path]]] = {
    "baseline": lambda ws: [ws.dnn("baseline")],
    "ensemble": lambda ws: [ws.dnn("ensemble")],
    "distill": lambda ws: [ws.distill_sweep, ws.dnn("distilled")],
    "small_data": lambda ws: [ws.small_data],
    "transfer": lambda ws: [ws.transfer],
    "students": lambda ws: [ws.students],
}
"""Where each training stage keeps its models and their checkpoints. An interrupted stage resumes from them (a
finished member is kept, a model goes on from its last epoch); ``force=true`` removes them first, so that a redone
stage trains every model again from its initialisation, with the settings of this run."""


def stage_needs(name: str, cfg: DictConfig, ws: Workspace) -> list[Need]:
    """The needs of stage ``name`` (:data:`NEEDS`) with the run.sh number of the stage that makes each."""
    numbers = {stage: number for number, stage in enumerate(STAGES)}
    return [Need(path, stage, numbers[stage]) for path, stage in NEEDS[name](cfg, ws)]


def stage_trains(name: str, ws: Workspace) -> list[Path]:
    """The directories of the models stage ``name`` trains (:data:`TRAINS`; none for a stage that trains none)."""
    return TRAINS[name](ws) if name in TRAINS else []
