"""Distillation loss, student training on stored/online soft targets, and the small-data (3%) experiment."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from asr_kd.distillation.distill import (
    DistillConfig,
    choose_temperature,
    distill,
    distillation_loss,
    make_online_loss,
    make_stored_loss,
    temperature_sweep,
    with_soft_targets,
)
from asr_kd.distillation.small_data import SmallDataConfig, run_small_data, select_subset
from asr_kd.nn.batches import FrameBatch
from asr_kd.nn.frames import NO_TARGET, FrameSet
from asr_kd.nn.model import ModelConfig
from asr_kd.distillation.soft_targets import (
    SoftTargetConfig,
    SoftTargets,
    compute_soft_targets,
    compute_soft_targets_at,
    index_dtype,
    top_k_targets,
)
from asr_kd.nn.inference import frame_accuracy, load_model
from asr_kd.nn.train import TrainConfig, train


def dense_reference(z, p_dense, hard, temperature, hard_weight):
    """The loss written out directly in float64 with explicit exp/sum (no log_softmax, no gather)."""
    z = z.double()
    q_t = torch.exp(z / temperature) / torch.exp(z / temperature).sum(1, keepdim=True)
    q_1 = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
    soft = -(p_dense.double() * torch.log(q_t)).sum(1).mean()
    hard_ce = -torch.log(q_1[torch.arange(len(hard)), hard]).mean()
    return temperature ** 2 * soft + hard_weight * hard_ce


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0, 10.0])
@pytest.mark.parametrize("k", [3, 12])
def test_distillation_loss_value_and_gradient_match_dense(temperature, k):
    torch.manual_seed(int(temperature) * 10 + k)
    B, C = 6, 12
    ind, probs, _ = top_k_targets(torch.log_softmax(torch.randn(B, C) * 2 / temperature, dim=-1), k)
    p_dense = torch.zeros(B, C).scatter_(1, ind, probs)
    hard = torch.randint(0, C, (B,))
    z = (torch.randn(B, C) * 3).requires_grad_()
    z_ref = z.detach().double().requires_grad_()

    loss = distillation_loss(z, ind, probs, hard, temperature, hard_weight=0.5)
    ref = dense_reference(z_ref, p_dense, hard, temperature, 0.5)
    loss.backward()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(z.grad.double(), z_ref.grad, atol=1e-6)
    # Closed form: d/dz [T^2 CE(p, softmax(z/T))] = T (softmax(z/T) - p); hard term at T=1: (softmax(z) - y).
    q_t = torch.softmax(z.detach() / temperature, 1)
    onehot = torch.nn.functional.one_hot(hard, C).float()
    expected = (temperature * (q_t - p_dense) + 0.5 * (torch.softmax(z.detach(), 1) - onehot)) / B
    assert torch.allclose(z.grad, expected, atol=1e-6)


def bucket_reference(z, ind, probs, mass, hard, temperature, hard_weight):
    """k classes with weights mass x probs plus one 'rest' outcome, written out densely in float64."""
    z = z.double()
    q_t = torch.exp(z / temperature) / torch.exp(z / temperature).sum(1, keepdim=True)
    q_k = q_t.gather(1, ind)
    q_rest = 1.0 - q_k.sum(1)
    m = mass.double()
    soft = -((m[:, None] * probs.double() * torch.log(q_k)).sum(1) + (1 - m) * torch.log(q_rest)).mean()
    hard_ce = torch.nn.functional.cross_entropy(z, hard)
    return temperature ** 2 * soft + hard_weight * hard_ce


@pytest.mark.parametrize("temperature", [1.0, 2.0, 10.0])
def test_bucket_tail_loss_value_and_gradient(temperature):
    torch.manual_seed(int(temperature))
    B, C, k = 5, 15, 4
    ind, probs, mass = top_k_targets(torch.log_softmax(torch.randn(B, C) * 2 / temperature, -1), k)
    hard = torch.randint(0, C, (B,))
    z = (torch.randn(B, C) * 2).requires_grad_()
    z_ref = z.detach().double().requires_grad_()
    loss = distillation_loss(z, ind, probs, hard, temperature, 0.5, mass_kept=mass)
    ref = bucket_reference(z_ref, ind, probs, mass, hard, temperature, 0.5)
    loss.backward()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(z.grad.double(), z_ref.grad, atol=1e-6)
    # the bucket only adds information: with every class kept it is the plain loss (and finite)
    ind_all, probs_all, mass_all = top_k_targets(torch.log_softmax(torch.randn(B, C), -1), None)
    a = distillation_loss(z.detach(), ind_all, probs_all, hard, temperature, 0.5, mass_kept=mass_all)
    b = distillation_loss(z.detach(), ind_all, probs_all, hard, temperature, 0.5)
    assert torch.isfinite(a) and a.item() == pytest.approx(b.item(), rel=1e-6)


def test_bucket_tail_keeps_precision_when_the_k_classes_hold_nearly_everything():
    """A confident student leaves ~1e-9 outside its top classes: 1 - sum(q_k) would round that to 0 or 1e-7 in
    float32; the bucket term's value and gradient must still match the float64 reference. A student with nothing
    representable outside the k gets a finite loss (the tail's floor), not inf or nan."""
    B, C, k = 3, 12, 4
    ind = torch.arange(k).repeat(B, 1)
    probs = torch.full((B, k), 1.0 / k)
    mass, hard = torch.full((B,), 0.9), torch.zeros(B, dtype=torch.int64)
    z = torch.zeros(B, C)
    z[:, k:] = -25.0  # outside mass 8 * e^-25 / 4 = 2.8e-11 per row at T=1
    z = z.requires_grad_()
    z_ref = z.detach().double().requires_grad_()
    loss = distillation_loss(z, ind, probs, hard, 1.0, 0.0, mass_kept=mass)
    ref = bucket_reference(z_ref, ind, probs, mass, hard, 1.0, 0.0)
    loss.backward()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(z.grad.double(), z_ref.grad, rtol=1e-4, atol=1e-9)
    far = torch.zeros(B, C)
    far[:, k:] = -500.0
    assert torch.isfinite(distillation_loss(far.requires_grad_(), ind, probs, hard, 1.0, 0.0, mass_kept=mass))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_one_batch_mixing_doubtful_confident_and_certain_students_matches_float64(temperature):
    """The three ways the bucket term finds the student's mass off the k classes (full sum minus the k's; the sum
    over the others for a confident row; a log-sum-exp where those exps underflow) meet in one batch, with the hard
    term, unlabeled frames and a padded target row (class 0 repeated with weight 0, as a Kaldi posterior archive
    reads): value and gradient match the float64 loss written out in the log domain."""
    torch.manual_seed(3)
    B, C, k = 9, 40, 5
    ind = torch.stack([torch.randperm(C)[:k] for _ in range(B)])
    ind[0, 3:] = ind[0, 0] = 0  # padding: class 0 three times, the last two with weight 0
    ind[0, 1:3] = torch.tensor([7, 9])
    probs = torch.rand(B, k)
    probs[0, 3:] = 0.0
    probs = probs / probs.sum(1, keepdim=True)
    mass = torch.rand(B) * 0.5 + 0.4
    hard = torch.randint(0, C, (B,))
    hard[1::4] = NO_TARGET
    z = torch.randn(B, C) * 3
    off_k = torch.ones(B, C, dtype=torch.bool).scatter_(1, ind, False)
    z[3:6] = torch.where(off_k[3:6], z[3:6] - 12 * temperature, z[3:6])  # confident: 1e-5 of q off the k
    z[6:] = torch.where(off_k[6:], z[6:] - 150 * temperature, z[6:])  # certain: exp underflows off the k
    z = z.requires_grad_()
    z_ref = z.detach().double().requires_grad_()
    loss = distillation_loss(z, ind, probs, hard, temperature, 0.5, mass_kept=mass, labeled_only=True)
    lq = torch.log_softmax(z_ref / temperature, 1)
    log_rest = torch.logsumexp(lq.masked_fill(~off_k, float("-inf")), 1)
    w = mass.double()[:, None] * probs.double()
    soft = -((w * lq.gather(1, ind)).sum(1) + (1 - mass.double()) * log_rest).mean()
    labeled = hard != NO_TARGET
    nll = -torch.log_softmax(z_ref, 1).gather(1, torch.where(labeled, hard, 0)[:, None])[:, 0]
    ref = temperature ** 2 * soft + 0.5 * (nll * labeled).sum() / labeled.sum()
    loss.backward()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(z.grad.double(), z_ref.grad, rtol=1e-4, atol=1e-8)


def test_soft_weight_and_hard_weight_terms():
    torch.manual_seed(0)
    z, hard = torch.randn(4, 5), torch.randint(0, 5, (4,))
    ind, probs, _ = top_k_targets(torch.log_softmax(torch.randn(4, 5), 1), 5)
    soft_only = distillation_loss(z, ind, probs, hard, 3.0, hard_weight=0.0)
    unscaled = distillation_loss(z, ind, probs, hard, 3.0, hard_weight=0.0, soft_weight=1.0)
    assert soft_only.item() == pytest.approx(9.0 * unscaled.item(), rel=1e-6)
    with_hard = distillation_loss(z, ind, probs, hard, 3.0, hard_weight=0.5)
    ce = torch.nn.functional.cross_entropy(z, hard)
    assert with_hard.item() == pytest.approx(soft_only.item() + 0.5 * ce.item(), rel=1e-6)
    assert DistillConfig(temperature=3.0).soft_weight == 9.0
    assert DistillConfig(temperature=3.0, soft_weight_scale="1").soft_weight == 1.0
    with pytest.raises(ValueError):
        DistillConfig(mode="offline")
    with pytest.raises(ValueError):
        DistillConfig(tail="spread")


def test_stored_loss_truncates_k_and_checks_temperature():
    c = 10
    ind, probs, mass = top_k_targets(torch.log_softmax(torch.randn(8, c) / 2.0, 1), None)
    soft = SoftTargets(ind.to(index_dtype(c)), probs.half(), mass.half(), 2.0, c)
    z, hard, idx = torch.randn(3, c), torch.randint(0, c, (3,)), torch.tensor([5, 1, 7])
    batch = FrameBatch(idx, hard, {name: col[idx] for name, col in soft.columns().items()})
    top3 = probs[idx, :3].half().float()
    renorm = make_stored_loss(DistillConfig(temperature=2.0, top_k=3, tail="renormalize"))(z, batch)
    expected = distillation_loss(z, ind[idx, :3], top3 / top3.sum(1, keepdim=True), hard, 2.0, 0.5)
    assert renorm.item() == pytest.approx(expected.item(), rel=1e-5)
    bucket = make_stored_loss(DistillConfig(temperature=2.0, top_k=3))(z, batch)
    expected = bucket_reference(z, ind[idx, :3], top3 / top3.sum(1, keepdim=True),
                                top3.sum(1) * mass[idx].half().float(), hard, 2.0, 0.5)
    assert bucket.item() == pytest.approx(expected.item(), rel=1e-5)
    frames = FrameSet.from_tensors(torch.zeros(8, 2), torch.zeros(8, dtype=torch.int64), ["u"], [8], 1, 1)
    with pytest.raises(ValueError, match="temperature"):
        with_soft_targets(frames, soft, DistillConfig(temperature=5.0), c)


# ------------------------------------------------------------------------------------------------ select_subset
def corpus_utt2spk() -> dict[str, str]:
    sizes = {"spkA": 250, "spkB": 250, "spkC": 120, "spkD": 40, "spkE": 10}
    return {f"{s}-{i:04d}": s for s, n in sizes.items() for i in range(n)}


def test_select_subset_fraction_speakers_and_determinism():
    utt2spk = corpus_utt2spk()
    chosen = select_subset(utt2spk, 0.03, seed=1)
    assert chosen == sorted(chosen) and len(set(chosen)) == len(chosen)
    assert len(chosen) == round(0.03 * len(utt2spk))  # 20 of 670
    per_spk = Counter(utt2spk[u] for u in chosen)
    assert set(per_spk) == {"spkA", "spkB", "spkC", "spkD", "spkE"}  # every speaker, even the 10-utt one
    assert per_spk["spkA"] in (7, 8) and per_spk["spkB"] in (7, 8) and per_spk["spkC"] in (3, 4)
    assert select_subset(utt2spk, 0.03, seed=1) == chosen
    assert select_subset(dict(reversed(list(utt2spk.items()))), 0.03, seed=1) == chosen  # input order irrelevant
    assert select_subset(utt2spk, 0.03, seed=2) != chosen
    rest = set(utt2spk) - set(chosen)
    assert rest.isdisjoint(chosen) and len(rest) + len(chosen) == len(utt2spk)


def test_select_subset_edge_cases():
    utt2spk = corpus_utt2spk()
    few = select_subset(utt2spk, 0.005, seed=0)  # 3 picks for 5 speakers: 3 different speakers
    assert len(few) == 3 and len({utt2spk[u] for u in few}) == 3
    assert select_subset(utt2spk, 1.0) == sorted(utt2spk)
    assert len(select_subset({"a": "s"}, 0.03)) == 1
    with pytest.raises(ValueError):
        select_subset(utt2spk, 0.0)


# ----------------------------------------------------------------------------------------------- end to end
NUM_CLASSES = 6
MODEL = ModelConfig(hidden_layers=1, hidden_dim=32, left_context=2, right_context=1, feat_dim=8)


def structured_frames(num_utts: int, seed: int, prefix: str) -> FrameSet:
    """Utterances of class segments (3-8 frames each); a frame is its class's mean plus heavy noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(NUM_CLASSES, MODEL.feat_dim, generator=torch.Generator().manual_seed(1234)) * 1.2
    feats, targets, lengths = [], [], []
    for _ in range(num_utts):
        ys = []
        while len(ys) < 40:
            ys += [int(torch.randint(0, NUM_CLASSES, (1,), generator=g))] * int(torch.randint(3, 9, (1,), generator=g))
        y = torch.tensor(ys)
        feats.append(means[y] + torch.randn(len(y), MODEL.feat_dim, generator=g))
        targets.append(y)
        lengths.append(len(y))
    ids = [f"{prefix}{i:03d}" for i in range(num_utts)]
    return FrameSet.from_tensors(torch.cat(feats), torch.cat(targets), ids, lengths,
                                 left=MODEL.left_context, right=MODEL.right_context)


def train_cfg(epochs: int = 3, **kw) -> TrainConfig:
    return TrainConfig(optimizer="adam", lr=3e-3, lr_schedule="constant", batch_size=64, epochs=epochs,
                       early_stopping=False, bf16=False, progress=False, **kw)


@pytest.fixture(scope="module")
def data():
    return structured_frames(60, 0, "tr"), structured_frames(15, 1, "dv"), structured_frames(15, 2, "te")


@pytest.fixture(scope="module")
def teacher_path(data, tmp_path_factory):
    """A full-data teacher, trained once for the module (as stage_baseline would)."""
    return train(MODEL, train_cfg(4), data[0], data[1], tmp_path_factory.mktemp("teacher"), NUM_CLASSES).model_path


@pytest.fixture(scope="module")
def teacher(teacher_path):
    return load_model(teacher_path)


@pytest.mark.slow
@pytest.mark.parametrize("mode,hard_weight", [("stored", 0.0), ("online", 0.5)])
def test_distilled_student_learns(data, teacher, tmp_path, mode, hard_weight):
    """With hard_weight 0 the student sees no label at all: what it learns comes from the soft targets."""
    train_set, dev_set, _ = data
    dcfg = DistillConfig(temperature=2.0, hard_weight=hard_weight, top_k=4, mode=mode)
    soft = compute_soft_targets([teacher], train_set, SoftTargetConfig(temperature=2.0, top_k=4)) \
        if mode == "stored" else None
    res = distill(MODEL, train_cfg(3), dcfg, train_set, dev_set, soft, [teacher] if mode == "online" else None,
                  tmp_path / "student", NUM_CLASSES)
    acc = frame_accuracy(load_model(res.model_path), dev_set)
    assert acc > 3.0 / NUM_CLASSES  # chance is 1/6; the structured data is learnable
    assert json.loads((tmp_path / "student" / "distill.json").read_text())["mode"] == mode


@pytest.mark.slow
def test_online_and_stored_losses_agree(data, teacher):
    """With all classes kept, the stored (fp16) and online targets give the same loss on a batch."""
    train_set = data[0]
    dcfg = DistillConfig(temperature=5.0, top_k=None)
    soft = compute_soft_targets([teacher], train_set, SoftTargetConfig(temperature=5.0, top_k=None))
    idx = torch.tensor([0, 17, 99, 250])
    z = torch.randn(4, NUM_CLASSES)
    y = train_set.targets[idx]
    stored = make_stored_loss(dcfg)(z, FrameBatch(idx, y, {name: col[idx] for name, col in soft.columns().items()}))
    online = make_online_loss([teacher], train_set, dcfg)(z, FrameBatch(idx, y, {}))
    assert stored.item() == pytest.approx(online.item(), rel=2e-3)


@pytest.mark.parametrize(("dev_accuracy", "chosen"), [
    ({1.0: 60.0, 2.0: 62.5, 5.0: 61.0, 10.0: 59.0}, 2.0),
    ({10.0: 62.5, 5.0: 62.5, 1.0: 60.0}, 5.0),  # a tie goes to the lowest temperature, not to the first listed
    ({2.0: 41.58, 5.0: 47.37, 10.0: 48.2}, 10.0),
    ({3.0: 40.0}, 3.0),
])
def test_choose_temperature_is_the_dev_arg_max_and_the_lowest_of_a_tie(dev_accuracy: dict[float, float],
                                                                        chosen: float) -> None:
    assert choose_temperature(dev_accuracy) == chosen
    assert choose_temperature(dict(reversed(dev_accuracy.items()))) == chosen


def test_choose_temperature_needs_a_dev_accuracy() -> None:
    with pytest.raises(ValueError, match="no dev accuracies"):
        choose_temperature({})


@pytest.mark.slow
def test_temperature_sweep_and_small_data(data, teacher, teacher_path, tmp_path):
    train_set, dev_set, test_set = data
    soft = compute_soft_targets_at([teacher], train_set, SoftTargetConfig(top_k=3), [1.0, 4.0])
    sweep = temperature_sweep(MODEL, train_cfg(1), DistillConfig(top_k=3), train_set, dev_set, soft,
                              tmp_path / "sweep", NUM_CLASSES)
    dev = {float(t): round(100.0 * frame_accuracy(load_model(tmp_path / "sweep" / f"T{t}" / "model.pt"), dev_set), 2)
           for t in ("1", "4")}
    assert {float(t): row["dev_frame_accuracy"] for t, row in sweep["per_temperature"].items()} == dev
    assert sweep["best_temperature"] == min(t for t, acc in dev.items() if acc == max(dev.values()))
    assert json.loads((tmp_path / "sweep" / "T4" / "distill.json").read_text())["temperature"] == 4.0
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text()) == sweep

    utt2spk = {u: f"spk{i % 3}" for i, u in enumerate(train_set.utt_ids)}
    scfg = SmallDataConfig(fraction=0.2, epochs=2, teacher="baseline", compare_teachers=True, temperatures=[1.0, 3.0])
    result = run_small_data(MODEL, train_cfg(2), scfg, DistillConfig(temperature=2.0, top_k=4, hard_weight=0.5),
                            {"train": train_set, "dev": dev_set, "test": test_set}, utt2spk,
                            {"baseline": [teacher_path], "ensemble": [teacher, teacher]}, tmp_path / "dnn", NUM_CLASSES)
    acc = result["systems"]
    assert set(acc) == {"baseline_full", "small_hard", "small_soft", "small_soft_ensemble"}
    assert result["num_utts"] == 12 and set(acc["small_hard"]) == {"train", "dev", "test"}
    assert acc["small_soft"]["teacher"] == "baseline" and acc["small_soft_ensemble"]["teacher"] == "ensemble"
    metrics = json.loads((tmp_path / "dnn" / "small_hard" / "metrics.json").read_text())
    assert metrics["train_cfg"]["early_stopping"] and metrics["train_cfg"]["epochs"] == 2
    for system in ("small_soft", "small_soft_ensemble"):
        by_t = acc[system]["dev_by_temperature"]
        assert set(by_t) == {"1", "3"}
        best = acc[system]["temperature"]
        assert by_t[f"{best:g}"] == max(by_t.values())  # dev chooses the temperature
        assert acc[system]["dev"] == by_t[f"{best:g}"]  # the kept model is the chosen one
        assert (tmp_path / "dnn" / system / "model.pt").read_bytes() == \
            (tmp_path / "dnn" / f"{system}_T{best:g}" / "model.pt").read_bytes()
        for t in (1.0, 3.0):
            run = tmp_path / "dnn" / f"{system}_T{t:g}"
            assert not json.loads((run / "metrics.json").read_text())["train_cfg"]["early_stopping"]
            # the 3% objective, not the full-data student's: every class, no hard term, this run's temperature
            assert json.loads((run / "distill.json").read_text()) | {"teacher": None} == \
                DistillConfig(temperature=t, top_k=None, hard_weight=0.0).to_dict() | {"teacher": None}
    subset = (tmp_path / "dnn" / "small_data_subset.txt").read_text().split()
    assert len(subset) == 12 and {utt2spk[u] for u in subset} == {"spk0", "spk1", "spk2"}
    assert json.loads((tmp_path / "dnn" / "small_data.json").read_text()) == result


def test_distill_bench_runs_and_reports_storage():
    from asr_kd.bench import DistillBenchConfig, bench_distill, format_report

    cfg = DistillBenchConfig(preset="tiny", hidden_dim=24, num_classes=50, members=2, batch_size=32, steps=2,
                             warmup_steps=1, rounds=1, top_k=5, num_frames=600, storage_k=(5, None),
                             storage_classes=(50,), device="cpu")
    result = bench_distill(cfg)
    assert set(result["frames_per_s"]) == {"baseline", "stored", "online"}
    assert all(v > 0 for v in result["frames_per_s"].values())
    assert [r["bytes_per_frame"] for r in result["storage"]] == [5 * 4 + 2, 50 * 4 + 2]
    assert result["shape"] == "2x24"  # the tiny preset's depth, the width asked for
    assert "| online |" in format_report(result) and "2x24 student" in format_report(result)


def test_train_bench_reports_both_numerics():
    """The train benchmark times the bare step in float32 and, where bf16 is native, under bf16 autocast (the
    number that says whether ``train.bf16`` pays on this machine), and reports the loop's own choice."""
    import torch

    from asr_kd.bench import bench_train
    from asr_kd.nn.device import bf16_native

    result = bench_train("tiny", batch_size=64, steps=4, num_classes=50, device_name="cpu")
    assert result["bare_fp32_frames_per_s"] > 0 and result["real_frames_per_s"] > 0
    native = bf16_native(torch.device("cpu"))
    assert (result["bare_bf16_over_fp32"] is not None) is native
    assert result["bf16_autocast"] in ((True, False) if native else (False,))  # the loop's measured choice
    if not result["bf16_autocast"]:
        assert result["bare_frames_per_s"] == result["bare_fp32_frames_per_s"]


def test_a_benchmark_records_its_result_with_what_reproduces_it(tmp_path: Path) -> None:
    """``--out`` writes the printed result with the command, date, machine and commit: a results file to commit."""
    from asr_kd.bench import main

    out = tmp_path / "bench" / "train.json"
    argv = ["train", "--preset", "tiny", "--steps", "2", "--rounds", "1", "--batch-size", "64", "--classes", "5",
            "--threads", "1", "--out", str(out)]
    main(argv)
    saved = json.loads(out.read_text())
    assert saved["meta"]["command"] == "python -m asr_kd.bench " + " ".join(argv)
    assert saved["meta"]["machine"]["cpus"] >= 1 and saved["meta"]["git_commit"] != "unknown"
    assert saved["result"]["bench"] == "train" and saved["result"]["real_frames_per_s"] > 0
