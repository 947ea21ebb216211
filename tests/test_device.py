"""Device and rank decisions (asr_kd.nn.device): where a process computes, which GPU it selects, when bf16 is used."""
from __future__ import annotations

import datetime

import pytest
import torch

from asr_kd.nn import device as dev


@pytest.fixture()
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """Pretend CUDA is available; record every torch.cuda.set_device call."""
    selected: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: selected.append(torch.device(d)))
    return selected


@pytest.mark.parametrize("local_rank", ["0", "3"])
def test_auto_and_cuda_pick_this_ranks_gpu_and_select_it(fake_gpus, monkeypatch, local_rank):
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    for name in ("auto", "cuda"):
        assert dev.select_device(name) == torch.device("cuda", int(local_rank))
    assert fake_gpus == [torch.device("cuda", int(local_rank))] * 2  # set_device before any tensor, every time


def test_explicit_devices_are_taken_literally(fake_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dev.select_device("cuda:0") == torch.device("cuda", 0)
    assert dev.select_device("cpu") == torch.device("cpu")
    assert fake_gpus == [torch.device("cuda", 0)]


def test_without_cuda_auto_is_the_cpu_and_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert dev.select_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        dev.select_device("cuda")


def test_launch_env_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = dev.launch_env()
    assert (ctx.rank, ctx.world, ctx.local_rank, ctx.is_main) == (5, 8, 1, False)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var)
    assert dev.dist_context(torch.device("cpu")) == dev.DistContext(0, 1, 0)  # no torchrun: nothing to join


def test_ranks_wait_for_each_other_longer_than_torchs_default(monkeypatch):
    """Ranks meet at a stage's end after training different models: a wait of hours must not time out."""
    joined = {}
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dev.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dev.dist, "init_process_group", lambda **kw: joined.update(kw))
    monkeypatch.setattr(dev.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dev.dist, "get_world_size", lambda: 2)
    assert dev.dist_context(torch.device("cpu")) == dev.DistContext(1, 2, 1)
    assert joined["backend"] == "gloo"
    assert joined["timeout"] >= datetime.timedelta(hours=12)  # torch's default is 30 min


def test_bf16_autocast_only_where_native(monkeypatch):
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=native: n)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert dev.bf16_native(torch.device("cpu")) is native
        with dev.autocast(torch.device("cpu"), bf16=True):
            y = x @ w
        assert y.dtype == (torch.bfloat16 if native else torch.float32)  # fp32 fallback where emulated
        with dev.autocast(torch.device("cpu"), bf16=False):
            assert (x @ w).dtype == torch.float32


def test_share_gives_every_job_to_exactly_one_rank() -> None:
    jobs = [f"job{i}" for i in range(7)]
    shares = [dev.DistContext(rank, 3).share(jobs) for rank in range(3)]
    assert sorted(sum(shares, [])) == sorted(jobs) and shares[0] == ["job0", "job3", "job6"]
    assert dev.DistContext().share({"a": 1, "b": 2}) == ["a", "b"]  # a mapping's keys, as the students config
