"""Where this process computes and who it is in a torchrun job: the one place that decides device and rank.

Every stage, trainer and benchmark asks :func:`select_device` and :func:`dist_context` instead of reading
``LOCAL_RANK``/``WORLD_SIZE`` or calling ``torch.cuda.is_available()`` itself, so the placement rules live here:

* ``auto`` means this rank's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else the CPU; ``cuda`` means
  ``cuda:LOCAL_RANK``; anything else (``cpu``, ``cuda:1``) is taken literally.
* On a GPU, :func:`torch.cuda.set_device` is called before anything is allocated, so that NCCL, the caching
  allocator and any ``tensor.cuda()`` without an index land on this rank's GPU and not all on ``cuda:0``.
* Under torchrun (``WORLD_SIZE`` > 1) :func:`dist_context` joins the process group once per process: NCCL
  when this rank computes on a GPU, gloo otherwise, with :data:`RANK_WAIT` as the collectives' timeout.
* A batch job that trains one share of independent models (:mod:`asr_kd.nn.jobs`, ``ASR_KD_JOB_SHARE=i/N``) is
  share ``i`` of ``N`` *alone*: it deals itself the share a rank ``i`` of ``N`` would train, but it joins no process
  group and meets no other process, and it is not the one that writes shared outputs: the process that submitted
  the jobs reads every share once all jobs have finished.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

JOB_SHARE_ENV = "ASR_KD_JOB_SHARE"
"""Set to ``i/N`` in a batch job that trains share ``i`` of ``N`` of a stage's independent models alone."""

RANK_WAIT = timedelta(hours=24)
"""How long a rank waits at a barrier for the others. Ranks train different models (members, temperatures,
students) and meet at the stage's end, so one may wait for the others' whole share: with the research config
on a 2-core AVX2-only CPU, ranks finish their students about as far apart as torch's default timeout (30 min).
A rank that dies is caught by torchrun, which stops the job, not by this timeout."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun), or the share of a batch
    job that trains independent models ``alone`` (no process group, no one to meet)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    alone: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the shared outputs (model files, summaries, reports); a batch job writes only its own
        models, and the process that submitted it writes the rest."""
        return self.rank == 0 and not self.alone

    def share(self, items: Iterable[T]) -> list[T]:
        """This rank's round-robin share of independent jobs (models to train): every job on exactly one rank."""
        return list(items)[self.rank::self.world]

    def barrier(self) -> None:
        if self.world > 1 and not self.alone:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks in place (a no-op in a single process and in a batch job); returns ``t``."""
        if self.world > 1 and not self.alone:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def launch_env() -> DistContext:
    """Rank, world size and local rank as torchrun sets them (0, 1, 0 without torchrun), or a batch job's share
    (:data:`JOB_SHARE_ENV`: on its own GPU, ``cuda:0`` of those the job sees); joins nothing."""
    share = os.environ.get(JOB_SHARE_ENV)
    if share:
        index, count = (int(n) for n in share.split("/"))
        return DistContext(index, count, 0, alone=True)
    return DistContext(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                       int(os.environ.get("LOCAL_RANK", "0")))


def select_device(name: str = "auto") -> torch.device:
    """The device this process computes on (see the module docstring); selects the GPU before any tensor."""
    local_rank = launch_env().local_rank
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={name!r} asked for, but CUDA is not available on this machine")
        torch.cuda.set_device(device)
    return device


def dist_context(device: torch.device) -> DistContext:
    """Join the torchrun process group (NCCL for a GPU rank, gloo for a CPU rank) once; a no-op without torchrun
    and in a batch job."""
    env = launch_env()
    if env.world <= 1 or env.alone:
        return env
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=RANK_WAIT)
    return DistContext(dist.get_rank(), dist.get_world_size(), env.local_rank)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (timings must not stop the clock before the kernels ran); no-op on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matrix products in hardware: CUDA GPUs that support it, and CPUs with
    AVX512-BF16 or AMX. Elsewhere bf16 is emulated, slower than float32, so callers fall back to float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def uses_bf16(device: torch.device, bf16: bool) -> bool:
    """Whether a step asked for bf16 (``train.bf16``) runs in it on ``device``: only where bf16 is native."""
    return bf16 and bf16_native(device)


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """bf16 autocast for a training or inference step when asked for and native on ``device``, else a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, bf16))
