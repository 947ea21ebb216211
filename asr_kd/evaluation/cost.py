"""What an acoustic model costs to run, the reason people distil: size, arithmetic, and measured time.

For a DNN system (one network, or an ensemble of them) and for the GMM: parameters, multiply-accumulates per
frame, bytes on disk, and the acoustic model's time per second of audio, measured by running the real model on
real frames on ONE CPU thread (the deployment case the students are for) and, when a GPU is present, on the GPU.
Decoding's real-time factor is measured where decoding runs (:mod:`decoding.decode`) and joined by the caller.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from asr_kd.nn.device import synchronize
from asr_kd.nn.frames import Frames, iter_windows
from asr_kd.nn.inference import load_model
from asr_kd.nn.model import DNN
from decoding.gmm_accum import GmmParams

FRAME_SECONDS = 0.01


@dataclass
class Cost:
    """One system's cost; ``*_rtf`` = acoustic-model seconds per second of audio (lower is faster)."""

    params: int
    macs_per_frame: int
    file_bytes: int
    cpu1_rtf: float
    gpu_rtf: float | None = None
    frames_timed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def dnn_macs_per_frame(model: DNN) -> int:
    """Multiply-accumulates of one forward pass for one frame (every Linear layer's in x out)."""
    return sum(layer.in_features * layer.out_features for layer in model.linears())


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch's intra-op threads and numpy's BLAS threads limited to one, as on a one-core device."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def _seconds(work: Callable[[], object], device: torch.device, min_seconds: float) -> float:
    """Best-of-repeats wall time of ``work`` (after one warm-up call), repeating until ``min_seconds`` passed."""
    work()
    synchronize(device)
    best, spent = float("inf"), 0.0
    while spent < min_seconds or best == float("inf"):
        t0 = time.perf_counter()
        work()
        synchronize(device)
        took = time.perf_counter() - t0
        best, spent = min(best, took), spent + took
    return best


@torch.no_grad()
def _dnn_rtf(models: Sequence[DNN], windows: torch.Tensor, device: torch.device, min_seconds: float) -> float:
    """Seconds per second of audio of the members' forward passes plus the posterior average, in float32."""
    nets = [m.to(device).eval() for m in models]
    x = windows.to(device)

    def forward() -> torch.Tensor:
        logp = [torch.log_softmax(net(x), dim=-1) for net in nets]
        return logp[0] if len(logp) == 1 else torch.logsumexp(torch.stack(logp), dim=0)

    return _seconds(forward, device, min_seconds) / (x.shape[0] * FRAME_SECONDS)


def dnn_cost(model_paths: Sequence[Path], frame_set: Frames, max_frames: int = 20000,
             min_seconds: float = 0.5) -> Cost:
    """Cost of the network(s) in ``model_paths`` (an ensemble averages all of them) on the first frames of a set.

    The CPU timing runs with one intra-op thread; the GPU timing only when CUDA is available.
    """
    models = [load_model(p, "cpu") for p in model_paths]
    _, windows, _ = next(iter_windows(frame_set, max_frames))
    windows = windows.to("cpu", torch.float32)
    with one_thread():
        cpu = _dnn_rtf(models, windows, torch.device("cpu"), min_seconds)
    gpu = _dnn_rtf(models, windows, torch.device("cuda"), min_seconds) if torch.cuda.is_available() else None
    return Cost(params=sum(sum(p.numel() for p in m.parameters()) for m in models),
                macs_per_frame=sum(dnn_macs_per_frame(m) for m in models),
                file_bytes=sum(Path(p).stat().st_size for p in model_paths), cpu1_rtf=cpu, gpu_rtf=gpu,
                frames_timed=int(windows.shape[0]))


def gmm_cost(model_file: Path, params: GmmParams, feats: Sequence[np.ndarray], max_frames: int = 20000,
             min_seconds: float = 0.5) -> Cost:
    """Cost of a diagonal-covariance GMM acoustic model on the given utterances' features (one CPU thread).

    Per frame and Gaussian, a log-likelihood is two dot products of the feature dimension (x^2 with the inverse
    variances, x with the scaled means), so 2 x dim MACs; parameters are a weight, a mean and a variance vector per
    Gaussian.
    """
    chunk = np.concatenate(list(feats))[:max_frames]
    num_gauss, dim = params.means.shape
    with one_thread():
        seconds = _seconds(lambda: params.pdf_loglikes(chunk), torch.device("cpu"), min_seconds)
    return Cost(params=num_gauss * (2 * dim + 1), macs_per_frame=2 * num_gauss * dim,
                file_bytes=Path(model_file).stat().st_size, cpu1_rtf=seconds / (chunk.shape[0] * FRAME_SECONDS),
                frames_timed=int(chunk.shape[0]))
