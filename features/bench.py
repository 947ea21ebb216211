"""Throughput of the feature side on synthetic data: ``python -m features.bench [--help]``.

Reports fbank extraction (one utterance per call, and batched) on the CPU and, when one is present, on the GPU,
and the gathering of 26-frame context windows that feeds DNN training. Frames/s is the number to compare with
training speed: the paper-sized network trains at ~1M frames/s on one H100, so anything far above that is
not a bottleneck.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from features.context import ContextWindows
from features.fbank import compute_fbank, compute_fbank_batch


def _rate(work: Callable[[], int], device: str, min_seconds: float) -> float:
    """Items per second of ``work`` (which returns the items it processed), after one warm-up call."""
    work()
    done, start = 0, time.perf_counter()
    while True:
        done += work()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def bench_fbank(waves: list[np.ndarray], device: str, batch_sizes: list[int], min_seconds: float) -> None:
    """Print fbank frames/s for one-by-one and batched extraction of ``waves`` on ``device``."""
    on_device = [torch.from_numpy(w).to(device) for w in waves]

    def single() -> int:
        return sum(compute_fbank(w, device=device).shape[0] for w in on_device)

    print(f"fbank {device:>6} one-by-one        : {_rate(single, device, min_seconds):>12,.0f} frames/s")
    for bs in batch_sizes:
        def batched(bs: int = bs) -> int:
            return sum(f.shape[0] for i in range(0, len(on_device), bs)
                       for f in compute_fbank_batch(on_device[i:i + bs], device=device))
        print(f"fbank {device:>6} batch {bs:>4} utts   : {_rate(batched, device, min_seconds):>12,.0f} frames/s")


def bench_context(num_frames: int, dim: int, utt_frames: int, batch: int, device: str, dtype: torch.dtype,
                  min_seconds: float) -> None:
    """Print context-window gather frames/s for random batches over ``num_frames`` frames on ``device``."""
    lengths = [utt_frames] * (num_frames // utt_frames)
    feats = torch.randn(sum(lengths), dim, device=device).to(dtype)
    windows = ContextWindows(feats, lengths, left=20, right=5)
    gen = torch.Generator(device=device).manual_seed(0)

    def gather() -> int:
        idx = torch.randint(0, len(windows), (batch,), device=device, generator=gen)
        return windows(idx).shape[0]

    rate = _rate(gather, device, min_seconds)
    print(f"context {device:>6} {str(dtype).removeprefix('torch.'):>8} [{batch} x {windows.output_dim}]: "
          f"{rate:>12,.0f} frames/s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utts", type=int, default=32, help="synthetic utterances for fbank")
    parser.add_argument("--seconds", type=float, default=4.0, help="mean utterance length (uniform 0.5x-1.5x)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32], help="utterances per batched call")
    parser.add_argument("--frames", type=int, default=1_000_000, help="frames in the context-window matrix")
    parser.add_argument("--utt-frames", type=int, default=500, help="frames per utterance for context windows")
    parser.add_argument("--batch", type=int, default=4096, help="frames per context-window gather")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="measure each case at least this long")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU even if one is present")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    lengths = (rng.uniform(0.5, 1.5, args.utts) * args.seconds * 16000).astype(int)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    print(f"{args.utts} utterances, {lengths.sum() / 16000:.0f} s of audio; torch threads {args.threads}; "
          f"devices {devices}")
    for device in devices:
        bench_fbank(waves, device, args.batch_sizes, args.min_seconds)
    for device in devices:
        for dtype in ([torch.float32] if device == "cpu" else [torch.float32, torch.float16]):
            bench_context(args.frames, 40, args.utt_frames, args.batch, device, dtype, args.min_seconds)


if __name__ == "__main__":
    main()
