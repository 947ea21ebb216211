"""Independent models as batch jobs (``jobs.backend=submitit``), with submitit's real executors on this machine.

The stages run their jobs on submitit's local cluster (each job a process of its own, no process group), and the
models they write are the bytes the shared CI experiment's torchrun ranks wrote. A job that raises is named with
its model and its log, the models that finished are kept, and a rerun submits jobs only for the others; a job that
dies without a result is submitted again. The Slurm script is the one submitit hands to sbatch (a stand-in sbatch
on the PATH records it): the partition, GPUs, CPUs, memory, time and array the config asks for.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import submitit
import torch

from asr_kd.nn.device import JOB_SHARE_ENV, launch_env
from asr_kd.nn.jobs import JobFailed, JobsConfig, executor, run_share_jobs, submit
from features.errors import InputError

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def _cli(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KALDI_ROOT="/tmp", PYTHONPATH=str(REPO))  # this checkout's code, in the jobs too
    return subprocess.run(
        [sys.executable, "-m", "asr_kd.cli", "--config-dir", str(REPO / "recipes" / "synth" / "conf"),
         "--config-name", "ci", f"work_dir={work}", "device=cpu", "jobs.backend=submitit", "jobs.cluster=local",
         "jobs.gpus_per_job=0", *args], cwd=work, capture_output=True, text=True, env=env, timeout=900)


def _job_logs(work: Path, stage: str) -> list[Path]:
    return sorted((work / "exp" / "jobs" / stage).glob("*_log.err"))


@pytest.mark.slow
def test_ensemble_members_trained_as_jobs_are_the_ranks_members_byte_for_byte(ci_experiment: Path,
                                                                                 ci_experiment_copy: Path) -> None:
    """The CI experiment trained its members on 2 torchrun ranks (procs=2); as 3 local jobs they are the same bytes,
    and the stage then evaluates them here as rank 0 did."""
    work = ci_experiment_copy
    result = _cli(work, "stage=ensemble", "force=true")  # force: the copy's members are removed first
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    members = [f"member{m:02d}" for m in range(3)]
    for member in members:
        ours, ranks = (root / "exp" / "dnn" / "ensemble" / member / "model.pt" for root in (work, ci_experiment))
        assert ours.read_bytes() == ranks.read_bytes(), member
    assert len(_job_logs(work, "ensemble")) == 3  # one job per member
    stage = work / "exp" / "stages" / "ensemble"
    assert (stage / ".done").exists()
    assert "ensemble: rank 0/1 trains members [] " in (stage / "log.txt").read_text()  # here it only evaluated
    summary = json.loads((stage / "summary.json").read_text())["summary"]
    original = json.loads((ci_experiment / "exp" / "stages" / "ensemble" / "summary.json").read_text())["summary"]
    assert summary["members"]["dev"]["members"] == pytest.approx(original["members"]["dev"]["members"])


@pytest.mark.slow
def test_a_failed_job_is_named_with_its_log_and_a_rerun_trains_only_what_did_not_finish(
        ci_experiment: Path, ci_experiment_copy: Path) -> None:
    """Two students, one job each: the soft student's job finds an unreadable checkpoint and raises; the error names
    that job, its student and its log, the hard student is kept, and the rerun submits one job, for the soft student
    only. Both students are the bytes the CI experiment's ranks trained."""
    work = ci_experiment_copy
    students = work / "exp" / "dnn" / "students"
    shutil.rmtree(students)
    (work / "exp" / "stages" / "students" / ".done").unlink()
    broken = students / "soft_1x16" / "checkpoint.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")

    failed = _cli(work, "stage=students")
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    error = failed.stderr.strip().splitlines()[-1]
    logs = _job_logs(work, "students")
    assert len(logs) == 2
    assert error.startswith("error: asr-kd-students: 1 of 2 job(s) failed: job ")
    assert "(exp/dnn/students/soft_1x16) raised " in error and "run the stage again" in error
    log = Path(error.split("its log: ")[1].split(". The models")[0])
    assert log in logs and "Traceback" in log.read_text()
    hard = students / "hard_1x16" / "model.pt"
    assert hard.exists() and not (students / "soft_1x16" / "model.pt").exists()
    assert not (work / "exp" / "stages" / "students" / ".done").exists()

    kept = hard.stat().st_mtime_ns
    broken.unlink()
    rerun = _cli(work, "stage=students")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert len(_job_logs(work, "students")) == 3  # one more job: the soft student's
    assert hard.stat().st_mtime_ns == kept  # neither trained again nor rewritten
    assert (work / "exp" / "stages" / "students" / ".done").exists()
    for name in ("hard_1x16", "soft_1x16"):
        ours, ranks = (root / "exp" / "dnn" / "students" / name / "model.pt" for root in (work, ci_experiment))
        assert ours.read_bytes() == ranks.read_bytes(), name


def _share_body(out: str) -> None:
    """A job's work, by its share: 0 finishes, 1 dies without a result the first time (as a pre-empted job does)
    and finishes when submitted again, 2 raises (and says so, once per run)."""
    share = launch_env()
    path = Path(out) / f"share{share.rank}"
    if share.rank == 1 and not path.exists():
        path.write_text("died\n")
        os._exit(9)
    if share.rank == 2:
        with path.open("a") as f:
            f.write("raised\n")
        raise RuntimeError("no data for share 2")
    path.write_text(f"{os.environ[JOB_SHARE_ENV]} threads={torch.get_num_threads()} alone={share.alone}\n")


def test_a_job_that_dies_is_submitted_again_and_one_that_raises_is_named(tmp_path: Path, monkeypatch,
                                                                         caplog) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 1)  # a dead job's result is not coming
    cfg = JobsConfig(backend="submitit", cluster="local", gpus_per_job=0, timeout_min=10, max_retries=1)
    labels = ["model a", "model b", "model c"]
    with caplog.at_level(logging.INFO), pytest.raises(JobFailed) as failed:
        run_share_jobs(functools.partial(_share_body, str(tmp_path)), [0, 1, 2], 3, labels, cfg,
                       tmp_path / "jobs", "asr-kd-test")
    message = str(failed.value)
    assert message.startswith("asr-kd-test: 1 of 3 job(s) failed: job ")
    assert "(model c) raised RuntimeError: no data for share 2; its log: " in message
    log = Path(message.split("its log: ")[1].split(". The models")[0])
    assert log.exists() and "no data for share 2" in log.read_text()
    assert (tmp_path / "share0").read_text() == "0/3 threads=1 alone=True\n"  # alone, one thread
    assert (tmp_path / "share1").read_text() == "1/3 threads=1 alone=True\n"  # finished when submitted again
    assert "(model b) ended without a result" in caplog.text and "submitting it again" in caplog.text
    assert (tmp_path / "share2").read_text() == "raised\n"  # a job that raised is not submitted again


def test_the_slurm_job_script_asks_for_what_the_config_says(tmp_path: Path, monkeypatch) -> None:
    """Three jobs go to Slurm as one array: submitit writes the script and hands it to sbatch (here a stand-in that
    keeps it); every resource of the config is an #SBATCH line, and the job runs this interpreter and code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$SCRIPT_COPY"\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SCRIPT_COPY", str(tmp_path / "script.sh"))
    cfg = JobsConfig(backend="submitit", cluster="slurm", partition="gpu", account="asr", gpus_per_job=1,
                     cpus_per_job=8, mem_gb=64, timeout_min=720, parallel=2, setup=["module load cuda/12.4"],
                     slurm_parameters={"constraint": "a100"})
    folder = tmp_path / "exp" / "jobs" / "ensemble"
    jobs = submit(executor(cfg, folder, "asr-kd-ensemble"), [_noop, _noop, _noop])
    assert [job.job_id for job in jobs] == ["4242_0", "4242_1", "4242_2"]
    script = (tmp_path / "script.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=asr", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB", "#SBATCH --time=720", "#SBATCH --nodes=1",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --array=0-2%2", "#SBATCH --job-name=asr-kd-ensemble",
                 "#SBATCH --constraint=a100", f"#SBATCH --error={folder}/%A_%a_0_log.err", "module load cuda/12.4",
                 f"export PYTHONPATH={REPO}"):
        assert line in script, (line, script)
    assert f"{sys.executable} -u -m submitit.core._submit {folder}" in script and "srun" in script
    assert jobs[1].paths.stderr == folder / "4242_1_0_log.err"  # the log a failure names


def _noop() -> None:
    """A job that does nothing (it is never run: the stand-in sbatch only keeps the script)."""


def test_a_bad_jobs_setting_is_one_line_before_any_stage_runs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="jobs.backend must be one of ranks, submitit, got 'slurm'"):
        JobsConfig(backend="slurm")
    with pytest.raises(InputError, match="jobs.cluster must be one of slurm, local, got 'sge'"):
        JobsConfig(cluster="sge")
    with pytest.raises(InputError, match=r"jobs.mem_gb=0: must be positive"):
        JobsConfig(mem_gb=0)
    with pytest.raises(InputError, match=r"jobs.max_retries=-1: must be 0 or more"):
        JobsConfig(max_retries=-1)
    assert "slurm_partition" not in JobsConfig().parameters("x")  # the site's default partition
    result = subprocess.run(
        [sys.executable, "-m", "asr_kd.cli", "--config-dir", str(REPO / "recipes" / "synth" / "conf"),
         "--config-name", "ci", f"work_dir={tmp_path}", "stage=ensemble", "jobs.backend=submit"],
        cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, KALDI_ROOT="/tmp", PYTHONPATH=str(REPO)),
        timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: jobs.backend must be one of ranks, submitit, got 'submit'"
