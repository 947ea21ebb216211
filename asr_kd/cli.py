"""Command line: run one stage (or all) of an experiment, configured through hydra.

    python -m asr_kd.cli --config-dir recipes/synth/conf --config-name tiny stage=baseline [key=value ...]

``stage=all`` runs every stage in order; ``stage=list`` prints them; ``stage=decode_data decode_data.dir=DIR``
decodes any Kaldi data dir with the experiment's trained systems (features computed with its settings).
The work dir (``work_dir``, default: the current directory) receives data/ and exp/; hydra's own output goes
to exp/hydra/. This file only parses and dispatches: each stage is a function in :mod:`asr_kd.stages`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("KALDI_ROOT", "/tmp")  # kaldi-io prints a banner at import without it

import hydra
from omegaconf import DictConfig

from asr_kd.conf.schema import register

register()


def _run(cfg: DictConfig) -> None:
    from asr_kd.runner import run_stage
    from asr_kd.stages import STAGES
    from asr_kd.workspace import Workspace

    if cfg.stage == "list":
        print("\n".join(f"{i:2d} {name}" for i, name in enumerate(STAGES)))
        return
    ws = Workspace(Path(cfg.work_dir).resolve())
    if cfg.stage == "decode_data":  # per data dir and re-runnable, so no .done marker
        from asr_kd.decode_data import decode_data_dir

        if not cfg.decode_data.dir:
            raise SystemExit("stage=decode_data needs decode_data.dir=/path/to/kaldi/data/dir")
        decode_data_dir(cfg, ws, Path(cfg.decode_data.dir), list(cfg.decode_data.systems), cfg.decode_data.name)
        return
    names = list(STAGES) if cfg.stage == "all" else [cfg.stage]
    for name in names:
        if name not in STAGES:
            raise SystemExit(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        run_stage(name, STAGES[name], cfg, ws, force=cfg.force)


@hydra.main(version_base="1.3", config_path=None, config_name="asr_kd")
def _hydra_main(cfg: DictConfig) -> None:
    _run(cfg)


def main() -> None:
    """Entry point (``asr-kd`` console script and ``python -m asr_kd.cli``)."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    _hydra_main()


if __name__ == "__main__":
    main()
