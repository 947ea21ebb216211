"""How close forced alignments are to the synthesizer's own phone timings (``phones.ctm``).

Frame accuracy of a DNN is only as meaningful as its targets; on a synthetic corpus the TTS engine knows
where each phone really is, so the GMM alignments can be graded directly. Phone sequences of the aligner
(lexicon pronunciations, optional silence) and of the synthesizer (its own letter-to-sound rules, its own
pauses) differ, so they are first matched with an edit-distance alignment and only boundaries of phones
that match by name are compared.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import kaldi_hmm_gmm as khg
import kaldialign
import numpy as np

from decoding.align import phone_instances
from decoding.hmm import read_model, transition_tables
from features.errors import InputError
from features.kaldi_io import load_vec_int_scp

FRAME_SHIFT = 0.01
# Frame t covers [t*shift, t*shift + 25 ms] (snip_edges): a boundary between frames t-1 and t lies halfway
# between their centres, 7.5 ms after t*shift.
BOUNDARY_OFFSET = 0.0075

Segment = tuple[str, float, float]  # phone, start s, end s


def read_phones_ctm(path: Path) -> dict[str, list[Segment]]:
    """``<utt> <channel> <start> <duration> <phone>`` lines, in time order per utterance."""
    out: dict[str, list[Segment]] = defaultdict(list)
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 5:
            raise InputError(f"expected '<utt> <channel> <start> <dur> <phone>', got {line!r}", path, n)
        try:
            start, dur = float(parts[2]), float(parts[3])
        except ValueError as e:
            raise InputError(f"bad time in {line!r}", path, n) from e
        out[parts[0]].append((parts[4], start, start + dur))
    return {u: sorted(s, key=lambda x: x[1]) for u, s in out.items()}


def _base_phone(name: str) -> str:
    """AH1 / AH_B -> AH: lexicons may carry stress or word-position marks that the synthesizer does not."""
    return name.split("_")[0].rstrip("012")


def _phone_names(phone_table: Path | Mapping[int, str]) -> dict[int, str]:
    if isinstance(phone_table, Mapping):
        return dict(phone_table)
    names = {}
    for line in Path(phone_table).read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2:
            names[int(parts[1])] = parts[0]
    return names


def alignment_segments(ali: np.ndarray, trans_model: khg.TransitionModel, names: Mapping[int, str]) -> list[Segment]:
    """Phone segments of one transition-id alignment, with times of the boundaries between frames."""
    phones, starts = phone_instances(ali, transition_tables(trans_model))
    times = starts * FRAME_SHIFT + BOUNDARY_OFFSET
    times[0], times[-1] = 0.0, len(ali) * FRAME_SHIFT + (0.025 - FRAME_SHIFT)
    return [(_base_phone(names[int(p)]), float(times[i]), float(times[i + 1])) for i, p in enumerate(phones)]


def boundary_errors(ref: Sequence[Segment], hyp: Sequence[Segment]) -> tuple[list[float], int]:
    """|ref - hyp| start times of phones matched by name (each internal boundary once: the start of the phone
    after it; the utterance start is not a boundary), and the number of matched phones."""
    eps = "<eps>"
    pairs = kaldialign.align([s[0] for s in ref], [s[0] for s in hyp], eps)
    errors, matched, i, j = [], 0, 0, 0
    for r, h in pairs:
        if r != eps and h != eps:
            if r == h:
                matched += 1
                if i > 0:
                    errors.append(abs(ref[i][1] - hyp[j][1]))
            i, j = i + 1, j + 1
        elif r != eps:
            i += 1
        else:
            j += 1
    return errors, matched


def _error_summary(err: np.ndarray, tolerances: Sequence[float]) -> dict:
    """Boundaries, mean and median absolute error (s) and the ``within_<ms>ms`` shares of absolute errors."""
    result: dict = {"boundaries": int(err.size),
                    "mean_abs_error_s": float(err.mean()) if err.size else float("nan"),
                    "median_abs_error_s": float(np.median(err)) if err.size else float("nan")}
    for tol in tolerances:
        # 1e-6 s slack: ctm times are printed to the millisecond, so an error of exactly 2 frames must count.
        result[f"within_{round(tol * 1000)}ms"] = float((err <= tol + 1e-6).mean()) if err.size else float("nan")
    return result


def boundary_accuracy(ali_dir: Path, trans_model: khg.TransitionModel | Path, phones_ctm: Path,
                      phone_table: Path | Mapping[int, str], tolerances: Sequence[float] = (0.02, 0.04),
                      groups: Mapping[str, str] | None = None) -> dict:
    """Share of phone boundaries within each tolerance of the synthesizer's, over the aligned utterances.

    ``trans_model`` may be a TransitionModel or a path to a final.mdl. Returns counts (utterances compared,
    reference phones, matched phones, boundaries), ``within_<ms>ms`` shares, and the mean and median
    absolute boundary error in seconds. With ``groups`` (utterance -> label, e.g. its speaker) the same
    summary per label is under ``by_group``: on a multi-voice corpus each synthesizer labels phones its own way,
    and an overall share can hide one voice whose reference is off.
    """
    if not isinstance(trans_model, khg.TransitionModel):
        trans_model = read_model(Path(trans_model))[0]
    names = _phone_names(phone_table)
    alignments = load_vec_int_scp(Path(ali_dir) / "ali.scp")
    ref = read_phones_ctm(phones_ctm)
    ref = {u: [(_base_phone(p), s, e) for p, s, e in segs] for u, segs in ref.items()}
    errors: list[float] = []
    by_group: dict[str, list[float]] = defaultdict(list)
    num_ref = matched = compared = 0
    for utt, ali in alignments.items():
        if utt not in ref:
            continue
        e, m = boundary_errors(ref[utt], alignment_segments(ali, trans_model, names))
        errors += e
        if groups is not None:
            by_group[groups[utt]] += e
        matched += m
        num_ref += len(ref[utt])
        compared += 1
    result = {"utterances": compared, "ref_phones": num_ref, "matched_phones": matched,
              **_error_summary(np.asarray(errors), tolerances)}
    if groups is not None:
        result["by_group"] = {g: _error_summary(np.asarray(by_group[g]), tolerances) for g in sorted(by_group)}
    return result
