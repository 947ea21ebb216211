"""Deterministic acoustic augmentation: speed, small pitch shifts, reverb, telephone band, additive noise.

Clean TTS is too easy and too uniform; the corpus difficulty is a dial (on the built-in voices, noise and reverb
move a DNN's dev frame accuracy over a range of tens of points; recipes/synth/conf/tiny.yaml sets it to the
paper's regime). Every choice is drawn from a generator
seeded by the corpus seed and the utterance id, never from the clock, so a rebuild reproduces every sample bit
for bit, and the result does not depend on which worker processed which utterance.

sox does the signal processing it is good at (speed with resampling, WSOLA pitch shift, Schroeder reverb,
band-pass) in one pipe; it runs with ``-R`` (repeatable) and ``-D`` (no dither), which makes it deterministic.
Noise is added here in numpy, because babble needs other utterances and the SNR must be exact.
"""
from __future__ import annotations

import subprocess
import zlib
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000


@dataclass
class AugmentConfig:
    """Probabilities and ranges of each perturbation (each utterance draws its own chain)."""

    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)  # Kaldi's classic 3-way speed perturbation
    pitch_prob: float = 0.3
    pitch_cents: float = 120.0  # +- range; larger shifts make diphone voices sound broken
    reverb_prob: float = 0.4
    telephone_prob: float = 0.1
    noise_prob: float = 0.6
    snr_db: tuple[float, float] = (5.0, 25.0)
    noise_kinds: tuple[str, ...] = ("white", "pink", "babble")
    babble_talkers: int = 3


@dataclass(frozen=True)
class Augmentation:
    """The chain drawn for one utterance (recorded in ``utt2aug`` so results can be broken down by it)."""

    speed: float
    pitch_cents: float | None
    reverberance: float | None
    telephone: bool
    noise: str | None
    snr_db: float | None

    def describe(self) -> str:
        parts = [f"speed={self.speed:g}"]
        if self.pitch_cents is not None:
            parts.append(f"pitch={self.pitch_cents:+.0f}c")
        if self.reverberance is not None:
            parts.append(f"reverb={self.reverberance:.0f}")
        if self.telephone:
            parts.append("telephone")
        if self.noise is not None:
            parts.append(f"{self.noise}@{self.snr_db:.1f}dB")
        return ",".join(parts)


def utterance_rng(seed: int, utt_id: str) -> np.random.Generator:
    """A generator that depends only on the corpus seed and the utterance id (stable across processes)."""
    return np.random.default_rng([seed, zlib.crc32(utt_id.encode("utf-8"))])


def draw_augmentation(rng: np.random.Generator, cfg: AugmentConfig) -> Augmentation:
    speed = float(cfg.speed_factors[rng.integers(len(cfg.speed_factors))])
    pitch = float(rng.uniform(-cfg.pitch_cents, cfg.pitch_cents)) if rng.random() < cfg.pitch_prob else None
    reverb = float(rng.uniform(20.0, 70.0)) if rng.random() < cfg.reverb_prob else None
    telephone = bool(rng.random() < cfg.telephone_prob)
    noise, snr = None, None
    if rng.random() < cfg.noise_prob:
        noise = str(cfg.noise_kinds[rng.integers(len(cfg.noise_kinds))])
        snr = float(rng.uniform(*cfg.snr_db))
    return Augmentation(speed, pitch, reverb, telephone, noise, snr)


def _sox_effects(aug: Augmentation) -> list[str]:
    effects: list[str] = []
    if aug.speed != 1.0:
        effects += ["speed", f"{aug.speed:g}"]
    if aug.pitch_cents is not None:
        effects += ["pitch", f"{aug.pitch_cents:.1f}"]
    if aug.reverberance is not None:
        # reverberance, HF damping, room scale: a small-to-medium room.
        effects += ["reverb", f"{aug.reverberance:.1f}", "50", "60"]
    if aug.telephone:
        effects += ["sinc", "300-3400"]
    return effects


def run_sox(audio: np.ndarray, effects: list[str]) -> np.ndarray:
    """Pipe float32 audio through a sox effect chain; output is 16 kHz float32 again."""
    if not effects:
        return audio
    fmt = ["-t", "f32", "-r", str(SAMPLE_RATE), "-c", "1"]
    proc = subprocess.run(
        ["sox", "-R", "-D", "-V1", *fmt, "-", *fmt, "-", *effects],
        input=np.ascontiguousarray(audio, dtype=np.float32).tobytes(), capture_output=True, check=True,
    )
    return np.frombuffer(proc.stdout, dtype=np.float32).copy()


def _mean_power(x: np.ndarray) -> float:
    """Mean of squares, accumulated in float64 over a fresh contiguous copy.

    The copy makes the result a function of the values alone, never of where they sit in memory: numpy sums
    an aligned array in one pairwise pass, but one that is not aligned to its dtype (a view at an odd offset
    into a byte buffer) in buffered chunks, in another order, to another float32 result. float64 keeps the
    rounding of a long sum of squares far below what a 16-bit wav can show.
    """
    x64 = np.array(x, dtype=np.float64, order="C", copy=True)
    return float(np.mean(x64 * x64))


def _noise(kind: str, n: int, rng: np.random.Generator, babble_bank: list[np.ndarray], talkers: int) -> np.ndarray:
    if kind == "white":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "pink":
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.arange(len(spectrum), dtype=np.float64)
        freqs[0] = 1.0
        return np.fft.irfft(spectrum / np.sqrt(freqs), n).astype(np.float32)
    if kind == "babble":
        if not babble_bank:
            raise ValueError("babble noise needs a non-empty bank of utterances")
        out = np.zeros(n, dtype=np.float32)
        for _ in range(talkers):
            src = babble_bank[rng.integers(len(babble_bank))]
            src = src / np.float32(np.sqrt(_mean_power(src)) + 1e-9)
            tiled = np.tile(src, n // len(src) + 2)
            offset = int(rng.integers(len(src)))
            out += tiled[offset:offset + n]
        return out
    raise ValueError(f"unknown noise kind {kind!r}")


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Mix ``noise`` into ``audio`` at exactly ``snr_db`` (powers over the whole utterance)."""
    p_signal = _mean_power(audio)
    p_noise = _mean_power(noise) + 1e-12
    scale = np.sqrt(p_signal / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (audio + scale * noise).astype(np.float32)


def apply_augmentation(
    audio: np.ndarray, aug: Augmentation, rng: np.random.Generator, cfg: AugmentConfig, babble_bank: list[np.ndarray]
) -> np.ndarray:
    """Return the augmented signal; its timings are the clean ones divided by ``aug.speed``.

    Peaks are limited to 0.95 by scaling (not clipping), so 16-bit storage never wraps.
    """
    out = run_sox(audio, _sox_effects(aug))
    if aug.noise is not None and aug.snr_db is not None:
        out = add_noise(out, _noise(aug.noise, len(out), rng, babble_bank, cfg.babble_talkers), aug.snr_db)
    peak = float(np.max(np.abs(out))) if len(out) else 0.0
    if peak > 0.95:
        out = out * (0.95 / peak)
    return out
