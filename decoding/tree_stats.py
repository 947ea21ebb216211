"""Decision-tree statistics: per-event diagonal-Gaussian sufficient statistics (Kaldi ``acc-tree-stats``).

Kaldi accumulates, for every distinct *event* (the phones in the context window plus the HMM pdf-class of a
frame), the count, sum and sum of squares of the GMM features over the frames aligned to it, and builds the
tree from nothing else. :class:`TreeStats` holds exactly that table as numpy arrays (one row per event)
instead of Kaldi's ``vector<pair<EventType, GaussClusterable*>>``, so tree building can pool stats with
vectorised sums rather than a Python object per event.

The objective of a set of stats is Kaldi's ``GaussClusterable::Objf``: the log-likelihood of the frames
under one maximum-likelihood diagonal Gaussian with floored variances. Splits and merges are scored by
differences of it.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

_LOG_2PI = math.log(2.0 * math.pi)
# Frames per accumulation chunk: bounds the float64 copies of features (a 1-hour corpus is ~360k frames).
_CHUNK_FRAMES = 200_000


@dataclass(frozen=True)
class TreeStats:
    """Tree statistics, one row per distinct event (Kaldi ``BuildTreeStatsType``).

    ``contexts[e]`` is the phone context window (left ... right, ``context_width`` entries) with 0 for "no
    phone" at an utterance edge and -1 where the key is absent (the context of a context-independent phone
    such as silence is not recorded, as in ``acc-tree-stats --ci-phones``, so the tree can never ask about
    it). ``pdf_classes[e]`` is the HMM pdf-class. ``counts``, ``sums`` and ``sumsq`` are the frame count, the
    sum of feature vectors and the sum of their squares (diagonal Gaussian stats, float64).
    """

    contexts: np.ndarray  # [E, N] int32
    pdf_classes: np.ndarray  # [E] int32
    counts: np.ndarray  # [E] float64
    sums: np.ndarray  # [E, D] float64
    sumsq: np.ndarray  # [E, D] float64

    @property
    def num_events(self) -> int:
        return int(self.counts.shape[0])

    @property
    def dim(self) -> int:
        return int(self.sums.shape[1])

    @property
    def context_width(self) -> int:
        return int(self.contexts.shape[1])

    def stacked(self) -> np.ndarray:
        """``[E, 1 + 2D]`` rows of (count, sum, sumsq): the form every pooling and objective call uses."""
        return np.concatenate([self.counts[:, None], self.sums, self.sumsq], axis=1)


def gauss_objf(stacked: np.ndarray, var_floor: float) -> np.ndarray:
    """Kaldi ``GaussClusterable::Objf`` of each row of ``[..., 1 + 2D]`` stacked stats.

    The total log-likelihood of the pooled frames under their own ML diagonal Gaussian, variances floored at
    ``var_floor`` (the floor keeps tiny or constant clusters from scoring +inf). Rows with no count score 0.
    """
    stacked = np.asarray(stacked, dtype=np.float64)
    dim = (stacked.shape[-1] - 1) // 2
    count = stacked[..., 0]
    safe = np.where(count > 0, count, 1.0)[..., None]
    mean = stacked[..., 1 : 1 + dim] / safe
    var = stacked[..., 1 + dim :] / safe - mean * mean
    floored = np.maximum(var, var_floor)
    per_frame = -0.5 * (np.log(floored).sum(-1) + dim * _LOG_2PI + (var / floored).sum(-1))
    return np.where(count > 0, per_frame * count, 0.0)


def _pool_by_key(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows of ``keys`` and the sums of ``rows`` over each.

    Each key row is packed into one int64 (mixed radix over the columns' ranges) so the sort is a plain
    integer np.unique rather than numpy's much slower row-wise ``unique(axis=0)``.
    """
    low = keys.min(0)
    radix = keys.max(0) - low + 1
    if float(np.prod(radix.astype(np.float64))) >= 2.0**62:
        raise ValueError("tree-stats keys span too large a range to pack (phone ids or pdf-classes out of range)")
    code = np.zeros(len(keys), dtype=np.int64)
    for col in range(keys.shape[1]):
        code = code * radix[col] + (keys[:, col] - low[col])
    unique, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    return keys[first], segment_sum(inverse.reshape(-1), rows, len(unique))


def segment_sum(index: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    """``out[i] = rows[index == i].sum(0)`` for ``i < size``: one flat ``np.bincount`` (an order of magnitude
    faster than ``np.add.at`` on the ``[n, 1 + 2D]`` rows that tree building pools over and over)."""
    width = rows.shape[1]
    flat = (np.asarray(index, dtype=np.int64)[:, None] * width + np.arange(width)).reshape(-1)
    return np.bincount(flat, weights=np.asarray(rows, dtype=np.float64).reshape(-1), minlength=size * width).reshape(
        size, width
    )


def _from_pooled(keys: np.ndarray, pooled: np.ndarray) -> TreeStats:
    dim = (pooled.shape[1] - 1) // 2
    return TreeStats(
        contexts=np.ascontiguousarray(keys[:, 1:], dtype=np.int32),
        pdf_classes=np.ascontiguousarray(keys[:, 0], dtype=np.int32),
        counts=np.ascontiguousarray(pooled[:, 0]),
        sums=np.ascontiguousarray(pooled[:, 1 : 1 + dim]),
        sumsq=np.ascontiguousarray(pooled[:, 1 + dim :]),
    )


class TreeStatsAccumulator:
    """Tree stats accumulated utterance by utterance (Kaldi ``acc-tree-stats``), vectorised over frames.

    Utterances are buffered up to :data:`_CHUNK_FRAMES` frames, pooled by event, and each pooled chunk is added to
    a running total, so memory holds one chunk and the table of events, never the corpus: a caller can feed it
    one shard of features after another. Chunks end where the utterances fed so far reach the chunk size, which
    depends only on the utterances and their order, so the float sums are the same however the caller reads them.
    """

    def __init__(self, ci_phones: Collection[int] = (), central_position: int = 1) -> None:
        self._ci = np.asarray(sorted(ci_phones), dtype=np.int64)
        self._central = central_position
        self._keys: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._buffered = 0
        self._total: TreeStats | None = None

    def add(self, utt: str, feats: np.ndarray, contexts: np.ndarray, pdf_classes: np.ndarray) -> None:
        """One utterance: ``feats`` ``[T, D]`` (the GMM features), ``contexts`` ``[T, N]`` the phone window of the
        phone instance each frame belongs to (0 outside the utterance), ``pdf_classes`` ``[T]`` each frame's
        pdf-class. Frames of ``ci_phones`` (central phone) keep only their central phone, so no question about
        their context is ever asked (Kaldi's ``--ci-phones``, used for silence)."""
        x = np.asarray(feats, dtype=np.float64)
        ctx = np.asarray(contexts, dtype=np.int64)
        pcl = np.asarray(pdf_classes, dtype=np.int64)
        if x.ndim != 2 or ctx.ndim != 2 or pcl.ndim != 1 or not (len(x) == len(ctx) == len(pcl)):
            raise ValueError(
                f"utterance {utt}: feats {x.shape}, contexts {ctx.shape} and pdf_classes {pcl.shape} "
                "must be [T, D], [T, N] and [T] with the same T"
            )
        if self._ci.size:
            is_ci = np.isin(ctx[:, self._central], self._ci)
            if is_ci.any():
                ctx = ctx.copy()
                keep = ctx[is_ci, self._central]
                ctx[is_ci] = -1
                ctx[is_ci, self._central] = keep
        self._keys.append(np.concatenate([pcl[:, None], ctx], axis=1))
        self._rows.append(np.concatenate([np.ones((len(x), 1)), x, x * x], axis=1))
        self._buffered += len(x)
        if self._buffered >= _CHUNK_FRAMES:
            self._flush()

    def _flush(self) -> None:
        if not self._keys:
            return
        chunk = _from_pooled(*_pool_by_key(np.concatenate(self._keys), np.concatenate(self._rows)))
        self._total = chunk if self._total is None else sum_stats([self._total, chunk])
        self._keys.clear()
        self._rows.clear()
        self._buffered = 0

    def result(self) -> TreeStats:
        """The stats of every utterance added (adding rows to the running total in chunk order is exactly the
        one ``sum-tree-stats`` of all chunks, since ``np.bincount`` adds each event's rows in input order)."""
        self._flush()
        if self._total is None:
            raise ValueError("no frames to accumulate tree stats from (no utterance has feats, contexts and "
                             "pdf-classes)")
        return sum_stats([self._total])


def accumulate_tree_stats(
    feats: Mapping[str, np.ndarray],
    contexts: Mapping[str, np.ndarray],
    pdf_classes: Mapping[str, np.ndarray],
    ci_phones: Collection[int] = (),
    central_position: int = 1,
) -> TreeStats:
    """Tree stats over in-memory utterances (:class:`TreeStatsAccumulator`); utterances missing from
    ``contexts``/``pdf_classes`` are skipped (e.g. failed alignments)."""
    acc = TreeStatsAccumulator(ci_phones, central_position)
    for utt, x in feats.items():
        if utt in contexts and utt in pdf_classes:
            acc.add(utt, x, contexts[utt], pdf_classes[utt])
    return acc.result()


def sum_stats(parts: Iterable[TreeStats]) -> TreeStats:
    """Merge stats accumulated separately (Kaldi ``sum-tree-stats``): rows of the same event are added."""
    parts = list(parts)
    if not parts:
        raise ValueError("sum_stats needs at least one TreeStats")
    if len({(p.context_width, p.dim) for p in parts}) != 1:
        raise ValueError("cannot sum tree stats with different context widths or feature dimensions")
    keys = np.concatenate([np.concatenate([p.pdf_classes[:, None], p.contexts], axis=1) for p in parts])
    rows = np.concatenate([p.stacked() for p in parts])
    return _from_pooled(*_pool_by_key(keys.astype(np.int64), rows))
