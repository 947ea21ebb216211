"""Fixtures shared across test files.

``ci_experiment`` trains one whole CI-sized experiment (``recipes/synth/run.sh --config ci``: corpus to report,
a few minutes on a CPU) once per pytest run, for every test that needs trained systems. Tests that write into
an experiment take a private copy (``ci_experiment_copy``), so they neither disturb each other nor depend on order.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run_recipe(recipe: str, work_dir: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = dict(os.environ, ASR_KD_VENV=str(Path(sys.executable).parent.parent), KALDI_ROOT="/tmp")
    return subprocess.run(["bash", str(REPO / "recipes" / recipe / "run.sh"), "--work-dir", str(work_dir), *args],
                          check=False, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def run_recipe() -> Callable[..., subprocess.CompletedProcess]:
    """``run_recipe(recipe, work_dir, *args)``: ``bash recipes/<recipe>/run.sh --work-dir work_dir args...`` with
    this interpreter's virtual environment, output captured."""
    return _run_recipe


@pytest.fixture(scope="session")
def ci_experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Work dir of a finished CI-sized synth experiment (data/ and exp/, every stage done). Treat as read-only."""
    work = tmp_path_factory.mktemp("ci_experiment") / "work"
    result = _run_recipe("synth", work, "--config", "ci")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return work


def restore_environ(saved: dict[str, str]) -> None:
    """Put this process's environment back as ``saved`` was."""
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator:
    """A real Dask cluster on this machine for a test module: a scheduler and two worker processes of one thread.

    Starting a worker, Dask's nanny sets the workers' thread variables (``OMP_NUM_THREADS=1`` ...) in this process's
    environment too: it is put back, so that later commands the tests start compute with this machine's threads."""
    from distributed import LocalCluster

    saved = dict(os.environ)
    try:
        with LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
            restore_environ(saved)
            yield cluster
    finally:
        restore_environ(saved)


@pytest.fixture()
def ci_experiment_copy(ci_experiment: Path, tmp_path: Path) -> Path:
    """A private copy of ``ci_experiment`` to write into (its scp files still point at the original's arks and
    audio, which are only read)."""
    return Path(shutil.copytree(ci_experiment, tmp_path / "work", symlinks=True))
