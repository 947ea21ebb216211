"""Is system B really better than system A? WER and frame accuracy of several systems on one test set, each with
a confidence interval, and every pair's difference with its paired-bootstrap interval and win probability.

One implementation for everyone: written for both the ``asr-kd-compare`` command (:mod:`asr_kd.score_cli`) and the
recipe's report, so a claim in a report can be re-checked from the hypothesis and prediction files. The
statistics are :mod:`asr_kd.evaluation.stats` (resampling over utterances, the same indices for every system of a
comparison and every pair); WER counts are :func:`decoding.score.compute_wer`'s (sclite's).

The result is a JSON-able dict::

    {"metric": "wer" | "frame_accuracy", "unit": "%", "higher_is_better": bool, "systems": [names...],
     "bootstrap": {"num_samples", "seed", "level", "method", "resampled": "utterances", "paired": true},
     "groups": {"all" | <subset>: {"utterances": n,
                                   "systems": {name: {"interval": Interval.as_dict(), "counts": {...}}},
                                   "pairs": [{"name_a": a, "name_b": b, **PairedDifference.as_dict()}],
                                   "shares": [{"base": a, "better": b, "candidate": c, "share": Interval.as_dict()
                                               or None, "undefined": reason or None}]}}}

Pairs follow the order the systems were given: for systems (s1, s2, s3) the pairs are (s1, s2), (s1, s3), (s2, s3)
and each ``diff`` is b - a (``a``/``b`` hold the two systems' intervals), so list the reference system (the
baseline) first. ``shares`` asks for (base, better, candidate) triples: the share of the better system's gain over
the base that the candidate keeps (the paper's distilled-vs-ensemble claim), with its paired-bootstrap interval.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

from asr_kd.evaluation.stats import Method, paired_difference, rate_interval, share_of_gain
from decoding.score import WerResult, compute_wer
from features.errors import InputError

__all__ = ["compare_frame_accuracy", "compare_wer", "format_comparison"]

_ALL = "all"


def _groups(utts: Sequence[str], subsets: Mapping[str, str] | None) -> dict[str, np.ndarray]:
    """Item indices of the whole set ("all") and of each subset label, in label order."""
    groups = {_ALL: np.arange(len(utts))}
    if subsets is None:
        return groups
    missing = [u for u in utts if u not in subsets]
    if missing:
        raise InputError(f"utterance {missing[0]!r} has no subset label ({len(missing)} of {len(utts)} have none)")
    labels = np.array([subsets[u] for u in utts])
    if _ALL in set(labels.tolist()):
        raise InputError(f"subset label {_ALL!r} is reserved for the whole set")
    for label in sorted(set(labels.tolist())):
        groups[label] = np.flatnonzero(labels == label)
    return groups


Share = tuple[str, str, str]
"""(base, better, candidate): how much of better's gain over base the candidate keeps."""


def _share(numers: Mapping[str, np.ndarray], denom: np.ndarray, share: Share, stats_kw: dict) -> dict:
    base, better, candidate = share
    missing = [s for s in share if s not in numers]
    if missing:
        raise InputError(f"share {share}: no system {missing[0]!r}")
    row = {"base": base, "better": better, "candidate": candidate, "share": None, "undefined": None}
    try:
        row["share"] = share_of_gain(numers[base], numers[better], numers[candidate], denom, **stats_kw).as_dict()
    except ValueError as e:  # no gain at all on this group: the share is undefined, and the report says so
        row["undefined"] = str(e)
    return row


def _group_report(label: str, numers: Mapping[str, np.ndarray], denom: np.ndarray, counts: Mapping[str, dict], *,
                  higher_is_better: bool, stats_kw: dict, shares: Sequence[Share] = ()) -> dict:
    """Each system's interval and counts, every pair's paired difference and the asked shares of gain on one group
    of utterances."""
    if denom.sum() == 0:
        raise InputError(f"group {label!r}: nothing to score (no reference words or frames), the rate is "
                         "undefined")
    systems = {name: {"interval": rate_interval(num, denom, **stats_kw).as_dict(), "counts": counts[name]}
               for name, num in numers.items()}
    pairs = [{"name_a": a, "name_b": b,
              **paired_difference(numers[a], numers[b], denom, higher_is_better=higher_is_better, **stats_kw).as_dict()}
             for a, b in combinations(numers, 2)]
    return {"utterances": int(denom.size), "systems": systems, "pairs": pairs,
            "shares": [_share(numers, denom, share, stats_kw) for share in shares]}


def _result(metric: str, higher_is_better: bool, names: Sequence[str], stats_kw: dict, groups: dict) -> dict:
    return {"metric": metric, "unit": "%", "higher_is_better": higher_is_better, "systems": list(names),
            "bootstrap": {**stats_kw, "resampled": "utterances", "paired": True}, "groups": groups}


def _stats_kw(num_samples: int, seed: int, level: float, method: Method) -> dict:
    return {"num_samples": num_samples, "seed": seed, "level": level, "method": method}


def compare_wer(refs: Mapping[str, Sequence[str]], systems: Mapping[str, Mapping[str, Sequence[str]]], *,
                subsets: Mapping[str, str] | None = None, num_samples: int = 1000, seed: int = 0,
                level: float = 0.95, method: Method = "percentile", shares: Sequence[Share] = ()) -> dict:
    """WER (%) of each system against ``refs``, with intervals, and each pair's difference (see the module doc).

    Utterances a system has no hypothesis for count as all deletions and are counted in its
    ``counts["missing_hyps"]``; a hypothesis for an utterance ``refs`` lacks is an :class:`InputError`.
    ``subsets`` (utt -> label, e.g. a data dir's ``utt2subset``) adds one group per label; every reference
    utterance needs a label. Counts per group are :meth:`decoding.score.WerResult.summary`.
    """
    if not systems:
        raise ValueError("no systems to compare")
    utts = sorted(refs)
    results: dict[str, WerResult] = {}
    for name, hyps in systems.items():
        try:
            results[name] = compute_wer(refs, hyps)
        except ValueError as e:
            raise InputError(f"system {name!r}: {e}") from e
    first = next(iter(results.values()))
    words = np.array([first.per_utt[u].ref_words for u in utts])
    errors = {name: np.array([r.per_utt[u].errors for u in utts]) for name, r in results.items()}
    stats_kw = _stats_kw(num_samples, seed, level, method)
    groups = {}
    for label, idx in _groups(utts, subsets).items():
        members = [utts[i] for i in idx]
        member_set = set(members)
        counts = {name: WerResult.from_utts({u: r.per_utt[u] for u in members},
                                            [u for u in r.missing_hyps if u in member_set]).summary()
                  for name, r in results.items()}
        groups[label] = _group_report(label, {name: e[idx] for name, e in errors.items()}, words[idx], counts,
                                      higher_is_better=False, stats_kw=stats_kw, shares=shares)
    return _result("wer", False, list(systems), stats_kw, groups)


def _correct_frames(system: str, utt: str, ali: np.ndarray, pred: np.ndarray) -> int:
    if np.shape(pred) != np.shape(ali):
        raise InputError(f"system {system!r}: utterance {utt!r} has {np.size(pred)} predicted frames but its "
                         f"alignment has {np.size(ali)}")
    return int((np.asarray(pred) == np.asarray(ali)).sum())


def compare_frame_accuracy(alignments: Mapping[str, np.ndarray], predictions: Mapping[str, Mapping[str, np.ndarray]],
                           *, subsets: Mapping[str, str] | None = None, num_samples: int = 1000, seed: int = 0,
                           level: float = 0.95, method: Method = "percentile", shares: Sequence[Share] = ()) -> dict:
    """Frame accuracy (%) of each system's per-frame arg-max pdf ids against the alignment's pdf ids.

    ``alignments`` and each system's ``predictions`` map utterance -> int vector of one pdf id per frame. Every
    system must predict exactly the aligned utterances, each with the alignment's number of frames; anything else
    is an :class:`InputError` naming the system and the utterance (a frame-accuracy number over a different set
    of frames than the other systems' would not be comparable). Resampling is over utterances, as for WER.
    """
    if not predictions:
        raise ValueError("no systems to compare")
    utts = sorted(alignments)
    if not utts:
        raise InputError("the alignments hold no utterances")
    frames = np.array([np.size(alignments[u]) for u in utts])
    correct = {}
    for name, pred in predictions.items():
        missing = [u for u in utts if u not in pred]
        extra = sorted(set(pred) - set(alignments))
        if missing or extra:
            what = (f"no prediction for utterance {missing[0]!r}" if missing
                    else f"utterance {extra[0]!r} is not aligned")
            raise InputError(f"system {name!r}: {what} ({len(missing)} missing, {len(extra)} not aligned)")
        correct[name] = np.array([_correct_frames(name, u, alignments[u], pred[u]) for u in utts])
    stats_kw = _stats_kw(num_samples, seed, level, method)
    groups = {}
    for label, idx in _groups(utts, subsets).items():
        n_frames = int(frames[idx].sum())
        counts = {name: {"correct": int(c[idx].sum()), "frames": n_frames, "utterances": int(idx.size),
                         "accuracy": 100.0 * int(c[idx].sum()) / n_frames if n_frames else 0.0}
                  for name, c in correct.items()}
        groups[label] = _group_report(label, {name: c[idx] for name, c in correct.items()}, frames[idx], counts,
                                      higher_is_better=True, stats_kw=stats_kw, shares=shares)
    return _result("frame_accuracy", True, list(predictions), stats_kw, groups)


# What a system row shows beyond the rate and its interval: (column title, counts key) per metric.
_COUNT_COLUMNS = {
    "wer": (("errors", "errors"), ("words", "ref_words"), ("ins", "ins"), ("del", "dels"), ("sub", "subs"),
            ("%SER", "ser"), ("no hyp", "missing_hyps")),
    "frame_accuracy": (("correct", "correct"), ("frames", "frames")),
}
_TITLES = {"wer": "WER", "frame_accuracy": "frame accuracy"}


def _num(x: float | int) -> str:
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def percent(fraction: float) -> str:
    """A share as a whole percent; a share that rounds to zero prints "0%", never "-0%"."""
    return f"{round(100 * fraction):d}%"


def format_comparison(result: dict) -> str:
    """A :func:`compare_wer` / :func:`compare_frame_accuracy` result as Markdown: per group a table of systems and
    a table of pairs, then one line on how the intervals were computed."""
    metric, boot = result["metric"], result["bootstrap"]
    title, pct = _TITLES[metric], f"{100 * boot['level']:g}%"
    better = "higher" if result["higher_is_better"] else "lower"
    lines = []
    for label, g in result["groups"].items():
        cols = _COUNT_COLUMNS[metric]
        lines += [f"### {title} (%): {label} ({g['utterances']} utterances)", "",
                  f"| system | {title} | {pct} interval | " + " | ".join(c for c, _ in cols) + " |",
                  "|---|---:|---|" + "---:|" * len(cols)]
        for name, s in g["systems"].items():
            iv = s["interval"]
            lines.append(f"| {name} | {iv['estimate']:.2f} | [{iv['low']:.2f}, {iv['high']:.2f}] | "
                         + " | ".join(_num(s["counts"][k]) for _, k in cols) + " |")
        if g["pairs"]:
            lines += ["", f"| B vs A | B - A | {pct} interval | P(B better) | P(A better) | significant |",
                      "|---|---:|---|---:|---:|---|"]
            for p in g["pairs"]:
                d = p["diff"]
                lines.append(f"| {p['name_b']} vs {p['name_a']} | {d['estimate']:+.2f} | "
                             f"[{d['low']:+.2f}, {d['high']:+.2f}] | {p['prob_b_better']:.3f} | "
                             f"{p['prob_a_better']:.3f} | {'yes' if p['significant'] else 'no'} |")
        if g.get("shares"):
            lines += ["", f"| share of gain kept | share | {pct} interval |", "|---|---:|---|"]
            for sh in g["shares"]:
                what = f"{sh['candidate']} of {sh['better']} over {sh['base']}"
                iv = sh["share"]
                lines.append(f"| {what} | undefined ({sh['undefined']}) | - |" if iv is None else
                             f"| {what} | {percent(iv['estimate'])} | [{percent(iv['low'])}, "
                             f"{percent(iv['high'])}] |")
        lines.append("")
    lines.append(f"Paired bootstrap over utterances: {boot['num_samples']} replicates, seed {boot['seed']}, "
                 f"{boot['method']} intervals; 'better' = {better} {title}; a replicate where both are equal counts "
                 "for neither; significant = the difference's interval excludes 0.")
    return "\n".join(lines) + "\n"
