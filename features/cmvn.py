"""Cepstral mean and variance normalisation with Kaldi's statistics layout and ``apply-cmvn`` arithmetic.

Stats are a ``(2, D+1)`` float64 matrix: row 0 holds the per-dimension sums and the frame count in the last
column, row 1 the sums of squares (last column 0). Keeping Kaldi's layout means ``cmvn.scp`` written here is
readable by Kaldi tools, and per-speaker stats are just the sum of per-utterance stats.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: Kaldi floors the variance at this value (and warns) before taking 1/sqrt.
VARIANCE_FLOOR = 1.0e-20


def compute_cmvn_stats(mats: Iterable[np.ndarray]) -> np.ndarray:
    """Accumulate Kaldi CMVN stats over one or more ``[T, D]`` matrices (e.g. all utterances of a speaker)."""
    stats: np.ndarray | None = None
    for mat in mats:
        if mat.ndim != 2:
            raise ValueError(f"expected [T, D] matrices, got shape {mat.shape}")
        x = mat.astype(np.float64, copy=False)
        if stats is None:
            stats = np.zeros((2, x.shape[1] + 1), dtype=np.float64)
        elif stats.shape[1] != x.shape[1] + 1:
            raise ValueError(f"dimension mismatch: stats for D={stats.shape[1] - 1}, matrix has D={x.shape[1]}")
        stats[0, :-1] += x.sum(axis=0)
        stats[1, :-1] += np.einsum("td,td->d", x, x)
        stats[0, -1] += x.shape[0]
    if stats is None:
        raise ValueError("compute_cmvn_stats needs at least one matrix")
    return stats


def apply_cmvn(feats: np.ndarray, stats: np.ndarray, norm_vars: bool = False) -> np.ndarray:
    """Normalise ``feats`` to zero mean (and unit variance with ``norm_vars``) under ``stats``.

    As in Kaldi, a count below 1 is an error and variances are floored at :data:`VARIANCE_FLOOR`; the result has
    ``feats``' dtype.
    """
    dim = feats.shape[1]
    if stats.shape != (2, dim + 1):
        raise ValueError(f"stats of shape {stats.shape} do not match features of dimension {dim}")
    count = float(stats[0, dim])
    if count < 1.0:
        raise ValueError(f"insufficient CMVN stats: count = {count}")
    mean = stats[0, :dim] / count
    if norm_vars:
        var = np.maximum(stats[1, :dim] / count - mean * mean, VARIANCE_FLOOR)
        scale = 1.0 / np.sqrt(var)
    else:
        scale = np.ones(dim)
    out = (feats.astype(np.float64) - mean) * scale
    return out.astype(feats.dtype, copy=False)
