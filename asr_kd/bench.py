"""Training throughput: is the real loop as fast as the network allows, and does stacking members pay?

    python -m asr_kd.bench train --preset small --batch-size 256 --steps 50
        frames/s of :func:`asr_kd.train.train` (context windows gathered from a frame matrix, shuffling, metrics,
        checkpoint) against a bare loop (same model and optimizer, one pre-made random batch, nothing else).
        The gap is what the data pipeline costs.
    python -m asr_kd.bench ensemble --members 10
        member-frames/s of the training loop run member after member vs all members stacked (one bmm per layer).
    python -m asr_kd.bench distill
        frames/s of a distillation step with stored top-k soft targets and with the teacher run online, against a
        baseline step, and bytes per frame of the stored format (:mod:`asr_kd.distill_bench`).

Both run the real loop twice over synthetic data (random features, random targets) and report the second
epoch, so start-up (allocation, first-call overhead) is not counted; the bare loop gets the same warm-up.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from asr_kd.ensemble import EnsembleConfig, member_dir, train_ensemble
from asr_kd.frames import FrameSet
from asr_kd.model import DNN, PRESETS, ModelConfig
from asr_kd.train import TrainConfig, resolve_device, train


def synthetic_set(model_cfg: ModelConfig, num_frames: int, num_classes: int, device: torch.device,
                  utt_len: int = 300) -> FrameSet:
    """Random features cut into utterances of ``utt_len`` frames, uniform random targets."""
    lengths = [utt_len] * (num_frames // utt_len) + ([num_frames % utt_len] if num_frames % utt_len else [])
    feats = torch.randn(num_frames, model_cfg.feat_dim, device=device)
    targets = torch.randint(0, num_classes, (num_frames,), device=device)
    return FrameSet.from_tensors(feats, targets, [f"utt{i:06d}" for i in range(len(lengths))], lengths,
                                 left=model_cfg.left_context, right=model_cfg.right_context)


def bare_loop_frames_per_s(model_cfg: ModelConfig, train_cfg: TrainConfig, num_classes: int, steps: int,
                           device: torch.device) -> float:
    """Forward, loss, backward and optimizer step on one pre-made batch, nothing else."""
    torch.manual_seed(0)
    model = DNN(model_cfg, num_classes).to(device)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr, **fused) if train_cfg.optimizer.startswith("adam") \
        else torch.optim.SGD(model.parameters(), lr=train_cfg.lr, momentum=train_cfg.momentum, **fused)
    x = torch.randn(train_cfg.batch_size, model_cfg.input_dim, device=device)
    y = torch.randint(0, num_classes, (train_cfg.batch_size,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=train_cfg.bf16 and device.type == "cuda")

    def step() -> None:
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * train_cfg.batch_size / (time.perf_counter() - t0)


def _setup(preset: str, batch_size: int, steps: int, num_classes: int, device_name: str):
    """Model config, a 2-epoch constant-rate TrainConfig, the device, and random train/dev sets for a benchmark."""
    model_cfg = PRESETS[preset]
    train_cfg = TrainConfig(batch_size=batch_size, epochs=2, early_stopping=False, lr_schedule="constant",
                            device=device_name, progress=False)
    device = resolve_device(device_name)
    train_set = synthetic_set(model_cfg, steps * batch_size, num_classes, device)
    dev_set = synthetic_set(model_cfg, 100, num_classes, device)
    return model_cfg, train_cfg, device, train_set, dev_set


def bench_train(preset: str, batch_size: int, steps: int, num_classes: int, device_name: str) -> dict:
    model_cfg, train_cfg, device, train_set, dev_set = _setup(preset, batch_size, steps, num_classes, device_name)
    with tempfile.TemporaryDirectory() as tmp:
        res = train(model_cfg, train_cfg, train_set, dev_set, Path(tmp), num_classes)
    real = res.history[-1]["frames_per_s"]
    bare = bare_loop_frames_per_s(model_cfg, train_cfg, num_classes, steps, device)
    return {"bench": "train", "preset": preset, "batch_size": batch_size, "steps": steps, "classes": num_classes,
            "device": str(device), "threads": torch.get_num_threads(), "real_frames_per_s": round(real),
            "bare_frames_per_s": round(bare), "real_over_bare": round(real / bare, 3)}


def bench_ensemble(preset: str, members: int, batch_size: int, steps: int, num_classes: int,
                   device_name: str) -> dict:
    model_cfg, train_cfg, device, train_set, dev_set = _setup(preset, batch_size, steps, num_classes, device_name)
    out = {}
    for mode in ("sequential", "stacked"):
        with tempfile.TemporaryDirectory() as tmp:
            dirs = train_ensemble(model_cfg, train_cfg, EnsembleConfig(num_members=members, mode=mode),
                                  train_set, dev_set, Path(tmp), num_classes)
            seconds = [json.loads((member_dir(Path(tmp), m) / "metrics.json").read_text())["epochs"][-1]["seconds"]
                       for m in range(len(dirs))]
        # sequential members run one after another (add their times); stacked ones share one epoch
        wall = sum(seconds) if mode == "sequential" else seconds[0]
        out[f"{mode}_member_frames_per_s"] = round(members * steps * batch_size / wall)
    return {"bench": "ensemble", "preset": preset, "members": members, "batch_size": batch_size, "steps": steps,
            "classes": num_classes, "device": str(device), "threads": torch.get_num_threads(), **out,
            "stacked_over_sequential": round(out["stacked_member_frames_per_s"]
                                             / out["sequential_member_frames_per_s"], 3)}


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
    p = sub.add_parser("distill", help="stored top-k vs online-teacher distillation step vs a baseline step")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--classes", type=int, default=860)
    p.add_argument("--members", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "distill":
        from asr_kd.distill_bench import DistillBenchConfig, bench_distill, format_report

        print(format_report(bench_distill(DistillBenchConfig(
            preset=args.preset, batch_size=args.batch_size, num_classes=args.classes, members=args.members,
            device=args.device, threads=args.threads))))
        return
    if args.what == "train":
        result = bench_train(args.preset, args.batch_size, args.steps, args.classes, args.device)
    else:
        result = bench_ensemble(args.preset, args.members, args.batch_size, args.steps, args.classes, args.device)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
