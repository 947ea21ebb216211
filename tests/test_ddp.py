"""Data-parallel training (torch.distributed, gloo on CPU) must give what one process gives on the same global batch."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from asr_kd.nn.frames import FrameSet
from asr_kd.nn.model import PRESETS
from asr_kd.nn.train import TrainConfig, train

TINY = dataclasses.replace(PRESETS["tiny"], left_context=2, right_context=1, feat_dim=8)
CLASSES = 5
# 49-frame global batches split 25 + 24 over two ranks, and the last batch of an epoch (33 frames) 17 + 16:
# unequal shares on purpose, since the loss scaling must make them add up to one process's mean
TRAIN_CFG = TrainConfig(batch_size=49, epochs=2, lr=1e-2, optimizer="sgd", momentum=0.9, weight_decay=1e-4,
                        early_stopping=False, progress=False, num_threads=1, seed=11,
                        bf16=False)  # the equivalence is one of float32 arithmetic


def structured_set(seed: int) -> FrameSet:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 30, (12,), generator=g)
    x = torch.randn(int(lengths.sum()), TINY.feat_dim, generator=g)
    y = ((x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()).clamp(max=CLASSES - 1)
    return FrameSet.from_tensors(x, y, [f"u{i}" for i in range(12)], lengths, left=TINY.left_context,
                                 right=TINY.right_context)


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    try:
        train(TINY, TRAIN_CFG, structured_set(0), structured_set(1), Path(out_dir), CLASSES)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    train_set = structured_set(0)
    assert train_set.num_frames % TRAIN_CFG.batch_size == 33
    single = train(TINY, TRAIN_CFG, train_set, structured_set(1), tmp_path / "single", CLASSES)
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)

    a = torch.load(single.model_path, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    ha = json.loads(single.metrics_path.read_text())["epochs"]
    hb = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["epochs"]
    for ra, rb in zip(ha, hb, strict=True):
        # train metrics are all-reduced over ranks and dev accuracy is computed on shards: both must add up
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-4 and abs(ra["dev_acc"] - rb["dev_acc"]) < 1e-6


def _numerics_rank(rank: int, world: int, port: int, out_dir: str, speedups: tuple[float, ...]) -> None:
    """One rank deciding an open ``bf16`` setting; each rank would measure its own speed-up."""
    from asr_kd.nn import numerics
    from asr_kd.nn.device import dist_context
    from asr_kd.nn.train import with_numerics

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.cpu._is_avx512_bf16_supported = lambda: True
    numerics.measure_bf16_speedup = lambda *a, **k: speedups[rank]
    try:
        cpu = torch.device("cpu")
        cfg = with_numerics(dataclasses.replace(TRAIN_CFG, bf16=None), TINY, CLASSES, cpu, dist_ctx=dist_context(cpu))
        Path(out_dir, f"rank{rank}").write_text(json.dumps(cfg.bf16))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_ranks_of_one_model_train_in_rank_0s_choice(tmp_path: Path) -> None:
    """Under DDP the ranks of one model must compute alike: rank 0's measured choice holds on every rank, even
    where another rank would have measured the other way."""
    for speedups, expected in (((1.5, 0.5), True), ((0.5, 1.5), False)):
        mp.spawn(_numerics_rank, args=(2, _free_port(), str(tmp_path), speedups), nprocs=2, join=True)
        assert [json.loads((tmp_path / f"rank{r}").read_text()) for r in range(2)] == [expected, expected]
