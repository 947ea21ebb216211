"""What a (partly) trained experiment holds, read the same way by every stage and by ``decode_data``.

These helpers sit below :mod:`asr_kd.pipeline.stages` and :mod:`asr_kd.pipeline.decode_data`: the frame sets a
split turns into, the DNN systems trained so far, the priors of hybrid decoding, and the scoring of a split's
hypotheses (overall and per voice condition, with the icefall-style files beside them).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from asr_kd.distillation.soft_targets import SoftTargets
from asr_kd.evaluation.systems import FrameAccuracy, System, per_utterance, split_by_utterance
from asr_kd.nn.archive import ensure_frame_archive
from asr_kd.nn.device import select_device
from asr_kd.nn.frames import NO_TARGET, Frames, FrameSet, load_frameset
from asr_kd.nn.numerics import Numerics, load_or_choose, measure_bf16_speedup, recorded
from asr_kd.nn.priors import log_priors
from asr_kd.nn.stream import DataConfig, NpyColumn, StreamedFrames, check_memory, in_memory_bytes
from asr_kd.nn.train import TrainConfig
from asr_kd.pipeline.workspace import Workspace
from decoding.decode import ShardedLoglikes, decode_shard_frames, posteriors_to_loglikes
from decoding.shards import FeatureShards
from decoding.score import WerResult, compute_wer, write_scoring_files
from features.atomic import write_text_atomic
from features.kaldi_io import load_vec_int_scp, read_vector, write_vec_int_ark_scp
from features.tables import read_dict, read_text

UNLABELED_STUDENT = "distilled_unlabeled"
"""The student distilled on the training set plus the untranscribed pool (stage transfer)."""
SMALL_UNLABELED = "small_soft_unlabeled"
"""The 3% soft-target model with the untranscribed pool beside its subset (stage transfer)."""
DNN_SYSTEMS = ("baseline", "ensemble", "distilled", UNLABELED_STUDENT, "small_hard", "small_soft",
               "small_soft_baseline", SMALL_UNLABELED)
"""Every DNN system the recipe may train, in report order (small_soft_baseline only when the 3% experiment
compares teachers; the unlabeled-pool systems only when the corpus has untranscribed audio)."""


def to_object(node: DictConfig) -> Any:
    """The typed dataclass behind a config node (hydra keeps them as DictConfig)."""
    return OmegaConf.to_object(node)


def student_train_config(cfg: DictConfig, overrides: Any = None) -> TrainConfig:
    """How a model on the ensemble's soft targets trains: ``train`` with ``student_train`` (and ``overrides``)."""
    return to_object(OmegaConf.merge(cfg.train, cfg.student_train, overrides or {}))


def run_numerics(cfg: DictConfig, ws: Workspace) -> Numerics:
    """The arithmetic every model of this run trains in (:mod:`asr_kd.nn.numerics`): under ``train.bf16=null`` the
    first training stage times a member's step in bf16 and float32 and records its choice in ``ws.numerics``; every
    later stage and rank reads it from there."""
    device, model_cfg = device_of(cfg), to_object(cfg.model)
    return load_or_choose(ws.numerics, cfg.train.bf16, device,
                          lambda: measure_bf16_speedup(model_cfg, num_pdfs(ws), cfg.train.batch_size, device))


def recorded_numerics(cfg: DictConfig, ws: Workspace) -> Numerics | None:
    """What :func:`run_numerics` chose, for the report (None when no training stage has run)."""
    return recorded(ws.numerics, (cfg.get("train") or {}).get("bf16"), select_device(cfg.get("device", "auto")))


def with_run_numerics(cfg: DictConfig, ws: Workspace, train_cfg: TrainConfig) -> TrainConfig:
    """``train_cfg`` with the run's arithmetic where it leaves ``bf16`` open (a student's own setting stays)."""
    if train_cfg.bf16 is not None:
        return train_cfg
    return dataclasses.replace(train_cfg, bf16=run_numerics(cfg, ws).bf16)


def train_config(cfg: DictConfig, ws: Workspace) -> TrainConfig:
    """How the baseline, the members and the 3% models train: ``train`` in the run's arithmetic."""
    return with_run_numerics(cfg, ws, to_object(cfg.train))


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def device_of(cfg: DictConfig) -> torch.device:
    """The device this process computes on (:func:`asr_kd.nn.device.select_device` of ``cfg.device``)."""
    return select_device(cfg.device)


def num_pdfs(ws: Workspace) -> int:
    """Number of tied states: the DNN's output classes."""
    return int(ws.num_pdfs_file.read_text().split()[0])


def utt2subset(ws: Workspace, split: str) -> dict[str, str]:
    """Voice condition (seen/unseen) of each utterance of a split, where the corpus provides one."""
    path = ws.data(split) / "utt2subset"
    return read_dict(path) if path.exists() else {}


def frames(cfg: DictConfig, ws: Workspace, split: str, device: torch.device) -> Frames:
    """A split's aligned frames (fbank + CMVN, pdf targets) with the model's context, for ``device``: in memory, or
    streamed from the split's frame archive (written first by whichever stage needs it) as ``cfg.data`` says.

    The choice goes by the split's frame count in ``utt2num_frames`` (aligned or not), before anything is read:
    either way the memory it would take is checked first (:func:`asr_kd.nn.stream.check_memory`).
    """
    data: DataConfig = to_object(cfg.data)
    left, right = cfg.model.left_context, cfg.model.right_context
    size = _split_size(ws.fbank(split))
    if data.stream or (data.stream is None and size is not None and size[0] > data.buffer_frames):
        archive = ensure_frame_archive(ws.fbank(split), ws.ali(split), ws.frame_archive(split), data.shard_frames,
                                       f"the first DNN stage that streams split {split} (baseline, in a run of "
                                       f"every stage)")
        return StreamedFrames(archive, data, device, left, right)
    if size is not None:
        check_memory(data, in_memory_bytes(*size, cfg.model.feat_dim, left, right),
                     f"split {split} in memory ({size[0]} frames)",
                     lambda _: f"stream it (data.stream=true, or data.buffer_frames below {size[0]})")
    return load_frameset(ws.fbank(split), ws.ali(split), device=device, left=left, right=right)


def _split_size(feats_dir: Path) -> tuple[int, int] | None:
    """Frames and utterances of a feature dir, from its ``utt2num_frames`` (None without one: features written by
    other tools than the features stage)."""
    table = feats_dir / "utt2num_frames"
    if not table.exists():
        return None
    counts = [int(n) for n in read_dict(table, require_sorted=False).values()]
    return sum(counts), len(counts)


def member_paths(ws: Workspace) -> list[Path]:
    return sorted(ws.dnn("ensemble").glob("member*/model.pt"))


def system_paths(ws: Workspace, students: list[str] | tuple[str, ...] = ()) -> dict[str, list[Path]]:
    """The model files of every DNN system and of the named extra students (missing ones have no files yet)."""
    single = {"baseline": ws.dnn("baseline"), "distilled": ws.dnn("distilled"),
              **{name: ws.small_data / name for name in ("small_hard", "small_soft", "small_soft_baseline")},
              **{name: ws.transfer / name for name in (UNLABELED_STUDENT, SMALL_UNLABELED)},
              **{name: ws.student(name) for name in students}}
    paths = {name: [d / "model.pt"] if (d / "model.pt").exists() else [] for name, d in single.items()}
    paths["ensemble"] = member_paths(ws)
    return {name: paths[name] for name in (*DNN_SYSTEMS, *students)}


def dnn_systems(cfg: DictConfig, ws: Workspace) -> dict[str, System]:
    """The DNN systems trained so far that ``cfg.decode.systems`` asks for, then every extra student."""
    wanted = [*cfg.decode.systems, *cfg.students]
    return {name: System(name, paths, cfg.ensemble.combine if name == "ensemble" else "arith")
            for name, paths in system_paths(ws, list(cfg.students)).items() if paths and name in wanted}


def evaluate_system(cfg: DictConfig, ws: Workspace, system: System, splits: tuple[str, ...] = ("dev", "test")
                    ) -> dict:
    """Frame accuracy (%) of a system on each split, overall and per voice condition; the per-frame arg-max pdf
    of every aligned utterance is kept in ``ws.eval(system, split)/pred.scp`` (what the report's intervals and
    ``asr-kd-compare --ali --pred`` recompute the accuracy from). Batch by batch: a split streamed from disk is
    never held whole."""
    device = device_of(cfg)
    result = {}
    for split in splits:
        accuracy = FrameAccuracy(utt2subset(ws, split))

        def counted(items: Iterator[tuple[str, np.ndarray, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
            for utt, pred, targets in items:
                accuracy.add(utt, pred, targets)
                yield utt, pred

        write_predictions(ws, system.name, split, counted(system.iter_predictions(frames(cfg, ws, split, device),
                                                                                  device)))
        result[split] = accuracy.result()
    return result


def write_predictions(ws: Workspace, system: str, split: str, preds: Iterable[tuple[str, np.ndarray]]) -> None:
    """Keep a system's per-frame arg-max pdfs, utterance by utterance in frame order, as
    ``ws.eval(system, split)/pred.scp``."""
    out = ws.eval(system, split)
    write_vec_int_ark_scp(((u, p.astype(np.int32, copy=False)) for u, p in preds), out / "pred.ark",
                          out / "pred.scp")


def stored_top_class(soft_dir: Path, frames: Frames, chunk_frames: int = 1 << 20) -> Iterator[tuple[str, np.ndarray]]:
    """Per utterance of ``frames``, the top class of the soft targets stored at ``soft_dir`` for each frame (at T=1:
    the teacher's own arg-max), read a chunk of frames at a time."""
    column = NpyColumn(SoftTargets.column_files(soft_dir)["indices"])
    chunks = ((column.read(a, min(column.num_rows, a + chunk_frames))[:, 0].astype(np.int32),)
              for a in range(0, column.num_rows, chunk_frames))
    for utt, top in per_utterance(chunks, frames.utt_ids, frames.utt_lengths.tolist()):
        yield utt, top


def predictions(ws: Workspace, system: str, split: str) -> dict[str, np.ndarray]:
    """The per-frame arg-max pdfs :func:`evaluate_system` kept."""
    return load_vec_int_scp(ws.eval(system, split) / "pred.scp")


def hybrid_loglikes(system: System, frame_set: FrameSet, prior: np.ndarray,
                    device: torch.device) -> dict[str, np.ndarray]:
    """Per-utterance scaled log-likelihoods log p(s|x) - log p(s) of a DNN system, for the decoder."""
    log_post = system.log_posteriors(frame_set, device).float().cpu().numpy()
    return split_by_utterance(posteriors_to_loglikes(log_post, prior), frame_set)


def hybrid_loglike_shards(cfg: DictConfig, ws: Workspace, system: System, split: str, prior: np.ndarray,
                          device: torch.device) -> ShardedLoglikes:
    """:func:`hybrid_loglikes` of every utterance of a split, aligned or not (decoding needs no labels), one shard
    of utterances at a time: a shard's fbank features (per-speaker CMVN, as in training) are read from disk and
    become its log-likelihoods, so neither a split's features nor its log-likelihoods are ever held at once.

    A frame's context window never leaves its utterance, so a shard's frames get the windows, and the network the
    inputs, they get in the whole split."""
    feats = FeatureShards(ws.fbank(split), decode_shard_frames(len(prior)), norm_vars=True)
    left, right = cfg.model.left_context, cfg.model.right_context

    def loglikes(shard: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        utts = list(shard)
        x = torch.from_numpy(np.concatenate([shard[u] for u in utts])).to(device)
        frame_set = FrameSet.from_tensors(x, torch.full((x.shape[0],), NO_TARGET, dtype=torch.int64, device=device),
                                          utts, [shard[u].shape[0] for u in utts], left=left, right=right)
        return hybrid_loglikes(system, frame_set, prior, device)

    return ShardedLoglikes(feats, loglikes)


def decode_prior(ws: Workspace) -> np.ndarray:
    """log p(s) from the training alignments' pdf counts."""
    return log_priors(read_vector(ws.pdf_counts))


def score_split(ws: Workspace, system: str, split: str, hyps: dict[str, list[str]]) -> tuple[dict, WerResult]:
    """WER of one system on one split, overall and per voice condition, with the scoring files beside it.

    Returns the summary (percent WER ``all`` and per subset, error counts) and the full result (per-utterance
    errors, which the report's confidence intervals resample).
    """
    refs = read_text(ws.data(split) / "text")
    result = compute_wer(refs, hyps)
    write_scoring_files(ws.decode(system, split), f"{system}-{split}", refs, hyps, result)
    scores = {"all": result.wer, "ins": result.ins, "del": result.dels, "sub": result.subs, "words": result.ref_words}
    subsets = utt2subset(ws, split)
    for subset in sorted(set(subsets.values())):
        utts = [u for u in refs if subsets.get(u) == subset]
        scores[subset] = compute_wer({u: refs[u] for u in utts}, {u: hyps.get(u, []) for u in utts}).wer
    return scores, result
