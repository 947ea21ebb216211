"""Benchmarks of the neural side: is each loop as fast as the network allows, and what does each option cost?

    python -m asr_kd.bench train --preset small --batch-size 256 --steps 50
        frames/s of :func:`asr_kd.nn.train.train` (context windows gathered from a frame matrix, shuffling, metrics,
        checkpoint) against a bare loop (same model and optimizer, one pre-made random batch, nothing else).
        The gap is what the data pipeline costs.
    python -m asr_kd.bench ensemble --members 10
        member-frames/s of the training loop run member after member vs all members stacked (one bmm per layer).
    python -m asr_kd.bench distill
        frames/s of a distillation step with stored top-k soft targets and with the teacher run online, against a
        baseline step, the one-off teacher pass, and bytes per frame of the stored format. The question it
        answers: does storing top-k soft targets keep the student at baseline speed, and what would running the
        teacher on the fly cost instead?

    python -m asr_kd.bench stream --frames 50000000 --cap-gb 2
        the tiny config's member trained streamed against in memory (interleaved epochs on --compare-frames frames,
        streamed in four buffers), then one streamed epoch over --frames random frames on disk in a fresh process
        whose address space may grow by at most --cap-gb (RLIMIT_AS): peak RSS, frames/s, buffers. The questions it
        answers: does a corpus several times the memory allowed train within it, and at the in-memory speed?

All of them time the real code on synthetic data (random features, random targets: speed does not depend on the
values) after a warm-up, so start-up (allocation, first-call overhead) is not counted. ``--out FILE`` also writes
the result as JSON with the command, the date, the machine and the commit it ran from, as a stage records its own:
the benchmark results that docs quote are such files, committed under ``recipes/synth/results/bench/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from asr_kd.distillation.distill import DistillConfig, make_online_loss, make_stored_loss
from asr_kd.distillation.ensemble import EnsembleConfig, member_dir, train_ensemble
from asr_kd.distillation.soft_targets import SoftTargetConfig, SoftTargets, compute_soft_targets, index_dtype
from asr_kd.nn.archive import ArchiveWriter, FrameArchive
from asr_kd.nn.batches import FrameBatch, window_dtype
from asr_kd.nn.device import bf16_native, select_device, synchronize
from asr_kd.nn.frames import FrameSet
from asr_kd.nn.model import DNN, PRESETS, ModelConfig
from asr_kd.nn.numerics import resolve, step_frames_per_s
from asr_kd.nn.stream import GB, DataConfig, StreamedFrames, vm_size
from asr_kd.nn.train import LossFn, TrainConfig, train
from asr_kd.pipeline.runner import git_commit, machine_description
from features.atomic import atomic_dir, write_text_atomic

logger = logging.getLogger(__name__)


def random_frame_set(model_cfg: ModelConfig, num_frames: int, num_classes: int, device: torch.device,
                     utt_len: int = 300, seed: int = 0) -> FrameSet:
    """Random features cut into utterances of ``utt_len`` frames, uniform random targets."""
    g = torch.Generator().manual_seed(seed)
    lengths = [utt_len] * (num_frames // utt_len) + ([num_frames % utt_len] if num_frames % utt_len else [])
    feats = torch.randn(num_frames, model_cfg.feat_dim, generator=g)
    targets = torch.randint(0, num_classes, (num_frames,), generator=g)
    return FrameSet.from_tensors(feats.to(device), targets.to(device), [f"utt{i:06d}" for i in range(len(lengths))],
                                 lengths, left=model_cfg.left_context, right=model_cfg.right_context)


def time_steps(model: DNN, frame_set: FrameSet, loss_fn: LossFn | None, batch_size: int, steps: int,
               device: torch.device, warmup_steps: int = 3, fixed_batch: bool = False, bf16: bool = True,
               seed: int = 0) -> float:
    """Training frames/s of one model's full step: (gather,) forward, loss, backward, Adam update.

    ``fixed_batch`` times the bare step on one pre-made batch (no window gathering: what the network alone
    allows); otherwise every step draws random frames from ``frame_set`` and gathers their windows (and the rows of
    its columns, which a stored-target loss reads). A fresh optimizer per call: Adam's state is allocated at its
    first step, inside the warm-up.
    """
    g = torch.Generator(device=frame_set.device).manual_seed(seed)
    fixed = torch.randint(0, frame_set.num_frames, (batch_size,), generator=g, device=frame_set.device)
    x_fixed = frame_set.windows(fixed).to(device, torch.float32)

    def batch() -> tuple[torch.Tensor, FrameBatch]:
        idx = fixed if fixed_batch else torch.randint(0, frame_set.num_frames, (batch_size,), generator=g,
                                                     device=frame_set.device)
        x = x_fixed if fixed_batch else frame_set.windows(idx).to(device, torch.float32)
        columns = {name: col[idx.to(col.device)].to(device) for name, col in frame_set.columns.items()}
        return x, FrameBatch(idx, frame_set.targets[idx].to(device), columns)

    return step_frames_per_s(model, batch, device, bf16, steps, warmup_steps, loss_fn)


# ----------------------------------------------------------------------------------------------- train, ensemble
def _shape(preset: str, hidden_layers: int | None, hidden_dim: int | None) -> ModelConfig:
    """A preset, with its depth or width overridden where given (the tiny config's member: small at 3 x 192)."""
    base = PRESETS[preset]
    return dataclasses.replace(base, hidden_layers=hidden_layers or base.hidden_layers,
                               hidden_dim=hidden_dim or base.hidden_dim)


def _setup(model_cfg: ModelConfig, batch_size: int, steps: int, num_classes: int, device_name: str):
    """Model config, a 2-epoch constant-rate TrainConfig, the device, and random train/dev sets for a benchmark."""
    train_cfg = TrainConfig(batch_size=batch_size, epochs=2, early_stopping=False, lr_schedule="constant",
                            progress=False)
    device = select_device(device_name)
    train_set = random_frame_set(model_cfg, steps * batch_size, num_classes, device)
    dev_set = random_frame_set(model_cfg, 100, num_classes, device)
    return model_cfg, train_cfg, device, train_set, dev_set


def bench_train(preset: str, batch_size: int, steps: int, num_classes: int, device_name: str, rounds: int = 3,
                hidden_layers: int | None = None, hidden_dim: int | None = None) -> dict:
    """The real training loop's frames/s against the bare step on one pre-made batch, and the bare step in float32
    against bf16 autocast where the device has native bf16 (what ``train.bf16`` buys here: it is not faster on every
    CPU that reports AVX512-BF16), and what the loop's default setting chose.

    The two take turns in one process: the real loop trains ``rounds`` + 1 epochs and the bare steps are timed
    after each epoch but the first (warm-up); each keeps its best round, so a burst of other work on a shared
    machine slows one round of both instead of all rounds of one."""
    model_cfg, train_cfg, device, train_set, dev_set = _setup(_shape(preset, hidden_layers, hidden_dim), batch_size,
                                                              steps, num_classes, device_name)
    train_cfg = dataclasses.replace(train_cfg, epochs=rounds + 1)
    torch.manual_seed(0)
    bare_models = {bf16: DNN(model_cfg, num_classes).to(device) for bf16 in (False, True)}
    bare = {False: 0.0, True: 0.0}
    kinds = (False, True) if bf16_native(device) else (False,)

    def time_bare(epoch: int, rows: list[dict]) -> None:
        if epoch > 1:
            for bf16 in kinds:
                bare[bf16] = max(bare[bf16], time_steps(bare_models[bf16], train_set, None, batch_size, steps, device,
                                                        fixed_batch=True, bf16=bf16))

    with tempfile.TemporaryDirectory() as tmp:
        res = train(model_cfg, train_cfg, train_set, dev_set, Path(tmp), num_classes, device=device,
                    epoch_callback=time_bare)
        in_bf16 = json.loads(res.metrics_path.read_text())["train_cfg"]["bf16"]  # the default setting's choice
    real = max(row["frames_per_s"] for row in res.history[1:])
    used = bare[in_bf16 and bf16_native(device)]
    return {"bench": "train", "preset": preset, "batch_size": batch_size, "steps": steps, "classes": num_classes,
            "shape": f"{model_cfg.hidden_layers}x{model_cfg.hidden_dim}", "device": str(device),
            "threads": torch.get_num_threads(), "bf16_autocast": in_bf16,
            "timing": f"best of {rounds} interleaved rounds", "real_frames_per_s": round(real),
            "bare_frames_per_s": round(used), "real_over_bare": round(real / used, 3),
            "bare_fp32_frames_per_s": round(bare[False]),
            "bare_bf16_over_fp32": round(bare[True] / bare[False], 3) if True in kinds else None}


def bench_ensemble(preset: str, members: int, batch_size: int, steps: int, num_classes: int,
                   device_name: str, hidden_layers: int | None = None, hidden_dim: int | None = None) -> dict:
    """Member-frames/s of members trained one after another vs stacked into one module (second epoch)."""
    model_cfg, train_cfg, device, train_set, dev_set = _setup(_shape(preset, hidden_layers, hidden_dim), batch_size,
                                                              steps, num_classes, device_name)
    out = {}
    for mode in ("sequential", "stacked"):
        with tempfile.TemporaryDirectory() as tmp:
            dirs = train_ensemble(model_cfg, train_cfg, EnsembleConfig(num_members=members, mode=mode),
                                  train_set, dev_set, Path(tmp), num_classes, device)
            seconds = [json.loads((member_dir(Path(tmp), m) / "metrics.json").read_text())["epochs"][-1]["seconds"]
                       for m in range(len(dirs))]
        # sequential members run one after another (add their times); stacked ones share one epoch
        wall = sum(seconds) if mode == "sequential" else seconds[0]
        out[f"{mode}_member_frames_per_s"] = round(members * steps * batch_size / wall)
    return {"bench": "ensemble", "preset": preset, "members": members, "batch_size": batch_size, "steps": steps,
            "classes": num_classes, "device": str(device), "threads": torch.get_num_threads(), **out,
            "stacked_over_sequential": round(out["stacked_member_frames_per_s"]
                                             / out["sequential_member_frames_per_s"], 3)}


# -------------------------------------------------------------------------------------------------------- distill
@dataclass
class DistillBenchConfig:
    """Sizes of the benchmark; the defaults are a CPU-sized setting (4x512 -> 860 states, 10 members)."""

    preset: str = "small"
    hidden_layers: int | None = None  # the preset's shape unless set (the tiny config: 3 x 192)
    hidden_dim: int | None = None
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
    device = select_device(cfg.device)
    preset = PRESETS[cfg.preset]
    model_cfg = dataclasses.replace(preset, hidden_layers=cfg.hidden_layers or preset.hidden_layers,
                                    hidden_dim=cfg.hidden_dim or preset.hidden_dim)
    train_set = random_frame_set(model_cfg, cfg.num_frames, cfg.num_classes, device, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    teachers = [DNN(model_cfg, cfg.num_classes).to(device).eval() for _ in range(cfg.members)]
    dcfg = DistillConfig(temperature=cfg.temperature, top_k=cfg.top_k)

    t0 = time.perf_counter()
    soft = compute_soft_targets(teachers, train_set, SoftTargetConfig(cfg.temperature, cfg.top_k,
                                                                      batch_size=max(cfg.batch_size, 1024)))
    synchronize(device)
    teacher_pass = train_set.num_frames / (time.perf_counter() - t0)

    # each mode: its loss, and the frames its batches come from (stored targets ride along as columns)
    modes: dict[str, Callable[[], tuple[LossFn | None, FrameSet]]] = {
        "baseline": lambda: (None, train_set),
        "stored": lambda: (make_stored_loss(dcfg), train_set.with_columns(soft.columns())),
        "stored_on_device": lambda: (make_stored_loss(dcfg), train_set.with_columns(soft.to(device).columns())),
        "online": lambda: (make_online_loss(teachers, train_set, dataclasses.replace(dcfg, mode="online")), train_set),
    }
    if device.type == "cpu":
        del modes["stored_on_device"]
    students, losses, sets = {}, {}, {}
    for name, make in modes.items():
        torch.manual_seed(cfg.seed)
        students[name] = DNN(model_cfg, cfg.num_classes).to(device)
        losses[name], sets[name] = make()
    # Modes take turns for several rounds and each keeps its best round: on a shared machine a burst of
    # someone else's load then slows one round of every mode instead of all rounds of one mode.
    speeds = dict.fromkeys(modes, 0.0)
    for r in range(cfg.rounds):
        for name in modes:
            speeds[name] = max(speeds[name], time_steps(students[name], sets[name], losses[name], cfg.batch_size,
                                                        cfg.steps, device, cfg.warmup_steps, seed=cfg.seed))
            logger.info("round %d, %s step: %.0f frames/s", r, name, speeds[name])
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "shape": f"{model_cfg.hidden_layers}x{model_cfg.hidden_dim}",
        "timing": f"best of {cfg.rounds} interleaved rounds of {cfg.steps} steps",
        "config": dataclasses.asdict(cfg),
        "frames_per_s": {k: round(v) for k, v in speeds.items()},
        "relative_to_baseline": {k: round(v / speeds["baseline"], 3) for k, v in speeds.items()},
        "teacher_pass_frames_per_s": round(teacher_pass),
        "storage": storage_table(cfg),
    }


# ---------------------------------------------------------------------------------------------------------- stream
@dataclass
class StreamBenchConfig:
    """Sizes of the streaming benchmark; the defaults are the tiny config's member (3 x 192 -> 364 states, batch
    1024) on 50M frames of random features (8 GB on disk) under a 2 GB cap, and the comparison with the in-memory
    loop on 10M frames (about 3 GB in memory). Both paths are timed over the same number of frames: on random targets
    a step slows down as an epoch goes on (float32 values in the update turn denormal), in memory and streamed
    alike, so a 50M-frame epoch is slower per frame than a short one whichever path feeds it."""

    frames: int = 50_000_000
    cap_gb: float = 2.0
    compare_frames: int = 10_000_000
    rounds: int = 2
    block_frames: int = 20_000
    shard_frames: int = 1_000_000
    utt_frames: int = 500
    hidden_layers: int = 3
    hidden_dim: int = 192
    classes: int = 364
    batch_size: int = 1024
    threads: int = 1
    dir: str | None = None
    seed: int = 0

    @property
    def model(self) -> ModelConfig:
        return _shape("small", self.hidden_layers, self.hidden_dim)


def random_archive(path: Path, cfg: StreamBenchConfig, frames: int) -> FrameArchive:
    """A frame archive of ``frames`` random frames (utterances of ``utt_frames``, uniform random targets), written
    once: an archive already at ``path`` with that many frames is reused."""
    if (path / "meta.json").exists():
        archive = FrameArchive.open(path)
        if archive.num_frames == frames and archive.shard_frames == cfg.shard_frames:
            return archive
    rng = np.random.default_rng(cfg.seed)
    with atomic_dir(path) as tmp:
        out = ArchiveWriter(tmp, cfg.shard_frames)
        for i, start in enumerate(range(0, frames, cfg.utt_frames)):
            n = min(cfg.utt_frames, frames - start)
            out.add(f"utt{i:08d}", rng.standard_normal((n, cfg.model.feat_dim), dtype=np.float32),
                    rng.integers(0, cfg.classes, n, dtype=np.int32))
        out.finish("python -m asr_kd.bench stream", {"random": f"seed {cfg.seed}"})
    return FrameArchive.open(path)


def _status(field_: str) -> int:
    """A memory figure of this process from /proc/self/status (``VmRSS``, ``VmHWM``...), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_}:"):
            return int(line.split()[1]) * 1024
    return 0


def _one_epoch(cfg: StreamBenchConfig, frames: FrameSet | StreamedFrames, bf16: bool) -> float:
    """Training frames/s of one epoch of the real loop (the member's training config, constant rate)."""
    dev = random_frame_set(cfg.model, 2048, cfg.classes, torch.device("cpu"), seed=cfg.seed + 1)
    train_cfg = TrainConfig(batch_size=cfg.batch_size, lr=0.002, epochs=1, early_stopping=False,
                            lr_schedule="constant", progress=False, bf16=bf16, seed=cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        res = train(cfg.model, train_cfg, frames, dev, Path(tmp), cfg.classes, device="cpu")
    return res.history[0]["frames_per_s"]


def _capped_epoch(cfg: StreamBenchConfig, path: str, bf16: bool, out: mp.Queue) -> None:
    """One streamed epoch over the archive at ``path`` in a fresh process whose address space may grow by at most
    the cap from here (RLIMIT_AS) and whose data may take the cap less what the process already holds."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # a fresh process
    torch.set_num_threads(cfg.threads)
    start_rss = _status("VmRSS")
    data_bytes = int(cfg.cap_gb * GB) - start_rss
    archive = FrameArchive.open(Path(path))
    for f in archive.path.iterdir():  # out of the page cache: the epoch reads the disk, as a corpus never seen would
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    probe = StreamedFrames(archive, DataConfig(buffer_frames=cfg.block_frames, block_frames=cfg.block_frames),
                           left=cfg.model.left_context, right=cfg.model.right_context)
    per_frame = probe.buffer_bytes(window_dtype(torch.device("cpu"), bf16), 1) / cfg.block_frames
    buffer_frames = int(data_bytes / 2 / 2 / per_frame)  # two buffers in half of what is left: the rest for steps
    data = DataConfig(stream=True, buffer_frames=buffer_frames, block_frames=cfg.block_frames,
                      shard_frames=cfg.shard_frames, memory_gb=data_bytes / GB)
    frames = StreamedFrames(archive, data, left=cfg.model.left_context, right=cfg.model.right_context)
    vm = vm_size()
    resource.setrlimit(resource.RLIMIT_AS, (vm + int(cfg.cap_gb * GB), resource.getrlimit(resource.RLIMIT_AS)[1]))
    t0 = time.perf_counter()
    fps = _one_epoch(cfg, frames, bf16)
    out.put({"frames_per_s": round(fps), "wall_s": round(time.perf_counter() - t0, 1), "start_rss": start_rss,
             # the peak of this process's own pages: getrusage's ru_maxrss of a spawned process starts at its
             # parent's, whose image it replaced
             "peak_rss": _status("VmHWM"), "buffer_frames": buffer_frames,
             "buffers": len(frames.plan(1)), "address_space_limit_gb": round((vm + cfg.cap_gb * GB) / GB, 2)})


def bench_stream(cfg: StreamBenchConfig | None = None) -> dict:
    """Streamed training against the in-memory loop (interleaved epochs on ``compare_frames`` frames, streamed in
    several buffers), then one streamed epoch over ``frames`` frames in a process held to ``cap_gb``: its peak RSS,
    frames/s and buffers."""
    cfg = cfg or StreamBenchConfig()
    torch.set_num_threads(cfg.threads)
    cpu = torch.device("cpu")
    bf16 = resolve(None, cfg.model, cfg.classes, cfg.batch_size, cpu).bf16
    root = Path(cfg.dir) if cfg.dir else Path(tempfile.mkdtemp(prefix="asr_kd_stream_"))
    try:
        small = random_archive(root / f"frames_{cfg.compare_frames}", cfg, cfg.compare_frames)
        data = DataConfig(stream=True, buffer_frames=max(cfg.block_frames, cfg.compare_frames // 4),
                          block_frames=cfg.block_frames, shard_frames=cfg.shard_frames)
        streamed = StreamedFrames(small, data, left=cfg.model.left_context, right=cfg.model.right_context)
        chunks = [chunk for _, chunk in streamed.chunks()]
        in_memory = FrameSet.from_tensors(torch.cat([c.feats for c in chunks]), torch.cat([c.targets for c in chunks]),
                                          streamed.utt_ids, streamed.utt_lengths, cfg.model.left_context,
                                          cfg.model.right_context)
        del chunks
        best = {"in_memory": 0.0, "streamed": 0.0}
        for r in range(cfg.rounds):
            for name, frames in (("in_memory", in_memory), ("streamed", streamed)):
                best[name] = max(best[name], _one_epoch(cfg, frames, bf16))
                logger.info("round %d, %s: %.0f frames/s", r, name, best[name])
        torch.manual_seed(cfg.seed)
        bare = time_steps(DNN(cfg.model, cfg.classes), in_memory, None, cfg.batch_size, 100, cpu, fixed_batch=True,
                          bf16=bf16)
        del in_memory, streamed
        big = random_archive(root / f"frames_{cfg.frames}", cfg, cfg.frames)
        big_bytes = sum(f.stat().st_size for f in big.path.iterdir())
        out: mp.Queue = mp.get_context("spawn").Queue()
        child = mp.get_context("spawn").Process(target=_capped_epoch, args=(cfg, str(big.path), bf16, out))
        child.start()
        capped = out.get()
        child.join()
    finally:
        if not cfg.dir:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "bench": "stream", "cpu": _cpu_name(), "amx": bool(torch.cpu._is_amx_tile_supported()),
        "threads": cfg.threads, "bf16_autocast": bf16,
        "shape": f"{cfg.hidden_layers}x{cfg.hidden_dim} -> {cfg.classes}, batch {cfg.batch_size}",
        "compare": {"frames": cfg.compare_frames, "buffer_frames": data.buffer_frames,
                    "timing": f"best of {cfg.rounds} interleaved epochs",
                    "in_memory_frames_per_s": round(best["in_memory"]),
                    "streamed_frames_per_s": round(best["streamed"]),
                    "streamed_over_in_memory": round(best["streamed"] / best["in_memory"], 3),
                    "bare_frames_per_s": round(bare), "in_memory_over_bare": round(best["in_memory"] / bare, 3)},
        "capped": {"frames": cfg.frames, "archive_gb": round(big_bytes / GB, 2), "cap_gb": cfg.cap_gb,
                   **{k: round(v / GB, 3) if k.endswith("rss") else v for k, v in capped.items()},
                   "peak_rss_within_cap": capped["peak_rss"] <= cfg.cap_gb * GB,
                   "over_in_memory": round(capped["frames_per_s"] / best["in_memory"], 3)},
    }


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def format_report(result: dict) -> str:
    """The benchmark as a short Markdown table (for the report and the terminal)."""
    c = result["config"]
    title = (f"Distillation step speed: {result['shape']} student -> {c['num_classes']} classes, batch "
             f"{c['batch_size']}, {c['members']}-member teacher, k={c['top_k']}, T={c['temperature']:g}, on "
             f"{result['device']} "
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


def record(result: dict, out: Path, argv: list[str]) -> None:
    """Write ``result`` to ``out`` with what reproduces it and what it ran on: the command, the date, the machine
    (:func:`asr_kd.pipeline.runner.machine_description`) and the commit."""
    meta = {"command": " ".join(["python -m asr_kd.bench", *argv]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(Path(__file__).resolve().parents[1], ignore=(out.parent,)),
            "machine": machine_description()}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps({"meta": meta, "result": result}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m asr_kd.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name, steps in (("train", 50), ("ensemble", 20)):
        p = sub.add_parser(name)
        p.add_argument("--preset", default="small", choices=sorted(PRESETS))
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--steps", type=int, default=steps, help="training steps per epoch (per member)")
        p.add_argument("--classes", type=int, default=2000)
        p.add_argument("--device", default="auto")
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--hidden-layers", type=int, default=None, help="override the preset's depth")
        p.add_argument("--hidden-dim", type=int, default=None, help="override the preset's width")
        if name == "ensemble":
            p.add_argument("--members", type=int, default=10)
        else:
            p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of real and bare; best kept")
    p = sub.add_parser("distill", help="stored top-k vs online-teacher distillation step vs a baseline step")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--classes", type=int, default=860)
    p.add_argument("--members", type=int, default=10)
    p.add_argument("--hidden-layers", type=int, default=None, help="override the preset's depth")
    p.add_argument("--hidden-dim", type=int, default=None, help="override the preset's width")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("stream", help="streamed training under a memory cap vs the in-memory loop")
    for field_ in dataclasses.fields(StreamBenchConfig):
        p.add_argument(f"--{field_.name.replace('_', '-')}", type=str if field_.name == "dir" else type(field_.default),
                       default=field_.default)
    for p in sub.choices.values():
        p.add_argument("--out", type=Path, default=None,
                       help="also write the result as JSON with the command, date, machine and commit")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "stream":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        result = bench_stream(StreamBenchConfig(**{f.name: getattr(args, f.name)
                                                   for f in dataclasses.fields(StreamBenchConfig)}))
        print(json.dumps(result, indent=1))
    elif args.what == "distill":
        result = bench_distill(DistillBenchConfig(
            preset=args.preset, hidden_layers=args.hidden_layers, hidden_dim=args.hidden_dim,
            batch_size=args.batch_size, num_classes=args.classes, members=args.members,
            temperature=args.temperature, device=args.device, threads=args.threads))
        print(format_report(result))
    elif args.what == "train":
        result = bench_train(args.preset, args.batch_size, args.steps, args.classes, args.device, args.rounds,
                             args.hidden_layers, args.hidden_dim)
        print(json.dumps(result))
    else:
        result = bench_ensemble(args.preset, args.members, args.batch_size, args.steps, args.classes, args.device,
                                args.hidden_layers, args.hidden_dim)
        print(json.dumps(result))
    if args.out is not None:
        record(result, args.out, argv)


if __name__ == "__main__":
    main()
