"""Paired bootstrap statistics for corpus-level rates: is system B really better than system A on this test set?

Every metric here is a ratio of sums over utterances (WER = 100 * sum(errors) / sum(reference words); frame
accuracy = 100 * sum(correct frames) / sum(frames)), so the unit of resampling is the utterance, not the word or
frame: errors within an utterance are correlated (one misrecognized name costs several words), and resampling
words would give intervals that are too narrow (Bisani & Ney 2004, the method of Kaldi's ``compute-wer-bootci``).

Resampling is *paired*: one comparison draws one set of utterance indices per replicate and uses it for every
system, so the difference between two systems is measured on the same utterances each time. That is what makes
a 0.3-point WER difference detectable when each system's own interval is a point wide: most of the utterance-to-
utterance variance is shared and cancels.

Interval method. ``method="percentile"`` (default) takes the (1-level)/2 and (1+level)/2 quantiles of the
replicates (numpy's linear interpolation): it needs no normality assumption, follows the skew of a rate near 0
or 100 % and of a ratio such as :func:`share_of_gain`, and never leaves the metric's range. ``method="normal"`` is
Kaldi's form: the mean of the replicates +- z * their standard deviation (population SD, z = 1.96 for 95 %; Kaldi
hard-codes 1.96, we use the exact normal quantile of ``level``), for readers who want to reproduce a
``compute-wer-bootci`` number. With either method ``Interval.estimate`` is the plain ratio on all utterances
(the number sclite reports), not the replicates' mean that ``compute-wer-bootci`` prints as its WER.

Probability of improvement: the fraction of replicates in which B is strictly better than A (Kaldi: "Probability
of Set2 improving Set1", as a fraction here, not a percentage). A replicate where both are exactly equal counts
for neither side, so ``prob_a_better + prob_b_better <= 1`` and two identical systems get 0 and 0.

Undefined replicates: a replicate drawing only utterances with a zero denominator (no reference words) has no
rate; for :func:`share_of_gain` a replicate where the better system gains exactly nothing has no ratio. Such
replicates are dropped and counted in ``Interval.dropped``; probabilities are fractions of the remaining ones.

Determinism: indices come from ``numpy.random.default_rng(seed)`` (PCG64) and sums of integer counts are exact,
so the same inputs and seed give the same numbers on any machine with the same numpy major version.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["METHODS", "Interval", "Method", "PairedDifference", "bootstrap_indices", "paired_difference",
           "rate_interval", "share_of_gain"]

Method = Literal["percentile", "normal"]
METHODS: tuple[str, ...] = ("percentile", "normal")

# Index-matrix elements drawn per block: bounds memory on large test sets (1000 replicates of 100k utterances
# would be 800 MB at once). Blocks of rows drawn one after another give the same indices as one draw.
_BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval at ``level``.

    ``dropped`` counts bootstrap replicates on which the statistic was undefined (see the module docstring).
    """

    estimate: float
    low: float
    high: float
    level: float = 0.95
    dropped: int = 0

    def contains(self, x: float) -> bool:
        """Whether ``x`` lies in the closed interval [low, high]."""
        return self.low <= x <= self.high

    def as_dict(self) -> dict[str, float | int]:
        """The fields as a JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """Systems A and B on the same utterances: each one's rate, the difference B - A, and who wins how often.

    "B better" means a lower rate when ``higher_is_better`` is False (WER) and a higher one when True (accuracy).
    ``significant`` is True when the difference's interval excludes 0.
    """

    a: Interval
    b: Interval
    diff: Interval
    prob_b_better: float
    prob_a_better: float
    significant: bool
    higher_is_better: bool

    def as_dict(self) -> dict:
        """A JSON-able dict (intervals as dicts)."""
        return {"a": self.a.as_dict(), "b": self.b.as_dict(), "diff": self.diff.as_dict(),
                "prob_b_better": self.prob_b_better, "prob_a_better": self.prob_a_better,
                "significant": self.significant, "higher_is_better": self.higher_is_better}


def _check_settings(num_samples: int, level: float, method: str) -> None:
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _index_blocks(num_items: int, num_samples: int, seed: int) -> Iterator[np.ndarray]:
    """The [B, n] bootstrap index matrix in blocks of whole rows (replicates)."""
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK_ELEMENTS // num_items)
    for start in range(0, num_samples, rows):
        yield rng.integers(0, num_items, size=(min(rows, num_samples - start), num_items))


def bootstrap_indices(num_items: int, num_samples: int = 1000, seed: int = 0) -> np.ndarray:
    """[num_samples, num_items] int64 item indices drawn with replacement: row b is replicate b's items.

    Every function here resamples with exactly these indices, so a caller can recompute any replicate.
    """
    if num_items < 1:
        raise ValueError("cannot resample an empty set of items")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    return np.concatenate(list(_index_blocks(num_items, num_samples, seed)))


def _items(*arrays: ArrayLike) -> list[np.ndarray]:
    """Per-item values as float64 vectors of one common, non-zero length; the last one is the denominator."""
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    if any(a.ndim != 1 for a in out) or len({a.size for a in out}) != 1:
        raise ValueError(f"per-item values must be 1-d and of equal length, got shapes {[a.shape for a in out]}")
    if out[0].size == 0:
        raise ValueError("no items to resample")
    if not all(np.isfinite(a).all() for a in out):
        raise ValueError("per-item values must be finite")
    denom = out[-1]
    if (denom < 0).any() or denom.sum() == 0:
        raise ValueError("denominators must be non-negative with a positive total (e.g. no reference words)")
    return out


def _replicate_sums(columns: list[np.ndarray], num_samples: int, seed: int) -> np.ndarray:
    """[k, num_samples]: each column's sum over each replicate's items (all columns resampled together)."""
    values = np.stack(columns)
    sums = np.empty((len(columns), num_samples))
    start = 0
    for idx in _index_blocks(values.shape[1], num_samples, seed):
        sums[:, start:start + len(idx)] = values[:, idx].sum(axis=-1)
        start += len(idx)
    return sums


def _interval(estimate: float, replicates: np.ndarray, level: float, method: str, dropped: int) -> Interval:
    if replicates.size == 0:
        raise ValueError("the statistic is undefined on every bootstrap replicate")
    if method == "percentile":
        low, high = np.quantile(replicates, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    else:
        half = NormalDist().inv_cdf((1.0 + level) / 2.0) * float(replicates.std())
        low, high = float(replicates.mean()) - half, float(replicates.mean()) + half
    return Interval(float(estimate), float(low), float(high), level, dropped)


def rate_interval(numer: ArrayLike, denom: ArrayLike, *, num_samples: int = 1000, seed: int = 0,
                  level: float = 0.95, scale: float = 100.0, method: Method = "percentile") -> Interval:
    """``scale * sum(numer) / sum(denom)`` over items (utterances) with its bootstrap interval."""
    _check_settings(num_samples, level, method)
    numer, denom = _items(numer, denom)
    num, den = _replicate_sums([numer, denom], num_samples, seed)
    ok = den > 0
    return _interval(scale * numer.sum() / denom.sum(), scale * num[ok] / den[ok], level, method, int((~ok).sum()))


def paired_difference(numer_a: ArrayLike, numer_b: ArrayLike, denom: ArrayLike, *, higher_is_better: bool,
                      num_samples: int = 1000, seed: int = 0, level: float = 0.95, scale: float = 100.0,
                      method: Method = "percentile") -> PairedDifference:
    """Rates of systems A and B on the same items and the paired bootstrap of their difference B - A.

    ``a`` and ``b`` equal what :func:`rate_interval` gives with the same seed (same indices). Who is better in a
    replicate is decided on the numerator sums (the denominator is shared), so no rounding can make a tie.
    """
    _check_settings(num_samples, level, method)
    numer_a, numer_b, denom = _items(numer_a, numer_b, denom)
    num_a, num_b, den = _replicate_sums([numer_a, numer_b, denom], num_samples, seed)
    ok = den > 0
    dropped = int((~ok).sum())
    rate_a, rate_b = scale * num_a[ok] / den[ok], scale * num_b[ok] / den[ok]
    est_a, est_b = scale * numer_a.sum() / denom.sum(), scale * numer_b.sum() / denom.sum()
    a = _interval(est_a, rate_a, level, method, dropped)
    b = _interval(est_b, rate_b, level, method, dropped)
    diff = _interval(est_b - est_a, rate_b - rate_a, level, method, dropped)
    b_ahead = (num_b[ok] - num_a[ok]) * (1.0 if higher_is_better else -1.0)
    return PairedDifference(a=a, b=b, diff=diff, prob_b_better=float((b_ahead > 0).mean()),
                            prob_a_better=float((b_ahead < 0).mean()), significant=not diff.contains(0.0),
                            higher_is_better=higher_is_better)


def share_of_gain(numer_base: ArrayLike, numer_better: ArrayLike, numer_candidate: ArrayLike, denom: ArrayLike, *,
                  num_samples: int = 1000, seed: int = 0, level: float = 0.95,
                  method: Method = "percentile") -> Interval:
    """(candidate - base) / (better - base): the share of the better system's gain over the base that a candidate
    keeps (the paper's "distilled model keeps over 80 % of the ensemble's improvement"), as a fraction.

    1 when the candidate equals the better system, 0 when it equals the base; direction-free (WER or accuracy).
    The shared denominator cancels, so the ratio is one of numerator sums. Replicates where the better system
    gains exactly nothing are dropped and counted (``dropped``); when the gain's own interval includes 0 the
    share's interval is wide or meaningless, which ``dropped`` and the width show. Raises ValueError when the
    gain on all items is 0 (no estimate).
    """
    _check_settings(num_samples, level, method)
    base, better, cand, denom = _items(numer_base, numer_better, numer_candidate, denom)
    gain_all = better.sum() - base.sum()
    if gain_all == 0:
        raise ValueError("the better system gains nothing over the base on these items: the share is undefined")
    num_base, num_better, num_cand, den = _replicate_sums([base, better, cand, denom], num_samples, seed)
    gain = num_better - num_base
    ok = (den > 0) & (gain != 0)
    return _interval((cand.sum() - base.sum()) / gain_all, (num_cand[ok] - num_base[ok]) / gain[ok], level, method,
                     int((~ok).sum()))
