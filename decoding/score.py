"""Word error rate with NIST sclite's alignment, and icefall-style scoring files.

Counts must agree with ``sclite`` so that our numbers compare with published ones. sclite aligns with costs
substitution 4, insertion 3, deletion 3 (not Levenshtein's 1/1/1): where plain edit distance may call
``a b c`` -> ``a c d`` two substitutions, sclite calls it a deletion and an insertion, and sometimes its
alignment even has more errors than the minimum edit distance. jiwer (rapidfuzz) aligns with 1/1/1, so
:func:`compute_wer` runs its own dynamic programme with sclite's costs and tie-breaking, and reports jiwer's
edit distance alongside (``levenshtein_errors``) as a cross-check. The tests compare with the real sclite.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
import numpy as np

from features.atomic import atomic_write

__all__ = ["UttErrors", "WerResult", "align_words", "compute_wer", "normalize_transcript", "write_scoring_files"]

SUB_COST, INS_COST, DEL_COST = 4, 3, 3  # sclite's word-alignment penalties


def normalize_transcript(words: Sequence[str]) -> list[str]:
    """Tokens as sclite compares them with its default options: case-folded (sclite is case-insensitive
    unless run with ``-s``; we fold to upper case, the convention of our transcripts) and split on
    whitespace. No other rewriting: no hesitation or fragment handling (sclite does that only with a GLM
    or ``-F``/``-D``), and ``<UNK>`` in a hypothesis counts as an ordinary wrong word.
    """
    return [t.upper() for w in words for t in w.split()]


def align_words(ref: Sequence[str], hyp: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """sclite's minimum-cost alignment of two token lists as (ref token or None, hyp token or None) pairs.

    Costs: match 0, substitution 4, insertion 3, deletion 3. Among equal-cost predecessors of a cell the
    back-trace takes the diagonal (match or substitution), then the insertion, then the deletion: sclite's
    rule in ``net_dp.c``. Ties are common (3 substitutions cost as much as 2 deletions + 2 insertions) and the
    rule changes the counts, so it is part of agreeing with sclite (see the tests).
    """
    n, m = len(ref), len(hyp)
    cost = np.zeros((n + 1, m + 1), dtype=np.int64)
    cost[:, 0] = np.arange(n + 1) * DEL_COST
    cost[0, :] = np.arange(m + 1) * INS_COST
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = cost[i - 1, j - 1] + (0 if ref[i - 1] == hyp[j - 1] else SUB_COST)
            cost[i, j] = min(diag, cost[i - 1, j] + DEL_COST, cost[i, j - 1] + INS_COST)
    pairs: list[tuple[str | None, str | None]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i, j] == cost[i - 1, j - 1] + (0 if ref[i - 1] == hyp[j - 1] else SUB_COST):
            pairs.append((ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif j > 0 and cost[i, j] == cost[i, j - 1] + INS_COST:
            pairs.append((None, hyp[j - 1]))
            j -= 1
        else:
            pairs.append((ref[i - 1], None))
            i -= 1
    return pairs[::-1]


@dataclass
class UttErrors:
    """One utterance's alignment and error counts."""

    ref_words: int
    subs: int
    dels: int
    ins: int
    alignment: list[tuple[str | None, str | None]]

    @property
    def errors(self) -> int:
        return self.subs + self.dels + self.ins


@dataclass
class WerResult:
    """Corpus-level error counts; ``wer`` is in percent of reference words.

    ``levenshtein_errors`` is jiwer's minimum edit distance summed over utterances: never above ``errors``
    and usually equal; a large gap would mean an alignment bug.
    """

    ins: int
    dels: int
    subs: int
    ref_words: int
    wer: float
    sentences: int
    sentence_errors: int
    per_utt: dict[str, UttErrors] = field(default_factory=dict)
    missing_hyps: list[str] = field(default_factory=list)
    levenshtein_errors: int = 0

    @property
    def errors(self) -> int:
        return self.ins + self.dels + self.subs

    def summary(self) -> dict:
        """The counts without the per-utterance detail (what wer.json holds)."""
        return {"wer": self.wer, "errors": self.errors, "ref_words": self.ref_words, "ins": self.ins,
                "dels": self.dels, "subs": self.subs, "sentences": self.sentences,
                "sentence_errors": self.sentence_errors,
                "ser": 100.0 * self.sentence_errors / self.sentences if self.sentences else 0.0,
                "missing_hyps": len(self.missing_hyps), "levenshtein_errors": self.levenshtein_errors}

    @classmethod
    def from_utts(cls, per_utt: Mapping[str, UttErrors], missing_hyps: Sequence[str] = ()) -> WerResult:
        """Corpus counts summed over ``per_utt``: the one place totals are formed, for a whole test set or any
        part of it (a speaker, a subset). jiwer's edit distance is recomputed from the alignments' tokens."""
        utts = list(per_utt.values())
        ins, dels, subs = (sum(getattr(u, k) for u in utts) for k in ("ins", "dels", "subs"))
        ref_words = sum(u.ref_words for u in utts)
        sides = [([r for r, _ in u.alignment if r is not None], [h for _, h in u.alignment if h is not None])
                 for u in utts]
        return cls(
            ins=ins, dels=dels, subs=subs, ref_words=ref_words,
            wer=100.0 * (ins + dels + subs) / ref_words if ref_words else 0.0,
            sentences=len(utts), sentence_errors=sum(u.errors > 0 for u in utts),
            per_utt=dict(per_utt), missing_hyps=list(missing_hyps),
            levenshtein_errors=_levenshtein([r for r, _ in sides], [h for _, h in sides]),
        )


def _levenshtein(refs: list[list[str]], hyps: list[list[str]]) -> int:
    """jiwer's total edit distance; jiwer refuses empty references, which cost len(hyp) insertions anyway."""
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    total = sum(len(h) for r, h in zip(refs, hyps) if not r)
    if pairs:
        out = jiwer.process_words([" ".join(r) for r, _ in pairs], [" ".join(h) for _, h in pairs])
        total += out.substitutions + out.deletions + out.insertions
    return total


def compute_wer(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, Sequence[str]]) -> WerResult:
    """WER of ``hyps`` against ``refs`` over the utterances of ``refs``, both normalized first.

    An utterance with no hypothesis (decoding failed) counts as an empty hypothesis: all its reference words
    are deletions (Kaldi's ``compute-wer --mode=all``; sclite given ``trn`` files silently skips the utterance
    instead, which flatters a system that fails on hard ones); such utterances are listed in ``missing_hyps``.
    Hypotheses for utterances not in ``refs`` are an error (they would otherwise vanish from the count).
    """
    extra = sorted(set(hyps) - set(refs))
    if extra:
        raise ValueError(f"{len(extra)} hypotheses have no reference, e.g. {extra[:3]}")
    per_utt, missing = {}, []
    for utt in sorted(refs):
        ref = normalize_transcript(refs[utt])
        if utt not in hyps:
            missing.append(utt)
        hyp = normalize_transcript(hyps.get(utt, []))
        alignment = align_words(ref, hyp)
        per_utt[utt] = UttErrors(
            ref_words=len(ref),
            subs=sum(r is not None and h is not None and r != h for r, h in alignment),
            dels=sum(h is None for _, h in alignment),
            ins=sum(r is None for r, _ in alignment),
            alignment=alignment,
        )
    return WerResult.from_utts(per_utt, missing)


def _alignment_text(alignment: Sequence[tuple[str | None, str | None]]) -> str:
    """icefall's notation: ``word`` when correct, ``(ref->hyp)`` for errors, ``*`` for the empty side."""
    return " ".join(r if r == h else f"({r or '*'}->{h or '*'})" for r, h in alignment)


def write_scoring_files(out_dir: Path, name: str, refs: Mapping[str, Sequence[str]],
                        hyps: Mapping[str, Sequence[str]], result: WerResult) -> None:
    """icefall-style ``recogs-<name>.txt`` (ref/hyp per utterance), ``errs-<name>.txt`` (summary, per-utterance
    alignments of utterances with errors, most frequent substitutions/deletions/insertions) and
    ``wer.json`` (:meth:`WerResult.summary`)."""
    out_dir = Path(out_dir)
    with atomic_write(out_dir / f"recogs-{name}.txt") as f:
        for utt in sorted(refs):
            f.write(f"{utt}:\tref={list(normalize_transcript(refs[utt]))}\n")
            f.write(f"{utt}:\thyp={list(normalize_transcript(hyps.get(utt, [])))}\n")
    subs: Counter[tuple[str, str]] = Counter()
    dels: Counter[str] = Counter()
    ins: Counter[str] = Counter()
    for u in result.per_utt.values():
        for r, h in u.alignment:
            if r is None:
                ins[h] += 1
            elif h is None:
                dels[r] += 1
            elif r != h:
                subs[(r, h)] += 1
    with atomic_write(out_dir / f"errs-{name}.txt") as f:
        f.write(f"%WER = {result.wer:.2f}\n")
        f.write(f"Errors: {result.ins} insertions, {result.dels} deletions, {result.subs} substitutions, over "
                f"{result.ref_words} reference words ({result.ref_words - result.subs - result.dels} correct)\n")
        f.write(f"Sentences with errors: {result.sentence_errors} of {result.sentences}; "
                f"{len(result.missing_hyps)} without a hypothesis\n")
        f.write("\nPER-UTT DETAILS: corr or (ref->hyp)\n")
        for utt, u in sorted(result.per_utt.items()):
            if u.errors:
                f.write(f"{utt}:\t{_alignment_text(u.alignment)}\n")
        f.write("\nSUBSTITUTIONS: count ref -> hyp\n")
        f.writelines(f"{c}   {r} -> {h}\n" for (r, h), c in subs.most_common())
        f.write("\nDELETIONS: count ref\n")
        f.writelines(f"{c}   {w}\n" for w, c in dels.most_common())
        f.write("\nINSERTIONS: count hyp\n")
        f.writelines(f"{c}   {w}\n" for w, c in ins.most_common())
    with atomic_write(out_dir / "wer.json") as f:
        json.dump(result.summary(), f, indent=1)
