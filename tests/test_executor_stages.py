"""The CPU stages run through a real Dask cluster (a LocalCluster of two single-thread worker processes) write the
bytes the local run of the shared CI experiment wrote: the synthesized corpus (``corpus``), the features, GMM
training and alignment (``mono``, ``tri``), the GMM's decodes (``graph``) and the DNN's (``decode``)."""
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
CPU_STAGES = ("features", "mono", "tri", "graph", "decode")
SYSTEMS = ("gmm", "baseline")  # the graph stage decodes the GMM; the decode stage here the baseline DNN
TIMING = ("seconds", "real_time_factor", "rtf", "frames_per_s")


def _without_timing(value: object) -> object:
    """A JSON value with every timing field left out (they differ from run to run)."""
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _outputs(root: Path, *roots: Path) -> dict[str, object]:
    """Every file the CPU stages write, by path under the work dir: JSON without timings, other files as bytes
    with the work dirs' paths (which scp files hold: ``roots`` too, where a copy's files still name the original)
    written as ``<work>``."""
    dirs = [root / "data" / "fbank", root / "data" / "mfcc"]
    dirs += [root / "exp" / name for name in ("mono", "tri1", "tri1_ali")]
    dirs += [root / "exp" / "decode" / system for system in SYSTEMS]
    out: dict[str, object] = {}
    for path in sorted(p for d in dirs for p in d.rglob("*") if p.is_file()):
        key = str(path.relative_to(root))
        if path.suffix == ".json" or path.name.endswith(".jsonl"):
            lines = path.read_text().splitlines() if path.name.endswith(".jsonl") else [path.read_text()]
            out[key] = [_without_timing(json.loads(line)) for line in lines]
        else:
            data = path.read_bytes()
            for where in (root, *roots):
                data = data.replace(str(where).encode(), b"<work>")
            out[key] = data
    return out


def _task_names(dask_scheduler) -> list[str]:
    """The names of the tasks the scheduler has run (a list of units each: ``EM_pass``, ``align``, ``decode``)."""
    return sorted(dask_scheduler.task_prefixes)


def _cli(work: Path, cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asr_kd.cli", "--config-dir", str(REPO / "recipes" / "synth" / "conf"),
         "--config-name", "ci", f"work_dir={work}", "executor.backend=dask",
         f"executor.scheduler={cluster.scheduler_address}", *args],
        cwd=work, capture_output=True, text=True, timeout=900, env=dict(os.environ, KALDI_ROOT="/tmp",
                                                                        PYTHONPATH=str(REPO)))


@pytest.mark.slow
def test_the_corpus_synthesized_through_dask_is_the_local_ones(ci_experiment: Path, dask_cluster: LocalCluster,
                                                                tmp_path: Path) -> None:
    result = _cli(tmp_path, dask_cluster, "stage=corpus")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    local, dask = (json.loads((root / "data" / "manifest.json").read_text()) for root in (ci_experiment, tmp_path))
    assert dask["sha256"] == local["sha256"] and len(local["sha256"]) > 50  # every wav and table, byte for byte
    assert dask["summary"] == local["summary"]


@pytest.mark.slow
def test_the_cpu_stages_through_dask_write_the_local_runs_bytes(ci_experiment: Path, ci_experiment_copy: Path,
                                                                dask_cluster: LocalCluster) -> None:
    work = ci_experiment_copy
    assert Path(decoding.__file__).resolve().is_relative_to(REPO)  # the workers import this checkout's code
    result = _cli(work, dask_cluster, f"stage='{','.join(CPU_STAGES)}'", "force=true", "decode.systems=[baseline]")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with Client(dask_cluster) as client:  # the units ran on the cluster's workers, not in the command's process
        ran = client.run_on_scheduler(_task_names)
    assert {"features", "EM_pass", "align", "decode"} <= set(ran), ran
    local, dask = _outputs(ci_experiment), _outputs(work, ci_experiment)
    assert sorted(local) == sorted(dask) and len(local) > 20
    differ = [key for key in local if local[key] != dask[key]]
    assert not differ, differ
    assert not [p for p in (work / "exp" / "units").rglob("*") if p.is_file()]  # kept results go once all are done
