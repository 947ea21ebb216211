"""Units run locally or on a real Dask cluster (a LocalCluster of worker processes, or scheduler and worker
processes on loopback): results in unit order, a failing or killed unit named with its log, finished units kept
so that a rerun redoes only the rest, and an unreachable scheduler or a worker blind to the work dir reported in one
line before any unit is sent."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import restore_environ
from distributed import LocalCluster

from features.errors import InputError
from features.executor import (
    ClusterConfig,
    ExecutorConfig,
    LocalExecutor,
    Unit,
    UnitFailed,
    cached,
    connect,
    job_cluster,
)

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Square(Unit[tuple[int, int]]):
    """``(index, index**2)``; every attempt appends its pid to ``runs/<index>``. On its first attempt it may fail
    (``fail_first``) or kill the process running it (``kill_first``), after ``delay`` seconds."""

    index: int
    runs: Path
    delay: float = 0.0
    fail_first: bool = False
    kill_first: bool = False
    input_error: bool = False

    def describe(self) -> str:
        return f"number {self.index}"

    def run(self) -> tuple[int, int]:
        with open(self.runs / str(self.index), "a") as f:
            f.write(f"{os.getpid()}\n")
        first = len(attempts(self.runs, self.index)) == 1
        time.sleep(self.delay)
        if self.input_error:
            raise InputError("bad value", self.runs / "input.txt", 3)
        if first and self.fail_first:
            raise ValueError("the first attempt fails")
        if first and self.kill_first:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.index, self.index ** 2


def attempts(runs: Path, index: int) -> list[str]:
    path = runs / str(index)
    return path.read_text().split() if path.exists() else []


def _units(runs: Path, count: int, delay: dict[int, float] | None = None, **only: int) -> list[Square]:
    """``count`` units, unit ``i`` waiting ``delay[i]`` seconds; ``only`` names the unit a flag of :class:`Square`
    is set on (``fail_first=2``)."""
    runs.mkdir(exist_ok=True)
    return [Square(i, runs, (delay or {}).get(i, 0.0), **{flag: True for flag, unit in only.items() if unit == i})
            for i in range(count)]


def _dask(cluster: LocalCluster, work: Path):
    return connect(ExecutorConfig(backend="dask", scheduler=cluster.scheduler_address), work)


@pytest.mark.parametrize("nj", [1, 3])
def test_local_results_come_in_unit_order_whatever_finishes_first(tmp_path: Path, nj: int) -> None:
    units = _units(tmp_path / "runs", 8, delay={0: 0.3, 1: 0.2, 2: 0.1})
    assert list(LocalExecutor(nj).map(units, "test")) == [(i, i * i) for i in range(8)]


@pytest.mark.slow
def test_dask_results_come_in_unit_order_and_equal_the_local_ones(dask_cluster: LocalCluster, tmp_path: Path) -> None:
    units = _units(tmp_path / "runs", 8, delay={0: 0.3, 1: 0.2, 2: 0.1})
    dask = _dask(dask_cluster, tmp_path / "work")
    try:
        assert list(dask.map(units, "test")) == list(LocalExecutor(2).map(units, "test")) == \
            [(i, i * i) for i in range(8)]
    finally:
        dask.close()


def _failing_then_rerun(executor, runs: Path) -> None:
    """Unit 2 fails on its first attempt: the error names it and its log; a rerun computes the units whose results
    were not kept, and only those."""
    units = _units(runs, 6, fail_first=2, delay={2: 0.2})
    with pytest.raises(UnitFailed) as err:
        list(executor.map(units, "squares"))
    message = str(err.value)
    assert "unit 2 (number 2)" in message and "the first attempt fails" in message and "\n" not in message
    log = Path(message.split("its log: ")[1].split(";")[0])
    assert log.is_file() and "ValueError: the first attempt fails" in log.read_text()
    kept = {int(p.stem) for p in log.parent.glob("*.pkl")}
    assert {0, 1} <= kept and 2 not in kept
    assert list(executor.map(units, "squares")) == [(i, i * i) for i in range(6)]
    assert [len(attempts(runs, i)) for i in range(6)] == [1, 1, 2, 1, 1, 1]  # no finished unit computed again
    assert not log.parent.exists()  # once all are done, the kept results go


def test_a_failing_local_unit_is_named_and_a_rerun_redoes_only_the_unfinished(tmp_path: Path) -> None:
    _failing_then_rerun(LocalExecutor(2, tmp_path / "units"), tmp_path / "runs")


@pytest.mark.slow
def test_a_failing_dask_unit_is_named_and_a_rerun_redoes_only_the_unfinished(dask_cluster: LocalCluster,
                                                                              tmp_path: Path) -> None:
    dask = _dask(dask_cluster, tmp_path / "work")
    try:
        _failing_then_rerun(dask, tmp_path / "runs")
    finally:
        dask.close()


def test_a_units_input_error_keeps_its_file_and_line(tmp_path: Path) -> None:
    units = _units(tmp_path / "runs", 4, input_error=3)
    with pytest.raises(InputError, match="bad value") as err:
        list(LocalExecutor(2, tmp_path / "units").map(units, "squares"))
    assert (err.value.path, err.value.line) == (tmp_path / "runs" / "input.txt", 3)


def test_a_killed_local_worker_names_its_unit_and_a_rerun_finishes(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    units = _units(runs, 6, kill_first=3, delay={3: 0.5})
    executor = LocalExecutor(2, tmp_path / "units")
    with pytest.raises(UnitFailed, match=r"unit 3 \(number 3\) failed: the worker process running it died"):
        list(executor.map(units, "squares"))
    kept = {int(p.stem) for p in (tmp_path / "units").glob("*/*.pkl")}
    assert {0, 1, 2} <= kept and 3 not in kept
    ran_before = {i: len(attempts(runs, i)) for i in range(6)}
    assert list(executor.map(units, "squares")) == [(i, i * i) for i in range(6)]
    assert all(len(attempts(runs, i)) == ran_before[i] + (i not in kept) for i in range(6))


@pytest.mark.slow
def test_a_dask_worker_killed_mid_list_is_replaced_and_the_list_finishes(dask_cluster: LocalCluster,
                                                                         tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    units = _units(runs, 6, kill_first=1, delay={1: 0.3})
    dask = _dask(dask_cluster, tmp_path / "work")
    saved = dict(os.environ)
    try:
        assert list(dask.map(units, "squares")) == [(i, i * i) for i in range(6)]
    finally:
        dask.close()
        restore_environ(saved)  # the nanny that started a new worker set its thread variables here too
    pids = attempts(runs, 1)
    assert len(pids) == 2 and pids[0] != pids[1]  # killed, then run again by another worker process
    assert all(len(attempts(runs, i)) == 1 for i in range(6) if i != 1)  # kept results are never computed again


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_is_one_line_naming_it(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(InputError) as err:
        connect(ExecutorConfig(backend="dask", scheduler=address, connect_timeout=1), tmp_path)
    assert str(err.value).startswith(f"cannot reach the Dask scheduler at {address}") and "\n" not in str(err.value)
    assert time.monotonic() - started < 20
    with pytest.raises(InputError, match="no Dask scheduler file") as err:
        connect(ExecutorConfig(backend="dask", scheduler=str(tmp_path / "scheduler.json")), tmp_path)
    assert err.value.path == tmp_path / "scheduler.json"


def test_the_command_line_reports_an_unreachable_scheduler_before_any_stage(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "asr_kd.cli", "--config-dir", str(REPO / "recipes" / "synth" / "conf"),
         "--config-name", "ci", "stage=mono", f"work_dir={tmp_path}", "executor.backend=dask",
         f"executor.scheduler={address}", "executor.connect_timeout=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, KALDI_ROOT="/tmp", PYTHONPATH=str(REPO)))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: cannot reach the Dask scheduler at {address}"), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "exp" / "stages" / "mono").exists()  # no stage started


def _private_mount(path: Path) -> list[str]:
    """A command prefix whose process sees an empty filesystem at ``path`` (a mount namespace of its own)."""
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    return ["unshare", "--mount", *user, "sh", "-c", f'mount -t tmpfs none "{path}" && exec "$0" "$@"']


@pytest.mark.slow
def test_a_worker_that_does_not_see_the_work_dir_is_found_before_any_unit(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    scheduler_file = tmp_path / "scheduler.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), KALDI_ROOT="/tmp")
    dask = str(Path(sys.executable).parent / "dask")
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(scheduler_file)], env=env, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(300):
            if scheduler_file.exists():
                break
            time.sleep(0.1)
        procs.append(subprocess.Popen([*_private_mount(work), dask, "worker", "--scheduler-file", str(scheduler_file),
                                       "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                      env=env, stderr=subprocess.DEVNULL))
        with pytest.raises(InputError, match="does not see the work dir at the same path") as err:
            connect(ExecutorConfig(backend="dask", scheduler=str(scheduler_file), worker_timeout=60), work)
        assert err.value.path == work.resolve()
        assert not list((work / "exp" / "units").glob("*.pkl"))  # nothing was sent
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


def _read_count(path: Path) -> int:
    with open(path.parent / "reads", "a") as f:
        f.write("x")
    return int(path.read_text())


def test_cached_loads_a_file_once_until_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "n.txt"
    path.write_text("1")
    assert cached(_read_count, path) == cached(_read_count, path) == 1
    path.write_text("22")  # rewritten in place: read again
    assert cached(_read_count, path) == 22
    assert (tmp_path / "reads").read_text() == "xx"


def test_a_slurm_cluster_runs_single_thread_workers_of_this_code(tmp_path: Path) -> None:
    """The batch job dask-jobqueue would submit: the queue, cores, memory and time asked for, one single-thread
    worker per core, this checkout on the workers' path, logs under the work dir."""
    cfg = ClusterConfig(system="slurm", queue="cpu", account="asr", cores=4, memory="16GB", walltime="02:00:00",
                        job_directives=["--constraint=avx512"])
    cluster = job_cluster(cfg, tmp_path)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p cpu", "#SBATCH -A asr", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=15G",
                 "#SBATCH -t 02:00:00", "#SBATCH --constraint=avx512", f"export PYTHONPATH={REPO}",
                 f"#SBATCH -e {tmp_path / 'exp' / 'units' / 'jobs'}"):
        assert line in script, (line, script)
    assert "--nworkers 4" in script and "--nthreads 1" in script and sys.executable in script
    with pytest.raises(InputError, match="executor.cluster.system must be one of slurm, sge, pbs"):
        job_cluster(ClusterConfig(system="lsf"), tmp_path)
