"""Students beyond the recipe's own: ablations of the distillation recipe and students of other sizes.

A research config lists them under ``students`` (name -> :class:`asr_kd.conf.schema.StudentConfig`). Each trains
on the full training set, on hard targets or distilled from the ensemble, with the experiment's model, training and
distillation settings overridden by its spec: the temperature is the one the distill stage chose on dev unless the
spec sets one, and the soft targets are the ones stored once for every student (a smaller top-k cuts them; a
larger one, or all classes, is computed from the members in memory). An online student (``distill.mode: online``,
e.g. a consistent teacher on augmented input) is taught by the members themselves inside each step, combined as the
ensemble combines them. A student is then a system like the others: its frame predictions are kept, it is decoded,
costed and reported.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from asr_kd.distillation.distill import DistillConfig, distill
from asr_kd.distillation.soft_targets import (
    SoftTargetConfig,
    SoftTargets,
    compute_soft_targets,
    compute_soft_targets_to,
)
from asr_kd.evaluation.systems import System
from asr_kd.nn.device import dist_context, launch_env
from asr_kd.nn.frames import Frames
from asr_kd.nn.inference import load_model
from asr_kd.nn.model import ModelConfig, num_parameters
from asr_kd.nn.stream import StreamedFrames
from asr_kd.nn.train import TrainConfig, train, trained
from asr_kd.pipeline import experiment as xp
from asr_kd.pipeline.runner import read_summary
from asr_kd.pipeline.workspace import Workspace

log = logging.getLogger(__name__)

TARGETS = ("hard", "soft")
BUDGETS = ("converge", "member")


def member_epochs(ws: Workspace) -> int:
    """The median number of epochs the ensemble's members trained: "a member's budget"."""
    runs = [len(json.loads((p.parent / "metrics.json").read_text())["epochs"]) for p in xp.member_paths(ws)]
    if not runs:
        raise ValueError("no trained ensemble members: a member's budget is unknown")
    return int(statistics.median_low(runs))


def _soft_targets(cfg: DictConfig, ws: Workspace, dcfg: DistillConfig, stored_k: int, train_set: Frames,
                  out: Path, device) -> SoftTargets | Path:
    """The ensemble's targets at ``dcfg.temperature``: the stored ones when they hold enough classes per frame (their
    directory, for a streamed training set); otherwise computed from the members, in memory, or for a streamed set
    written to ``out/soft_targets``."""
    stored = ws.soft_targets("ensemble", dcfg.temperature)
    if stored.exists() and dcfg.top_k is not None and dcfg.top_k <= stored_k:
        return stored if isinstance(train_set, StreamedFrames) else SoftTargets.load(stored, device=device)
    log.info("computing soft targets at T=%g with k=%s (not stored)", dcfg.temperature, dcfg.top_k)
    teachers = [load_model(p, device) for p in xp.member_paths(ws)]
    st_cfg = SoftTargetConfig(temperature=dcfg.temperature, top_k=dcfg.top_k, combine=cfg.ensemble.combine)
    if isinstance(train_set, StreamedFrames):
        compute_soft_targets_to(teachers, train_set, st_cfg, {float(dcfg.temperature): out / "soft_targets"})
        return out / "soft_targets"
    return compute_soft_targets(teachers, train_set, st_cfg)


def student_configs(cfg: DictConfig, name: str, temperature: float | None = None
                    ) -> tuple[ModelConfig, TrainConfig, DistillConfig | None]:
    """Student ``name``'s model, training and (soft students only) distillation settings: the experiment's with its
    spec's overrides (a soft student trains as the distill stage's students do, with ``student_train``), at
    ``temperature`` (the one the distill stage chose) unless the spec sets one. An unknown key or a bad value in the
    spec raises here (so a config test catches a typo before any training)."""
    spec = cfg.students[name]
    if spec.targets not in TARGETS or spec.budget not in BUDGETS:
        raise ValueError(f"student {name}: targets must be one of {TARGETS} and budget one of {BUDGETS}")
    model_cfg = xp.to_object(OmegaConf.merge(cfg.model, spec.model))
    if spec.targets == "hard":
        return model_cfg, xp.to_object(OmegaConf.merge(cfg.train, spec.train)), None
    dcfg = xp.to_object(OmegaConf.merge(cfg.distill, {"temperature": temperature or cfg.distill.temperature},
                                        spec.distill))
    if dcfg.mode == "online" and "combine" not in spec.distill:  # the members combined as the stored targets combine
        dcfg = dataclasses.replace(dcfg, combine=cfg.ensemble.combine)
    return model_cfg, xp.student_train_config(cfg, spec.train), dcfg


def teacher_kind(dcfg: DistillConfig) -> str:
    """Where a soft student's targets come from, for the report: ``stored`` (computed once, on clean input),
    ``online`` (in every step, on clean input) or ``consistent`` (in every step, on the student's own input)."""
    return "consistent" if dcfg.consistent else dcfg.mode


def train_students(cfg: DictConfig, ws: Workspace) -> dict:
    """Train, evaluate (frame predictions) and describe every student of ``cfg.students``; resumable per student.

    Under torchrun the students are spread over the ranks (each trains its own alone); rank 0 evaluates them all. A
    finished student is kept; a batch job (:mod:`asr_kd.nn.jobs`) trains its share and evaluates none.
    """
    if not cfg.students:
        return {}
    device = xp.device_of(cfg)
    ranks = launch_env()
    mine = [name for name in ranks.share(cfg.students) if not trained(ws.student(name))]
    train_set, dev_set = xp.frames(cfg, ws, "train", device), xp.frames(cfg, ws, "dev", device)
    classes = xp.num_pdfs(ws)
    best_t = (read_summary(ws, "distill") or {}).get("summary", {}).get("best_temperature")
    summary = {}
    for name, spec in cfg.students.items():
        model_cfg, train_cfg, dcfg = student_configs(cfg, name, best_t)
        train_cfg = xp.with_run_numerics(cfg, ws, train_cfg)
        if spec.budget == "member":
            train_cfg.epochs = member_epochs(ws)
        out = ws.student(name)
        row = {"targets": spec.targets, "budget": spec.budget, "size_sweep": spec.size_sweep,
               "hidden_layers": model_cfg.hidden_layers,
               "hidden_dim": model_cfg.hidden_dim, "params": num_parameters(model_cfg, classes),
               "epochs_cap": train_cfg.epochs, "min_epochs": train_cfg.min_epochs}
        if dcfg is not None:
            row.update(temperature=dcfg.temperature, hard_weight=dcfg.hard_weight, top_k=dcfg.top_k,
                       teacher=teacher_kind(dcfg), augment=dcfg.augment.describe() if dcfg.augment.enabled else None)
        if name in mine and spec.targets == "hard":
            train(model_cfg, train_cfg, train_set, dev_set, out, classes, device=device, data_parallel=False)
        elif name in mine and dcfg.mode == "online":
            teachers = [load_model(p, device) for p in xp.member_paths(ws)]
            distill(model_cfg, train_cfg, dcfg, train_set, dev_set, None, teachers, out, classes, device,
                    data_parallel=False)
        elif name in mine:
            soft = _soft_targets(cfg, ws, dcfg, cfg.soft_targets.top_k or classes, train_set, out, device)
            distill(model_cfg, train_cfg, dcfg, train_set, dev_set, soft, None, out, classes, device,
                    data_parallel=False)
        summary[name] = row
    dist_context(device).barrier()
    if not ranks.is_main:
        return {}
    for name, row in summary.items():
        row["epochs_run"] = len(json.loads((ws.student(name) / "metrics.json").read_text())["epochs"])
        row.update(xp.evaluate_system(cfg, ws, System(name, [ws.student(name) / "model.pt"])))
    return summary
