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

All of them time the real code on synthetic data (random features, random targets: speed does not depend on the
values) after a warm-up, so start-up (allocation, first-call overhead) is not counted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from asr_kd.distillation.distill import DistillConfig, make_online_loss, make_stored_loss
from asr_kd.distillation.ensemble import EnsembleConfig, member_dir, train_ensemble
from asr_kd.distillation.soft_targets import SoftTargetConfig, SoftTargets, compute_soft_targets, index_dtype
from asr_kd.nn.batches import FrameBatch
from asr_kd.nn.device import bf16_native, select_device, synchronize
from asr_kd.nn.frames import FrameSet
from asr_kd.nn.model import DNN, PRESETS, ModelConfig
from asr_kd.nn.numerics import step_frames_per_s
from asr_kd.nn.train import LossFn, TrainConfig, train

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
def _setup(preset: str, batch_size: int, steps: int, num_classes: int, device_name: str):
    """Model config, a 2-epoch constant-rate TrainConfig, the device, and random train/dev sets for a benchmark."""
    model_cfg = PRESETS[preset]
    train_cfg = TrainConfig(batch_size=batch_size, epochs=2, early_stopping=False, lr_schedule="constant",
                            progress=False)
    device = select_device(device_name)
    train_set = random_frame_set(model_cfg, steps * batch_size, num_classes, device)
    dev_set = random_frame_set(model_cfg, 100, num_classes, device)
    return model_cfg, train_cfg, device, train_set, dev_set


def bench_train(preset: str, batch_size: int, steps: int, num_classes: int, device_name: str, rounds: int = 3) -> dict:
    """The real training loop's frames/s against the bare step on one pre-made batch, and the bare step in float32
    against bf16 autocast where the device has native bf16 (what ``train.bf16`` buys here: it is not faster on every
    CPU that reports AVX512-BF16), and what the loop's default setting chose.

    The two take turns in one process: the real loop trains ``rounds`` + 1 epochs and the bare steps are timed
    after each epoch but the first (warm-up); each keeps its best round, so a burst of other work on a shared
    machine slows one round of both instead of all rounds of one."""
    model_cfg, train_cfg, device, train_set, dev_set = _setup(preset, batch_size, steps, num_classes, device_name)
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
            "device": str(device), "threads": torch.get_num_threads(), "bf16_autocast": in_bf16,
            "timing": f"best of {rounds} interleaved rounds", "real_frames_per_s": round(real),
            "bare_frames_per_s": round(used), "real_over_bare": round(real / used, 3),
            "bare_fp32_frames_per_s": round(bare[False]),
            "bare_bf16_over_fp32": round(bare[True] / bare[False], 3) if True in kinds else None}


def bench_ensemble(preset: str, members: int, batch_size: int, steps: int, num_classes: int,
                   device_name: str) -> dict:
    """Member-frames/s of members trained one after another vs stacked into one module (second epoch)."""
    model_cfg, train_cfg, device, train_set, dev_set = _setup(preset, batch_size, steps, num_classes, device_name)
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


def main(argv: list[str] | None = None) -> None:
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
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "distill":
        print(format_report(bench_distill(DistillBenchConfig(
            preset=args.preset, hidden_layers=args.hidden_layers, hidden_dim=args.hidden_dim,
            batch_size=args.batch_size, num_classes=args.classes, members=args.members,
            temperature=args.temperature, device=args.device, threads=args.threads))))
        return
    if args.what == "train":
        result = bench_train(args.preset, args.batch_size, args.steps, args.classes, args.device, args.rounds)
    else:
        result = bench_ensemble(args.preset, args.members, args.batch_size, args.steps, args.classes, args.device)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
