"""Kaldi compatibility of fbank/MFCC (against kaldi-native-fbank, a C++ port of Kaldi's feature code),
the batched path, and Kaldi add-deltas semantics."""
from __future__ import annotations

import subprocess

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch

from features.audio import load_audio
from features.deltas import add_deltas, delta_windows
from features.fbank import (
    FbankConfig,
    MfccConfig,
    compute_fbank,
    compute_fbank_batch,
    compute_mfcc,
    compute_mfcc_batch,
    num_frames,
)

# Measured max-abs differences to kaldi-native-fbank (float32 both): fbank 6.3e-5 on noise; on espeak-ng speech
# up to 1.7e-3 over four sentences, all in near-silent bins (mel energy < e^5 in 16-bit units, ~80 dB below
# speech) where float32 FFT rounding is large relative to the energy; louder bins up to 4.1e-4. MFCC (cepstra
# reach ~120): 3.3e-4 on noise, up to 2.3e-3 on speech. Bounds leave ~2-4x headroom.
TOL = {"noise": {"fbank": 2.5e-4, "loud_fbank": 2.5e-4, "mfcc": 1e-3},
       "tts": {"fbank": 4e-3, "loud_fbank": 1e-3, "mfcc": 6e-3}}
LOUD = 5.0  # log mel energy above which a bin counts as "loud"


@pytest.fixture(scope="module")
def tts_wave(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A real TTS utterance (espeak-ng writes 22.05 kHz, so this also exercises resampling to 16 kHz)."""
    wav = tmp_path_factory.mktemp("tts") / "utt.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Seven bright kites drifted over the quiet harbour."], check=True)
    return load_audio(str(wav), 16000)


@pytest.fixture(scope="module")
def noise_wave() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(16000 * 2) * 0.1).astype(np.float32)


def _knf_frames(extractor: knf.OnlineFbank | knf.OnlineMfcc, wave: np.ndarray) -> np.ndarray:
    extractor.accept_waveform(16000, (wave * 32768).tolist())
    extractor.input_finished()
    return np.stack([extractor.get_frame(i) for i in range(extractor.num_frames_ready)])


def _knf_fbank(wave: np.ndarray) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = 40
    opts.energy_floor = 0.0
    return _knf_frames(knf.OnlineFbank(opts), wave)


def _knf_mfcc(wave: np.ndarray) -> np.ndarray:
    opts = knf.MfccOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = 23
    opts.num_ceps = 13
    opts.use_energy = False
    opts.energy_floor = 0.0
    return _knf_frames(knf.OnlineMfcc(opts), wave)


@pytest.mark.parametrize("which", ["noise", "tts"])
def test_fbank_matches_kaldi_native_fbank(which: str, request: pytest.FixtureRequest) -> None:
    wave = request.getfixturevalue(f"{which}_wave")
    ours = compute_fbank(wave).numpy()
    ref = _knf_fbank(wave)
    assert ours.shape == ref.shape == (1 + (len(wave) - 400) // 160, 40)
    diff = np.abs(ours - ref)
    assert diff.max() < TOL[which]["fbank"]
    assert diff[ref > LOUD].max() < TOL[which]["loud_fbank"]


@pytest.mark.parametrize("which", ["noise", "tts"])
def test_mfcc_matches_kaldi_native_fbank(which: str, request: pytest.FixtureRequest) -> None:
    wave = request.getfixturevalue(f"{which}_wave")
    ours = compute_mfcc(wave).numpy()
    ref = _knf_mfcc(wave)
    assert ours.shape == ref.shape == (1 + (len(wave) - 400) // 160, 13)
    assert np.abs(ours - ref).max() < TOL[which]["mfcc"]


def test_digital_silence_hits_the_log_floor_not_minus_infinity() -> None:
    feats = compute_fbank(np.zeros(1600, dtype=np.float32)).numpy()
    assert np.isfinite(feats).all()
    np.testing.assert_allclose(feats, np.log(np.finfo(np.float32).eps), rtol=1e-6)


def test_frame_counts_follow_snip_edges() -> None:
    for n in (0, 399, 400, 559, 560, 16000, 16001):
        expected = 0 if n < 400 else 1 + (n - 400) // 160
        assert num_frames(n) == expected
        assert compute_fbank(np.zeros(n, dtype=np.float32) + 0.01).shape == (expected, 40)
        assert compute_mfcc(np.zeros(n, dtype=np.float32) + 0.01).shape == (expected, 13)


def test_batch_equals_one_by_one(tts_wave: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    waves = [tts_wave, (rng.standard_normal(399) * 0.1).astype(np.float32),
             (rng.standard_normal(400) * 0.1).astype(np.float32)]
    waves += [(rng.standard_normal(int(n)) * 0.2).astype(np.float32) for n in rng.integers(401, 30000, size=6)]
    for single, batch in ((compute_fbank, compute_fbank_batch), (compute_mfcc, compute_mfcc_batch)):
        batched = batch(waves)
        assert len(batched) == len(waves)
        for wave, got in zip(waves, batched):
            want = single(wave)
            assert got.shape == want.shape == (num_frames(len(wave)), want.shape[1])
            # Only the summation order of the batched FFT/matmul differs: measured <= 2e-6 (fbank), 6e-5 (MFCC).
            torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-5)


def test_batch_of_only_short_utterances_gives_empty_matrices() -> None:
    out = compute_fbank_batch([np.zeros(10, dtype=np.float32), np.zeros(399, dtype=np.float32)])
    assert [tuple(t.shape) for t in out] == [(0, 40), (0, 40)]


def test_config_is_honoured(noise_wave: np.ndarray) -> None:
    feats = compute_fbank(noise_wave, cfg=FbankConfig(num_mel_bins=80, frame_shift_ms=20.0))
    assert feats.shape == (1 + (len(noise_wave) - 400) // 320, 80)
    assert compute_mfcc(noise_wave, cfg=MfccConfig(num_ceps=20)).shape[1] == 20


def _direct_deltas(x: np.ndarray, order: int, window: int) -> np.ndarray:
    """Kaldi DeltaFeatures written out frame by frame: the i-th order window is the i-fold convolution of
    w_j = j / sum_k k^2 (j = -window..window), applied with indices clamped into the utterance."""
    first = np.array([j / sum(k * k for k in range(-window, window + 1)) for j in range(-window, window + 1)])
    windows = [np.array([1.0])]
    for _ in range(order):
        windows.append(np.convolve(windows[-1], first))
    num_frames_, dim = x.shape
    out = np.zeros((num_frames_, dim * (order + 1)))
    for t in range(num_frames_):
        for i, w in enumerate(windows):
            half = (len(w) - 1) // 2
            for j in range(-half, half + 1):
                out[t, i * dim:(i + 1) * dim] += w[j + half] * x[min(max(t + j, 0), num_frames_ - 1)]
    return out


@pytest.mark.parametrize("num_frames_", [1, 3, 9, 40])
def test_add_deltas_matches_direct_formula_and_kaldi_native_fbank(num_frames_: int) -> None:
    x = np.random.default_rng(num_frames_).standard_normal((num_frames_, 13)).astype(np.float32)
    ours = add_deltas(x)
    assert ours.shape == (num_frames_, 39) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _direct_deltas(x, 2, 2), atol=1e-5)
    np.testing.assert_allclose(ours, knf.compute_deltas(knf.DeltaOptions(), x), atol=1e-5)
    np.testing.assert_array_equal(ours[:, :13], x)


def test_delta_windows_are_kaldis() -> None:
    first, second = delta_windows(2, 2)[1:]
    np.testing.assert_allclose(first, np.array([-2, -1, 0, 1, 2]) / 10)
    assert len(second) == 9 and abs(second.sum()) < 1e-12
    assert second[4] == pytest.approx(-0.1)  # centre tap: sum_j w_j * w_-j = -sum_j j^2 / 100
    # A linear ramp (away from the edges) has delta = slope and delta-delta = 0.
    ramp = np.arange(30, dtype=np.float32)[:, None] * 0.5
    d = add_deltas(ramp)
    np.testing.assert_allclose(d[5:-5, 1], 0.5, atol=1e-6)
    np.testing.assert_allclose(d[5:-5, 2], 0.0, atol=1e-6)


def test_add_deltas_empty_input() -> None:
    assert add_deltas(np.zeros((0, 13), dtype=np.float32)).shape == (0, 39)
