"""Ensemble averaging, stacked vs sequential member training, rank assignment, evaluation."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from asr_kd.distillation.ensemble import (
    EnsembleConfig,
    combine_log_probs,
    ensemble_log_posteriors,
    evaluate_ensemble,
    members_for_rank,
    train_ensemble,
)
from asr_kd.nn.frames import FrameSet
from asr_kd.nn.model import PRESETS
from asr_kd.nn.inference import load_model, log_posteriors
from asr_kd.nn.train import TrainConfig

TINY = dataclasses.replace(PRESETS["tiny"], left_context=2, right_context=1, feat_dim=8)
CLASSES = 5


def structured_set(num_utts: int, seed: int) -> FrameSet:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 30, (num_utts,), generator=g)
    x = torch.randn(int(lengths.sum()), TINY.feat_dim, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] + torch.roll(x, 1, 0)[:, 2] > 0).long() + (x[:, 3] > 1.0).long()
    return FrameSet.from_tensors(x, y.clamp(max=CLASSES - 1), [f"u{seed}_{i}" for i in range(num_utts)], lengths,
                                 left=TINY.left_context, right=TINY.right_context)


def test_arithmetic_and_geometric_means_on_hand_made_probabilities() -> None:
    p1 = torch.tensor([[0.7, 0.2, 0.1]])
    p2 = torch.tensor([[0.1, 0.3, 0.6]])
    lp = torch.stack([p1.log(), p2.log()])
    arith = combine_log_probs(lp, "arith").exp()
    torch.testing.assert_close(arith, torch.tensor([[0.4, 0.25, 0.35]]))
    geo_unnorm = torch.tensor([[math.sqrt(0.07), math.sqrt(0.06), math.sqrt(0.06)]])
    torch.testing.assert_close(combine_log_probs(lp, "geo").exp(), geo_unnorm / geo_unnorm.sum())
    with pytest.raises(ValueError):
        combine_log_probs(lp, "median")


def test_geo_mean_of_tempered_softmax_is_softmax_of_mean_logit() -> None:
    z = torch.randn(4, 6, 9)
    lp = torch.log_softmax(z / 3.0, -1)
    torch.testing.assert_close(combine_log_probs(lp, "geo"), torch.log_softmax(z.mean(0) / 3.0, -1))


def test_members_for_rank_covers_every_member_once() -> None:
    shares = [members_for_rank(10, r, 4) for r in range(4)]
    assert sorted(m for s in shares for m in s) == list(range(10))
    assert [len(s) for s in shares] == [3, 3, 2, 2]
    assert members_for_rank(10, 0, 1) == list(range(10))
    with pytest.raises(ValueError):
        members_for_rank(10, 4, 4)


def test_stacked_training_matches_sequential(tmp_path: Path) -> None:
    train_set, dev_set = structured_set(6, 0), structured_set(6, 1)
    # patience 1 and newbob: members stop at different epochs and halve their rates at different times,
    # so the per-member learning rates and freezing of the stacked loop are exercised
    tc = TrainConfig(batch_size=16, epochs=6, lr=1e-2, patience=1, lr_schedule="newbob", newbob_start_impr=0.05,
                     progress=False, bf16=False)  # bmm vs mm: float32 rounding only
    runs = {}
    for mode in ("sequential", "stacked"):
        ens = EnsembleConfig(num_members=3, base_seed=5, mode=mode)
        runs[mode] = train_ensemble(TINY, tc, ens, train_set, dev_set, tmp_path / mode, CLASSES)
    assert not list((tmp_path / "stacked").glob("stacked_*.pt"))  # group checkpoint removed when done
    histories: list[list[float]] = []
    for seq_dir, stk_dir in zip(runs["sequential"], runs["stacked"]):
        a, b = (json.loads((d / "metrics.json").read_text()) for d in (seq_dir, stk_dir))
        assert [r["epoch"] for r in a["epochs"]] == [r["epoch"] for r in b["epochs"]]
        assert a["stopped"] == b["stopped"] and a["best_epoch"] == b["best_epoch"]
        for ra, rb in zip(a["epochs"], b["epochs"]):
            assert ra["lr"] == rb["lr"]
            assert ra["dev_acc"] == pytest.approx(rb["dev_acc"], abs=1e-3)
        wa = torch.load(seq_dir / "model.pt", weights_only=True)["state_dict"]
        wb = torch.load(stk_dir / "model.pt", weights_only=True)["state_dict"]
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
        histories.append([r["lr"] for r in a["epochs"]])
    # precondition: in some epoch two members trained at different rates (one halved, or one stopped)
    assert any(len({h[e] if e < len(h) else 0.0 for h in histories}) > 1 for e in range(6)), histories


def test_finished_members_are_skipped(tmp_path: Path) -> None:
    s = structured_set(3, 2)
    tc = TrainConfig(batch_size=16, epochs=1, progress=False)
    ens = EnsembleConfig(num_members=2, mode="sequential")
    dirs = train_ensemble(TINY, tc, ens, s, s, tmp_path, CLASSES)
    stamp = (dirs[0] / "model.pt").stat().st_mtime_ns
    (dirs[1] / "model.pt").unlink()
    train_ensemble(TINY, tc, ens, s, s, tmp_path, CLASSES)
    assert (dirs[0] / "model.pt").stat().st_mtime_ns == stamp and (dirs[1] / "model.pt").exists()


def test_ensemble_posteriors_and_evaluation(tmp_path: Path) -> None:
    train_set, dev_set = structured_set(8, 3), structured_set(5, 4)
    tc = TrainConfig(batch_size=16, epochs=2, progress=False)
    dirs = train_ensemble(TINY, tc, EnsembleConfig(num_members=3, mode="sequential"), train_set, dev_set,
                          tmp_path, CLASSES)
    models = [load_model(d / "model.pt") for d in dirs]
    members = torch.stack([log_posteriors(m, dev_set, temperature=2.0) for m in models])
    for combine in ("arith", "geo"):
        ens = ensemble_log_posteriors(models, dev_set, temperature=2.0, combine=combine, batch_size=7)
        torch.testing.assert_close(ens, combine_log_probs(members, combine), rtol=1e-5, atol=1e-5)

    report = evaluate_ensemble(dirs, {"dev": dev_set, "train": train_set}, combine="arith")
    dev = report["dev"]
    member_acc = 100.0 * (members.argmax(-1) == dev_set.targets).double().mean(1)  # percent, as everywhere
    assert dev["members"] == pytest.approx(member_acc.tolist())
    assert dev["member_mean"] == pytest.approx(float(member_acc.mean()))
    assert dev["member_std"] == pytest.approx(float(member_acc.std()))
    ens_pred = combine_log_probs(torch.stack([log_posteriors(m, dev_set) for m in models]), "arith").argmax(-1)
    assert dev["ensemble"] == pytest.approx(100.0 * float((ens_pred == dev_set.targets).double().mean()))
    assert set(report) == {"dev", "train"} and report["train"]["frames"] == train_set.num_frames


@pytest.mark.parametrize("combine", ["arith", "geo"])
def test_the_ensemble_size_curve_combines_the_first_n_members(tmp_path: Path, combine: str) -> None:
    train_set, dev_set = structured_set(8, 3), structured_set(5, 4)
    tc = TrainConfig(batch_size=16, epochs=1, progress=False)
    dirs = train_ensemble(TINY, tc, EnsembleConfig(num_members=4, mode="sequential"), train_set, dev_set,
                          tmp_path, CLASSES)
    members = torch.stack([log_posteriors(load_model(d / "model.pt"), dev_set) for d in dirs])
    dev = evaluate_ensemble(dirs, {"dev": dev_set}, combine=combine, batch_size=7)["dev"]
    expected = [100.0 * float((combine_log_probs(members[:n], combine).argmax(-1) == dev_set.targets).double().mean())
                for n in range(1, 5)]
    assert len(set(expected)) > 1, "a curve that does not move cannot tell a prefix from the whole ensemble"
    assert dev["by_size"] == pytest.approx(expected)
    assert dev["by_size"][0] == pytest.approx(dev["members"][0])
    assert dev["by_size"][-1] == pytest.approx(dev["ensemble"])
