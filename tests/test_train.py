"""Frame sets, the training loop, checkpoints and exact resume, posteriors, priors."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_kd.nn.frames import FrameSet, load_frameset
from asr_kd.nn.model import PRESETS
from asr_kd.nn.priors import DISABLED_LOG_PRIOR, log_priors
from asr_kd.nn.inference import frame_accuracy, load_model, log_posteriors
from asr_kd.nn.batches import FrameBatch, epoch_seed
from asr_kd.nn.device import autocast
from asr_kd.nn.model import DNN
from asr_kd.nn.train import MemberState, TrainConfig, base_lr, train
from features.cmvn import compute_cmvn_stats
from features.errors import InputError
from features.kaldi_io import write_mat_ark_scp, write_vec_int_ark_scp

TINY = dataclasses.replace(PRESETS["tiny"], left_context=2, right_context=1, feat_dim=8)
CLASSES = 6


def structured_set(num_utts: int, seed: int) -> FrameSet:
    """Random features whose label is a fixed function of the frame and its left neighbour (learnable, not trivial)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 30, (num_utts,), generator=g)
    x = torch.randn(int(lengths.sum()), TINY.feat_dim, generator=g)
    prev = torch.roll(x, 1, 0)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] + prev[:, 2] > 0).long() + (x[:, 3] > 1.0).long()
    return FrameSet.from_tensors(x, y.clamp(max=CLASSES - 1), [f"utt{seed}_{i}" for i in range(num_utts)], lengths,
                                 left=TINY.left_context, right=TINY.right_context)


def cfg(**kw) -> TrainConfig:
    base = {"batch_size": 32, "epochs": 3, "lr": 3e-3, "progress": False, "seed": 3}
    return TrainConfig(**{**base, **kw})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_frameset_subset_keeps_each_utterances_frames() -> None:
    s = structured_set(6, 0)
    sub = s.subset(["utt0_4", "utt0_1"])
    offsets = s.utt_offsets()
    expect = torch.cat([s.feats[offsets[i]:offsets[i] + s.utt_lengths[i]] for i in (4, 1)])
    assert torch.equal(sub.feats, expect)
    assert sub.utt_lengths.tolist() == [int(s.utt_lengths[4]), int(s.utt_lengths[1])]
    parent_idx = s.frame_indices(["utt0_4", "utt0_1"])
    assert torch.equal(s.targets[parent_idx], sub.targets) and torch.equal(s.feats[parent_idx], sub.feats)
    # windows never leave the utterance: the first frame's left context is itself
    first = sub.windows(torch.tensor([0])).view(-1, TINY.feat_dim)
    assert torch.equal(first[0], sub.feats[0]) and torch.equal(first[2], sub.feats[0])
    with pytest.raises(KeyError):
        s.subset(["nope"])


def write_split(root: Path, lengths: dict[str, int], ali_lengths: dict[str, int],
                failed: list[str]) -> tuple[Path, Path]:
    """A data/fbank/<split> dir (one speaker per two utterances) and an exp/tri1_ali/<split> dir."""
    rng = np.random.default_rng(0)
    feats_dir, ali_dir = root / "fbank", root / "ali"
    feats_dir.mkdir()
    ali_dir.mkdir()
    mats = {u: rng.normal(3.0, 2.0, (n, 40)).astype(np.float32) for u, n in lengths.items()}
    spk = {u: f"spk{i // 2}" for i, u in enumerate(sorted(mats))}
    write_mat_ark_scp(sorted(mats.items()), feats_dir / "feats.ark", feats_dir / "feats.scp")
    (feats_dir / "utt2spk").write_text("".join(f"{u} {spk[u]}\n" for u in sorted(mats)))
    stats = {k: compute_cmvn_stats([mats[u] for u in mats if spk[u] == k]) for k in sorted(set(spk.values()))}
    write_mat_ark_scp(sorted(stats.items()), feats_dir / "cmvn.ark", feats_dir / "cmvn.scp")
    alis = [(u, np.arange(n, dtype=np.int32) % 7) for u, n in sorted(ali_lengths.items())]
    write_vec_int_ark_scp(alis, ali_dir / "pdf.ark", ali_dir / "pdf.scp")
    (ali_dir / "failed.txt").write_text("".join(f"{u}\n" for u in failed))
    return feats_dir, ali_dir


def test_load_frameset_joins_features_and_alignments(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lengths = {"a1": 30, "a2": 12, "b1": 25, "b2": 40}
    feats_dir, ali_dir = write_split(tmp_path, lengths, {u: n for u, n in lengths.items() if u != "b1"}, ["b1"])
    with caplog.at_level("INFO"):
        s = load_frameset(feats_dir, ali_dir, left=3, right=1)
    assert s.utt_ids == ["a1", "a2", "b2"] and s.utt_lengths.tolist() == [30, 12, 40]
    assert "1 excluded" in caplog.text
    assert s.num_frames == 82 and s.targets.dtype == torch.int64 and s.targets[:8].tolist() == [0, 1, 2, 3, 4, 5, 6, 0]
    # per-speaker CMVN with variances: speaker spk0 (a1, a2) has zero mean and unit variance
    spk0 = s.feats[:42]
    assert spk0.mean(0).abs().max() < 1e-4 and (spk0.std(0, unbiased=False) - 1).abs().max() < 1e-3
    assert s.windows.output_dim == 5 * 40


def test_load_frameset_names_the_utterance_with_a_frame_count_mismatch(tmp_path: Path) -> None:
    feats_dir, ali_dir = write_split(tmp_path, {"a1": 30, "a2": 12}, {"a1": 30, "a2": 11}, [])
    with pytest.raises(InputError, match=r"pdf.scp:2: utterance a2: 11 alignment frames but 12"):
        load_frameset(feats_dir, ali_dir)


def test_frameset_rejects_inconsistent_lengths() -> None:
    with pytest.raises(ValueError):
        FrameSet.from_tensors(torch.zeros(10, 4), torch.zeros(10), ["a", "b"], [3, 4])


def test_tiny_model_overfits_a_tiny_batch(tmp_path: Path) -> None:
    s = structured_set(3, 1)
    res = train(TINY, cfg(epochs=40, batch_size=s.num_frames, lr=1e-2, early_stopping=False, lr_schedule="constant"),
                s, s, tmp_path, CLASSES)
    losses = [r["train_loss"] for r in res.history]
    assert losses[-1] < 0.2 * losses[0]
    assert res.history[-1]["dev_acc"] > 0.95 > res.history[0]["dev_acc"]


def test_kill_and_resume_gives_identical_weights(tmp_path: Path) -> None:
    train_set, dev_set = structured_set(30, 2), structured_set(8, 3)
    tc = cfg(epochs=3, early_stopping=False)
    model_cfg = dataclasses.replace(TINY, dropout=0.2)  # dropout makes the RNG state part of what must resume
    full = train(model_cfg, tc, train_set, dev_set, tmp_path / "full", CLASSES)

    class Killed(Exception):
        pass

    def kill_after_first(epoch: int, rows: list[dict]) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(model_cfg, tc, train_set, dev_set, tmp_path / "killed", CLASSES, epoch_callback=kill_after_first)
    assert (tmp_path / "killed" / "checkpoint.pt").exists() and not (tmp_path / "killed" / "model.pt").exists()
    resumed = train(model_cfg, tc, train_set, dev_set, tmp_path / "killed", CLASSES)

    a, b = weights(full.model_path), weights(resumed.model_path)
    assert all(torch.equal(a[k], b[k]) for k in a)

    def strip(h: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("seconds", "frames_per_s")} for r in h]

    assert strip(full.history) == strip(resumed.history) and len(full.history) == 3


def reference_training(train_set: FrameSet, tc: TrainConfig) -> tuple[dict[str, torch.Tensor], list[tuple]]:
    """The training loop written plainly: every epoch a permutation of all frames from the seed's generator, windows
    by advanced indexing of clamped positions, cross-entropy under autocast, Adam, arg-max train accuracy."""
    torch.manual_seed(tc.seed)
    model = DNN(TINY, CLASSES)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    cw = train_set.windows
    rows = []
    for epoch in range(1, tc.epochs + 1):
        perm = torch.randperm(train_set.num_frames, generator=torch.Generator().manual_seed(epoch_seed(tc.seed, epoch)))
        loss_sum, correct = 0.0, 0
        for k in range(0, train_set.num_frames, tc.batch_size):
            idx = perm[k:k + tc.batch_size]
            positions = torch.minimum(torch.maximum(idx[:, None] + cw.offsets, cw.first[idx].long()[:, None]),
                                      cw.last[idx].long()[:, None])
            x, y = train_set.feats[positions].reshape(len(idx), -1), train_set.targets[idx]
            with autocast(torch.device("cpu"), bool(tc.bf16)):
                logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y, reduction="none").mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach().double()) * len(idx)
            correct += int((logits.float().argmax(-1) == y).sum())
        rows.append((loss_sum / train_set.num_frames, correct / train_set.num_frames))
    return {k: v.detach() for k, v in model.state_dict().items()}, rows


@pytest.mark.parametrize("bf16", [False, True])
def test_training_loop_is_bitwise_the_plain_loop(tmp_path: Path, bf16: bool) -> None:
    """What the loop does for speed (padded windows, gathered in the first layer's dtype, max instead of arg-max)
    changes no bit of the weights and no digit of the train metrics: the in-memory results stay what they were."""
    train_set = structured_set(40, 8)
    tc = cfg(epochs=3, early_stopping=False, lr_schedule="constant", batch_size=37, bf16=bf16)
    res = train(TINY, tc, train_set, structured_set(5, 9), tmp_path, CLASSES)
    want, rows = reference_training(train_set, tc)
    got = weights(res.model_path)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert [r["train_acc"] for r in res.history] == [acc for _, acc in rows]
    assert [r["train_loss"] for r in res.history] == [pytest.approx(loss, rel=1e-12) for loss, _ in rows]


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path) -> None:
    train_set, dev_set = structured_set(3, 4), structured_set(10, 5)  # 3 utterances: overfits, dev peaks early
    res = train(TINY, cfg(epochs=30, patience=2, lr=1e-2, lr_schedule="constant", batch_size=16),
                train_set, dev_set, tmp_path, CLASSES)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    dev = [r["dev_acc"] for r in metrics["epochs"]]
    assert metrics["stopped"].startswith("early stopping") and len(dev) < 30
    assert metrics["best_epoch"] == 1 + int(np.argmax(dev)) == len(dev) - 2
    model = load_model(res.model_path)
    assert frame_accuracy(model, dev_set) == pytest.approx(max(dev), abs=1e-6)


def test_newbob_halves_on_plateau_then_stops() -> None:
    tc = cfg(lr_schedule="newbob", newbob_metric="loss", early_stopping=False, epochs=100)
    s = MemberState()
    for epoch, loss in enumerate([2.0, 1.5, 1.49, 1.45, 1.4499], start=1):
        s.end_epoch(tc, epoch, loss, 0.5)
        if epoch == 2:
            assert s.lr_factor == 1.0 and not s.halving  # 25% better: keep the rate
    # 1.5 -> 1.49 is < 1% better: halving starts (0.5), 1.45 halves again, 1.4499 is < 0.1% better: stop
    assert s.lr_factor == 0.25 and s.stopped.startswith("newbob")


def test_newbob_on_dev_accuracy_ignores_dev_loss() -> None:
    tc = cfg(lr_schedule="newbob", newbob_metric="acc", early_stopping=False, epochs=100)
    s = MemberState()
    # dev loss rises (over-confidence) while accuracy still gains 3, 2, 0.5 and 0.05 points
    for epoch, (loss, acc) in enumerate([(2.0, 0.40), (2.1, 0.43), (2.2, 0.45), (2.3, 0.455), (2.4, 0.4555)], 1):
        s.end_epoch(tc, epoch, loss, acc)
        if epoch == 3:
            assert s.lr_factor == 1.0 and s.stopped is None
    assert s.lr_factor == 0.5 and s.stopped.startswith("newbob") and s.best_epoch == 5


def test_plateau_lowers_the_rate_only_when_dev_accuracy_stalls_then_stops() -> None:
    tc = cfg(lr_schedule="plateau", plateau_patience=1, plateau_reductions=2, early_stopping=True, patience=3,
             epochs=100)
    s = MemberState()
    factors = []
    # slow gains keep the full rate (newbob would halve after the 0.2-point epoch); stalls halve it
    for epoch, acc in enumerate([0.40, 0.45, 0.452, 0.451, 0.46, 0.465, 0.462, 0.47, 0.469], 1):
        s.end_epoch(tc, epoch, 1.0, acc)
        factors.append(s.lr_factor)
        assert s.stopped is None or epoch == 9
    assert factors == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    assert s.stopped.startswith("plateau converged") and s.reductions == 2 and s.best_epoch == 8


def test_plateau_patience_counts_stalled_epochs_in_a_row() -> None:
    tc = cfg(lr_schedule="plateau", plateau_patience=2, plateau_reductions=1, early_stopping=False, epochs=100)
    s = MemberState()
    for epoch, acc in enumerate([0.40, 0.39, 0.41, 0.40, 0.40], 1):
        s.end_epoch(tc, epoch, 1.0, acc)
    assert s.lr_factor == 0.5 and s.stopped is None  # one stall of 1 epoch (ignored), then 2 in a row
    s.end_epoch(tc, 6, 1.0, 0.40)
    s.end_epoch(tc, 7, 1.0, 0.40)
    assert s.stopped.startswith("plateau converged") and s.lr_factor == 0.5


def test_cosine_schedule_with_warmup() -> None:
    tc = cfg(lr_schedule="cosine", lr=1.0, warmup_steps=10)
    assert base_lr(tc, 0, 110) == pytest.approx(0.1)
    assert base_lr(tc, 10, 110) == pytest.approx(1.0)
    assert base_lr(tc, 60, 110) == pytest.approx(0.5)
    assert base_lr(tc, 110, 110) == pytest.approx(0.0, abs=1e-12)


def test_loss_hook_sees_train_frame_indices_and_drives_training(tmp_path: Path) -> None:
    s = structured_set(4, 6)
    shifted = (s.targets + 1) % CLASSES  # a different labelling the hook trains towards

    def loss_fn(logits: torch.Tensor, batch: FrameBatch) -> torch.Tensor:
        assert torch.equal(s.targets[batch.idx], batch.targets)
        return torch.nn.functional.cross_entropy(logits.float(), shifted[batch.idx])

    res = train(TINY, cfg(epochs=30, lr=1e-2, early_stopping=False, lr_schedule="constant"), s, s, tmp_path,
                CLASSES, loss_fn=loss_fn)
    model = load_model(res.model_path)
    pred = log_posteriors(model, s).argmax(-1)
    assert (pred == shifted).float().mean() > 0.9


def test_log_posteriors_are_tempered_log_softmax_in_frame_order(tmp_path: Path) -> None:
    s = structured_set(5, 7)
    res = train(TINY, cfg(epochs=1), s, s, tmp_path, CLASSES)
    model = load_model(res.model_path)
    lp = log_posteriors(model, s, batch_size=13, temperature=2.0)
    with torch.no_grad():
        z = model(s.windows(torch.arange(s.num_frames)))
    torch.testing.assert_close(lp, torch.log_softmax(z / 2.0, -1))
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(s.num_frames))
    assert frame_accuracy(model, s) == pytest.approx((z.argmax(-1) == s.targets).float().mean().item())


def test_log_priors() -> None:
    lp = log_priors(np.array([30, 10, 0, 60]), floor=1e-3)
    assert lp[[0, 1, 3]] == pytest.approx(np.log([0.3, 0.1, 0.6]), rel=1e-6)
    assert lp[2] == DISABLED_LOG_PRIOR and math.isfinite(lp[2])
    with pytest.raises(ValueError):
        log_priors(np.zeros(3))
