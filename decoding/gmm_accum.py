"""Vectorized GMM likelihoods, Viterbi EM statistics and Kaldi's maximum-likelihood GMM update.

The bindings accumulate one frame per Python call (``AccumAmDiagGmm.accumulate_for_gmm``), which would make
an hour of audio take minutes per EM pass. Here all frames of one pdf are processed at once with matrix
products. The bindings' accumulator cannot be filled from outside (``get_acc`` returns a copy), so the update
is Kaldi's ``MleDiagGmmUpdate`` re-done in numpy (same occupancy/weight thresholds, variance floor and
low-count Gaussian removal; the tests check it against the bindings' ``mle_am_diag_gmm_update``), mixing up
is Kaldi's ``SplitByCount`` with a seeded generator, and the result is written back as a new ``AmDiagGmm``.
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import kaldi_hmm_gmm as khg
import numpy as np

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class GmmParams:
    """All Gaussians of an AmDiagGmm, concatenated pdf by pdf, in the form matrix products want.

    ``loglike[t, g] = gconst[g] + x_t . means_invvars[g] - 0.5 * (x_t * x_t) . inv_vars[g]``
    """

    offsets: np.ndarray        # [num_pdfs + 1]: Gaussians of pdf p are offsets[p]:offsets[p+1]
    gconst: np.ndarray         # [G] float64
    means_invvars: np.ndarray  # [G, dim] float64
    inv_vars: np.ndarray       # [G, dim] float64
    weights: np.ndarray        # [G] float64

    @property
    def num_pdfs(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_am(cls, am: khg.AmDiagGmm) -> GmmParams:
        """Copy the parameters out of the bindings (one call per pdf, not per Gaussian)."""
        weights, means, inv_vars, sizes = [], [], [], [0]
        for p in range(am.num_pdfs):
            gmm = am.get_pdf(p)
            weights.append(np.asarray(gmm.weights, np.float64))
            means.append(np.asarray(gmm.means, np.float64))
            inv_vars.append(np.asarray(gmm.inv_vars, np.float64))
            sizes.append(len(weights[-1]))
        w, mu, iv = np.concatenate(weights), np.concatenate(means), np.concatenate(inv_vars)
        with np.errstate(divide="ignore"):
            log_w = np.log(w)
        gconst = log_w + 0.5 * (np.log(iv).sum(1) - mu.shape[1] * _LOG_2PI - (mu * mu * iv).sum(1))
        return cls(np.cumsum(sizes), gconst, mu * iv, iv, w)

    @property
    def means(self) -> np.ndarray:
        return self.means_invvars / self.inv_vars

    @property
    def variances(self) -> np.ndarray:
        return 1.0 / self.inv_vars

    def component_loglikes(self, feats: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        """[T, stop-start] log (weight * N(x; mean, var)) of Gaussians ``start:stop``."""
        x = np.asarray(feats, np.float64)
        sl = slice(start, stop)
        return self.gconst[sl] + x @ self.means_invvars[sl].T - 0.5 * ((x * x) @ self.inv_vars[sl].T)

    def pdf_loglikes(self, feats: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """[T, num_pdfs] log-likelihoods: log-sum-exp over each pdf's Gaussians, in frame chunks.

        float64 throughout: Gaussians with floored variances (e.g. trained on digital silence) have
        constants of 1e7 and more, and float32 products would cancel to errors of tenths of a nat.
        """
        starts, sizes = self.offsets[:-1], np.diff(self.offsets)
        weights = np.concatenate([self.means_invvars, -0.5 * self.inv_vars], axis=1).T
        out = np.empty((len(feats), self.num_pdfs), np.float32)
        for t0 in range(0, len(feats), chunk):
            x = np.asarray(feats[t0:t0 + chunk], np.float64)
            comp = np.concatenate([x, x * x], axis=1) @ weights
            comp += self.gconst
            peak = np.maximum.reduceat(comp, starts, axis=1)
            comp -= np.repeat(peak, sizes, axis=1)
            np.maximum(comp, -700.0, out=comp)  # keeps exp() out of slow denormals; exp(-700) adds nothing
            np.exp(comp, out=comp)
            out[t0:t0 + chunk] = peak + np.log(np.add.reduceat(comp, starts, axis=1))
        return out


@dataclass
class GmmStats:
    """Per-Gaussian Viterbi-EM statistics (Kaldi's AccumDiagGmm occupancy / mean / variance accumulators)."""

    occ: np.ndarray   # [G]
    x: np.ndarray     # [G, dim] sum of posterior * x
    x2: np.ndarray    # [G, dim] sum of posterior * x^2
    tot_loglike: float = 0.0
    num_frames: int = 0

    @classmethod
    def zeros(cls, num_gauss: int, dim: int) -> GmmStats:
        return cls(np.zeros(num_gauss), np.zeros((num_gauss, dim)), np.zeros((num_gauss, dim)))

    def add(self, other: GmmStats) -> None:
        self.occ += other.occ
        self.x += other.x
        self.x2 += other.x2
        self.tot_loglike += other.tot_loglike
        self.num_frames += other.num_frames

    def pdf_occupancy(self, offsets: np.ndarray) -> np.ndarray:
        """[num_pdfs] frames per pdf (what gmm-est's --mix-up splits by)."""
        return np.add.reduceat(self.occ, offsets[:-1]) if len(self.occ) else np.zeros(len(offsets) - 1)


def accumulate(params: GmmParams, feats: np.ndarray, pdfs: np.ndarray) -> GmmStats:
    """Statistics of frames ``feats`` labelled with pdf ids ``pdfs`` (one label per frame, Viterbi EM).

    Equivalent to calling ``accumulate_for_gmm(am, frame, pdf, 1.0)`` per frame: within each pdf the frame is
    shared among its Gaussians by their posteriors.
    """
    feats = np.asarray(feats, np.float64)
    pdfs = np.asarray(pdfs)
    if len(feats) != len(pdfs):
        raise ValueError(f"{len(feats)} frames but {len(pdfs)} pdf labels")
    stats = GmmStats.zeros(int(params.offsets[-1]), feats.shape[1])
    order = np.argsort(pdfs, kind="stable")
    sorted_pdfs = pdfs[order]
    present, first = np.unique(sorted_pdfs, return_index=True)
    bounds = np.append(first, len(order))
    for i, p in enumerate(present):
        x = feats[order[bounds[i]:bounds[i + 1]]]
        g0, g1 = int(params.offsets[p]), int(params.offsets[p + 1])
        comp = params.component_loglikes(x, g0, g1)
        peak = comp.max(axis=1, keepdims=True)
        post = np.exp(comp - peak)
        total = post.sum(axis=1, keepdims=True)
        post /= total
        stats.tot_loglike += float((peak + np.log(total)).sum())
        stats.occ[g0:g1] += post.sum(axis=0)
        stats.x[g0:g1] += post.T @ x
        stats.x2[g0:g1] += post.T @ (x * x)
    stats.num_frames += len(pdfs)
    return stats


def accumulate_utterances(params: GmmParams, feats: Mapping[str, np.ndarray],
                          pdf_labels: Mapping[str, np.ndarray]) -> GmmStats:
    """Stats over all utterances that have labels, concatenated so each pdf is one matrix product."""
    utts = [u for u in pdf_labels if u in feats]
    if not utts:
        raise ValueError("no utterance has both features and an alignment")
    return accumulate(params, np.concatenate([feats[u] for u in utts]),
                      np.concatenate([pdf_labels[u] for u in utts]))


@dataclass(frozen=True)
class MleOptions:
    """Kaldi ``MleDiagGmmOptions`` (same defaults)."""

    min_gaussian_weight: float = 1e-5
    min_gaussian_occupancy: float = 10.0
    min_variance: float = 1e-3
    remove_low_count_gaussians: bool = True


@dataclass
class PdfGmm:
    """One pdf's mixture in numpy (float64), between the update and the bindings' DiagGmm."""

    weights: np.ndarray    # [n]
    means: np.ndarray      # [n, dim]
    variances: np.ndarray  # [n, dim]


def mle_update(params: GmmParams, stats: GmmStats, opts: MleOptions = MleOptions()) -> list[PdfGmm]:
    """Kaldi ``MleAmDiagGmmUpdate`` (weights, means, variances) from numpy stats, one mixture per pdf.

    A Gaussian with too little occupancy (or weight) keeps its old parameters, or is removed when
    ``remove_low_count_gaussians`` (never the last one of a pdf; weights are then renormalised).
    """
    means, variances = params.means, params.variances
    out = []
    for p in range(params.num_pdfs):
        g0, g1 = int(params.offsets[p]), int(params.offsets[p + 1])
        occ = stats.occ[g0:g1]
        total = occ.sum()
        prob = occ / total if total > 0.0 else np.full(g1 - g0, 1.0 / (g1 - g0))
        ok = (occ > opts.min_gaussian_occupancy) & (prob > opts.min_gaussian_weight)
        safe_occ = np.where(ok, occ, 1.0)[:, None]
        new_mean = stats.x[g0:g1] / safe_occ
        new_var = np.maximum(stats.x2[g0:g1] / safe_occ - new_mean**2, opts.min_variance)
        weight = np.where(ok, prob, params.weights[g0:g1])
        mean = np.where(ok[:, None], new_mean, means[g0:g1])
        var = np.where(ok[:, None], new_var, variances[g0:g1])
        keep = np.ones(g1 - g0, bool)
        if opts.remove_low_count_gaussians:
            keep[np.flatnonzero(~ok)[: g1 - g0 - 1]] = False
        out.append(PdfGmm(weight[keep] / weight[keep].sum(), mean[keep], var[keep]))
    return out


def split_targets(occs: np.ndarray, target: int, power: float, min_count: float) -> np.ndarray:
    """Kaldi ``GetSplitTargets``: Gaussians per pdf for ``target`` in total, shared out by occupancy^power.

    One Gaussian more goes, each time, to the pdf with the most (occ^power / Gaussians); a pdf whose data
    would leave fewer than ``min_count`` frames per Gaussian gets no more.
    """
    occs = np.asarray(occs, np.float64)
    counts = np.ones(len(occs), np.int64)
    heap = [(-(o ** power), i) for i, o in enumerate(occs) if o > 0.0]
    heapq.heapify(heap)
    total = len(occs)
    while total < target and heap:
        _, i = heapq.heappop(heap)
        if (counts[i] + 1) * min_count >= occs[i]:
            continue  # insufficient data: never offered again
        counts[i] += 1
        total += 1
        heapq.heappush(heap, (-(occs[i] ** power) / counts[i], i))
    return counts


def mix_up(pdfs: list[PdfGmm], occs: np.ndarray, target: int, perturb: float, power: float, min_count: float,
           rng: np.random.Generator) -> list[PdfGmm]:
    """Kaldi ``AmDiagGmm::SplitByCount`` (gmm-est/gmm-mixup ``--mix-up``) with a seeded random generator.

    Each new Gaussian halves the heaviest one of its pdf; the two copies move apart by ``perturb`` standard
    deviations along a random direction. The bindings' version draws from Kaldi's global ``rand()``, which
    makes runs irreproducible; this one is deterministic for a given ``rng``.
    """
    current = sum(len(g.weights) for g in pdfs)
    if target <= current:
        return pdfs
    goals = split_targets(occs, target, power, min_count)
    out = []
    for gmm, goal in zip(pdfs, goals, strict=True):
        n = len(gmm.weights)
        if goal <= n:
            out.append(gmm)
            continue
        w = np.concatenate([gmm.weights, np.zeros(goal - n)])
        mu = np.concatenate([gmm.means, np.zeros((goal - n, gmm.means.shape[1]))])
        var = np.concatenate([gmm.variances, np.zeros((goal - n, gmm.means.shape[1]))])
        for i in range(n, goal):
            j = int(np.argmax(w[:i]))
            w[j] /= 2.0
            w[i] = w[j]
            shift = perturb * rng.standard_normal(mu.shape[1]) * np.sqrt(var[j])
            var[i] = var[j]
            mu[i] = mu[j] + shift
            mu[j] = mu[j] - shift
        out.append(PdfGmm(w, mu, var))
    return out


def to_am(pdfs: list[PdfGmm]) -> khg.AmDiagGmm:
    """The bindings' AmDiagGmm holding these mixtures (gconsts computed by Kaldi)."""
    am = khg.AmDiagGmm()
    for gmm in pdfs:
        am.add_pdf(diag_gmm(gmm.weights, gmm.means, gmm.variances))
    return am


def transition_counts(num_transition_ids: int, alignments: Iterable[np.ndarray]) -> np.ndarray:
    """Transition-id occupation counts (index 0 unused), the stats of ``TransitionModel::MleUpdate``."""
    counts = np.zeros(num_transition_ids + 1)
    for ali in alignments:
        counts += np.bincount(ali, minlength=num_transition_ids + 1)
    return counts


def diag_gmm(weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> khg.DiagGmm:
    """A bindings DiagGmm from numpy parameters (gconsts computed by Kaldi)."""
    means = np.atleast_2d(np.asarray(means, np.float32))
    gmm = khg.DiagGmm(means.shape[0], means.shape[1])
    gmm.set_weights(np.asarray(weights, np.float32).reshape(-1))
    gmm.set_invvars_and_means(1.0 / np.atleast_2d(np.asarray(variances, np.float32)), means)
    gmm.compute_gconsts()
    return gmm
