"""The mechanics every recipe stage shares: skip when done, log to a file, save the resolved config, time it.

A stage is a plain function ``fn(cfg, ws) -> dict``. Under torchrun (``WORLD_SIZE`` > 1) every rank runs the
stage (one model data-parallel, or ensemble members spread over ranks), ranks meet at a barrier at the end, and
rank 0 alone writes the bookkeeping. :func:`run_stage` wraps it the way Kaldi/icefall recipes behave: a stage
whose ``.done`` marker exists is skipped (idempotent re-runs), the marker is written only after the stage
returned (a killed stage re-runs; long stages resume from their own checkpoints), the log and the resolved config
sit next to the stage's summary, and nothing is written half way (summaries go through ``atomic_write``).
Before a stage starts, the outputs of earlier stages that it reads (each a :class:`Need`, declared beside the
stages) must exist: a stage started too early stops with one line naming a missing file and the stage that makes
it, not with a traceback from deep inside a reader.
A failing stage leaves its traceback in its ``log.txt``; the console gets the one line that matters (cli.py).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from asr_kd.nn.device import bf16_native, dist_context, select_device
from asr_kd.pipeline.workspace import Workspace
from features.atomic import write_text_atomic
from features.errors import InputError

log = logging.getLogger(__name__)

StageFn = Callable[[Any, Workspace], dict]


def git_commit(repo_dir: Path, ignore: tuple[Path, ...] = ()) -> str:
    """The commit the code ran from (with '+dirty' when the tree had changes), for the report.

    Changes under ``ignore`` do not count: the report passes the results dir it publishes to, whose committed
    files an earlier run of the same recipe has already rewritten (that is not a change to the code that ran)."""
    root = repo_dir.resolve()
    excluded = [f":(exclude){p.resolve().relative_to(root)}" for p in ignore if p.resolve().is_relative_to(root)]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_dir, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
                               cwd=repo_dir, capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_description() -> dict:
    """What the numbers were measured on: CPU count and model, GPU name (if any), Python and torch versions, and
    what decides reproduction to the last digit: the vector kernels torch dispatches to (``simd``: AVX2, AVX512,
    ...) and whether the CPU computes bf16 natively (what training may run in: :mod:`asr_kd.nn.numerics`), and with
AMX tiles (``amx``: bf16 matrix products several times faster, so training time depends on it). CPUs
    with different vector kernels round float sums differently, from the GMM's statistics on, so a run reproduces
    its numbers to the last digit only on CPUs with the same kernels, and the results name the kernels they came
    from."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu": _cpu_model() or platform.processor() or platform.machine(),
        "simd": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": bf16_native(torch.device("cpu")),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def machine_kind(machine: dict) -> str:
    """Short name of a :func:`machine_description` for tables: CPU count, vector kernels (+BF16 where the CPU
    computes bf16 natively, +AMX where it has AMX tiles), GPU. A description without ``simd`` (an older history
    row) gives the CPU count and GPU only."""
    simd = machine.get("simd")
    extras = f"{'+BF16' if machine.get('bf16_native') else ''}{'+AMX' if machine.get('amx') else ''}"
    kernels = f" {simd}{extras}" if simd else ""
    return f"{machine['cpus']} CPUs{kernels}, GPU {machine['gpu']}"


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _attach_log_file(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    if root.getEffectiveLevel() > logging.INFO:  # per-iteration progress belongs in the stage log
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


@dataclass(frozen=True)
class Need:
    """A file an earlier stage leaves that a stage always reads, and that stage's name and run.sh number."""

    path: Path
    stage: str
    number: int


def check_needs(name: str, needs: Sequence[Need], ws: Workspace) -> None:
    """Raise an :class:`InputError` (one line on the console, exit status 2) naming the missing need of stage
    ``name`` made by the earliest stage, and what to run: that stage, or, when it is marked done without the file
    (deleted since), that stage again with ``force=true`` (a plain re-run would skip it)."""
    missing = [need for need in needs if not need.path.exists()]
    if not missing:
        return
    need = min(missing, key=lambda n: n.number)
    if (ws.stage(need.stage) / ".done").exists():
        fix = (f"; it is marked done but the file is gone, so redo it "
               f"(run.sh --stage {need.number} --stop-stage {need.number} force=true)")
    else:
        fix = f": run it first (run.sh --stage {need.number})"
    raise InputError(f"stage {name} needs {need.path}, which stage {need.number} ({need.stage}) makes{fix}")


def run_stage(name: str, fn: StageFn, cfg: DictConfig, ws: Workspace, force: bool = False,
              needs: Sequence[Need] = (), trains: Sequence[Path] = ()) -> dict | None:
    """Run one stage unless its ``.done`` marker exists; returns its summary (None when skipped). A stage that
    runs first checks its ``needs`` (:func:`check_needs`), before it writes anything. ``trains`` are the
    directories of the models the stage trains: a forced stage removes them, so that it trains them again rather
    than resuming their finished checkpoints."""
    stage_dir = ws.stage(name)
    done = stage_dir / ".done"
    if done.exists() and not force:
        log.info("stage %s: already done (%s); pass force=true to redo it", name, done)
        return None
    check_needs(name, needs, ws)
    ranks = dist_context(select_device(cfg.get("device", "auto")))
    stage_dir.mkdir(parents=True, exist_ok=True)
    if ranks.is_main:
        done.unlink(missing_ok=True)
        if force:
            for directory in trains:
                shutil.rmtree(directory, ignore_errors=True)
        write_text_atomic(stage_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    ranks.barrier()
    handler = _attach_log_file(stage_dir / ("log.txt" if ranks.is_main else f"log.rank{ranks.rank}.txt"))
    started = time.time()
    log.info("stage %s: start", name)
    try:
        summary = fn(cfg, ws) or {}
    except BaseException:
        # The traceback goes to the stage log only; the console gets one line from cli.py (or the traceback
        # there too with debug=true).
        handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "stage %s: failed after %.1f s",
                                      (name, time.time() - started), sys.exc_info()))
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    ranks.barrier()
    if not ranks.is_main:
        return summary
    seconds = time.time() - started
    record = {
        "stage": name,
        "seconds": round(seconds, 2),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "summary": summary,
    }
    write_text_atomic(stage_dir / "summary.json", json.dumps(record, indent=2, default=str) + "\n")
    write_text_atomic(done, record["finished"] + "\n")
    log.info("stage %s: done in %.1f s", name, seconds)
    return summary


def record_peak_memory(ws: Workspace, name: str, peak_bytes: int | None) -> None:
    """Add the stage's peak memory (its whole process tree, MB: :class:`asr_kd.pipeline.memory.PeakMemory`) to the
    record :func:`run_stage` wrote. The process that started the stage measures it, so a stage spread over torchrun
    ranks counts all of them, and the record gets it after the ranks have finished."""
    record = read_summary(ws, name)
    if record is None or peak_bytes is None:
        return
    record["peak_memory_mb"] = round(peak_bytes / 2**20, 1)
    write_text_atomic(ws.stage(name) / "summary.json", json.dumps(record, indent=2, default=str) + "\n")


def read_summary(ws: Workspace, name: str) -> dict | None:
    """The saved record of a finished stage (``{"stage", "seconds", "finished", "summary"}``, and
    ``peak_memory_mb`` where the process that started it measured it), or None."""
    path = ws.stage(name) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None
