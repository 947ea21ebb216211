"""Paired bootstrap statistics: cases with a known answer, agreement with a by-hand resampling, input checks."""
from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from asr_kd.evaluation import stats
from asr_kd.evaluation.stats import Interval, bootstrap_indices, paired_difference, rate_interval, share_of_gain


def _by_hand(numer: np.ndarray, denom: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    idx = bootstrap_indices(len(numer), num_samples, seed)
    return 100.0 * numer[idx].sum(axis=1) / denom[idx].sum(axis=1)


def test_indices_are_seeded_in_range_and_independent_of_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    idx = bootstrap_indices(7, 50, seed=3)
    assert idx.shape == (50, 7) and idx.min() >= 0 and idx.max() < 7
    assert np.array_equal(idx, bootstrap_indices(7, 50, seed=3))
    assert not np.array_equal(idx, bootstrap_indices(7, 50, seed=4))
    monkeypatch.setattr(stats, "_BLOCK_ELEMENTS", 10)  # one replicate per block: same stream, same indices
    assert np.array_equal(idx, bootstrap_indices(7, 50, seed=3))


def test_rate_interval_is_the_percentile_of_resampled_ratios_and_estimate_is_the_plain_ratio() -> None:
    rng = np.random.default_rng(0)
    denom = rng.integers(1, 20, size=60).astype(float)
    numer = rng.binomial(denom.astype(int), 0.15).astype(float)
    iv = rate_interval(numer, denom, num_samples=500, seed=7)
    reps = _by_hand(numer, denom, 500, 7)
    assert iv.estimate == pytest.approx(100.0 * numer.sum() / denom.sum())
    assert (iv.low, iv.high) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])))
    assert iv.level == 0.95 and iv.dropped == 0 and iv.contains(iv.estimate)
    assert iv.as_dict() == {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "level": 0.95, "dropped": 0}
    assert rate_interval(numer, denom, num_samples=500, seed=7) == iv  # deterministic


def test_normal_method_is_kaldi_compute_wer_bootci_mean_plus_minus_z_sd() -> None:
    numer = np.array([3.0, 0, 1, 5, 2, 0, 0, 4])
    denom = np.array([10.0, 4, 6, 12, 9, 3, 5, 11])
    iv = rate_interval(numer, denom, num_samples=2000, seed=1, method="normal", level=0.9)
    reps = _by_hand(numer, denom, 2000, 1)
    half = NormalDist().inv_cdf(0.95) * reps.std()
    assert (iv.low, iv.high) == pytest.approx((reps.mean() - half, reps.mean() + half))
    assert iv.estimate == pytest.approx(100.0 * numer.sum() / denom.sum()) and iv.level == 0.9


def test_rate_interval_over_many_iid_utterances_matches_the_binomial_interval() -> None:
    """One word per utterance, errors Bernoulli(p): the interval is p +- 1.96 sqrt(p (1 - p) / n)."""
    n = 4000
    errors = (np.random.default_rng(5).random(n) < 0.2).astype(float)
    p = errors.mean()
    half = 100.0 * 1.959964 * np.sqrt(p * (1 - p) / n)
    for method in ("percentile", "normal"):
        iv = rate_interval(errors, np.ones(n), num_samples=2000, seed=0, method=method)
        assert iv.high - iv.low == pytest.approx(2 * half, rel=0.08), method
        assert (iv.low + iv.high) / 2 == pytest.approx(100.0 * p, abs=0.15 * half), method


def test_identical_systems_differ_by_exactly_zero_and_neither_wins() -> None:
    numer = np.array([1.0, 0, 4, 2, 2, 0, 3])
    denom = np.array([5.0, 3, 9, 4, 6, 2, 8])
    d = paired_difference(numer, numer, denom, higher_is_better=False, num_samples=300)
    assert d.diff == Interval(0.0, 0.0, 0.0)
    assert (d.prob_a_better, d.prob_b_better, d.significant) == (0.0, 0.0, False)
    assert d.a == d.b == rate_interval(numer, denom, num_samples=300)  # paired: the same indices as rate_interval


@pytest.mark.parametrize("higher_is_better", [False, True])
def test_a_system_better_on_every_utterance_wins_every_replicate(higher_is_better: bool) -> None:
    rng = np.random.default_rng(2)
    denom = rng.integers(5, 15, size=40).astype(float)
    worse = rng.integers(2, 5, size=40).astype(float)
    better = worse - 1 if not higher_is_better else worse + 1  # fewer errors / more correct frames everywhere
    d = paired_difference(worse, better, denom, higher_is_better=higher_is_better, num_samples=500)
    assert (d.prob_b_better, d.prob_a_better, d.significant) == (1.0, 0.0, True)
    assert (d.diff.high < 0) if not higher_is_better else (d.diff.low > 0)
    swapped = paired_difference(better, worse, denom, higher_is_better=higher_is_better, num_samples=500)
    assert (swapped.prob_b_better, swapped.prob_a_better) == (0.0, 1.0)
    assert swapped.diff.estimate == pytest.approx(-d.diff.estimate)


def test_replicates_where_both_are_equal_count_for_neither() -> None:
    """A wins utterance 0, B wins utterance 1: replicates drawing both equally often are ties."""
    numer_a, numer_b, denom = np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0])
    d = paired_difference(numer_a, numer_b, denom, higher_is_better=False, num_samples=1000, seed=3)
    idx = bootstrap_indices(2, 1000, seed=3)
    ones = (idx == 1).sum(axis=1)  # draws of utterance 1 (B's error); draws of utterance 0 are 2 - ones
    assert d.prob_b_better == pytest.approx(np.mean(ones < 1))
    assert d.prob_a_better == pytest.approx(np.mean(ones > 1))
    ties = np.mean(ones == 1)
    assert ties > 0.3 and d.prob_a_better + d.prob_b_better == pytest.approx(1 - ties)


def test_share_of_gain_known_values() -> None:
    rng = np.random.default_rng(4)
    denom = rng.integers(20, 40, size=50).astype(float)
    base = rng.integers(5, 10, size=50).astype(float)
    better = base - rng.integers(1, 4, size=50)  # gains on every utterance: no replicate has zero gain
    full = share_of_gain(base, better, better, denom, num_samples=300)
    assert (full.estimate, full.low, full.high, full.dropped) == (1.0, 1.0, 1.0, 0)
    none = share_of_gain(base, better, base, denom, num_samples=300)
    assert (none.estimate, none.low, none.high) == (0.0, 0.0, 0.0)
    half = share_of_gain(base, 2 * better - base, better, denom, num_samples=300)  # candidate keeps half the gain
    assert (half.estimate, half.low, half.high) == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="gains nothing"):
        share_of_gain(base, base, better, denom)


# Four utterances of unequal length (frames), each keeping a different share of the better system's gain
# (2/2, 3/15, 3/4 and 10/12): the share over all of them is a ratio of sums, 18/33 = 0.545; a mean of the
# per-utterance shares would give 0.696, and a difference of the mean per-utterance rates 0.583.
FRAMES = np.array([10.0, 30, 20, 40])
BASE = np.array([2.0, 6, 10, 8])
BETTER = np.array([4.0, 21, 14, 20])
CANDIDATE = np.array([4.0, 9, 13, 18])


def test_share_of_gain_is_a_ratio_of_sums_not_a_mean_of_per_utterance_shares() -> None:
    per_utt = (CANDIDATE - BASE) / (BETTER - BASE)
    assert len(set(per_utt)) == 4 and per_utt.mean() == pytest.approx(0.6958, abs=1e-4)
    rates = [(x / FRAMES).mean() for x in (BASE, BETTER, CANDIDATE)]
    assert (rates[2] - rates[0]) / (rates[1] - rates[0]) == pytest.approx(0.5833, abs=1e-4)
    assert share_of_gain(BASE, BETTER, CANDIDATE, FRAMES, num_samples=50).estimate == pytest.approx(18 / 33)
    # direction-free: the same counts read as errors (WER, lower is better) keep the same share
    errors = [FRAMES - x for x in (BASE, BETTER, CANDIDATE)]
    assert share_of_gain(*errors, FRAMES, num_samples=50).estimate == pytest.approx(18 / 33)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between the order statistics around position q * (n - 1)."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def test_share_interval_is_the_percentile_of_replicates_resampled_by_hand() -> None:
    """Each replicate draws 4 utterances with replacement (numpy's PCG64 stream of the seed, one row per replicate)
    and divides the candidate's summed gain by the better system's, in plain Python; the interval is the 2.5th and
    97.5th percentile of those ratios. Every utterance carries a gain, so no replicate is dropped."""
    num_samples, seed = 400, 11
    draws = np.random.default_rng(seed).integers(0, len(FRAMES), size=(num_samples, len(FRAMES)))
    replicates = sorted(sum(float(CANDIDATE[i] - BASE[i]) for i in row) / sum(float(BETTER[i] - BASE[i]) for i in row)
                        for row in draws.tolist())
    iv = share_of_gain(BASE, BETTER, CANDIDATE, FRAMES, num_samples=num_samples, seed=seed)
    assert (iv.low, iv.high) == pytest.approx((_percentile(replicates, 0.025), _percentile(replicates, 0.975)))
    assert iv.dropped == 0 and iv.estimate == pytest.approx(18 / 33)
    assert iv.low < 0.35 and iv.high > 0.8  # a wide interval: the shares of four utterances differ a lot


def test_share_of_gain_drops_and_counts_replicates_without_a_gain() -> None:
    """Only utterance 0 carries a gain: replicates that never draw it have none and are dropped."""
    base, better, cand = np.array([3.0, 1, 1]), np.array([1.0, 1, 1]), np.array([2.0, 1, 1])
    iv = share_of_gain(base, better, cand, np.array([4.0, 4, 4]), num_samples=1000, seed=9)
    expected_dropped = int((~(bootstrap_indices(3, 1000, seed=9) == 0).any(axis=1)).sum())
    assert iv.dropped == expected_dropped > 0
    assert (iv.estimate, iv.low, iv.high) == (0.5, 0.5, 0.5)


def test_replicates_without_a_denominator_are_dropped_and_counted() -> None:
    numer, denom = np.array([2.0, 1.0]), np.array([0.0, 5.0])  # e.g. an utterance with an empty reference
    iv = rate_interval(numer, denom, num_samples=1000, seed=2)
    assert iv.dropped == int((bootstrap_indices(2, 1000, seed=2) == 0).all(axis=1).sum()) > 0
    assert iv.estimate == pytest.approx(60.0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"numer": [1, 2], "denom": [3]}, "equal length"),
    ({"numer": [], "denom": []}, "no items"),
    ({"numer": [1], "denom": [0]}, "positive total"),
    ({"numer": [1], "denom": [-1]}, "non-negative"),
    ({"numer": [1], "denom": [np.nan]}, "finite"),
    ({"numer": [1], "denom": [2], "level": 1.0}, "level"),
    ({"numer": [1], "denom": [2], "num_samples": 0}, "num_samples"),
    ({"numer": [1], "denom": [2], "method": "bca"}, "method"),
])
def test_bad_inputs_are_value_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rate_interval(**kwargs)
