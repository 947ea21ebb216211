"""Input augmentation of the training windows (noise at a feature-domain SNR, time and frequency masks), the training
loop's input hook, and patient training (``min_epochs``)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from asr_kd.nn.augment import FeatureAugment, FeatureAugmentConfig
from asr_kd.nn.batches import FrameBatch
from asr_kd.nn.frames import FrameSet
from asr_kd.nn.model import PRESETS
from asr_kd.nn.train import MemberState, TrainConfig, train

FRAMES, DIM = 6, 8  # a window of 6 frames of 8 coefficients
TINY = dataclasses.replace(PRESETS["tiny"], left_context=3, right_context=2, feat_dim=DIM)
CLASSES = 4


def augment(seed: int = 0, **kw) -> FeatureAugment:
    return FeatureAugment(FeatureAugmentConfig(**kw), FRAMES, DIM, seed)


def windows(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, FRAMES * DIM, generator=torch.Generator().manual_seed(seed))


def test_augmentation_is_a_function_of_seed_and_step_and_leaves_its_input_alone() -> None:
    x = windows(64)
    before = x.clone()
    full = {"snr_db": [5.0, 20.0], "time_mask_frames": 2, "freq_mask_bins": 3}
    a = augment(**full)(x, 7)
    assert torch.equal(a, augment(**full)(x, 7))  # same config, seed and step: the same bits
    assert torch.equal(x, before) and a.shape == x.shape and a.dtype == x.dtype
    assert not torch.equal(a, x)
    assert not torch.equal(a, augment(**full)(x, 8))  # another step
    assert not torch.equal(a, augment(seed=1, **full)(x, 7))  # another training seed
    other_stream = FeatureAugment(FeatureAugmentConfig(**full), FRAMES, DIM, seed=0, stream=1)
    assert not torch.equal(a, other_stream(x, 7))  # another DDP rank
    # any leading shape (a step's [M, b, D]) and a bf16 step keep their shape and dtype
    stacked = x.view(2, 32, -1).bfloat16()
    out = augment(**full)(stacked, 7)
    assert out.shape == stacked.shape and out.dtype == torch.bfloat16


def test_masks_zero_whole_frames_and_whole_bins_of_a_frame_major_window() -> None:
    x = torch.ones(500, FRAMES * DIM)
    for kind, kw, axis, length, widest in (("time", {"time_mask_frames": 3}, 2, FRAMES, 3),
                                           ("freq", {"freq_mask_bins": 4}, 1, DIM, 4)):
        out = augment(num_masks=1, **kw)(x, 0).view(-1, FRAMES, DIM)
        zero = out == 0
        assert set(out.unique().tolist()) <= {0.0, 1.0}  # masks only: nothing else changed
        whole = zero.all(axis)  # [n, FRAMES] frames zero in every bin / [n, DIM] bins zero in every frame
        assert torch.equal(zero, whole[:, :, None].expand_as(zero) if kind == "time"
                           else whole[:, None, :].expand_as(zero)), kind
        widths = whole.sum(1)
        assert int(widths.max()) == widest and int(widths.min()) == 0  # widths 0..widest are all drawn
        for row in whole[widths > 0]:  # one mask: one run of consecutive frames / bins
            hit = row.nonzero().flatten()
            assert int(hit[-1] - hit[0]) + 1 == len(hit) <= length


def test_two_masks_of_each_kind_and_the_frame_layout_of_the_windows() -> None:
    """A time mask hides whole frames of the windows a FrameSet gathers (earliest frame first)."""
    feats = torch.arange(1, 41, dtype=torch.float32)[:, None].repeat(1, DIM)  # frame t holds t+1 in every bin
    s = FrameSet.from_tensors(feats, torch.zeros(40, dtype=torch.long), ["u"], [40], left=3, right=2)
    w = s.windows(torch.arange(5, 30))
    out = augment(time_mask_frames=2, num_masks=2)(w, 3).view(-1, FRAMES, DIM)
    clean = w.view(-1, FRAMES, DIM)
    kept = (out != 0).all(2)
    assert torch.equal(out[kept], clean[kept])  # frames are kept whole or zeroed whole
    assert int((~kept).sum(1).max()) <= 4 and bool((~kept).any())


@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_noise_variance_is_the_snr_against_unit_variance_features(snr: float) -> None:
    noise = augment(snr_db=[snr, snr])(torch.zeros(4000, FRAMES * DIM), 0)
    assert float(noise.var()) == pytest.approx(10 ** (-snr / 10), rel=0.03)
    assert abs(float(noise.mean())) < 0.01 * 10 ** (-snr / 20)


def test_snr_is_drawn_per_window_within_its_range() -> None:
    wide = FeatureAugment(FeatureAugmentConfig(snr_db=[0.0, 20.0]), 40, 40, seed=0)  # 1600 values: a precise variance
    snr = -10 * torch.log10(wide(torch.zeros(500, 1600), 0).var(1))
    assert float(snr.min()) > -1.0 and float(snr.max()) < 21.0 and float(snr.std()) > 4.0


def test_prob_leaves_the_other_windows_untouched() -> None:
    x = windows(2000)
    out = augment(snr_db=[10.0, 10.0], prob=0.3)(x, 0)
    same = (out == x).all(1).float().mean()
    assert float(same) == pytest.approx(0.7, abs=0.04)
    assert not FeatureAugmentConfig(snr_db=[10.0, 10.0], prob=0.0).enabled
    assert not FeatureAugmentConfig().enabled  # everything off by default


@pytest.mark.parametrize("kw", [{"snr_db": [30.0, 10.0]}, {"snr_db": [10.0]}, {"time_mask_frames": -1},
                                {"freq_mask_bins": -2}, {"num_masks": 0}, {"prob": 1.5}])
def test_bad_augmentation_settings_are_refused(kw: dict) -> None:
    with pytest.raises(ValueError):
        FeatureAugmentConfig(**kw)


def test_a_window_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="6 frames x 8"):
        augment(snr_db=[10.0, 20.0])(torch.zeros(3, 40), 0)


def test_describe_says_what_each_window_gets() -> None:
    cfg = FeatureAugmentConfig(snr_db=[10.0, 30.0], time_mask_frames=5, freq_mask_bins=8, num_masks=2, prob=0.5)
    assert cfg.describe() == ("noise at 10-30 dB (feature SNR), 2 time masks of <= 5 frames, "
                              "2 frequency masks of <= 8 bins, on 50% of windows")
    assert FeatureAugmentConfig().describe() == "none"


# ------------------------------------------------------------------------------------------ the training loop's hook
def frame_set(num_utts: int, seed: int) -> FrameSet:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 20, (num_utts,), generator=g)
    x = torch.randn(int(lengths.sum()), DIM, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return FrameSet.from_tensors(x, y, [f"u{seed}_{i}" for i in range(num_utts)], lengths, left=3, right=2)


def cfg(**kw) -> TrainConfig:
    base = {"batch_size": 32, "epochs": 2, "lr": 3e-3, "progress": False, "seed": 3, "bf16": False,
            "lr_schedule": "constant", "early_stopping": False}
    return TrainConfig(**{**base, **kw})


def test_the_input_hook_feeds_the_model_and_the_loss_and_counts_global_steps(tmp_path: Path) -> None:
    train_set, dev_set = frame_set(12, 0), frame_set(4, 1)
    aug = augment(snr_db=[0.0, 10.0], time_mask_frames=2)
    steps = []

    def input_fn(x: torch.Tensor, step: int) -> torch.Tensor:
        steps.append(step)
        return aug(x, step)

    def loss_fn(logits: torch.Tensor, batch: FrameBatch) -> torch.Tensor:
        clean = train_set.windows(batch.idx)
        assert torch.equal(batch.windows, aug(clean[None], steps[-1])[0])  # the loss sees what the model saw
        assert not torch.equal(batch.windows, clean)
        return torch.nn.functional.cross_entropy(logits.float(), batch.targets)

    train(TINY, cfg(), train_set, dev_set, tmp_path, CLASSES, loss_fn=loss_fn, input_fn=input_fn)
    steps_per_epoch = -(-train_set.num_frames // 32)
    assert steps == list(range(2 * steps_per_epoch))  # global step numbers, on from one epoch to the next


def test_augmented_training_is_reproducible_and_resumes_exactly(tmp_path: Path) -> None:
    train_set, dev_set = frame_set(12, 0), frame_set(4, 1)
    aug = augment(snr_db=[0.0, 10.0], time_mask_frames=2, freq_mask_bins=3)
    runs = {}
    for name in ("a", "b"):
        runs[name] = train(TINY, cfg(epochs=3), train_set, dev_set, tmp_path / name, CLASSES, input_fn=aug)
    plain = train(TINY, cfg(epochs=3), train_set, dev_set, tmp_path / "plain", CLASSES)

    class Killed(Exception):
        pass

    def kill_after_first(epoch: int, rows: list[dict]) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(TINY, cfg(epochs=3), train_set, dev_set, tmp_path / "r", CLASSES, input_fn=aug,
              epoch_callback=kill_after_first)
    resumed = train(TINY, cfg(epochs=3), train_set, dev_set, tmp_path / "r", CLASSES, input_fn=aug)
    model = runs["a"].model_path.read_bytes()
    assert model == runs["b"].model_path.read_bytes() == resumed.model_path.read_bytes()
    assert model != plain.model_path.read_bytes()


# ------------------------------------------------------------------------------------------------- patient training
def test_min_epochs_defers_the_plateau_stop_and_the_rate_stays_at_its_last_reduction() -> None:
    tc = cfg(lr_schedule="plateau", plateau_patience=1, plateau_reductions=2, early_stopping=True, patience=3,
             epochs=100, min_epochs=8)
    s = MemberState()
    factors = []
    for epoch, acc in enumerate([0.40, 0.45, 0.44, 0.44, 0.44, 0.44, 0.44, 0.44], 1):
        s.end_epoch(tc, epoch, 1.0, acc)
        factors.append(s.lr_factor)
        assert (s.stopped is None) == (epoch < 8), epoch  # without min_epochs: plateau converged at epoch 5
    assert factors == [1.0, 1.0, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25]
    assert s.stopped.startswith("plateau converged") and s.best_epoch == 2


def test_min_epochs_defers_early_stopping_then_the_usual_rule_decides() -> None:
    tc = cfg(lr_schedule="cosine", early_stopping=True, patience=2, epochs=100, min_epochs=5)
    s = MemberState()
    stops = []
    for epoch, acc in enumerate([0.40, 0.39, 0.39, 0.39, 0.39], 1):
        s.end_epoch(tc, epoch, 1.0, acc)
        stops.append(s.stopped)
    assert stops[:4] == [None] * 4 and stops[4].startswith("early stopping")  # due at epoch 3, stops at 5
    s = MemberState()
    tc = dataclasses.replace(tc, min_epochs=2)
    for epoch, acc in enumerate([0.40, 0.39, 0.39], 1):
        s.end_epoch(tc, epoch, 1.0, acc)
    assert s.stopped.startswith("early stopping")  # past min_epochs the rule stops when it is due


def test_min_epochs_keeps_training_past_the_plateau_stop(tmp_path: Path) -> None:
    """At rate 0 dev accuracy never moves: the plateau rule ends training at epoch 2, min_epochs keeps it to 5."""
    train_set, dev_set = frame_set(6, 0), frame_set(3, 1)
    tc = cfg(lr=0.0, epochs=10, lr_schedule="plateau", plateau_patience=1, plateau_reductions=0, early_stopping=True,
             patience=10)
    quick = train(TINY, tc, train_set, dev_set, tmp_path / "quick", CLASSES)
    patient = train(TINY, dataclasses.replace(tc, min_epochs=5), train_set, dev_set, tmp_path / "patient", CLASSES)
    assert quick.epochs_run == 2 and patient.epochs_run == 5
    assert patient.best_epoch == 1  # the best-dev weights are still the ones kept


def test_min_epochs_must_fit_the_epoch_cap() -> None:
    with pytest.raises(ValueError, match="min_epochs"):
        TrainConfig(epochs=10, min_epochs=11)
    with pytest.raises(ValueError, match="min_epochs"):
        TrainConfig(min_epochs=-1)
