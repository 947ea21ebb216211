"""Independent models as batch jobs: one job per model, through submitit, on Slurm (or as processes on this machine).

A stage that trains independent models (ensemble members, the temperature sweep's students, the 3% models, extra
students) can send each model out as a batch job of its own, on a GPU of its own, instead of dealing the models out
to torchrun ranks. The jobs never meet: no process group, no barrier, so a model that trains fast does not wait for a
slow one, a job that dies takes no other with it, and each job starts as soon as the queue has a GPU for it. The
process that submitted them waits for all of them and then joins their models (the pipeline runs the stage once
more, in that process: it finds every model trained and evaluates them, as rank 0 does after the ranks).

Where a model trains never changes it: a job is its model's share of the stage as a torchrun rank is
(:data:`asr_kd.nn.device.JOB_SHARE_ENV`, share ``i`` of ``N`` alone), computing with one CPU thread as a rank does,
so its model file holds the bytes that the ranks, or one process with one thread, write.

Faults lose nothing. A finished model (:func:`asr_kd.nn.train.trained`) is never trained again, so jobs are
submitted only for the models that are not finished, and an unfinished one resumes from its last epoch's
checkpoint. A job that ended without a result (pre-empted, killed, out of memory or time, its node lost) is
submitted again, up to ``max_retries`` times; a job whose training raised is not (it would raise again). Then the
error names every job that failed, its model, what went wrong and its log.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asr_kd.nn.device import JOB_SHARE_ENV
from features.errors import InputError

logger = logging.getLogger(__name__)

BACKENDS = ("ranks", "submitit")
CLUSTERS = ("slurm", "local")


@dataclass
class JobsConfig:
    """Where the stages of independent models train them: torchrun ranks (``backend=ranks``, ``procs`` of them on
    this machine or across nodes) or one batch job per model (``backend=submitit``) on Slurm (``cluster=slurm``), or
    as processes on this machine (``cluster=local``: for trying a cluster config out, and for the tests). Each job
    asks for ``gpus_per_job`` GPUs (its model trains on the first), ``cpus_per_job`` CPUs (one computes; the others
    read the features) and ``mem_gb`` of memory for ``timeout_min`` minutes, in ``partition`` charged to
    ``account``. ``parallel`` caps how many run at once (0: as many as the queue allows); ``setup`` are shell lines
    the job script runs before the job (``module load cuda``...), ``slurm_parameters`` any other sbatch option
    (``{constraint: a100, gres: "gpu:a100:1"}``)."""

    backend: str = "ranks"  # ranks | submitit
    cluster: str = "slurm"  # slurm | local
    folder: str = ""  # the jobs' scripts, pickles and logs, a directory per stage; empty: <work_dir>/exp/jobs
    partition: str = ""  # empty: the cluster's default partition
    account: str = ""
    gpus_per_job: int = 1
    cpus_per_job: int = 4
    mem_gb: float = 32.0
    timeout_min: int = 1440
    parallel: int = 0
    max_retries: int = 1  # submissions again of a job that ended without a result (pre-empted, killed, timed out)
    setup: list[str] = field(default_factory=list)
    slurm_parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"jobs.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.cluster not in CLUSTERS:
            raise InputError(f"jobs.cluster must be one of {', '.join(CLUSTERS)}, got {self.cluster!r}")
        counts = {"gpus_per_job": self.gpus_per_job, "parallel": self.parallel, "max_retries": self.max_retries}
        negative = [f"jobs.{key}={value}" for key, value in counts.items() if value < 0]
        if negative:
            raise InputError(f"{', '.join(negative)}: must be 0 or more")
        sizes = {"cpus_per_job": self.cpus_per_job, "mem_gb": self.mem_gb, "timeout_min": self.timeout_min}
        small = [f"jobs.{key}={value}" for key, value in sizes.items() if value <= 0]
        if small:
            raise InputError(f"{', '.join(small)}: must be positive")

    def parameters(self, name: str) -> dict[str, Any]:
        """The job's resources as submitit's ``AutoExecutor.update_parameters`` takes them: the shared ones, and the
        Slurm-only ones prefixed ``slurm_`` (which the local cluster ignores). A Slurm job runs this interpreter with
        this code on its path whatever environment the site gives a job (the checkout and its environment on the
        shared filesystem); a local one inherits this process's."""
        code = str(Path(__file__).resolve().parent.parent.parent)
        path = os.pathsep.join(dict.fromkeys(filter(None, [code, *os.environ.get("PYTHONPATH", "").split(os.pathsep)])))
        prologue = [f"export PYTHONPATH={path}", f"export KALDI_ROOT={os.environ.get('KALDI_ROOT', '/tmp')}"]
        params: dict[str, Any] = {"name": name, "timeout_min": int(self.timeout_min), "nodes": 1,
                                  "tasks_per_node": 1, "cpus_per_task": self.cpus_per_job, "mem_gb": self.mem_gb}
        if self.gpus_per_job:
            params["gpus_per_node"] = self.gpus_per_job
        slurm = {"partition": self.partition, "account": self.account, "array_parallelism": self.parallel,
                 "setup": prologue + list(self.setup), "additional_parameters": dict(self.slurm_parameters)}
        params.update({f"slurm_{key}": value for key, value in slurm.items() if value})
        if self.setup:
            params["local_setup"] = list(self.setup)
        return params


class JobFailed(RuntimeError):
    """Jobs that failed, each with its model, what went wrong and its log."""


@dataclass(frozen=True)
class ShareJob:
    """What one job runs: ``train()`` as share ``share`` of ``count`` alone (:data:`JOB_SHARE_ENV`), with one CPU
    thread as a torchrun rank has, its progress logged to the job's log."""

    train: Callable[[], None]
    share: int
    count: int

    def __call__(self) -> None:
        os.environ[JOB_SHARE_ENV] = f"{self.share}/{self.count}"
        torch.set_num_threads(1)
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        logger.info("job: share %d of %d", self.share, self.count)
        self.train()


def executor(cfg: JobsConfig, folder: Path, name: str) -> Any:
    """A submitit executor for ``cfg.cluster`` writing under ``folder``, its jobs named ``name``, with ``cfg``'s
    resources."""
    import submitit

    if cfg.cluster == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
        raise InputError("jobs.cluster=slurm submits jobs with sbatch (and runs them with srun), which are not on "
                         "this machine's PATH: run the recipe on a machine that submits Slurm jobs, or use "
                         "jobs.cluster=local")
    ex = submitit.AutoExecutor(folder=folder, cluster=cfg.cluster)
    ex.update_parameters(**cfg.parameters(name))
    return ex


def submit(ex: Any, calls: Sequence[Callable[[], None]]) -> list:
    """Submit every call as a job of its own; on Slurm all of them as one job array."""
    with ex.batch():
        return [ex.submit(call) for call in calls]


def run_share_jobs(train: Callable[[], None], shares: Sequence[int], count: int, labels: Sequence[str],
                   cfg: JobsConfig, folder: Path, name: str) -> None:
    """Run ``train`` as a job for each of ``shares`` (of ``count``; ``labels[i]`` says what share ``i`` trains) and
    wait for all of them, submitting a job that ended without a result again (``cfg.max_retries``); raise
    :class:`JobFailed` naming every job that failed, with its log. Jobs still running when this process is
    interrupted are cancelled, so that a run started again does not train a model twice at once."""
    from submitit.core.utils import FailedJobError
    from submitit.helpers import as_completed

    ex = executor(cfg, folder, name)
    pending, failed = list(shares), []
    for attempt in range(cfg.max_retries + 1):
        jobs = submit(ex, [ShareJob(train, share, count) for share in pending])
        share_of = {id(job): share for job, share in zip(jobs, pending)}
        logger.info("%s: %d job(s) submitted (%s cluster, logs in %s): %s", name, len(jobs), cfg.cluster, folder,
                    ", ".join(f"{job.job_id} {labels[share]}" for job, share in zip(jobs, pending)))
        again = []
        try:
            for job in as_completed(jobs, poll_frequency=2):
                share, error = share_of[id(job)], job.exception()
                if error is None:
                    logger.info("%s: job %s (%s) finished", name, job.job_id, labels[share])
                elif not isinstance(error, FailedJobError) and attempt < cfg.max_retries:  # no result: died
                    logger.warning("%s: job %s (%s) ended without a result (%s); submitting it again; its log: %s",
                                   name, job.job_id, labels[share], job.state, job.paths.stderr)
                    again.append(share)
                else:
                    failed.append(f"job {job.job_id} ({labels[share]}) {_what_failed(job, error)}; "
                                  f"its log: {job.paths.stderr}")
        except BaseException:
            for job in jobs:
                if not job.done():
                    job.cancel(check=False)
            raise
        pending = again
        if not pending:
            break
    if failed:
        raise JobFailed(f"{name}: {len(failed)} of {len(shares)} job(s) failed: " + "; ".join(failed) +
                        ". The models that finished are kept: run the stage again to train the others")


def _what_failed(job: Any, error: Exception) -> str:
    """What went wrong, on one line: the exception the job raised (its traceback's last frame left out), or how the
    job ended without one."""
    from submitit.core.utils import FailedJobError

    if not isinstance(error, FailedJobError):
        return f"ended without a result (state {job.state})"
    parts = str(error).split("----------------------")
    lines = [line for line in (parts[1] if len(parts) > 2 else str(error)).splitlines() if line.strip()]
    frames = [i for i, line in enumerate(lines) if line.startswith(" ")]
    raised = " ".join(line.strip() for line in lines[frames[-1] + 1 if frames else 0:])
    return f"raised {raised[:400]}"
