"""The stages of independent models with ``jobs.backend=submitit``: one batch job per model, then the stage here.

For a stage of :data:`asr_kd.pipeline.stages.MODELS` (ensemble, distill, small_data, students) this process
submits a job for each model that is not finished (:mod:`asr_kd.nn.jobs`), waits for them, and then the stage runs
here as usual, in one process: it finds every model trained, trains none, and evaluates and joins them as rank 0 does
after torchrun ranks. The soft targets' shares are frames, not models: that stage stays on ``procs`` ranks.
"""
from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

from asr_kd.nn.device import JOB_SHARE_ENV
from asr_kd.nn.jobs import JobFailed, run_share_jobs
from asr_kd.nn.train import trained
from asr_kd.pipeline import experiment as xp
from asr_kd.pipeline.runner import Need, check_needs
from asr_kd.pipeline.stages import MODELS, STAGES, stage_trains
from asr_kd.pipeline.workspace import Workspace


def train_as_jobs(cfg: DictConfig, name: str, needs: list[Need]) -> bool:
    """Train stage ``name``'s unfinished models as batch jobs when ``jobs.backend=submitit``; True when it did
    (every model is trained: the stage then runs here and only evaluates). Its ``needs`` are checked first, so a
    missing one is the one line it is without jobs; ``force=true`` removes the stage's models first, as
    :func:`asr_kd.pipeline.runner.run_stage` does, so that the jobs train them again from their initialisation."""
    jobs = xp.to_object(cfg.jobs)
    if jobs.backend != "submitit" or name not in MODELS or "WORLD_SIZE" in os.environ or JOB_SHARE_ENV in os.environ:
        return False
    ws = Workspace(Path(cfg.work_dir).resolve())
    if (ws.stage(name) / ".done").exists() and not cfg.force:
        return False  # skipped anyway
    check_needs(name, needs, ws)
    if cfg.force:
        (ws.stage(name) / ".done").unlink(missing_ok=True)
        for directory in stage_trains(name, ws):
            shutil.rmtree(directory, ignore_errors=True)
    models = MODELS[name](cfg, ws)
    todo = [i for i, model in enumerate(models) if not trained(model)]
    if todo:
        folder = (ws.root / jobs.folder / name) if jobs.folder else ws.jobs(name)
        run_share_jobs(functools.partial(_train_share, cfg, name, ws.root), todo, len(models),
                       [str(model.relative_to(ws.root)) for model in models], jobs, folder, f"asr-kd-{name}")
    missing = [str(model) for model in models if not trained(model)]
    if missing:
        raise JobFailed(f"{name}: every job finished, but no trained model is in {', '.join(missing)}")
    return True


def _train_share(cfg: DictConfig, name: str, root: Path) -> None:
    """What a job runs: stage ``name``, which trains the job's one model (its share) and returns."""
    STAGES[name](cfg, Workspace(root))
