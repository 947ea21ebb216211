"""Kaldi ``add-deltas``: append regression deltas of increasing order to each frame.

The GMM stage uses MFCC + delta + delta-delta, as Kaldi's ``train_mono.sh``/``train_deltas.sh`` do. Kaldi's
order-``i`` window is the ``i``-fold convolution of the first-order regression window, applied to the *input*
with out-of-range frames clamped to the first/last frame. This differs at the edges from applying the
first-order operator twice, so it is implemented the Kaldi way to keep features interchangeable with Kaldi's.
"""
from __future__ import annotations

import numpy as np


def delta_windows(order: int, window: int) -> list[np.ndarray]:
    """Kaldi's ``scales_``: the regression window of each order 0..``order`` (length ``1 + 2*i*window``)."""
    if order < 0 or window < 1:
        raise ValueError(f"need order >= 0 and window >= 1, got order={order}, window={window}")
    first = np.arange(-window, window + 1, dtype=np.float64)
    first /= np.sum(first ** 2)
    scales = [np.ones(1)]
    for _ in range(order):
        scales.append(np.convolve(scales[-1], first))
    return scales


def add_deltas(feats: np.ndarray, order: int = 2, window: int = 2) -> np.ndarray:
    """Return ``[x, delta x, ..., delta^order x]`` per frame, shape ``[T, D * (order + 1)]``, feats' dtype."""
    if feats.ndim != 2:
        raise ValueError(f"expected a [T, D] matrix, got shape {feats.shape}")
    num_frames = feats.shape[0]
    scales = delta_windows(order, window)
    if num_frames == 0:
        return np.zeros((0, feats.shape[1] * len(scales)), dtype=feats.dtype)
    reach = order * window
    # Replicating the edge frames `reach` times is the same as clamping every index into the utterance.
    padded = feats.astype(np.float64)[np.clip(np.arange(-reach, num_frames + reach), 0, num_frames - 1)]
    blocks = []
    for scale in scales:
        half = (len(scale) - 1) // 2
        block = np.zeros(feats.shape, dtype=np.float64)
        for j, weight in enumerate(scale):
            if weight != 0.0:
                start = reach - half + j
                block += weight * padded[start:start + num_frames]
        blocks.append(block)
    return np.concatenate(blocks, axis=1).astype(feats.dtype, copy=False)
