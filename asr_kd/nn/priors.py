"""State priors for hybrid decoding: the DNN gives p(s | x), the HMM needs p(x | s) ~ p(s | x) / p(s).

The priors are the relative frequencies of the pdfs in the training alignments (exp/tri1_ali/pdf_counts).
A pdf seen too rarely to estimate (relative frequency below ``floor``) gets a huge log prior, as Kaldi nnet1's
``--prior-floor`` does: dividing by a tiny prior would turn a meaningless posterior into a large likelihood, so such
states are instead made unreachable for the decoder.
"""
from __future__ import annotations

import numpy as np

DISABLED_LOG_PRIOR = float(np.sqrt(np.finfo(np.float32).max))
"""Log prior given to floored pdfs: subtracting it makes their scaled likelihood effectively -inf, yet finite."""


def log_priors(pdf_counts: np.ndarray, floor: float = 1e-10) -> np.ndarray:
    """log p(s) from per-pdf frame counts [C] (float32); pdfs with relative frequency < ``floor`` are disabled.

    Decode with ``log_posteriors - log_priors`` (times the acoustic scale).
    """
    counts = np.asarray(pdf_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"pdf_counts must be a non-empty vector, got shape {counts.shape}")
    if (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("pdf_counts must be non-negative with a positive total")
    freq = counts / counts.sum()
    out = np.full(freq.shape, DISABLED_LOG_PRIOR)
    seen = freq >= floor
    out[seen] = np.log(freq[seen])
    return out.astype(np.float32)
