"""One model over two nodes: two torchrun agents of one rank each meet through torchrun's c10d rendezvous on
loopback, as two Slurm nodes meet on a cluster, and train the baseline with DDP (gloo). The model they write is the
one a single process trains on the same global batches, to float32 rounding."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_train_the_model_one_process_trains(ci_experiment_copy: Path) -> None:
    work = ci_experiment_copy
    env = dict(os.environ, KALDI_ROOT="/tmp", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # this checkout's code
    # SGD in float32 for a fixed two epochs: updates that two ranks must reproduce from their halves of each batch
    cli = ["-m", "asr_kd.cli", "--config-dir", str(REPO / "recipes" / "synth" / "conf"), "--config-name", "ci",
           "stage=baseline", "force=true", f"work_dir={work}", "device=cpu", "train.epochs=2",
           "train.early_stopping=false", "train.bf16=false", "train.optimizer=sgd", "train.num_threads=1"]
    model = work / "exp" / "dnn" / "baseline" / "model.pt"

    single = subprocess.run([sys.executable, *cli], cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    one_process = work / "one_process.pt"
    shutil.copy(model, one_process)

    endpoint = f"127.0.0.1:{_free_port()}"
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
         f"--rdzv-endpoint={endpoint}", "--rdzv-id=asr-kd-two-nodes", f"--rdzv-conf=is_host={'true' if node == 0 else 'false'}",
         "--max-restarts=0", *cli], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for node in range(2)]
    outputs = [agent.communicate(timeout=600)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(out[-2000:] for out in outputs)

    stage = work / "exp" / "stages" / "baseline"
    assert model.exists()  # force=true removed the one-process model: this one is the two nodes'
    assert (stage / "log.rank1.txt").exists() and (stage / ".done").exists()  # two ranks; rank 0 kept the books
    a, b = (torch.load(path, weights_only=True)["state_dict"] for path in (one_process, model))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
