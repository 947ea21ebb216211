"""The report's comparisons: which systems are compared, on which frames and words, with which paired intervals."""
from __future__ import annotations

from typing import Any

from asr_kd.evaluation.compare import compare_frame_accuracy, compare_wer, percent
from asr_kd.pipeline import experiment as xp
from asr_kd.pipeline.workspace import Workspace
from asr_kd.corpus.kaldi_dir import UNLABELED
from features.kaldi_io import load_vec_int_scp
from features.tables import read_text

MAIN_SYSTEMS = ("baseline", "ensemble", "distilled")
SMALL_SOFT = ("small_soft", "small_soft_baseline")  # 3% soft-target models: the main teacher's, the other one's
KEPT = ("baseline", "ensemble", "distilled")  # share of the ensemble's gain over the baseline the student keeps
UNLABELED_STUDENT, SMALL_UNLABELED = xp.UNLABELED_STUDENT, xp.SMALL_UNLABELED  # the untranscribed-pool arms
CLAIMS = (  # (claim, system A, system B): the report says whether B - A is real
    ("ensemble vs baseline", "baseline", "ensemble"),
    ("distilled vs baseline", "baseline", "distilled"),
    ("distilled vs ensemble", "ensemble", "distilled"),
    ("distilled with untranscribed pool vs distilled", "distilled", UNLABELED_STUDENT),
    ("distilled with untranscribed pool vs ensemble", "ensemble", UNLABELED_STUDENT),
    ("3% soft vs 3% hard", "small_hard", "small_soft"),
    ("3% soft vs full baseline", "baseline", "small_soft"),
    ("3% soft with untranscribed pool vs 3% soft", "small_soft", SMALL_UNLABELED),
)
FIDELITY = ("baseline", "distilled")  # single models whose frame arg-max the report sets against the ensemble's
TRANSFER = "transfer"
"""The fidelity table's column of the untranscribed-pool student's transfer set: train plus the pool."""


def lookup(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _have(ws: Workspace, systems: tuple[str, ...], split: str, kind: str) -> bool:
    path = ws.eval if kind == "frames" else ws.decode
    name = "pred.scp" if kind == "frames" else "hyp.txt"
    return all((path(s, split) / name).exists() for s in systems)


def comparisons(ws: Workspace, num_samples: int, seed: int, students: list[str] | tuple[str, ...] = (),
                curve: list[str] | tuple[str, ...] = ()) -> dict:
    """Frame-accuracy and WER comparisons on dev and test of the main systems, of the 3% systems, and of the extra
    students and the transfer curve's students beside the baseline and the ensemble (with each one's share of the
    ensemble's gain).

    ``{"frames"|"wer": {"main"|"small"|"students"|"curve": {split: compare_* result}}}``; a comparison whose files are
    missing (a stage not run yet) is left out.
    """
    out: dict = {"frames": {}, "wer": {}}
    soft = [s for s in SMALL_SOFT if (ws.eval(s, "test") / "pred.scp").exists()] or [SMALL_SOFT[0]]
    soft += [SMALL_UNLABELED] if (ws.eval(SMALL_UNLABELED, "test") / "pred.scp").exists() else []
    pool = [UNLABELED_STUDENT] if (ws.eval(UNLABELED_STUDENT, "test") / "pred.scp").exists() else []
    # The full-data baseline last (the 3% models' target); the share is of the gap to it the soft targets close.
    families = [("main", (*MAIN_SYSTEMS, *pool), [KEPT, *(("baseline", "ensemble", s) for s in pool)]),
                ("small", ("small_hard", *soft, "baseline"), [("small_hard", "baseline", s) for s in soft])]
    for family, extra in (("students", students), ("curve", curve)):  # research: extra students, transfer curve
        if extra:
            families.append((family, ("baseline", "ensemble", *extra), [("baseline", "ensemble", s) for s in extra]))
    for family, systems, shares in families:
        for split in ("dev", "test"):
            subsets = xp.utt2subset(ws, split) or None
            kw = {"subsets": subsets, "num_samples": num_samples, "seed": seed, "shares": shares}
            if _have(ws, systems, split, "frames"):
                preds = {s: xp.predictions(ws, s, split) for s in systems}
                ali = load_vec_int_scp(ws.ali(split) / "pdf.scp")
                aligned = {u: ali[u] for u in preds[systems[0]]}
                out["frames"].setdefault(family, {})[split] = compare_frame_accuracy(aligned, preds, **kw)
            if _have(ws, systems, split, "wer"):
                hyps = {s: read_text(ws.decode(s, split) / "hyp.txt") for s in systems}
                refs = read_text(ws.data(split) / "text")
                out["wer"].setdefault(family, {})[split] = compare_wer(refs, hyps, **kw)
    return out


def fidelity(ws: Workspace, num_samples: int, seed: int) -> dict:
    """How often each single model (:data:`FIDELITY`, and the untranscribed-pool student when there is one) predicts
    the ensemble's arg-max pdf, per split, with the paired interval of distilled minus baseline: how closely a student
    copies its teacher, on the frames it was distilled on and on new speech. A student whose agreement falls from its
    transfer set to dev by far more than the baseline's does has learnt the teacher's outputs there more than the
    teacher's function.

    Columns: train (the paper's transfer set), :data:`TRANSFER` (train plus the untranscribed pool: the pool student's
    transfer set), dev, test. ``{column: {system: Interval dict, "diff": Interval dict}}``; a column lacking
    predictions (train needs the ensemble's stored T=1 targets) is left out.
    """
    pool = (UNLABELED_STUDENT,) if (ws.eval(UNLABELED_STUDENT, "dev") / "pred.scp").exists() else ()
    systems = (*FIDELITY, *pool)
    out = {}
    for column in ("train", TRANSFER, "dev", "test"):
        splits = ("train", UNLABELED) if column == TRANSFER else (column,)
        if (column == TRANSFER and not pool) or not all(_have(ws, ("ensemble", *systems), split, "frames")
                                                        for split in splits):
            continue
        reference = {u: p for split in splits for u, p in xp.predictions(ws, "ensemble", split).items()}
        preds = {s: {u: p for split in splits for u, p in xp.predictions(ws, s, split).items()} for s in systems}
        result = compare_frame_accuracy(reference, preds, num_samples=num_samples, seed=seed)
        group = result["groups"]["all"]
        diff = next(p["diff"] for p in group["pairs"] if (p["name_a"], p["name_b"]) == FIDELITY)
        out[column] = {**{s: group["systems"][s]["interval"] for s in systems}, "diff": diff}
    return out


def groups_of(stats: dict, metric: str, family: str) -> dict[str, dict]:
    """The comparison groups by name: ``dev``, ``test``, ``test seen``, ``test unseen``."""
    groups = {}
    for split, result in (lookup(stats, metric, family) or {}).items():
        for label, group in result["groups"].items():
            groups[split if label == "all" else f"{split} {label}"] = group
    return groups


def system_cell(stats: dict, metric: str, family: str, group: str, system: str) -> dict | None:
    return lookup(groups_of(stats, metric, family), group, "systems", system, "interval")


def claims(stats: dict) -> list[dict]:
    rows = []
    for claim, a, b in CLAIMS:
        family = "main" if {a, b} <= {*MAIN_SYSTEMS, UNLABELED_STUDENT} else "small"
        for metric in ("frames", "wer"):
            for group_name, group in groups_of(stats, metric, family).items():
                pair = next((p for p in group["pairs"] if {p["name_a"], p["name_b"]} == {a, b}), None)
                if pair is None:
                    continue
                flip = pair["name_a"] != a  # report B - A as the claim reads
                d = pair["diff"]
                diff = {"estimate": -d["estimate"], "low": -d["high"], "high": -d["low"]} if flip else d
                rows.append({"claim": claim, "metric": "frame accuracy" if metric == "frames" else "WER",
                             "group": group_name, "a": a, "b": b, "diff": diff,
                             "prob_b_better": pair["prob_a_better" if flip else "prob_b_better"],
                             "significant": pair["significant"]})
    return rows


def shares_of(stats: dict, family: str, candidate: str) -> dict[str, dict]:
    """``{metric: {group: share row}}`` of ``candidate``'s share of gain in the family's comparisons."""
    return {metric: {g: sh for g, grp in groups_of(stats, metric, family).items() for sh in grp["shares"]
                     if sh["candidate"] == candidate} for metric in ("frames", "wer")}


def members_worth(by_size: list[float], accuracy: float) -> int:
    """How many members a single model's ``accuracy`` is worth on an ensemble-size curve (``by_size[n - 1]``: the
    first n members combined): the largest n whose ensemble it matches or beats, 0 when it is below one member."""
    return max((n for n, acc in enumerate(by_size, 1) if acc <= accuracy), default=0)


def share_verdict(share: dict, threshold: float) -> str:
    """Where a share's 95% interval lies against ``threshold``: a claim of "more than threshold" holds only when the
    whole interval is above it, fails when the whole interval is below it, and is undecided otherwise."""
    if share["low"] > threshold:
        return f"holds (the interval lies above {percent(threshold)})"
    if share["high"] < threshold:
        return f"does not hold (the interval lies below {percent(threshold)})"
    return f"undecided (the interval contains {percent(threshold)})"
