"""The recipe's stages, corpus to report, each a function ``(cfg, ws) -> summary``.

These are the only places where the packages meet: each stage reads what earlier stages left in the
:class:`~asr_kd.workspace.Workspace`, calls one library function per step, and returns a small JSON-able
summary that :mod:`asr_kd.report` turns into tables. ``run.sh`` runs them in :data:`STAGES` order through
:mod:`asr_kd.cli`; :func:`asr_kd.runner.run_stage` adds the ``.done`` markers, logs and saved configs.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from asr_kd.corpus.kaldi_dir import import_kaldi_dir
from asr_kd.corpus.librispeech import prepare_librispeech
from asr_kd.corpus.synth import prepare_synth
from asr_kd.distill import distill as distill_student
from asr_kd.distill import run_small_data
from asr_kd.ensemble import evaluate_ensemble, train_ensemble
from asr_kd.frames import FrameSet, load_frameset, load_unaligned_frameset
from asr_kd.priors import log_priors
from asr_kd.runner import sync_ranks
from asr_kd.soft_targets import SoftTargets, compute_soft_targets_at
from asr_kd.systems import System, frame_accuracies, split_by_utterance
from asr_kd.train import load_model, train
from asr_kd.workspace import SPLITS, Workspace
from decoding.align_eval import boundary_accuracy
from decoding.decode import decode_loglikes, posteriors_to_loglikes
from decoding.gmm import align, gmm_loglikes, load_gmm_feats, train_mono, train_tri
from decoding.graph import make_hclg
from decoding.lang import prepare_dict, prepare_lang
from decoding.lm import make_lang_test, perplexity, train_lm
from decoding.score import compute_wer, read_text, write_scoring_files
from features.atomic import write_text_atomic
from features.extract import make_feats
from features.kaldi_io import read_vector

log = logging.getLogger(__name__)


def obj(node: DictConfig):
    """The typed dataclass behind a config node (hydra keeps them as DictConfig)."""
    return OmegaConf.to_object(node)


def device_of(cfg: DictConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def read_utt2subset(ws: Workspace, split: str) -> dict[str, str]:
    path = ws.data(split) / "utt2subset"
    if not path.exists():
        return {}
    return dict(line.split(maxsplit=1) for line in path.read_text().split("\n") if line.strip())


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------------- data prep

def stage_corpus(cfg: DictConfig, ws: Workspace) -> dict:
    """Stage 0: the corpus as Kaldi data dirs data/{train,dev,test} (built-in TTS corpus, or the user's)."""
    data_dir = ws.root / "data"
    name = cfg.corpus.name
    if name == "synth":
        return prepare_synth(data_dir, obj(cfg.corpus.synth))
    if cfg.corpus.source_dir is None:
        raise ValueError(f"corpus.name={name} needs corpus.source_dir=<folder>")
    source = Path(cfg.corpus.source_dir)
    if name == "librispeech":
        split_of = {part: split for split, part in cfg.corpus.librispeech_parts.items()}
        reports = prepare_librispeech(source, data_dir, split_of)  # data/<split>, resampled audio inside it
        return {split_of[part]: vars(report) for part, report in reports.items()}
    if name == "kaldi":
        return {split: vars(import_kaldi_dir(source / split, ws.data(split))) for split in SPLITS}
    raise ValueError(f"unknown corpus.name={name!r} (synth | librispeech | kaldi)")


def stage_features(cfg: DictConfig, ws: Workspace) -> dict:
    """Stage 1: 40-d log-mel fbank (the DNN input) and 13-d MFCC (the GMM input), with per-speaker CMVN stats."""
    summary = {}
    for kind, node, out in (("fbank", cfg.fbank, ws.fbank), ("mfcc", cfg.mfcc, ws.mfcc)):
        feat_cfg = obj(node)
        feat_cfg.nj = cfg.nj
        for split in SPLITS:
            summary[f"{kind}/{split}"] = make_feats(ws.data(split), out(split), feat_cfg)
    return summary


def _lm_extra_text(cfg: DictConfig, ws: Workspace) -> list[Path]:
    """The part of the corpus's extra LM text this experiment uses (it sets the vocabulary and the HCLG size)."""
    extra = ws.local / "lm_extra.txt"
    if not extra.exists() or cfg.lm_extra_sentences == 0:
        return []
    if cfg.lm_extra_sentences < 0:
        return [extra]
    used = ws.local / "lm_extra.used.txt"
    with extra.open(encoding="utf-8") as f:
        lines = [line for _, line in zip(range(cfg.lm_extra_sentences), f)]
    write_text_atomic(used, "".join(lines))
    return [used]


def stage_lang(cfg: DictConfig, ws: Workspace) -> dict:
    """Stage 2: lexicon, L.fst, a trigram LM on training text only, G.fst, dev/test perplexity."""
    extra = _lm_extra_text(cfg, ws)
    texts = [ws.data(s) / "text" for s in SPLITS] + extra
    oov = prepare_dict(texts, ws.dict_dir, obj(cfg.dict))
    prepare_lang(ws.dict_dir, ws.lang, obj(cfg.lang))
    lm_texts = [ws.data("train") / "text"] + extra
    arpa = train_lm(lm_texts, ws.local / "lm", obj(cfg.lm))
    make_lang_test(ws.lang, arpa, ws.lang_test)
    ppl = {split: perplexity(arpa, ws.data(split) / "text") for split in ("dev", "test")}
    write_json(ws.lang_test / "perplexity.json", ppl)
    return {"oov": oov, "perplexity": ppl}


# ---------------------------------------------------------------------------------------------- GMM-HMM

def stage_mono(cfg: DictConfig, ws: Workspace) -> dict:
    """Stage 3: flat-start monophone GMM-HMM (Kaldi train_mono)."""
    return train_mono(ws.mfcc("train"), ws.lang, ws.mono, obj(cfg.mono), nj=cfg.nj)


def stage_tri(cfg: DictConfig, ws: Workspace) -> dict:
    """Stage 4: tied-state triphones (our decision tree), then alignments of every split: the DNN targets."""
    summary = {"train": train_tri(ws.mfcc("train"), ws.lang, ws.mono, ws.tri, obj(cfg.tri), nj=cfg.nj)}
    for split in SPLITS:
        summary[f"align/{split}"] = align(ws.tri, ws.mfcc(split), ws.lang, ws.ali(split), nj=cfg.nj)
        ctm = ws.data(split) / "phones.ctm"
        if split != "train" and ctm.exists():
            summary[f"boundaries/{split}"] = boundary_accuracy(ws.ali(split), ws.tri / "final.mdl", ctm,
                                                               ws.lang / "phones.txt")
    write_json(ws.tri / "alignment_quality.json", {k: v for k, v in summary.items() if k.startswith("boundaries")})
    return summary


def score_split(ws: Workspace, system: str, split: str, hyps: dict[str, list[str]]) -> dict:
    """WER of one system on one split, overall and per voice condition, with icefall-style files."""
    refs = read_text(ws.data(split) / "text")
    out = ws.decode(system, split)
    result = compute_wer(refs, hyps)
    write_scoring_files(out, f"{system}-{split}", refs, hyps, result)
    scores = {"all": result.wer, "ins": result.ins, "del": result.dels, "sub": result.subs, "words": result.ref_words}
    subsets = read_utt2subset(ws, split)
    for subset in sorted(set(subsets.values())):
        utts = [u for u in refs if subsets.get(u) == subset]
        scores[subset] = compute_wer({u: refs[u] for u in utts}, {u: hyps.get(u, []) for u in utts}).wer
    return scores


def _decode_tuned(cfg: DictConfig, ws: Workspace, system: str,
                  loglikes: Callable[[str], dict[str, np.ndarray]]) -> dict:
    """Pick the acoustic scale on dev by WER, then decode test with it (test never tunes anything)."""
    decoder = obj(cfg.decode.decoder)
    decoder.nj = cfg.nj
    dev_ll = loglikes("dev")
    tried = {}
    for scale in cfg.decode.acoustic_scales:
        decoder.acoustic_scale = scale
        res = decode_loglikes(ws.graph, ws.tri / "final.mdl", dev_ll, decoder)
        tried[scale] = (score_split(ws, system, "dev", res.hyps), res)
    best = min(tried, key=lambda s: tried[s][0]["all"])
    dev_scores, dev_res = tried[best]
    score_split(ws, system, "dev", dev_res.hyps)  # leave the best scale's files on disk
    decoder.acoustic_scale = best
    test_res = decode_loglikes(ws.graph, ws.tri / "final.mdl", loglikes("test"), decoder)
    result = {"acoustic_scale": best, "dev_wer_by_scale": {s: v[0]["all"] for s, v in tried.items()},
              "dev": dev_scores, "test": score_split(ws, system, "test", test_res.hyps),
              "rtf": test_res.real_time_factor}
    write_json(ws.decode(system, "test").parent / "wer.json", result)
    return result


def stage_graph(cfg: DictConfig, ws: Workspace) -> dict:
    """Stage 5: HCLG for the triphone model + trigram LM, and the GMM baseline's WER (Kaldi's tri1 number)."""
    graph = make_hclg(ws.lang_test, ws.tri / "tree", ws.tri / "final.mdl", ws.graph, obj(cfg.graph))

    def gmm_ll(split: str) -> dict[str, np.ndarray]:
        return {u: gmm_loglikes(ws.tri, f) for u, f in load_gmm_feats(ws.mfcc(split)).items()}

    return {"graph": graph, "gmm": _decode_tuned(cfg, ws, "gmm", gmm_ll)}


# ---------------------------------------------------------------------------------------------- DNNs

def _num_pdfs(ws: Workspace) -> int:
    return int((ws.ali("train") / "num_pdfs").read_text().split()[0])


def _frameset(ws: Workspace, split: str, device: str, cfg: DictConfig) -> FrameSet:
    return load_frameset(ws.fbank(split), ws.ali(split), device=device, left=cfg.model.left_context,
                         right=cfg.model.right_context)


def _evaluate(cfg: DictConfig, ws: Workspace, system: System, device: str, splits=("dev", "test")) -> dict:
    """Frame accuracy of a system on the given splits (test also per voice condition)."""
    result = {}
    for split in splits:
        fs = _frameset(ws, split, device, cfg)
        result[split] = frame_accuracies(system.log_posteriors(fs, device), fs, read_utt2subset(ws, split))
    return result


def stage_baseline(cfg: DictConfig, ws: Workspace) -> dict:
    """Stage 6: the baseline single DNN on hard alignment targets."""
    device = device_of(cfg)
    out = ws.dnn("baseline")
    train(obj(cfg.model), obj(cfg.train), _frameset(ws, "train", device, cfg), _frameset(ws, "dev", device, cfg),
          out, _num_pdfs(ws))
    acc = _evaluate(cfg, ws, System("baseline", [out / "model.pt"]), device, splits=("train", "dev", "test"))
    write_json(out / "eval.json", acc)
    return acc


def _member_paths(ws: Workspace) -> list[Path]:
    return sorted(ws.dnn("ensemble").glob("member*/model.pt"))


def stage_ensemble(cfg: DictConfig, ws: Workspace) -> dict:
    """Stage 7: N members differing only in their random initialisation; members and their average evaluated."""
    device = device_of(cfg)
    train_set, dev_set = _frameset(ws, "train", device, cfg), _frameset(ws, "dev", device, cfg)
    train_ensemble(obj(cfg.model), obj(cfg.train), obj(cfg.ensemble), train_set, dev_set, ws.dnn("ensemble"),
                   _num_pdfs(ws))
    sync_ranks()  # under torchrun each rank trained its share of the members; evaluate once all are there
    sets = {split: _frameset(ws, split, device, cfg) for split in ("dev", "test")}
    members = evaluate_ensemble([p.parent for p in _member_paths(ws)], sets, cfg.ensemble.combine)
    acc = _evaluate(cfg, ws, System("ensemble", _member_paths(ws), cfg.ensemble.combine), device)
    result = {"members": members, "ensemble": acc}
    write_json(ws.dnn("ensemble") / "eval.json", result)
    return result


def _soft_name(teacher: str, temperature: float) -> str:
    return f"{teacher}_T{temperature:g}"


def stage_soft_targets(cfg: DictConfig, ws: Workspace) -> dict:
    """Stage 8: the ensemble's temperature-softened posteriors on the training frames, top-k, stored once."""
    device = device_of(cfg)
    train_set = _frameset(ws, "train", device, cfg)
    teachers = [load_model(p, device=device) for p in _member_paths(ws)]
    summary = {}
    sweep = compute_soft_targets_at(teachers, train_set, obj(cfg.soft_targets), cfg.distill.temperatures_sweep)
    for temperature, soft in sweep.items():
        soft.save(ws.soft_targets(_soft_name("ensemble", temperature)))
        summary[f"T={temperature:g}"] = {"bytes_per_frame": soft.bytes_per_frame,
                                         "mean_mass_kept": float(soft.mass_kept.float().mean())}
    return summary


def stage_distill(cfg: DictConfig, ws: Workspace) -> dict:
    """Stage 9: students of a member's shape on the ensemble's soft targets, one per temperature; the best on
    dev becomes the "distilled" system."""
    device = device_of(cfg)
    train_set, dev_set = _frameset(ws, "train", device, cfg), _frameset(ws, "dev", device, cfg)
    sweep = {}
    for temperature in cfg.distill.temperatures_sweep:
        dcfg = obj(cfg.distill)
        dcfg.temperature = float(temperature)
        soft = SoftTargets.load(ws.soft_targets(_soft_name("ensemble", temperature)), device=device)
        out = ws.dnn(f"distilled_T{temperature:g}")
        distill_student(obj(cfg.model), obj(cfg.train), dcfg, train_set, dev_set, soft, None, out, _num_pdfs(ws))
        sweep[float(temperature)] = _evaluate(cfg, ws, System(out.name, [out / "model.pt"]), device)
    best = max(sweep, key=lambda t: sweep[t]["dev"]["all"])
    chosen = ws.dnn("distilled")
    chosen.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ws.dnn(f"distilled_T{best:g}") / "model.pt", chosen / "model.pt")
    result = {"best_temperature": best, "sweep": sweep, "distilled": sweep[best]}
    write_json(chosen / "eval.json", result)
    return result


def stage_small_data(cfg: DictConfig, ws: Workspace) -> dict:
    """Stage 10: the 3% experiment: hard targets on 3% of the utterances vs soft targets from a full-data
    teacher on the same 3%."""
    device = device_of(cfg)
    sets = {split: _frameset(ws, split, device, cfg) for split in SPLITS}
    utt2spk = dict(line.split(maxsplit=1) for line in (ws.data("train") / "utt2spk").read_text().splitlines())
    teachers = {"baseline": [ws.dnn("baseline") / "model.pt"], "ensemble": _member_paths(ws)}
    result = run_small_data(obj(cfg.model), obj(cfg.train), obj(cfg.small_data), obj(cfg.distill), sets, utt2spk,
                            teachers, ws.root / "exp" / "dnn", _num_pdfs(ws))
    write_json(ws.dnn("small_data.json"), result)
    return result


# ---------------------------------------------------------------------------------------------- decoding

def dnn_systems(cfg: DictConfig, ws: Workspace) -> dict[str, System]:
    found = {"ensemble": System("ensemble", _member_paths(ws), cfg.ensemble.combine)}
    for name in ("baseline", "distilled", "small_hard", "small_soft"):
        if (ws.dnn(name) / "model.pt").exists():
            found[name] = System(name, [ws.dnn(name) / "model.pt"])
    return {k: v for k, v in found.items() if k in cfg.decode.systems and v.model_paths}


def stage_decode(cfg: DictConfig, ws: Workspace) -> dict:
    """Stage 11: hybrid decoding of every DNN system: (log posterior - log prior) x scale -> HCLG -> WER."""
    device = device_of(cfg)
    prior = log_priors(read_vector(ws.ali("train") / "pdf_counts"))
    # Every utterance is decoded, also those the GMM failed to align (they have no frame-accuracy label, but
    # they do have a reference transcript and count in the WER).
    sets = {split: load_unaligned_frameset(ws.fbank(split), device, cfg.model.left_context, cfg.model.right_context)
            for split in ("dev", "test")}
    summary = {}
    for name, system in dnn_systems(cfg, ws).items():
        def loglikes(split: str, system: System = system) -> dict[str, np.ndarray]:
            log_post = system.log_posteriors(sets[split], device).float().cpu().numpy()
            return split_by_utterance(posteriors_to_loglikes(log_post, prior), sets[split])

        summary[name] = _decode_tuned(cfg, ws, name, loglikes)
        log.info("%s: dev WER %.2f%%, test WER %.2f%% (acoustic scale %g)", name, summary[name]["dev"]["all"],
                 summary[name]["test"]["all"], summary[name]["acoustic_scale"])
    return summary


def stage_report(cfg: DictConfig, ws: Workspace) -> dict:
    """Stage 12: the comparison report (Markdown + JSON + PNG) and the recipe's RESULTS.md."""
    from asr_kd.report import write_report

    return write_report(cfg, ws)


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
    "decode": stage_decode,
    "report": stage_report,
}
