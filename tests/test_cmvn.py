"""Kaldi CMVN stats layout and apply-cmvn arithmetic, against numpy and kaldi-native-fbank."""
from __future__ import annotations

import kaldi_native_fbank as knf
import numpy as np
import pytest

from features.cmvn import apply_cmvn, compute_cmvn_stats


@pytest.fixture()
def mats() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((n, 5)) * [1, 2, 3, 4, 5] + [10, -3, 0, 1, 7]).astype(np.float32)
            for n in (17, 40, 3)]


def test_stats_layout(mats: list[np.ndarray]) -> None:
    stats = compute_cmvn_stats(mats)
    allx = np.concatenate(mats).astype(np.float64)
    assert stats.shape == (2, 6) and stats.dtype == np.float64
    np.testing.assert_allclose(stats[0, :5], allx.sum(0), rtol=1e-12)
    np.testing.assert_allclose(stats[1, :5], (allx ** 2).sum(0), rtol=1e-12)
    assert stats[0, 5] == 60 and stats[1, 5] == 0
    # Per-speaker stats are the sum of per-utterance stats.
    np.testing.assert_allclose(sum(compute_cmvn_stats([m]) for m in mats), stats, rtol=1e-12)


@pytest.mark.parametrize("norm_vars", [False, True])
def test_matches_kaldi_native_fbank(mats: list[np.ndarray], norm_vars: bool) -> None:
    ref_stats = knf.compute_cmvn_stats(np.concatenate(mats))
    stats = compute_cmvn_stats(mats)
    np.testing.assert_allclose(stats, ref_stats, rtol=1e-6)
    opts = knf.CmvnOptions()
    opts.norm_vars = norm_vars
    np.testing.assert_allclose(apply_cmvn(mats[1], stats, norm_vars), knf.apply_cmvn(ref_stats, opts, mats[1]),
                               atol=1e-5)


@pytest.mark.parametrize("norm_vars", [False, True])
def test_apply_cmvn_matches_numpy(mats: list[np.ndarray], norm_vars: bool) -> None:
    stats = compute_cmvn_stats(mats)
    allx = np.concatenate(mats).astype(np.float64)
    x = mats[0]
    want = x - allx.mean(0)
    if norm_vars:
        want = want / allx.std(0)
    got = apply_cmvn(x, stats, norm_vars=norm_vars)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    normed_all = apply_cmvn(np.concatenate(mats), stats, norm_vars=norm_vars)
    np.testing.assert_allclose(normed_all.mean(0), 0, atol=1e-5)
    if norm_vars:
        np.testing.assert_allclose(normed_all.std(0), 1, atol=1e-5)


def test_constant_dimension_is_floored_not_nan() -> None:
    x = np.ones((10, 3), dtype=np.float32)
    out = apply_cmvn(x, compute_cmvn_stats([x]), norm_vars=True)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, 0)


def test_errors() -> None:
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="count"):
        apply_cmvn(x, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="do not match"):
        apply_cmvn(x, compute_cmvn_stats([np.ones((4, 2))]))
    with pytest.raises(ValueError, match="dimension mismatch"):
        compute_cmvn_stats([np.ones((4, 2)), np.ones((4, 3))])
    with pytest.raises(ValueError, match="at least one"):
        compute_cmvn_stats([])
