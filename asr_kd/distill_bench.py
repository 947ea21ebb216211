"""How much distillation costs per training step, and how much its soft targets cost to store.

Three steps are timed on the same student, batch and optimizer: the plain baseline step (hard cross-entropy),
the stored-target step (a gather of top-k rows + the sparse soft loss) and the online step (an M-member teacher
forward pass inside every step). The question it answers: does storing top-k soft targets keep the student at
baseline speed, and what would running the teacher on the fly cost instead (the GPU notes measured ~5x on an
H100 for a 10-model 14k-class teacher)? It also reports the one-off cost of computing stored targets (a teacher
pass over the training frames, once per temperature) and the bytes per frame of the stored format for several k.

Wired as ``python -m asr_kd.bench distill``.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from asr_kd.distill import DistillConfig, make_online_loss, make_stored_loss
from asr_kd.frames import FrameSet
from asr_kd.model import DNN, PRESETS
from asr_kd.soft_targets import SoftTargetConfig, SoftTargets, compute_soft_targets, index_dtype
from asr_kd.train import LossFn, resolve_device

logger = logging.getLogger(__name__)


@dataclass
class DistillBenchConfig:
    """Sizes of the benchmark; the defaults are the prototype's CPU setting (4x512 -> 860 states, 10 members)."""

    preset: str = "small"
    num_classes: int = 860
    members: int = 10
    batch_size: int = 256
    steps: int = 30
    warmup_steps: int = 5
    rounds: int = 3
    top_k: int = 20
    temperature: float = 2.0
    num_frames: int = 20_000
    storage_k: tuple[int | None, ...] = (5, 20, None)
    storage_classes: tuple[int, ...] = (860, 14_000)
    device: str = "auto"
    threads: int | None = 1
    seed: int = 0


def random_frame_set(num_frames: int, num_classes: int, feat_dim: int, device: torch.device,
                     utt_len: int = 500, seed: int = 0) -> FrameSet:
    """Random features/targets in utterances of ``utt_len`` frames (speed does not depend on the values)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [utt_len] * (num_frames // utt_len) + ([num_frames % utt_len] if num_frames % utt_len else [])
    feats = torch.randn(num_frames, feat_dim, generator=g)
    targets = torch.randint(0, num_classes, (num_frames,), generator=g)
    return FrameSet.from_tensors(feats.to(device), targets.to(device), [f"u{i:05d}" for i in range(len(lengths))],
                                 lengths)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(student: DNN, train_set: FrameSet, loss_fn: LossFn | None, cfg: DistillBenchConfig,
               device: torch.device) -> float:
    """Training frames per second of the student's full step (gather, forward, loss, backward, Adam update)."""
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)
    g = torch.Generator(device=train_set.device).manual_seed(cfg.seed)
    # A fresh optimizer per call: Adam's state is allocated at its first step, inside the warm-up.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    student.train()

    def step() -> None:
        idx = torch.randint(0, train_set.num_frames, (cfg.batch_size,), generator=g, device=train_set.device)
        x = train_set.windows(idx).to(device, torch.float32)
        y = train_set.targets[idx].to(device)
        with autocast:
            logits = student(x)
        loss = F.cross_entropy(logits.float(), y) if loss_fn is None else loss_fn(logits, idx, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(cfg.warmup_steps):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        step()
    _sync(device)
    return cfg.steps * cfg.batch_size / (time.perf_counter() - t0)


def storage_table(cfg: DistillBenchConfig) -> list[dict]:
    """Bytes per frame of stored soft targets (in memory and on disk) for each (classes, k)."""
    rows = []
    n = 1000
    for c in cfg.storage_classes:
        for k in cfg.storage_k:
            kk = c if k is None else k
            soft = SoftTargets(torch.zeros(n, kk, dtype=index_dtype(c)), torch.zeros(n, kk, dtype=torch.float16),
                               torch.ones(n, dtype=torch.float16), cfg.temperature, c)
            with tempfile.TemporaryDirectory() as tmp:
                soft.save(Path(tmp) / "st")
                on_disk = sum(f.stat().st_size for f in (Path(tmp) / "st").glob("*.npy")) / n
            rows.append({"classes": c, "k": "all" if k is None else k, "bytes_per_frame": soft.bytes_per_frame,
                         "npy_bytes_per_frame": round(on_disk, 1), "dense_fp32_bytes_per_frame": 4 * c})
    return rows


def bench_distill(cfg: DistillBenchConfig | None = None) -> dict:
    """Frames/s of baseline, stored-target and online distillation steps, teacher-pass speed, storage sizes."""
    cfg = cfg or DistillBenchConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model_cfg = PRESETS[cfg.preset]
    train_set = random_frame_set(cfg.num_frames, cfg.num_classes, model_cfg.feat_dim, device, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    teachers = [DNN(model_cfg, cfg.num_classes).to(device).eval() for _ in range(cfg.members)]
    dcfg = DistillConfig(temperature=cfg.temperature, top_k=cfg.top_k)

    t0 = time.perf_counter()
    soft = compute_soft_targets(teachers, train_set, SoftTargetConfig(cfg.temperature, cfg.top_k,
                                                                      batch_size=max(cfg.batch_size, 1024)))
    _sync(device)
    teacher_pass = train_set.num_frames / (time.perf_counter() - t0)

    modes: dict[str, Callable[[], LossFn | None]] = {
        "baseline": lambda: None,
        "stored": lambda: make_stored_loss(soft, dcfg),
        "stored_on_device": lambda: make_stored_loss(soft.to(device), dcfg),
        "online": lambda: make_online_loss(teachers, train_set, dataclasses.replace(dcfg, mode="online")),
    }
    if device.type == "cpu":
        del modes["stored_on_device"]
    students, losses = {}, {}
    for name, make in modes.items():
        torch.manual_seed(cfg.seed)
        students[name], losses[name] = DNN(model_cfg, cfg.num_classes).to(device), make()
    # Modes take turns for several rounds and each keeps its best round: on a shared machine a burst of
    # someone else's load then slows one round of every mode instead of all rounds of one mode.
    speeds = dict.fromkeys(modes, 0.0)
    for r in range(cfg.rounds):
        for name in modes:
            speeds[name] = max(speeds[name], time_steps(students[name], train_set, losses[name], cfg, device))
            logger.info("round %d, %s step: %.0f frames/s", r, name, speeds[name])
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "timing": f"best of {cfg.rounds} interleaved rounds of {cfg.steps} steps",
        "config": dataclasses.asdict(cfg),
        "frames_per_s": {k: round(v) for k, v in speeds.items()},
        "relative_to_baseline": {k: round(v / speeds["baseline"], 3) for k, v in speeds.items()},
        "teacher_pass_frames_per_s": round(teacher_pass),
        "storage": storage_table(cfg),
    }


def format_report(result: dict) -> str:
    """The benchmark as a short Markdown table (for the report and the terminal)."""
    c = result["config"]
    title = (f"Distillation step speed: {c['preset']} student -> {c['num_classes']} classes, batch "
             f"{c['batch_size']}, {c['members']}-member teacher, k={c['top_k']}, on {result['device']} "
             f"({result['threads']} threads; {result['timing']})")
    lines = [
        title,
        "",
        "| step | frames/s | vs baseline |",
        "|---|---|---|",
    ]
    for name, fps in result["frames_per_s"].items():
        lines.append(f"| {name} | {fps} | {result['relative_to_baseline'][name]:.2f}x |")
    lines += ["", f"One-off teacher pass for stored targets: {result['teacher_pass_frames_per_s']} frames/s", "",
              "| classes | k | bytes/frame | .npy bytes/frame | dense fp32 |", "|---|---|---|---|---|"]
    for r in result["storage"]:
        lines.append(f"| {r['classes']} | {r['k']} | {r['bytes_per_frame']:g} | {r['npy_bytes_per_frame']} | "
                     f"{r['dense_fp32_bytes_per_frame']} |")
    return "\n".join(lines)
