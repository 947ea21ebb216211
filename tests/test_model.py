"""The DNN, its presets, and the stacked form used to train ensemble members together."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from asr_kd.nn.model import DNN, PRESETS, ModelConfig, StackedDNN, num_parameters


def test_paper_preset_is_the_papers_network() -> None:
    cfg = PRESETS["paper"]
    assert cfg.input_dim == 26 * 40 == 1040
    with torch.device("meta"):
        model = DNN(cfg, 14000)
    n = sum(p.numel() for p in model.parameters())
    assert n == num_parameters(cfg, 14000)
    assert 84e6 < n < 86e6  # the paper's "about 85M parameters"
    assert len(model.linears()) == 9
    assert model.linears()[-1].out_features == 14000


@pytest.mark.parametrize("preset", ["small", "tiny"])
def test_presets_forward_shapes(preset: str) -> None:
    cfg = PRESETS[preset]
    model = DNN(cfg, 37)
    assert sum(p.numel() for p in model.parameters()) == num_parameters(cfg, 37)
    out = model(torch.randn(5, cfg.input_dim))
    assert out.shape == (5, 37)


def test_small_is_smaller_than_paper_and_tiny_smallest() -> None:
    sizes = [num_parameters(PRESETS[p], 2000) for p in ("tiny", "small", "paper")]
    assert sizes == sorted(sizes) and sizes[1] < 5e6


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        ModelConfig(activation="swishy")
    with pytest.raises(ValueError):
        ModelConfig(dropout=1.0)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_stacked_members_compute_what_the_members_compute(dropout: float) -> None:
    cfg = dataclasses.replace(PRESETS["tiny"], dropout=dropout, activation="tanh")
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(DNN(cfg, 11).eval())
    stacked = StackedDNN.from_members(members).eval()
    x = torch.randn(3, 7, cfg.input_dim)
    out = stacked(x)
    assert out.shape == (3, 7, 11)
    for m, member in enumerate(members):
        torch.testing.assert_close(out[m], member(x[m]), rtol=1e-5, atol=1e-5)
        for k, v in stacked.member_state_dict(m).items():
            assert torch.equal(v, member.state_dict()[k])


def test_stacked_rejects_mixed_architectures() -> None:
    a = DNN(PRESETS["tiny"], 5)
    b = DNN(dataclasses.replace(PRESETS["tiny"], hidden_dim=32), 5)
    with pytest.raises(ValueError):
        StackedDNN.from_members([a, b])
