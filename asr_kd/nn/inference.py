"""Trained networks on disk and what they compute: ``model.pt`` I/O, log-posteriors, frame accuracy.

Training writes models with :func:`save_model`; everything downstream (ensembles, soft targets, distillation,
evaluation, decoding) reads them with :func:`load_model` and asks for posteriors here, so a model file has one
writer and one reader.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from asr_kd.nn.frames import Frames, iter_windows
from asr_kd.nn.model import DNN, ModelConfig
from features.atomic import atomic_write


def save_model(path: Path, model_cfg: ModelConfig, num_classes: int, state: dict[str, torch.Tensor],
               extra: dict | None = None) -> None:
    """Write model.pt atomically: weights, the ModelConfig (as a dict) and the number of classes."""
    payload = {"model_cfg": model_cfg.to_dict(), "num_classes": num_classes, "state_dict": state, **(extra or {})}
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)


def load_model(path: Path, device: str | torch.device = "cpu") -> DNN:
    """A :class:`DNN` from a model.pt written by :func:`save_model`, in eval mode."""
    payload = torch.load(Path(path), map_location=device, weights_only=True)
    model = DNN(ModelConfig(**payload["model_cfg"]), payload["num_classes"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


@torch.no_grad()
def iter_log_posteriors(model: DNN, frames: Frames, batch_size: int = 4096, temperature: float = 1.0
                        ) -> Iterator[tuple[int, torch.Tensor]]:
    """(first frame, log-softmax(z / T) [b, C] float32 on the model's device) in frame order, batch by batch.

    Streaming form of :func:`log_posteriors` for consumers (top-k soft targets, decoding) that must not hold
    [N, C] at once. Runs in float32: soft targets at high T live in the small logit differences bf16 rounds away.
    """
    for start, logp, _ in iter_log_posteriors_and_targets(model, frames, batch_size, temperature):
        yield start, logp


@torch.no_grad()
def iter_log_posteriors_and_targets(model: DNN, frames: Frames, batch_size: int = 4096, temperature: float = 1.0
                                    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """:func:`iter_log_posteriors` with each batch's targets (on the model's device)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for start, windows, targets in iter_windows(frames, batch_size):
        logits = model(windows.to(device, torch.float32)).float()
        yield start, torch.log_softmax(logits / temperature, dim=-1), targets.to(device)
    model.train(was_training)


def log_posteriors(model: DNN, frame_set: Frames, batch_size: int = 4096, temperature: float = 1.0) -> torch.Tensor:
    """log-softmax(z / T) for every frame of ``frame_set`` in frame order: [N, C] float32 on the CPU.

    Utterance u occupies rows ``frame_set.utt_offsets()[u]`` onwards, ``frame_set.utt_lengths[u]`` of them.
    """
    out = torch.empty(frame_set.num_frames, model.num_classes)
    for start, logp in iter_log_posteriors(model, frame_set, batch_size, temperature):
        out[start:start + logp.shape[0]] = logp.cpu()
    return out


@torch.no_grad()
def frame_accuracy(model: DNN, frames: Frames, batch_size: int = 4096) -> float:
    """Fraction of frames whose arg-max output is the aligned pdf."""
    correct = torch.zeros((), dtype=torch.int64, device=next(model.parameters()).device)
    for _, logp, y in iter_log_posteriors_and_targets(model, frames, batch_size):
        correct += (logp.argmax(-1) == y).sum()
    return int(correct) / max(1, frames.num_frames)
