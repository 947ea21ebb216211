"""The CPU stages run through a real Dask cluster (a LocalCluster of two single-thread worker processes) write the
bytes the local run of the shared CI experiment wrote: GMM training and alignment (``mono``, ``tri``), the GMM's
decodes (``graph``) and the DNN's (``decode``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

import decoding

REPO = Path(__file__).resolve().parent.parent
CPU_STAGES = ("mono", "tri", "graph", "decode")
SYSTEMS = ("gmm", "baseline")  # the graph stage decodes the GMM; the decode stage here the baseline DNN
TIMING = ("seconds", "real_time_factor", "frames_per_s")


def _without_timing(value: object) -> object:
    """A JSON value with every timing field left out (they differ from run to run)."""
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _outputs(root: Path) -> dict[str, object]:
    """Every file the CPU stages write, by path under the work dir: JSON without timings, other files as bytes
    with the work dir's own path (which scp files hold) written as ``<work>``."""
    dirs = [root / "exp" / name for name in ("mono", "tri1", "tri1_ali")]
    dirs += [root / "exp" / "decode" / system for system in SYSTEMS]
    out: dict[str, object] = {}
    for path in sorted(p for d in dirs for p in d.rglob("*") if p.is_file()):
        key = str(path.relative_to(root))
        if path.suffix == ".json" or path.name.endswith(".jsonl"):
            lines = path.read_text().splitlines() if path.name.endswith(".jsonl") else [path.read_text()]
            out[key] = [_without_timing(json.loads(line)) for line in lines]
        else:
            out[key] = path.read_bytes().replace(str(root).encode(), b"<work>")
    return out


def _task_names(dask_scheduler) -> list[str]:
    """The names of the tasks the scheduler has run (a list of units each: ``EM_pass``, ``align``, ``decode``)."""
    return sorted(dask_scheduler.task_prefixes)


@pytest.mark.slow
def test_the_cpu_stages_through_dask_write_the_local_runs_bytes(ci_experiment: Path,
                                                                ci_experiment_copy: Path) -> None:
    work = ci_experiment_copy
    assert Path(decoding.__file__).resolve().is_relative_to(REPO)  # the workers import this checkout's code
    with LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        result = subprocess.run(
            [sys.executable, "-m", "asr_kd.cli", "--config-dir", str(REPO / "recipes" / "synth" / "conf"),
             "--config-name", "ci", f"stage='{','.join(CPU_STAGES)}'", "force=true", f"work_dir={work}",
             "decode.systems=[baseline]", "executor.backend=dask", f"executor.scheduler={cluster.scheduler_address}"],
            cwd=work, capture_output=True, text=True, timeout=900,
            env=dict(os.environ, KALDI_ROOT="/tmp", PYTHONPATH=str(REPO)))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        with Client(cluster) as client:  # the units ran on the cluster's workers, not in the command's process
            ran = client.run_on_scheduler(_task_names)
    assert {"EM_pass", "align", "decode"} <= set(ran), ran
    local, dask = _outputs(ci_experiment), _outputs(work)
    assert sorted(local) == sorted(dask) and len(local) > 20
    differ = [key for key in local if local[key] != dask[key]]
    assert not differ, differ
    assert not [p for p in (work / "exp" / "units").rglob("*") if p.is_file()]  # kept results go once all are done
