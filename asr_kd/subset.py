"""Choosing the small training subset of the 3%-data experiment (paper section 6).

The subset must be a fair miniature of the training set: a random 3% of utterances can by chance drop a voice
entirely, and the hard-vs-soft comparison would then measure speaker coverage rather than regularization. So
the draw is stratified by speaker: every speaker gets its share of the total (largest-remainder apportionment),
at least one utterance whenever the total allows one per speaker, and which utterances is a seeded draw that
depends only on (utt2spk, fraction, seed).
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping


def _apportion(sizes: dict[str, int], total: int, rng: random.Random) -> dict[str, int]:
    """Split ``total`` picks over speakers in proportion to ``sizes``, each speaker >= 1 when total allows."""
    n_all = sum(sizes.values())
    quota = {s: total * n / n_all for s, n in sizes.items()}
    floor_one = total >= len(sizes)
    count = {s: min(sizes[s], max(1 if floor_one else 0, math.floor(q))) for s, q in quota.items()}
    # Ties in the remainder are broken by a seeded shuffle, so that with fewer picks than speakers
    # it is a random (reproducible) set of speakers that gets one, not always the first in sort order.
    order = sorted(sizes)
    rng.shuffle(order)
    diff = total - sum(count.values())
    while diff > 0:
        open_spk = [s for s in order if count[s] < sizes[s]]
        for s in sorted(open_spk, key=lambda s: count[s] - quota[s])[:diff]:
            count[s] += 1
            diff -= 1
    while diff < 0:  # only when the minimum of one pushed the sum over the total
        lowest = 1 if floor_one else 0
        for s in sorted((s for s in order if count[s] > lowest), key=lambda s: quota[s] - count[s])[:-diff]:
            count[s] -= 1
            diff += 1
    return count


def select_subset(utt2spk: Mapping[str, str], fraction: float = 0.03, seed: int = 0) -> list[str]:
    """A speaker-stratified random ``fraction`` of the utterances, as sorted utterance ids.

    The total is round(fraction x #utterances) (at least one); each speaker contributes about ``fraction`` of
    its own utterances and at least one where the total allows. Deterministic in (utt2spk, fraction, seed).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not utt2spk:
        raise ValueError("empty utt2spk")
    by_spk: dict[str, list[str]] = defaultdict(list)
    for utt, spk in utt2spk.items():
        by_spk[spk].append(utt)
    total = max(1, round(fraction * len(utt2spk)))
    rng = random.Random(f"select_subset:{seed}")
    count = _apportion({s: len(u) for s, u in by_spk.items()}, total, rng)
    chosen: list[str] = []
    for spk in sorted(by_spk):
        chosen.extend(rng.sample(sorted(by_spk[spk]), count[spk]))
    return sorted(chosen)
