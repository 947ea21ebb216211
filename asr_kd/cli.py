"""Command line: run one stage (or all) of an experiment, configured through hydra.

    python -m asr_kd.cli --config-dir recipes/synth/conf --config-name tiny stage=baseline [key=value ...]

``stage=all`` runs every stage in order, ``stage='a,b,c'`` the named ones in that order (what run.sh passes: the
stages within --stage..--stop-stage, in one process, so that the imports are paid once, not once per stage);
``stage=list`` prints them, numbered; ``stage=decode_data
decode_data.dir=DIR`` decodes any Kaldi data dir with the experiment's trained systems (features computed with
its settings). The work dir (``work_dir``, default: the current directory) receives data/ and exp/; hydra's own
output goes to exp/hydra/. This file only parses and dispatches: each stage is a function in
:mod:`asr_kd.pipeline.stages`.

A stage that trains independent models (:data:`asr_kd.pipeline.stages.RANK_PARALLEL`) with ``procs`` > 1 runs under
torchrun: this command, for that one stage, re-launched with that many ranks, one thread each (unless already under
torchrun, or the config gives the stage fewer than two shares: no extra students, a one-member ensemble). The ranks
run this process's config object (pickled, structured types and all), not one composed again from the conf files:
a run's stages all see the config it started with, even if a conf file changes while it runs.

With ``jobs.backend=submitit`` those stages (but the soft targets, whose shares are frames) train each model as a
batch job of its own instead, on Slurm (``jobs.cluster=slurm``) or as processes here (``local``), and then run here
in one process, which finds the models trained and evaluates them (:mod:`asr_kd.pipeline.jobs`).

The CPU stages' units (synthesis, features, GMM passes and alignment, decoding) run where ``executor`` says:
``nj`` processes here (``executor.backend=local``, the default) or a Dask cluster's workers
(``executor.backend=dask``), reached and checked once, before the first stage
(:func:`features.executor.use_executor`).

Bad input (a missing file, a malformed line, an OOV...) ends with one line on stderr, ``error: <file>:<line>:
<what>``, and exit status 2; ``debug=true`` shows the traceback instead. The stage's log keeps it either way. A
stage started before the stages whose outputs it reads (:data:`asr_kd.pipeline.stages.NEEDS`) ends the same way,
before it writes anything: ``error: stage <name> needs <file>, which stage <N> (<name>) makes: run it first ...``.
Batch jobs that failed end the run with one line too, naming each job, its model and its log, and exit status 1.
"""
from __future__ import annotations

import copy
import logging
import os
import pickle
import signal
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KALDI_ROOT", "/tmp")  # kaldi-io prints a banner at import without it

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from asr_kd.conf.schema import register  # noqa: E402
from asr_kd.nn.jobs import JobFailed  # noqa: E402
from asr_kd.pipeline.decode_data import decode_data_dir  # noqa: E402
from asr_kd.pipeline.jobs import train_as_jobs  # noqa: E402
from asr_kd.pipeline.memory import PeakMemory  # noqa: E402
from asr_kd.pipeline.runner import Need, check_needs, record_peak_memory, run_stage  # noqa: E402
from asr_kd.pipeline.stages import RANK_PARALLEL, STAGES, stage_needs, stage_trains  # noqa: E402
from asr_kd.pipeline.workspace import Workspace  # noqa: E402
from features.errors import InputError  # noqa: E402
from features.executor import use_executor  # noqa: E402

INPUT_ERROR_STATUS = 2
JOB_FAILED_STATUS = 1
RANK_CONFIG_ENV = "ASR_KD_RANK_CONFIG"  # set for the ranks: the pickled config of the process that started them

register()


def stage_list() -> str:
    """``N name  first line of the stage's docstring`` for every stage, in order (``run.sh --help``)."""
    return "\n".join(f"{i:2d} {name:<13} {(fn.__doc__ or '').strip().splitlines()[0]}"
                     for i, (name, fn) in enumerate(STAGES.items()))


_TORCHRUN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def _spread_over_ranks(cfg: DictConfig, name: str, needs: list[Need]) -> bool:
    """Run stage ``name`` under torchrun with ``cfg.procs`` ranks (this process's config, that one stage) when it
    trains independent models; True when it did (the ranks have finished). Its ``needs`` are checked here first:
    a missing one is the same one line as without ranks, not the torchrun agent's report of failed ranks."""
    if cfg.procs <= 1 or name not in RANK_PARALLEL or "WORLD_SIZE" in os.environ:
        return False
    if RANK_PARALLEL[name](cfg) < 2:
        return False  # nothing to share (no extra students, one member): one process, no ranks to start
    ws = Workspace(Path(cfg.work_dir).resolve())
    if (ws.stage(name) / ".done").exists() and not cfg.force:
        return False  # skipped anyway: no ranks to start
    check_needs(name, needs, ws)
    from torch.distributed.run import main as torchrun

    rank_cfg = copy.deepcopy(cfg)  # this process keeps its own stage list
    rank_cfg.stage = name
    omp = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = omp or "1"  # one thread per rank: the ranks share the cores
    # torchrun's agent leaves handlers that turn these signals into an exception. A worker that a later stage
    # forks (decoding, alignment) inherits them, and a SIGTERM that a process pool sends to end its workers is
    # then caught as a task error; the worker waits for more work and the stage hangs. So this process gets its
    # own handlers back once torchrun returns.
    handlers = {sig: signal.getsignal(sig) for sig in _TORCHRUN_SIGNALS}
    with tempfile.TemporaryDirectory(prefix="asr_kd_ranks_") as tmp:  # the ranks run on this machine
        config_file = Path(tmp) / "config.pkl"
        config_file.write_bytes(pickle.dumps(rank_cfg))
        os.environ[RANK_CONFIG_ENV] = str(config_file)
        try:
            torchrun(["--standalone", f"--nproc-per-node={cfg.procs}", "-m", "asr_kd.cli"])
        finally:  # the stages after it in this process start their own workers as before
            del os.environ[RANK_CONFIG_ENV]
            if omp is None:
                del os.environ["OMP_NUM_THREADS"]
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    return True


def stage_names(stage: str) -> list[str]:
    """The stages ``stage=`` asks for, in order: ``all``, one name, or names separated by commas; an unknown name
    fails before any stage runs."""
    names = list(STAGES) if stage == "all" else [n.strip() for n in stage.split(",") if n.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise InputError(f"unknown stage {', '.join(unknown) or repr(stage)}; stages: {', '.join(STAGES)}")
    return names


def _run(cfg: DictConfig) -> None:
    if cfg.stage == "list":
        print(stage_list())
        return
    ws = Workspace(Path(cfg.work_dir).resolve())
    names = [] if cfg.stage == "decode_data" else stage_names(cfg.stage)  # a typo fails before anything starts
    OmegaConf.to_object(cfg.jobs)  # and so does a bad jobs.* value
    if "WORLD_SIZE" in os.environ:  # a torchrun rank trains its share; the process that started it holds the executor
        _run_stages(cfg, ws, names)
        return
    with use_executor(OmegaConf.to_object(cfg.executor), ws.root):
        _run_stages(cfg, ws, names)


def _run_stages(cfg: DictConfig, ws: Workspace, names: list[str]) -> None:
    if cfg.stage == "decode_data":  # per data dir and re-runnable, so no .done marker
        if not cfg.decode_data.dir:
            raise InputError("stage=decode_data needs decode_data.dir=/path/to/kaldi/data/dir")
        decode_data_dir(cfg, ws, Path(cfg.decode_data.dir), list(cfg.decode_data.systems), cfg.decode_data.name)
        return
    for name in names:
        needs = stage_needs(name, cfg, ws)  # as it comes: decode's depend on what the stages before it trained
        with PeakMemory() as peak:  # this process and every worker and rank it starts for the stage
            as_jobs = train_as_jobs(cfg, name, needs)  # then the models are there: the stage evaluates them
            ran = (not as_jobs and _spread_over_ranks(cfg, name, needs)) or \
                run_stage(name, STAGES[name], cfg, ws, force=cfg.force and not as_jobs, needs=needs,
                          trains=stage_trains(name, ws)) is not None
        if ran and "WORLD_SIZE" not in os.environ:  # a rank sees only itself: the process that started it measures
            record_peak_memory(ws, name, peak.bytes)


def _run_reporting_input_errors(cfg: DictConfig) -> None:
    try:
        _run(cfg)
    except (InputError, JobFailed) as e:
        if cfg.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(INPUT_ERROR_STATUS if isinstance(e, InputError) else JOB_FAILED_STATUS)


@hydra.main(version_base="1.3", config_path=None, config_name="asr_kd")
def _hydra_main(cfg: DictConfig) -> None:
    _run_reporting_input_errors(cfg)


def _rank_main(config_file: Path) -> None:
    """A torchrun rank: the stage of the config its parent pickled (hydra's console log format, no composition)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    _run_reporting_input_errors(pickle.loads(config_file.read_bytes()))


def main() -> None:
    """Entry point (``asr-kd`` console script and ``python -m asr_kd.cli``)."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    if RANK_CONFIG_ENV in os.environ and "WORLD_SIZE" in os.environ:
        _rank_main(Path(os.environ[RANK_CONFIG_ENV]))
    else:
        _hydra_main()


if __name__ == "__main__":
    main()
