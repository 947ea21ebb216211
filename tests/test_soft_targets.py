"""Soft targets: the teacher's tempered top-k posteriors, their storage and their Kaldi interop."""
from __future__ import annotations

import math

import kaldi_io
import numpy as np
import pytest
import torch

from asr_kd.nn.frames import FrameSet
from asr_kd.nn.model import DNN, ModelConfig
from asr_kd.distillation.soft_targets import (
    SoftTargetConfig,
    SoftTargets,
    compute_soft_targets,
    compute_soft_targets_at,
    index_dtype,
    top_k_targets,
)
from features.errors import InputError


def random_soft(n: int, c: int, k: int, seed: int = 0) -> SoftTargets:
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(n, c, generator=g) * 3, dim=-1)
    ind, p, mass = top_k_targets(lp, k)
    return SoftTargets(ind.to(index_dtype(c)), p.half(), mass.half(), 2.0, c, "test teacher")


def constant_teacher(probs: list[float]) -> DNN:
    """A DNN whose logits are log(probs) for every input frame (zero weights, output bias = log probs)."""
    cfg = ModelConfig(hidden_layers=1, hidden_dim=3, left_context=0, right_context=0, feat_dim=len(probs))
    m = DNN(cfg, len(probs))
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.linears()[-1].bias.copy_(torch.log(torch.tensor(probs)))
    return m.eval()


def frames_of(n: int, dim: int) -> FrameSet:
    return FrameSet.from_tensors(torch.randn(n, dim), torch.zeros(n, dtype=torch.int64), ["u1", "u2"],
                                 [n // 2, n - n // 2], left=0, right=0)


def test_top_k_renormalizes_and_reports_mass_kept():
    p = torch.tensor([[0.1, 0.5, 0.05, 0.35], [0.25, 0.24, 0.31, 0.2]])
    ind, probs, mass = top_k_targets(p.log(), 2)
    assert ind.tolist() == [[1, 3], [2, 0]]
    assert torch.allclose(mass, torch.tensor([0.85, 0.56]))
    assert torch.allclose(probs[0], torch.tensor([0.5 / 0.85, 0.35 / 0.85]))
    assert torch.allclose(probs.sum(1), torch.ones(2))
    ind_all, _, mass_all = top_k_targets(p.log(), None)
    assert ind_all.shape == (2, 4) and torch.allclose(mass_all, torch.ones(2))


@pytest.mark.parametrize("c,dtype", [(860, torch.int16), (14000, torch.int16), (40000, torch.uint16),
                                     (70000, torch.int32)])
def test_index_dtype(c, dtype):
    assert index_dtype(c) == dtype


@pytest.mark.parametrize("c,k", [(50, 5), (40000, 3)])
def test_save_load_round_trip(tmp_path, c, k):
    soft = random_soft(37, c, k)
    soft.save(tmp_path / "st")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st"]  # no temp dir left behind
    back = SoftTargets.load(tmp_path / "st")
    assert back.indices.dtype == index_dtype(c) and back.probs.dtype == torch.float16
    assert back.mass_kept.dtype == torch.float16
    assert torch.equal(back.indices, soft.indices) and torch.equal(back.probs, soft.probs)
    assert torch.equal(back.mass_kept, soft.mass_kept)
    assert (back.temperature, back.num_classes, back.teacher) == (2.0, c, "test teacher")
    assert back.bytes_per_frame == k * (soft.indices.element_size() + 2) + 2
    in_memory = SoftTargets.load(tmp_path / "st", mmap=False)
    idx = torch.tensor([3, 0, 36])
    assert torch.equal(in_memory.batch(idx)[0], soft.indices[idx].long())


def test_bytes_per_frame_top20_of_14k_is_82():
    # the paper-sized case: 20 x (2 B index + 2 B fp16) + 2 B mass_kept
    assert random_soft(4, 14000, 20).bytes_per_frame == 82.0


def test_load_rejects_missing_or_corrupt(tmp_path):
    with pytest.raises(InputError, match="meta.json missing"):
        SoftTargets.load(tmp_path)
    soft = random_soft(5, 10, 3)
    soft.save(tmp_path / "st")
    (tmp_path / "st" / "probs.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match="probs.npy"):
        SoftTargets.load(tmp_path / "st")


def test_dense_and_batch():
    soft = random_soft(10, 30, 4)
    idx = torch.tensor([7, 2])
    d = soft.dense(idx)
    assert d.shape == (2, 30)
    ind, p, mass = soft.batch(idx)
    assert ind.dtype == torch.int64 and p.dtype == torch.float32
    assert torch.equal(mass, soft.mass_kept[idx].float())
    assert torch.allclose(d.gather(1, ind), p)
    assert torch.allclose(d.sum(1), torch.ones(2), atol=2e-3)
    assert int((d > 0).sum()) == 8


@pytest.mark.parametrize("combine", ["arith", "geo"])
def test_two_member_ensemble_soft_targets_by_hand(combine):
    p1, p2 = [0.5, 0.2, 0.2, 0.1], [0.1, 0.2, 0.6, 0.1]
    teachers = [constant_teacher(p1), constant_teacher(p2)]
    fs = frames_of(7, 4)
    soft = compute_soft_targets(teachers, fs, SoftTargetConfig(temperature=1.0, top_k=2, combine=combine, batch_size=3))
    if combine == "arith":
        full = [0.3, 0.2, 0.4, 0.1]
    else:
        g = [math.sqrt(a * b) for a, b in zip(p1, p2)]
        full = [x / sum(g) for x in g]
    assert soft.num_frames == 7 and soft.k == 2 and soft.num_classes == 4
    assert soft.indices.tolist() == [[2, 0]] * 7
    kept = full[2] + full[0]
    assert torch.allclose(soft.probs.float(), torch.tensor([[full[2] / kept, full[0] / kept]] * 7), atol=1e-3)
    assert torch.allclose(soft.mass_kept.float(), torch.full((7,), kept), atol=1e-3)
    assert soft.teacher == f"2-model {combine} ensemble"


def test_config_validation():
    with pytest.raises(ValueError):
        SoftTargetConfig(combine="median")
    with pytest.raises(ValueError):
        SoftTargetConfig(temperature=0.0)
    with pytest.raises(ValueError):
        SoftTargetConfig(top_k=0)


def test_temperature_flattens_teacher_targets():
    p1, p2 = [0.5, 0.2, 0.2, 0.1], [0.1, 0.2, 0.6, 0.1]
    teachers = [constant_teacher(p1), constant_teacher(p2)]
    fs = frames_of(2, 4)
    soft = compute_soft_targets(teachers, fs, SoftTargetConfig(temperature=2.0, top_k=None))
    # at T=2 each member's softmax(z/2) is proportional to sqrt(p)
    q1 = np.sqrt(p1) / np.sqrt(p1).sum()
    q2 = np.sqrt(p2) / np.sqrt(p2).sum()
    expected = np.sort((q1 + q2) / 2)[::-1]
    assert np.allclose(soft.probs[0].float().numpy(), expected, atol=1e-3)
    assert soft.temperature == 2.0 and soft.k == 4


def test_kaldi_posterior_round_trip(tmp_path):
    soft = random_soft(9, 50, 4)
    ark = tmp_path / "post.ark"
    soft.write_kaldi_posteriors(ark, ["a", "b"], [4, 5])
    raw = dict(kaldi_io.read_post_ark(str(ark)))
    assert sorted(raw) == ["a", "b"] and len(raw["a"]) == 4 and len(raw["b"]) == 5
    # the archive holds the teacher's own probabilities: they sum to mass_kept, not to 1
    assert math.isclose(sum(v for _, v in raw["b"][0]), float(soft.mass_kept[4]), rel_tol=2e-3)
    back = SoftTargets.read_kaldi_posteriors(ark, ["a", "b"], num_classes=50, temperature=2.0)
    assert torch.equal(back.indices, soft.indices)
    assert torch.allclose(back.probs.float(), soft.probs.float(), atol=2e-3)
    assert torch.allclose(back.mass_kept.float(), soft.mass_kept.float(), atol=2e-3)
    reordered = SoftTargets.read_kaldi_posteriors(ark, ["b", "a"], num_classes=50, temperature=2.0)
    assert torch.equal(reordered.indices[:5], soft.indices[4:])
    with pytest.raises(InputError, match="missing"):
        SoftTargets.read_kaldi_posteriors(ark, ["a", "c"], num_classes=50, temperature=2.0)
    with pytest.raises(InputError, match="outside"):
        SoftTargets.read_kaldi_posteriors(ark, ["a"], num_classes=10, temperature=2.0)
    with pytest.raises(ValueError):
        soft.write_kaldi_posteriors(ark, ["a", "b"], [4, 4])


def test_kaldi_posteriors_of_different_widths_are_padded(tmp_path):
    ark = tmp_path / "post.ark"
    with open(ark, "wb") as f:
        kaldi_io.write_post(f, [[(3, 0.6), (1, 0.3)]], key="a")
        kaldi_io.write_post(f, [[(2, 1.0)]], key="b")
    soft = SoftTargets.read_kaldi_posteriors(ark, ["a", "b"], num_classes=5, temperature=1.0)
    assert soft.k == 2
    assert soft.indices[0].tolist() == [3, 1]
    assert torch.allclose(soft.probs[1].float(), torch.tensor([1.0, 0.0]))
    assert torch.allclose(soft.mass_kept.float(), torch.tensor([0.9, 1.0]), atol=1e-3)
    (tmp_path / "bad.ark").write_bytes(b"a \x00Bxyz")
    with pytest.raises(InputError):
        SoftTargets.read_kaldi_posteriors(tmp_path / "bad.ark", ["a"], num_classes=5, temperature=1.0)


@pytest.mark.parametrize("combine", ["arith", "geo"])
def test_one_teacher_pass_for_a_temperature_sweep_equals_one_pass_per_temperature(combine):
    torch.manual_seed(3)
    cfg = ModelConfig(hidden_layers=1, hidden_dim=8, left_context=1, right_context=1, feat_dim=4)
    teachers = [DNN(cfg, 12).eval() for _ in range(3)]
    fs = FrameSet.from_tensors(torch.randn(30, 4), torch.zeros(30, dtype=torch.int64), ["a", "b"], [13, 17],
                               left=1, right=1)
    base = SoftTargetConfig(top_k=5, combine=combine, batch_size=7)
    sweep = compute_soft_targets_at(teachers, fs, base, [1.0, 2.0, 10.0])
    assert sorted(sweep) == [1.0, 2.0, 10.0]
    for t, soft in sweep.items():
        one = compute_soft_targets(teachers, fs, SoftTargetConfig(temperature=t, top_k=5, combine=combine))
        assert soft.temperature == t
        assert torch.equal(soft.indices, one.indices)
        assert torch.equal(soft.probs, one.probs) and torch.equal(soft.mass_kept, one.mass_kept)
    # higher T keeps less mass in the top 5 (flatter targets)
    assert sweep[10.0].mass_kept.float().mean() < sweep[1.0].mass_kept.float().mean()
