"""Kaldi-compatible log-mel filterbank and MFCC features, one utterance at a time or batched.

Both go through ``torchaudio.compliance.kaldi`` (a tensor port of Kaldi's feature code) on ``wave * 32768``,
because Kaldi works on 16-bit sample values: energies, and hence the log-mel floor, only match Kaldi on that
scale. ``energy_floor=0`` and ``snip_edges=True`` are Kaldi's defaults, so an utterance of ``n`` samples has
``1 + (n - 400) // 160`` frames at 16 kHz, the same for fbank and MFCC (one alignment serves both).

Batching. torchaudio's functions take a single waveform, and a GPU needs large calls to be busy. Every Kaldi
frame is processed independently of the others (DC removal, pre-emphasis, window, FFT, mel, log are all
per frame), so :func:`compute_fbank_batch` lays the utterances end to end, each starting at a multiple of the
frame shift, runs one call over the concatenation and keeps, for each utterance, the frames that start at its
own offset and lie wholly inside it. Those frames are exactly the utterance's own snip-edges frames, so the
result equals the one-by-one computation up to floating-point summation order of the batched matmul/FFT.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.compliance.kaldi as tak

WaveLike = np.ndarray | torch.Tensor

#: Kaldi computes features on 16-bit sample values; soundfile returns [-1, 1].
INT16_SCALE = 32768.0


@dataclass
class FbankConfig:
    """Options of Kaldi's ``compute-fbank-feats`` (the defaults of the paper-style 40-d log-mel input).

    ``dither`` is 0 (Kaldi's default is 1) so features are deterministic and the batched and one-by-one paths
    agree; TTS audio with digital silence then hits the log floor (log of float epsilon, about -15.9).
    """

    num_mel_bins: int = 40
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    preemphasis_coefficient: float = 0.97
    low_freq: float = 20.0
    high_freq: float = 0.0
    window_type: str = "povey"
    remove_dc_offset: bool = True


@dataclass
class MfccConfig:
    """Options of Kaldi's ``compute-mfcc-feats`` for the GMM stage.

    ``use_energy`` is False, as in most Kaldi recipes' ``conf/mfcc.conf``: c0 carries the energy information.
    """

    num_ceps: int = 13
    num_mel_bins: int = 23
    cepstral_lifter: float = 22.0
    use_energy: bool = False
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    preemphasis_coefficient: float = 0.97
    low_freq: float = 20.0
    high_freq: float = 0.0
    window_type: str = "povey"
    remove_dc_offset: bool = True


def num_frames(num_samples: int, sample_rate: int = 16000, frame_length_ms: float = 25.0,
               frame_shift_ms: float = 10.0) -> int:
    """Number of Kaldi snip-edges frames of an utterance (0 if shorter than one window)."""
    length, shift = _window(sample_rate, frame_length_ms, frame_shift_ms)
    return 0 if num_samples < length else 1 + (num_samples - length) // shift


def _window(sample_rate: int, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int]:
    """Window length and shift in samples, rounded as Kaldi does (``int(sr * ms / 1000)``)."""
    return int(sample_rate * frame_length_ms * 0.001), int(sample_rate * frame_shift_ms * 0.001)


def _as_tensor(wave: WaveLike, device: str | torch.device) -> torch.Tensor:
    t = torch.as_tensor(wave)
    if t.ndim != 1:
        raise ValueError(f"expected a 1-d waveform, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float32)


def _fbank_fn(cfg: FbankConfig, sample_rate: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(scaled: torch.Tensor) -> torch.Tensor:
        return tak.fbank(
            scaled[None], num_mel_bins=cfg.num_mel_bins, frame_length=cfg.frame_length_ms,
            frame_shift=cfg.frame_shift_ms, dither=cfg.dither, preemphasis_coefficient=cfg.preemphasis_coefficient,
            low_freq=cfg.low_freq, high_freq=cfg.high_freq, window_type=cfg.window_type,
            remove_dc_offset=cfg.remove_dc_offset, energy_floor=0.0, snip_edges=True, use_energy=False,
            sample_frequency=float(sample_rate))
    return run


def _mfcc_fn(cfg: MfccConfig, sample_rate: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(scaled: torch.Tensor) -> torch.Tensor:
        return tak.mfcc(
            scaled[None], num_ceps=cfg.num_ceps, num_mel_bins=cfg.num_mel_bins, cepstral_lifter=cfg.cepstral_lifter,
            use_energy=cfg.use_energy, frame_length=cfg.frame_length_ms, frame_shift=cfg.frame_shift_ms,
            dither=cfg.dither, preemphasis_coefficient=cfg.preemphasis_coefficient, low_freq=cfg.low_freq,
            high_freq=cfg.high_freq, window_type=cfg.window_type, remove_dc_offset=cfg.remove_dc_offset,
            energy_floor=0.0, snip_edges=True, sample_frequency=float(sample_rate))
    return run


def _single(wave: WaveLike, fn: Callable[[torch.Tensor], torch.Tensor], dim: int, length: int,
            device: str | torch.device) -> torch.Tensor:
    t = _as_tensor(wave, device)
    if t.numel() < length:  # torchaudio returns a bogus shape for sub-window input; Kaldi gives no frames
        return torch.zeros((0, dim), device=device)
    return fn(t * INT16_SCALE)


def _batch(waves: Sequence[WaveLike], fn: Callable[[torch.Tensor], torch.Tensor], dim: int, length: int,
           shift: int, device: str | torch.device) -> list[torch.Tensor]:
    """Run ``fn`` once over the utterances laid end to end at multiples of ``shift`` (see module docstring)."""
    tensors = [_as_tensor(w, device) for w in waves]
    counts = [0 if t.numel() < length else 1 + (t.numel() - length) // shift for t in tensors]
    slots = [-(-max(t.numel(), 1) // shift) for t in tensors]  # frame-shift slots each utterance occupies
    starts = np.concatenate([[0], np.cumsum(slots)[:-1]]).astype(np.int64)
    if not any(counts):
        return [torch.zeros((0, dim), device=device) for _ in tensors]
    total = int(sum(slots)) * shift
    joined = torch.zeros(total, device=device)
    for t, s in zip(tensors, starts):
        joined[s * shift:s * shift + t.numel()] = t
    feats = fn(joined * INT16_SCALE)
    return [feats[s:s + c] if c else feats.new_zeros((0, dim)) for s, c in zip(starts.tolist(), counts)]


def compute_fbank(wave: WaveLike, sample_rate: int = 16000, cfg: FbankConfig | None = None,
                  device: str = "cpu") -> torch.Tensor:
    """Log-mel filterbank ``[T, num_mel_bins]`` of one utterance (float samples in [-1, 1]), on ``device``."""
    cfg = cfg or FbankConfig()
    length, _ = _window(sample_rate, cfg.frame_length_ms, cfg.frame_shift_ms)
    return _single(wave, _fbank_fn(cfg, sample_rate), cfg.num_mel_bins, length, device)


def compute_fbank_batch(waves: Sequence[WaveLike], sample_rate: int = 16000, cfg: FbankConfig | None = None,
                        device: str = "cpu") -> list[torch.Tensor]:
    """:func:`compute_fbank` of many utterances in one torchaudio call (for GPU throughput)."""
    cfg = cfg or FbankConfig()
    length, shift = _window(sample_rate, cfg.frame_length_ms, cfg.frame_shift_ms)
    return _batch(waves, _fbank_fn(cfg, sample_rate), cfg.num_mel_bins, length, shift, device)


def compute_mfcc(wave: WaveLike, sample_rate: int = 16000, cfg: MfccConfig | None = None,
                 device: str = "cpu") -> torch.Tensor:
    """MFCC ``[T, num_ceps]`` of one utterance, same framing as :func:`compute_fbank`."""
    cfg = cfg or MfccConfig()
    length, _ = _window(sample_rate, cfg.frame_length_ms, cfg.frame_shift_ms)
    return _single(wave, _mfcc_fn(cfg, sample_rate), cfg.num_ceps, length, device)


def compute_mfcc_batch(waves: Sequence[WaveLike], sample_rate: int = 16000, cfg: MfccConfig | None = None,
                       device: str = "cpu") -> list[torch.Tensor]:
    """:func:`compute_mfcc` of many utterances in one torchaudio call."""
    cfg = cfg or MfccConfig()
    length, shift = _window(sample_rate, cfg.frame_length_ms, cfg.frame_shift_ms)
    return _batch(waves, _mfcc_fn(cfg, sample_rate), cfg.num_ceps, length, shift, device)
