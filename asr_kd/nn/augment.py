"""Augmentation of the DNN's input windows, drawn afresh for every training step: noise and SpecAugment-style masks.

A "consistent" teacher (:mod:`asr_kd.distillation.distill`) is run inside each student step on exactly the windows
this module hands the student, so the soft targets describe the input the student actually saw; a stored target
describes the clean frame instead. The augmentation works on what the training loop holds, the context windows
of 40-d log-mel fbank after per-speaker CMVN ([B, frames x feat_dim], frame-major: the window's earliest frame's
coefficients first, :mod:`features.context`). Every window draws its own perturbation:

* **Additive noise at a feature-domain SNR.** Gaussian noise of variance 10^(-SNR/10) is added to every coefficient,
  with SNR drawn uniformly from ``snr_db`` per window. After per-speaker CMVN each coefficient has unit variance over
  its speaker's frames, so SNR is the ratio, in dB, of the speaker's own variation of a coefficient to the noise's
  (0 dB: noise as strong as that variation). It is not an acoustic SNR: noise added to the waveform at 20 dB fills
  the quiet mel bins and leaves the loud ones almost untouched, which noise in the normalized log domain cannot
  imitate without the power spectrum, and the stored features keep only the normalized log. Waveform noise is the
  corpus's business (:mod:`asr_kd.corpus.augment`).
* **Time masks**: ``num_masks`` runs of 0 to ``time_mask_frames`` consecutive frames of the window, every
  coefficient of them set to 0, the speaker's mean after CMVN (SpecAugment's choice of the mean).
* **Frequency masks**: ``num_masks`` runs of 0 to ``freq_mask_bins`` consecutive mel bins, set to 0 over every
  frame of the window.

Masks are applied after the noise, so a masked value is exactly the mean. ``prob`` is the chance that a window is
augmented at all; the others pass through unchanged.

The draws come from a ``torch.Generator`` seeded by (training seed, stream, global step) alone, so a run is
reproducible byte for byte, and a run killed and resumed draws the same perturbations as an uninterrupted one. Under
DistributedDataParallel each rank is its own stream: ranks draw different noise for their shares, so N ranks are
reproducible among themselves but do not repeat one process's draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_STREAM_TAG = 0x5EC_A06  # keeps the augmentation's seeds apart from every other seed derived from the training seed


@dataclass
class FeatureAugmentConfig:
    """What perturbs each training window (all off by default; see the module docstring for what each means).

    snr_db: [low, high] of the feature-domain SNR in dB drawn per window (None: no noise).
    time_mask_frames / freq_mask_bins: the widest time / frequency mask (0: none of that kind).
    num_masks: how many masks of each enabled kind a window gets (they may overlap).
    prob: the chance that a window is augmented at all.
    """

    snr_db: list[float] | None = None
    time_mask_frames: int = 0
    freq_mask_bins: int = 0
    num_masks: int = 2
    prob: float = 1.0

    def __post_init__(self) -> None:
        if self.snr_db is not None:
            if len(self.snr_db) != 2 or self.snr_db[0] > self.snr_db[1]:
                raise ValueError(f"snr_db must be [low, high] with low <= high, got {list(self.snr_db)}")
        if self.time_mask_frames < 0 or self.freq_mask_bins < 0:
            raise ValueError("time_mask_frames and freq_mask_bins must be >= 0")
        if self.num_masks < 1:
            raise ValueError(f"num_masks must be >= 1, got {self.num_masks}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {self.prob}")

    @property
    def enabled(self) -> bool:
        """Whether any window can change."""
        return self.prob > 0 and (self.snr_db is not None or self.time_mask_frames > 0 or self.freq_mask_bins > 0)

    def describe(self) -> str:
        """One line for the report, e.g. "noise at 10-30 dB (feature SNR), 2 time masks of <= 5 frames"."""
        if not self.enabled:
            return "none"
        parts = []
        if self.snr_db is not None:
            parts.append(f"noise at {self.snr_db[0]:g}-{self.snr_db[1]:g} dB (feature SNR)")
        if self.time_mask_frames:
            parts.append(f"{self.num_masks} time masks of <= {self.time_mask_frames} frames")
        if self.freq_mask_bins:
            parts.append(f"{self.num_masks} frequency masks of <= {self.freq_mask_bins} bins")
        return ", ".join(parts) + ("" if self.prob == 1.0 else f", on {self.prob:.0%} of windows")


class FeatureAugment:
    """The training loop's input hook (:data:`asr_kd.nn.train.InputFn`): a step's windows -> augmented windows.

    ``frames`` x ``feat_dim`` is the window's layout (left + 1 + right frames of the model's features); ``seed`` is
    the training seed and ``stream`` tells apart processes that train one model together (the DDP rank).
    """

    def __init__(self, cfg: FeatureAugmentConfig, frames: int, feat_dim: int, seed: int, stream: int = 0) -> None:
        self.cfg = cfg
        self.frames = frames
        self.feat_dim = feat_dim
        self.seed = seed
        self.stream = stream

    def generator(self, step: int, device: torch.device) -> torch.Generator:
        """The generator of global step ``step``: a function of (seed, stream, step) only."""
        state = np.random.SeedSequence([_STREAM_TAG, self.seed, self.stream, step]).generate_state(1, np.uint64)[0]
        return torch.Generator(device=device).manual_seed(int(state))

    def __call__(self, windows: torch.Tensor, step: int) -> torch.Tensor:
        """``windows`` [..., frames x feat_dim] (any leading shape, any float dtype) augmented as drawn for ``step``;
        a new tensor of the same shape and dtype (the input is left as it is)."""
        cfg = self.cfg
        shape, dtype, device = windows.shape, windows.dtype, windows.device
        if shape[-1] != self.frames * self.feat_dim:
            raise ValueError(f"windows of width {shape[-1]}, expected {self.frames} frames x {self.feat_dim}")
        x = windows.reshape(-1, self.frames, self.feat_dim).float()
        n = x.shape[0]
        g = self.generator(step, device)
        apply = torch.rand(n, generator=g, device=device) < cfg.prob
        if cfg.snr_db is not None:
            low, high = cfg.snr_db
            snr = low + (high - low) * torch.rand(n, generator=g, device=device)
            sigma = torch.pow(10.0, -snr / 20.0) * apply  # std of noise at that SNR; 0 for windows left clean
            x = x + torch.randn(x.shape, generator=g, device=device) * sigma[:, None, None]
        drop = torch.zeros(n, self.frames, self.feat_dim, dtype=torch.bool, device=device)
        if cfg.time_mask_frames:
            drop |= self._spans(g, n, self.frames, cfg.time_mask_frames)[:, :, None]
        if cfg.freq_mask_bins:
            drop |= self._spans(g, n, self.feat_dim, cfg.freq_mask_bins)[:, None, :]
        x = x.masked_fill(drop & apply[:, None, None], 0.0)
        return x.to(dtype).reshape(shape)

    def _spans(self, g: torch.Generator, n: int, length: int, widest: int) -> torch.Tensor:
        """[n, length] bool: per row, the union of ``num_masks`` runs, each of a width uniform in 0..widest (at most
        ``length``) starting uniformly where it fits."""
        widest = min(widest, length)
        pos = torch.arange(length, device=g.device)
        masked = torch.zeros(n, length, dtype=torch.bool, device=g.device)
        for _ in range(self.cfg.num_masks):
            width = (torch.rand(n, generator=g, device=g.device) * (widest + 1)).long().clamp(max=widest)
            start = (torch.rand(n, generator=g, device=g.device) * (length - width + 1)).long()
            start = torch.minimum(start, length - width)
            masked |= (pos >= start[:, None]) & (pos < (start + width)[:, None])
        return masked
