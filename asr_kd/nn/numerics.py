"""Which arithmetic training runs in: float32, or bf16 autocast, chosen by what is faster *here*.

A CPU that computes bf16 natively is not always faster in it (``python -m asr_kd.bench train`` measures both): on
a 2-core AMD EPYC with AVX512-BF16, the tiny config's 3x192 training step runs well over 1.2x faster under bf16
autocast; on a 2-core Intel Xeon with AVX512-BF16 and no AMX it runs at about two thirds of float32's speed. The
CPU flag cannot tell the two apart, so ``train.bf16`` has three settings:

* ``true``: bf16 autocast wherever bf16 is native (:func:`asr_kd.nn.device.bf16_native`), float32 elsewhere;
* ``false``: float32 everywhere;
* ``null`` (the default, "auto"): where bf16 is native, time a bare training step of the model in both and use
  bf16 only when it is at least :data:`BF16_MIN_SPEEDUP` times as fast; float32 elsewhere.

The measured choice is a timing, not a function of the config, so a pipeline run makes it once and records it
(:func:`load_or_choose`, ``exp/numerics.json``): every stage and every rank of that run trains in the same
arithmetic, a resumed run keeps it, and the report prints it with the ratio. The margin keeps the choice stable on
one CPU model (the two CPUs above sit far from 1.2, on either side). Where results must match across CPU models,
say ``train.bf16=false``.
"""
from __future__ import annotations

import fcntl
import functools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from asr_kd.nn.batches import FrameBatch
from asr_kd.nn.device import autocast, bf16_native, synchronize
from asr_kd.nn.model import DNN, ModelConfig
from features.atomic import write_text_atomic

BF16_MIN_SPEEDUP = 1.2
"""bf16 autocast is used in the auto setting only when its step is at least this much faster than float32's."""


@dataclass(frozen=True)
class Numerics:
    """The arithmetic of a run's training and why: ``speedup`` is bf16's measured frames/s over float32's (auto
    setting on a device with native bf16 only)."""

    bf16: bool
    reason: str
    speedup: float | None = None

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``float32 (auto: bf16 autocast measured 0.64x float32's speed)``."""
        return f"{'bf16 autocast' if self.bf16 else 'float32'} ({self.reason})"


def choose(setting: bool | None, device: torch.device, measure: Callable[[], float]) -> Numerics:
    """The numerics of ``train.bf16 = setting`` on ``device``; ``measure()`` (bf16 over float32 frames/s) is called
    only in the auto setting where bf16 is native."""
    if not bf16_native(device):
        return Numerics(False, f"no native bf16 on {device.type}")
    if setting is not None:
        return Numerics(bool(setting), f"train.bf16={str(bool(setting)).lower()}, native bf16 on {device.type}")
    speedup = float(measure())
    verdict = "at least" if speedup >= BF16_MIN_SPEEDUP else "below"
    return Numerics(speedup >= BF16_MIN_SPEEDUP, f"auto on {device.type}: a bf16-autocast training step measured "
                                                 f"{speedup:.2f}x float32's speed, {verdict} {BF16_MIN_SPEEDUP}x",
                    round(speedup, 3))


def step_frames_per_s(model: nn.Module, batches: Callable[[], tuple[torch.Tensor, FrameBatch]],
                      device: torch.device, bf16: bool, steps: int, warmup_steps: int = 3,
                      loss_fn: Callable[[torch.Tensor, FrameBatch], torch.Tensor] | None = None) -> float:
    """Training frames/s of ``model``'s full step (forward, loss, backward, Adam update) on the (windows, batch) that
    ``batches()`` makes, after a warm-up (Adam allocates its state at its first step). ``loss_fn(logits, batch)``
    replaces cross-entropy (the distillation objective, as in :mod:`asr_kd.nn.train`)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    model.train()

    def step() -> int:
        x, batch = batches()
        with autocast(device, bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), batch.targets) if loss_fn is None else loss_fn(logits, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return x.shape[0]

    for _ in range(warmup_steps):
        step()
    synchronize(device)
    t0 = time.perf_counter()
    frames = sum(step() for _ in range(steps))
    synchronize(device)
    return frames / (time.perf_counter() - t0)


def measure_bf16_speedup(model_cfg: ModelConfig, num_classes: int, batch_size: int, device: torch.device,
                         steps: int = 6, rounds: int = 3) -> float:
    """bf16-autocast frames/s over float32 frames/s of a bare training step of this model and batch, on this
    process's threads. The two are timed in alternation, ``rounds`` times, and each keeps its best round, so that
    a burst of other work on the machine does not decide the comparison. Cached per process and setting."""
    return _measured(tuple(sorted(asdict(model_cfg).items())), num_classes, batch_size, str(device),
                     torch.get_num_threads(), steps, rounds)


@functools.cache
def _measured(model_key: tuple, num_classes: int, batch_size: int, device_name: str, threads: int,
              steps: int, rounds: int) -> float:
    device, model_cfg = torch.device(device_name), ModelConfig(**dict(model_key))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, model_cfg.input_dim, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    batch = FrameBatch(torch.arange(batch_size, device=device), y, {})
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = DNN(model_cfg, num_classes).to(device)
        best = {False: 0.0, True: 0.0}
        for _ in range(rounds):
            for bf16 in (False, True):
                best[bf16] = max(best[bf16], step_frames_per_s(model, lambda: (x, batch), device, bf16, steps,
                                                               warmup_steps=2))
    return best[True] / best[False]


def resolve(setting: bool | None, model_cfg: ModelConfig, num_classes: int, batch_size: int,
            device: torch.device) -> Numerics:
    """:func:`choose` with the model's own step measured (what a library call of :func:`asr_kd.nn.train.train`
    does when nothing chose for it; the pipeline chooses once per run with :func:`load_or_choose`)."""
    return choose(setting, device, lambda: measure_bf16_speedup(model_cfg, num_classes, batch_size, device))


def load_or_choose(record: Path, setting: bool | None, device: torch.device,
                   measure: Callable[[], float]) -> Numerics:
    """The run's numerics on ``device``'s type: read from ``record`` when an earlier stage (or rank) chose them,
    chosen and written there otherwise. Only the auto setting is recorded (the others do not depend on a timing).
    Processes that ask at once are serialised by a lock file next to ``record``, so one measures and the others
    read its choice."""
    if setting is not None or not bf16_native(device):
        return choose(setting, device, measure)
    record.parent.mkdir(parents=True, exist_ok=True)
    with open(record.with_name(record.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = json.loads(record.read_text()) if record.exists() else {}
        if device.type in saved:
            entry = saved[device.type]
            return Numerics(entry["bf16"], entry["reason"], entry["speedup"])
        numerics = choose(None, device, measure)
        saved[device.type] = {**asdict(numerics), "threads": torch.get_num_threads(),
                              "chosen": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_text_atomic(record, json.dumps(saved, indent=2) + "\n")
        return numerics


def recorded(record: Path, setting: bool | None, device: torch.device) -> Numerics | None:
    """What :func:`load_or_choose` chose (or would choose without measuring), for reports; None when the auto
    setting has not measured yet."""
    if setting is not None or not bf16_native(device):
        return choose(setting, device, lambda: 1.0)
    entry = json.loads(record.read_text()).get(device.type) if record.exists() else None
    return Numerics(entry["bf16"], entry["reason"], entry["speedup"]) if entry else None
