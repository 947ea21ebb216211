"""The headline output: the paper's tables with confidence intervals, and which differences are real.

Numbers come from what the stages wrote, never from here: accuracies and WERs are recomputed from the per-frame
predictions (``exp/eval/<system>/<split>/pred.scp``) and hypotheses (``exp/decode/<system>/<split>/hyp.txt``)
with :mod:`asr_kd.compare` (the same functions as ``asr-kd-compare``), which adds a paired-bootstrap 95%
interval over utterances to every number and every difference; everything else (member spread, the 3% train
accuracies, convergence, set-up, times) is read from the stages' ``summary.json`` and the models' metrics.json.

The same Markdown body goes to ``exp/report/report.md`` and, with the command/machine/date header Kaldi's RESULTS
files carry, to ``RESULTS.md`` in the results dir of the run's config (``recipes/<recipe>/results/<config>/`` for
a recipe run in place, ``<work_dir>/results/`` otherwise), so one config's results never overwrite another's.
Every publication is also added to ``history.json`` there, and RESULTS.md lists the runs newest first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from asr_kd.compare import compare_frame_accuracy, compare_wer, percent
from asr_kd.pipeline import charts
from asr_kd.pipeline import experiment as xp
from asr_kd.pipeline.runner import git_commit, machine_description, machine_kind, read_summary
from asr_kd.pipeline.workspace import Workspace
from features.atomic import write_text_atomic
from features.kaldi_io import load_vec_int_scp
from features.tables import read_text

log = logging.getLogger(__name__)

PAPER_TABLE1 = {"baseline": (58.9, 10.9), "ensemble": (61.1, 10.7), "distilled": (60.8, 10.7)}
PAPER_SMALL = {"baseline_full": (63.4, 58.9), "small_hard": (67.3, 44.5), "small_soft": (65.4, 57.0)}
MAIN_SYSTEMS = ("baseline", "ensemble", "distilled")
SMALL_SOFT = ("small_soft", "small_soft_baseline")  # 3% soft-target models: the main teacher's, the other one's
KEPT = ("baseline", "ensemble", "distilled")  # share of the ensemble's gain over the baseline the student keeps
CLAIMS = (  # (claim, system A, system B): the report says whether B - A is real
    ("ensemble vs baseline", "baseline", "ensemble"),
    ("distilled vs baseline", "baseline", "distilled"),
    ("distilled vs ensemble", "ensemble", "distilled"),
    ("3% soft vs 3% hard", "small_hard", "small_soft"),
    ("3% soft vs full baseline", "baseline", "small_soft"),
)
FIDELITY = ("baseline", "distilled")  # single models whose frame arg-max the report sets against the ensemble's
CONVERGENCE_POINTS = 0.2
"""A model whose last epoch still raised its best dev frame accuracy by more than this (points) is flagged."""
FALL_POINTS = 1.0
"""A 3% model's dev accuracy *falls* when its last epoch ends this many points below its best: early stopping's
patience window alone moves a converged model by a few tenths (the members' epoch-to-epoch noise), overfitting by
more."""


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _iv(cell: dict | None, digits: int = 1, signed: bool = False) -> str:
    """``56.3 [55.1, 57.5]`` from an interval dict (``-`` when missing)."""
    if not cell:
        return "-"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    est, low, high = (cell[k] + 0.0 for k in ("estimate", "low", "high"))  # + 0.0: no "-0.00"
    return f"{f.format(est)} [{f.format(low)}, {f.format(high)}]"


# ------------------------------------------------------------------------------------------------ statistics
def _have(ws: Workspace, systems: tuple[str, ...], split: str, kind: str) -> bool:
    path = ws.eval if kind == "frames" else ws.decode
    name = "pred.scp" if kind == "frames" else "hyp.txt"
    return all((path(s, split) / name).exists() for s in systems)


def comparisons(ws: Workspace, num_samples: int, seed: int, students: list[str] | tuple[str, ...] = ()) -> dict:
    """Frame-accuracy and WER comparisons on dev and test of the main systems, of the 3% systems, and of the extra
    students beside the baseline and the ensemble (with each student's share of the ensemble's gain).

    ``{"frames"|"wer": {"main"|"small"|"students": {split: compare_* result}}}``; a comparison whose files are
    missing (a stage not run yet) is left out.
    """
    out: dict = {"frames": {}, "wer": {}}
    soft = [s for s in SMALL_SOFT if (ws.eval(s, "test") / "pred.scp").exists()] or [SMALL_SOFT[0]]
    # The full-data baseline last (the 3% models' target); the share is of the gap to it the soft targets close.
    families = [("main", MAIN_SYSTEMS, [KEPT]),
                ("small", ("small_hard", *soft, "baseline"), [("small_hard", "baseline", s) for s in soft])]
    if students:
        families.append(("students", ("baseline", "ensemble", *students),
                         [("baseline", "ensemble", s) for s in students]))
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
    """How often each of :data:`FIDELITY` predicts the ensemble's arg-max pdf, per split, with the paired interval
    of distilled minus baseline: how closely the student copies its teacher, on the training frames it was
    distilled on (the transfer set) and on new speech. A student whose agreement falls from its transfer set to dev
    by far more than the baseline's does has learnt the teacher's outputs there more than the teacher's function.

    ``{split: {system: Interval dict, "diff": Interval dict}}``; a split lacking a system's predictions (train
    needs the ensemble's stored T=1 targets) is left out.
    """
    out = {}
    for split in ("train", "dev", "test"):
        if not _have(ws, ("ensemble", *FIDELITY), split, "frames"):
            continue
        result = compare_frame_accuracy(xp.predictions(ws, "ensemble", split),
                                        {s: xp.predictions(ws, s, split) for s in FIDELITY},
                                        num_samples=num_samples, seed=seed)
        group = result["groups"]["all"]
        out[split] = {**{s: group["systems"][s]["interval"] for s in FIDELITY}, "diff": group["pairs"][0]["diff"]}
    return out


def _groups(stats: dict, metric: str, family: str) -> dict[str, dict]:
    """The comparison groups by name: ``dev``, ``test``, ``test seen``, ``test unseen``."""
    groups = {}
    for split, result in (_get(stats, metric, family) or {}).items():
        for label, group in result["groups"].items():
            groups[split if label == "all" else f"{split} {label}"] = group
    return groups


def _system_cell(stats: dict, metric: str, family: str, group: str, system: str) -> dict | None:
    return _get(_groups(stats, metric, family), group, "systems", system, "interval")


def _claims(stats: dict) -> list[dict]:
    rows = []
    for claim, a, b in CLAIMS:
        family = "main" if {a, b} <= set(MAIN_SYSTEMS) else "small"
        for metric in ("frames", "wer"):
            for group_name, group in _groups(stats, metric, family).items():
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


def _shares(stats: dict, family: str, candidate: str) -> dict[str, dict]:
    """``{metric: {group: share row}}`` of ``candidate``'s share of gain in the family's comparisons."""
    return {metric: {g: sh for g, grp in _groups(stats, metric, family).items() for sh in grp["shares"]
                     if sh["candidate"] == candidate} for metric in ("frames", "wer")}


# ------------------------------------------------------------------------------------------------ the rest
def _convergence(ws: Workspace) -> list[dict]:
    """Every trained network: epochs, why it stopped, and how much its last epoch still raised its best dev
    accuracy (an early-stopped model's last epochs raise nothing: that is why it stopped)."""
    rows = []
    for metrics in sorted(ws.dnn_root.glob("**/metrics.json")):
        m = json.loads(metrics.read_text())
        accs = [100 * e["dev_acc"] for e in m.get("epochs", []) if e.get("dev_acc") is not None]
        last_gain = accs[-1] - max(accs[:-1]) if len(accs) > 1 else None
        rows.append({"model": str(metrics.parent.relative_to(ws.dnn_root)), "epochs": len(accs),
                     "stopped": m.get("stopped"), "best_epoch": m.get("best_epoch"),
                     "best_dev_acc": 100 * m["best_dev_acc"] if m.get("best_dev_acc") is not None else None,
                     "last_dev_acc": accs[-1] if accs else None, "last_epoch_gain": last_gain,
                     "converged": m.get("stopped") != "max epochs" and (last_gain is None
                                                                         or last_gain <= CONVERGENCE_POINTS)})
    return rows


def _students(stats: dict, specs: dict) -> dict:
    """Per extra student: its spec and measured numbers, intervals, share of the ensemble's gain; and per model
    shape with both a hard-target and a distilled student, the distillation gain (distilled - hard)."""
    rows = {}
    for name, spec in specs.items():
        row = {k: spec.get(k) for k in ("targets", "budget", "size_sweep", "hidden_layers", "hidden_dim", "params",
                                        "epochs_run", "temperature", "hard_weight", "top_k")}
        for metric, key in (("frames", "frame_acc"), ("wer", "wer")):
            for group in ("dev", "test"):
                row[f"{group}_{key}"] = _system_cell(stats, metric, "students", group, name)
            test = _get(_groups(stats, metric, "students"), "test", "shares") or []
            row[f"kept_{key}"] = next((sh["share"] for sh in test if sh["candidate"] == name), None)
        rows[name] = row
    gains = []
    for hard, h in specs.items():
        for soft, d in specs.items():
            if (h.get("targets"), d.get("targets")) != ("hard", "soft") or \
                    (h.get("hidden_layers"), h.get("hidden_dim")) != (d.get("hidden_layers"), d.get("hidden_dim")):
                continue
            gain = {"shape": f"{h['hidden_layers']}x{h['hidden_dim']}", "params": h.get("params"), "hard": hard,
                    "distilled": soft}
            for metric, key in (("frames", "frame_acc"), ("wer", "wer")):
                pair = next((p for p in _get(_groups(stats, metric, "students"), "test", "pairs") or []
                             if {p["name_a"], p["name_b"]} == {hard, soft}), None)
                if pair:
                    d_ = pair["diff"]
                    flip = pair["name_a"] != hard
                    gain[key] = ({"estimate": -d_["estimate"], "low": -d_["high"], "high": -d_["low"]} if flip
                                 else d_) | {"significant": pair["significant"]}
            gains.append(gain)
    return {"students": rows, "distillation_gain": gains}


def members_worth(by_size: list[float], accuracy: float) -> int:
    """How many members a single model's ``accuracy`` is worth on an ensemble-size curve (``by_size[n - 1]``: the
    first n members combined): the largest n whose ensemble it matches or beats, 0 when it is below one member."""
    return max((n for n, acc in enumerate(by_size, 1) if acc <= accuracy), default=0)


def _ensemble_size(members: dict | None, table1: dict) -> dict:
    """Per split: the ensemble-size curve and how many members the distilled model is worth on it."""
    out = {}
    for split, m in (members or {}).items():
        distilled = _get(table1, "distilled", f"{split}_frame_acc", "estimate")
        if not m.get("by_size") or distilled is None:
            continue
        out[split] = {"by_size": m["by_size"], "distilled": distilled,
                      "distilled_worth": members_worth(m["by_size"], distilled)}
    return out


NO_WHOLE_RUN = "the stages did not all run in one invocation of run.sh"
"""Why a report has no whole-run time (its table and its header say so in these words)."""


def run_time(stage_records: dict[str, dict | None], now: float) -> dict | None:
    """Where the wall clock of this ``run.sh`` went, when that one invocation ran every stage: install, the stages
    (their sum) and the rest (start-up, the report itself), in seconds; None otherwise.

    run.sh exports ``ASR_KD_RUN_STARTED`` (epoch seconds, before installing) and ``ASR_KD_INSTALL_SECONDS``. The
    project's time budget is for a whole run from a fresh clone, install included; a stage that finished before
    the invocation started (a resumed run, a forced report) or a run outside run.sh leaves that time unknown.
    """
    started, install = os.environ.get("ASR_KD_RUN_STARTED"), os.environ.get("ASR_KD_INSTALL_SECONDS")
    if not started or not install or not stage_records or not all(stage_records.values()):
        return None
    try:
        finished = [datetime.fromisoformat(rec["finished"]).timestamp() for rec in stage_records.values()]
    except (KeyError, TypeError, ValueError):
        return None
    if min(finished) < float(started):
        return None
    wall, stages = now - float(started), sum(rec["seconds"] for rec in stage_records.values())
    return {"wall": round(wall, 1), "install": float(install), "stages": round(stages, 1),
            "other": round(wall - float(install) - stages, 1)}


def collect(ws: Workspace, stages: list[str], num_samples: int = 1000, seed: int = 0) -> dict:
    """Everything the report shows (missing stages stay missing)."""
    summaries = {name: read_summary(ws, name) for name in stages if name != "report"}  # not its last run's
    s = {name: (rec or {}).get("summary") for name, rec in summaries.items()}
    student_specs = s.get("students") or {}
    stats = comparisons(ws, num_samples, seed, list(student_specs))
    table1 = {}
    for system in MAIN_SYSTEMS:
        cell = {}
        for metric, key in (("frames", "frame_acc"), ("wer", "wer")):
            for group in ("dev", "test", "test seen", "test unseen"):
                cell[f"{group.replace(' ', '_')}_{key}"] = _system_cell(stats, metric, "main", group, system)
        table1[system] = cell
    small_systems = _get(s.get("small_data"), "systems") or {}
    small = {}
    for key, system in (("baseline_full", "baseline"), ("small_hard", "small_hard"), *((s, s) for s in SMALL_SOFT)):
        if key not in small_systems:
            continue
        small[key] = {"train": _get(small_systems, key, "train"), "teacher": _get(small_systems, key, "teacher"),
                      "temperature": _get(small_systems, key, "temperature"),
                      "dev": _system_cell(stats, "frames", "small", "dev", system),
                      "test": _system_cell(stats, "frames", "small", "test", system),
                      "test_wer": _system_cell(stats, "wer", "small", "test", system)}
    decode = s.get("decode") or {}
    return {
        "table1": table1,
        "comparisons": _claims(stats),
        "gain_kept": _shares(stats, "main", "distilled"),
        "small_data_recovered": {s: _shares(stats, "small", s) for s in SMALL_SOFT if s in small},
        "small_data_table": small,
        "small_data": s.get("small_data"),
        "gmm": _get(s.get("graph"), "gmm"),
        "ensemble_members": _get(s.get("ensemble"), "members"),
        "ensemble_size": _ensemble_size(_get(s.get("ensemble"), "members"), table1),
        "fidelity": fidelity(ws, num_samples, seed),
        "temperature_sweep": {str(t): v for t, v in (_get(s.get("distill"), "sweep") or {}).items()},
        "best_temperature": _get(s.get("distill"), "best_temperature"),
        "schedules": _get(s.get("distill"), "schedules"),
        "convergence": _convergence(ws),
        "soft_targets": s.get("soft_targets"),
        "lang": s.get("lang"),
        "alignment": {k: v for k, v in (s.get("tri") or {}).items() if k.startswith(("boundaries", "align"))},
        "tree": _get(s.get("tri"), "train"),
        "graph": _get(s.get("graph"), "graph"),
        "decoding": {name: {"acoustic_scale": v.get("acoustic_scale"), "rtf": v.get("rtf"),
                            "scales_tried": sorted(float(k) for k in v.get("dev_wer_by_scale") or {}),
                            "no_path": {sp: len(_get(v, sp, "no_path") or []) for sp in ("dev", "test")},
                            "no_final_state": {sp: len(_get(v, sp, "no_final_state") or []) for sp in ("dev", "test")}}
                     for name, v in {"gmm": _get(s.get("graph"), "gmm") or {}, **decode}.items() if v},
        "corpus": s.get("corpus"),
        "cost": s.get("cost") or {},
        **_students(stats, student_specs),
        "bootstrap": {"num_samples": num_samples, "seed": seed, "level": 0.95, "resampled": "utterances"},
        "stage_seconds": {name: rec["seconds"] for name, rec in summaries.items() if rec},
        "run_seconds": run_time(summaries, time.time()),
    }


# ------------------------------------------------------------------------------------------------ Markdown
def _table1_md(r: dict) -> list[str]:
    lines = ["## Table 1 analogue: frame accuracy and WER (%), 95% intervals", "",
             "| system | dev frame acc | test frame acc | test acc seen / unseen voice | dev WER | test WER "
             "| test WER seen / unseen | paper: frame acc / WER |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"baseline": "baseline single model", "ensemble": f"{_n_members(r)}x ensemble",
             "distilled": "distilled single model"}
    for key, label in names.items():
        row = r["table1"][key]
        lines.append(f"| {label} | {_iv(row['dev_frame_acc'])} | {_iv(row['test_frame_acc'])} | "
                     f"{_fmt(_get(row, 'test_seen_frame_acc', 'estimate'))} / "
                     f"{_fmt(_get(row, 'test_unseen_frame_acc', 'estimate'))} | {_iv(row['dev_wer'])} | "
                     f"{_iv(row['test_wer'])} | {_fmt(_get(row, 'test_seen_wer', 'estimate'))} / "
                     f"{_fmt(_get(row, 'test_unseen_wer', 'estimate'))} | "
                     f"{PAPER_TABLE1[key][0]} / {PAPER_TABLE1[key][1]} |")
    if r["gmm"]:
        lines += ["", f"GMM-HMM (tri1) baseline: dev WER {_fmt(r['gmm']['dev']['all'])}%, "
                      f"test WER {_fmt(r['gmm']['test']['all'])}% "
                      f"(seen / unseen voice {_fmt(r['gmm']['test'].get('seen'))} / "
                      f"{_fmt(r['gmm']['test'].get('unseen'))}%)."]
    return lines


def _n_members(r: dict) -> int | str:
    return len(_get(r, "ensemble_members", "dev", "members") or []) or "N"


def _share_iv(share: dict) -> str:
    return f"{percent(share['estimate'])} [{percent(share['low'])}, {percent(share['high'])}]"


def _share_md(title: str, shares: dict, paper: str) -> list[str]:
    groups = sorted({g for rows in shares.values() for g in rows}, key=_group_order)
    if not groups:
        return []
    lines = [title, "", "| metric | " + " | ".join(groups) + f" | {paper} |", "|---" * (len(groups) + 2) + "|"]
    for metric, label in (("frames", "frame accuracy"), ("wer", "WER")):
        cells = []
        for g in groups:
            row = shares.get(metric, {}).get(g)
            share = row and row["share"]
            cells.append("undefined (no gain)" if row and not share else "-" if not row else _share_iv(share))
        lines.append(f"| {label} | " + " | ".join(cells) + " | |")
    return lines


PAPER_SHARE_KEPT = 0.8  # the paper: the distilled model keeps "more than 80%" of the ensemble's frame-accuracy gain


def share_verdict(share: dict, threshold: float) -> str:
    """Where a share's 95% interval lies against ``threshold``: a claim of "more than threshold" holds only when the
    whole interval is above it, fails when the whole interval is below it, and is undecided otherwise."""
    if share["low"] > threshold:
        return f"holds (the interval lies above {percent(threshold)})"
    if share["high"] < threshold:
        return f"does not hold (the interval lies below {percent(threshold)})"
    return f"undecided (the interval contains {percent(threshold)})"


def _paper_claim_md(shares: dict) -> list[str]:
    """One sentence per split on the paper's claim for the frame-accuracy share, so the report says it outright."""
    rows = shares.get("frames", {})
    parts = [f"on {g} {_share_iv(row['share'])}: {share_verdict(row['share'], PAPER_SHARE_KEPT)}"
             for g in ("dev", "test") if (row := rows.get(g)) and row["share"]]
    if not parts:
        return []
    return ["", f"The paper's claim, that the distilled model keeps more than {percent(PAPER_SHARE_KEPT)} of the "
            "ensemble's frame-accuracy gain: " + "; ".join(parts) + "."]


def _ensemble_size_md(r: dict) -> list[str]:
    """The ensemble-size curve beside the share: where on it the distilled model lands (seed noise applies: the curve
    follows one order of the members)."""
    sizes = r.get("ensemble_size") or {}
    if not sizes:
        return []
    n = max(len(v["by_size"]) for v in sizes.values())
    lines = ["", "Ensemble size: frame accuracy (%) of the first n members combined, and how many members the "
             "distilled model is worth (the largest n whose ensemble it matches or beats).", "",
             "| set | " + " | ".join(f"n={i}" for i in range(1, n + 1)) + " | distilled | worth |",
             "|---" * (n + 3) + "|"]
    for split, v in sizes.items():
        lines.append(f"| {split} | " + " | ".join(f"{a:.2f}" for a in v["by_size"]) + f" | {v['distilled']:.2f} | "
                     f"{v['distilled_worth']} of {len(v['by_size'])} |")
    return lines + ["", "![ensemble size](ensemble_size.png)"]


def _fidelity_md(r: dict) -> list[str]:
    """The student's agreement with the ensemble on its transfer set (train) and on new speech, beside the
    baseline's (what a model trained on the hard targets alone shares with the ensemble)."""
    fid = r.get("fidelity") or {}
    if not fid:
        return []
    splits = list(fid)
    named = {"train": "train (the transfer set)"}
    lines = ["", "How closely a single model copies the ensemble: the share of frames (%) where its arg-max pdf is the "
             "ensemble's, 95% intervals.", "",
             "| system | " + " | ".join(named.get(sp, sp) for sp in splits) + " |", "|---" * (len(splits) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(_iv(fid[sp][s]) for sp in splits) + " |" for s in FIDELITY]
    lines.append(f"| {FIDELITY[1]} - {FIDELITY[0]} (points) | "
                 + " | ".join(_iv(fid[sp]["diff"], signed=True) for sp in splits) + " |")
    if "train" in fid and "dev" in fid:
        def gap(system: str) -> str:
            d = fid["train"][system]["estimate"] - fid["dev"][system]["estimate"]
            return f"{abs(d):.1f} points {'fewer' if d >= 0 else 'more'} on new speech"

        train, dev = fid["train"]["distilled"]["estimate"], fid["dev"]["distilled"]["estimate"]
        lines += ["", f"The distilled model agrees with the ensemble on {train:.1f}% of its transfer set's frames and "
                  f"on {dev:.1f}% of dev frames: {gap('distilled')} (the baseline: {gap('baseline')})."]
    return lines


def _group_order(g: str) -> tuple[int, str]:
    return (["dev", "test", "test seen", "test unseen"].index(g) if g in ("dev", "test", "test seen",
                                                                          "test unseen") else 9, g)


def _claims_md(r: dict) -> list[str]:
    if not r["comparisons"]:
        return []
    lines = ["## Which differences are real (paired bootstrap over utterances, 95% intervals)", "",
             "B - A in points; for frame accuracy + means B is better, for WER - means B is better. "
             "*Significant* means the interval excludes 0.", "",
             "| claim (B vs A) | metric | set | B - A [95% interval] | P(B better) | significant |",
             "|---|---|---|---|---|---|"]
    for c in r["comparisons"]:
        lines.append(f"| {c['claim']} | {c['metric']} | {c['group']} | {_iv(c['diff'], 2, signed=True)} | "
                     f"{c['prob_b_better']:.3f} | {'**yes**' if c['significant'] else 'no'} |")
    members = r.get("ensemble_members") or {}
    if members:
        lines += ["", "Seed noise for reference: the ensemble's members are the same model trained from different "
                      "random initialisations; their frame accuracy spreads by "
                  + ", ".join(f"{split} {min(m['members']):.1f}-{max(m['members']):.1f} "
                              f"(sd {m['member_std']:.2f})" for split, m in members.items())
                  + " points. A difference within that spread is what retraining alone can give."]
    lines += ["", "![comparisons](comparisons.png)"]
    return lines


def _small_objective(small: dict) -> str:
    """How the 3% soft-target models were trained: their targets and the temperature dev chose."""
    classes = "all classes" if small.get("top_k") is None else f"the top {small['top_k']} classes"
    text = (f"soft targets over {classes}, hard-target weight {small.get('hard_weight', 0):g}, "
            f"at T={small['temperature']:g}")
    by_t = _get(small, "systems", "small_soft", "dev_by_temperature")
    if not by_t:
        return text + "."
    dev = ", ".join(f"T={t}: {acc:.2f}" for t, acc in by_t.items())
    return text + f" (chosen on dev frame accuracy: {dev})."


def _small_md(r: dict) -> list[str]:
    small = r.get("small_data")
    if not small:
        return []
    pct = f"{small['fraction_percent']:g}%"
    hard_es = ", early stopping" if small.get("hard_early_stopping") else ""
    soft_es = ", early stopping" if small.get("soft_early_stopping") else " (no early stopping)"
    lines = ["## Soft targets as a regularizer (the paper's 3% experiment): frame accuracy (%), 95% intervals", "",
             f"Training subset: {pct} of the training utterances ({small['num_utts']} utterances, "
             f"{small['num_frames']} frames); {_small_objective(small)}", "",
             "| system and training set | train frame acc | dev frame acc | test frame acc | test WER "
             "| paper: train / test |", "|---|---|---|---|---|---|"]
    for key, row in r["small_data_table"].items():
        label = {"baseline_full": "baseline, 100%", "small_hard": f"baseline, {pct} (hard targets{hard_es})"}.get(
            key, f"soft targets of the full-data {row['teacher']}, {pct}"
                 + (f", T={row['temperature']:g}" if row.get("temperature") else "") + soft_es)
        paper = PAPER_SMALL["small_soft" if key in SMALL_SOFT else key]
        lines.append(f"| {label} | {_fmt(row['train'])} | {_iv(row['dev'])} | {_iv(row['test'])} | "
                     f"{_iv(row['test_wer'])} | {paper[0]} / {paper[1]} |")
    for key, shares in r["small_data_recovered"].items():
        teacher = r["small_data_table"][key]["teacher"]
        lines += [""] + _share_md(f"Share of the gap between the 3% hard-target model and the full-data baseline "
                                  f"that the {teacher}'s soft targets close:", shares,
                                  "paper: 12.5 of 14.4 points (87%)")
    curves = [c for c in r["convergence"] if c["model"].startswith("small_data/") and c["best_dev_acc"] is not None]
    if curves:
        lines += ["", f"Dev frame accuracy over training (a model *falls* when its last epoch ends more than "
                      f"{FALL_POINTS} point below its best):", ""]
        for c in curves:
            change = c["last_dev_acc"] - c["best_dev_acc"]
            lines.append(f"- {c['model'].split('/', 1)[1]}: best {c['best_dev_acc']:.2f} at epoch {c['best_epoch']} "
                         f"of {c['epochs']}, last {c['last_dev_acc']:.2f} ({change:+.2f}): "
                         f"{'falls' if -change > FALL_POINTS else 'does not fall'}.")
    return lines


def _convergence_md(r: dict) -> list[str]:
    rows = r["convergence"]
    if not rows:
        return []
    flagged = [c for c in rows if not c["converged"]]
    lines = ["## Convergence", "",
             f"Every model trains until its dev criterion stops it; a model whose last epoch still raised its best dev "
             f"frame accuracy by more than {CONVERGENCE_POINTS} points, or that hit its epoch cap, is flagged. "
             + (f"**Flagged: {', '.join(c['model'] for c in flagged)}.**" if flagged else "None is flagged."), "",
             "| model | epochs | best dev acc (epoch) | last epoch's gain over the best before it | stopped because "
             "| converged |",
             "|---|---|---|---|---|---|"]
    for c in rows:
        lines.append(f"| {c['model']} | {c['epochs']} | {_fmt(c['best_dev_acc'], 2)} ({c['best_epoch']}) | "
                     f"{_fmt(c['last_epoch_gain'], 2)} | {c['stopped']} | {'yes' if c['converged'] else '**no**'} |")
    return lines


def _cost_md(r: dict) -> list[str]:
    if not r["cost"]:
        return []
    lines = ["## What each system costs to run", "",
             "Acoustic-model time is measured on one CPU thread (and on the GPU when there is one) over the first "
             "dev frames, as seconds per second of audio (RTF); decoding RTF per core is measured on test.", "",
             "| system | parameters | MACs / frame | file size (MB) | AM RTF, 1 CPU thread | AM RTF, GPU "
             "| decoding RTF |", "|---|---|---|---|---|---|---|"]
    for name, c in r["cost"].items():
        lines.append(f"| {name} | {c['params']:,} | {c['macs_per_frame']:,} | {c['file_bytes'] / 1e6:.2f} | "
                     f"{_fmt(c['cpu1_rtf'], 4)} | {_fmt(c['gpu_rtf'], 5)} | {_fmt(c['decode_rtf'], 3)} |")
    return lines


def _students_md(r: dict) -> list[str]:
    if not r["students"]:
        return []
    cost = r["cost"]
    lines = ["## Extra students: ablations and sizes (95% intervals; share = of the ensemble's gain over the "
             "baseline, test frame accuracy)", "",
             "| student | targets | shape | params | MACs / frame | AM RTF 1 thread | T / hard weight / top-k "
             "| budget (epochs) | dev frame acc | test frame acc | test WER | share kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, st in r["students"].items():
        c = cost.get(name, {})
        objective = (f"{st['temperature']:g} / {st['hard_weight']:g} / {st['top_k'] or 'all'}"
                     if st["targets"] == "soft" else "-")
        kept = st["kept_frame_acc"]
        lines.append(f"| {name} | {st['targets']} | {st['hidden_layers']}x{st['hidden_dim']} | {st['params']:,} | "
                     f"{c.get('macs_per_frame', 0):,} | {_fmt(c.get('cpu1_rtf'), 4)} | {objective} | "
                     f"{st['budget']} ({st['epochs_run']}) | {_iv(st['dev_frame_acc'])} | "
                     f"{_iv(st['test_frame_acc'])} | {_iv(st['test_wer'])} | "
                     + (f"{percent(kept['estimate'])} [{percent(kept['low'])}, {percent(kept['high'])}]"
                        if kept else "-") + " |")
    if r["distillation_gain"]:
        lines += ["", "Distillation gain per size (distilled - hard-target student of the same shape, test; every "
                      "such pair, named, since one shape may hold several of each):", "",
                  "| shape | params | hard-target student | distilled student | frame accuracy | significant | WER "
                  "| significant |", "|---|---|---|---|---|---|---|---|"]
        for g in r["distillation_gain"]:
            fa, wer = g.get("frame_acc"), g.get("wer")
            lines.append(f"| {g['shape']} | {g['params']:,} | {g['hard']} | {g['distilled']} | {_iv(fa, 2, True)} | "
                         f"{'**yes**' if fa and fa['significant'] else 'no'} | {_iv(wer, 2, True)} | "
                         f"{'**yes**' if wer and wer['significant'] else 'no'} |")
    reference = _get(r["gain_kept"], "frames", "test", "share")
    if reference:
        within = [(st["params"], name) for name, st in r["students"].items()
                  if st["targets"] == "soft" and st.get("size_sweep") and st["kept_frame_acc"]
                  and st["kept_frame_acc"]["estimate"] >= reference["low"]]
        lines += ["", "Smallest distilled student whose share of the ensemble's gain (test frame accuracy) lies within "
                      f"the 95% interval of the member-shaped distilled model's ({percent(reference['estimate'])} "
                      f"[{percent(reference['low'])}, {percent(reference['high'])}]) or above it: "
                  + (f"**{min(within)[1]}** ({min(within)[0]:,} parameters)." if within else "**none**.")]
    lines += ["", "![accuracy against cost](cost_accuracy.png)"]
    return lines


def _setup_md(r: dict) -> list[str]:
    """What the numbers were measured on: corpus, lexicon/LM, tied states, alignment quality, graph."""
    lines = ["## Set-up", ""]
    splits = _get(r["corpus"], "splits") or {}
    if splits:
        lines += ["| split | utterances | hours | speakers | words |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v.get('utts')} | {_fmt(v.get('hours'), 2)} | {v.get('speakers')} | {v.get('words')} |"
                  for k, v in splits.items()]
        lines.append("")
    ppl = _get(r["lang"], "perplexity") or {}
    if ppl:
        lines.append("Trigram LM: " + ", ".join(
            f"{k} perplexity {_fmt(v.get('ppl'))} (OOV {_fmt(100 * v.get('oov_rate', 0), 2)}%)"
            for k, v in ppl.items()) + f"; vocabulary {_get(r['lang'], 'vocabulary')} words.")
    if r["tree"]:
        lines.append(f"GMM-HMM: {r['tree'].get('num_pdfs')} tied states (the DNN's output classes), "
                     f"{r['tree'].get('num_gauss')} Gaussians.")
    if r["graph"]:
        lines.append(f"HCLG: {r['graph'].get('HCLG_states')} states, {r['graph'].get('HCLG_arcs')} arcs, built in "
                     f"{_fmt(r['graph'].get('total_seconds'))} s.")
    failed = {k.split("/")[-1]: v for k, v in r["alignment"].items() if k.startswith("align/")}
    if failed:
        lines.append("Forced alignment (the DNN's frame labels): " + ", ".join(
            f"{split} {v.get('num_failed')} of {v.get('num_utts')} utterances failed" for split, v in failed.items())
            + " (failed ones are left out of frame accuracy, still decoded and scored).")
    bounds = {k.split("/")[-1]: v for k, v in r["alignment"].items() if k.startswith("boundaries")}
    if bounds:
        lines += ["", "Forced-alignment phone boundaries against the synthesizer's own timings "
                      "(test holds the unseen voice):", "",
                  "| split | phones matched | within 20 ms | within 40 ms | median error (ms) |",
                  "|---|---|---|---|---|"]
        for split, v in bounds.items():
            lines.append(f"| {split} | {v.get('matched_phones')}/{v.get('ref_phones')} | "
                         f"{_fmt(100 * v['within_20ms'])}% | {_fmt(100 * v['within_40ms'])}% | "
                         f"{_fmt(1000 * v['median_abs_error_s'])} |")
        lines += _boundaries_by_speaker_md(bounds)
    return lines


def _boundaries_by_speaker_md(bounds: dict[str, dict]) -> list[str]:
    """Within-20-ms share per speaker and split: each synthesizer labels phones its own way, and one voice with an
    off reference hides in the overall share."""
    speakers = sorted({g for v in bounds.values() for g in v.get("by_group", {})})
    if not speakers:
        return []
    lines = ["", "By speaker: phone boundaries within 20 ms (boundaries compared):", "",
             "| speaker | " + " | ".join(bounds) + " |", "|---|" + "---|" * len(bounds)]
    for speaker in speakers:
        cells = [f"{_fmt(100 * b['within_20ms'])}% ({b['boundaries']})" if (b := v.get("by_group", {}).get(speaker))
                 else "-" for v in bounds.values()]
        lines.append(f"| {speaker} | " + " | ".join(cells) + " |")
    return lines


def _details_md(r: dict) -> list[str]:
    lines = []
    if r["temperature_sweep"]:
        lines += ["## Temperature sweep (student, frame accuracy %)", "", "| T | dev | test | epochs |",
                  "|---|---|---|---|"]
        for t, v in r["temperature_sweep"].items():
            lines.append(f"| {t} | {_fmt(_get(v, 'dev', 'all'), 2)} | {_fmt(_get(v, 'test', 'all'), 2)} | "
                         f"{v.get('epochs_run', '-')} |")
        lines += ["", f"Chosen on dev: T = {r['best_temperature']}."]
        if r.get("schedules"):
            lines[-1] += (f" Learning-rate schedule of the students: {r['schedules']['students']}; of the baseline "
                          f"and the members: {r['schedules']['members']} (asr_kd/train.py says why).")
        lines += ["", "![temperature sweep](temperature_sweep.png)"]
    members = r.get("ensemble_members")
    if members:
        lines += ["", "## Ensemble members (frame accuracy %)", "",
                  "| split | members | worst | mean +- sd | best | ensemble |", "|---|---|---|---|---|---|"]
        for split, m in members.items():
            accs = m["members"]
            lines.append(f"| {split} | {len(accs)} | {min(accs):.2f} | {m['member_mean']:.2f} +- "
                         f"{m['member_std']:.2f} | {max(accs):.2f} | {m['ensemble']:.2f} |")
    if r["soft_targets"]:
        lines += ["", "Stored soft targets: " + ", ".join(
            f"{k}: {v['bytes_per_frame']:.0f} B/frame, top-k mass {100 * v['mean_mass_kept']:.0f}%"
            for k, v in r["soft_targets"].items()) + "."]
    if r["decoding"]:
        lines += ["", "## Decoding", "", "A scale chosen at an end of the scales tried is marked *(end)*: dev would "
                  "have gone further than the search allowed.", "",
                  "| system | acoustic scale (chosen on dev) | scales tried on dev | RTF per core (test) "
                  "| no surviving path dev / test | no final state dev / test |", "|---|---|---|---|---|---|"]
        for name, d in r["decoding"].items():
            chosen, tried = _scale_cells(d)
            lines.append(f"| {name} | {chosen} | {tried} | {_fmt(d['rtf'], 3)} | {d['no_path']['dev']} / "
                         f"{d['no_path']['test']} | {d['no_final_state']['dev']} / {d['no_final_state']['test']} |")
    lines += ["", "## Where the time went (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in r["stage_seconds"].items()]
    run = r.get("run_seconds")
    if run:
        lines += [f"| install (recipes/tools/install.sh) | {run['install']:.0f} |",
                  f"| start-up, report and the rest | {run['other']:.0f} |",
                  f"| **whole run, wall clock** | **{run['wall']:.0f}** |"]
    else:
        lines += ["", f"Install and start-up are not counted: {NO_WHOLE_RUN}."]
    lines += ["", "![training curves](training_curves.png)"]
    return lines


def _scale_cells(d: dict) -> tuple[str, str]:
    """The decoding table's chosen-scale cell (marked when it is an end of the scales tried) and scales-tried cell."""
    tried, chosen = d.get("scales_tried") or [], d["acoustic_scale"]
    if not tried:
        return f"{chosen}", "-"
    end = " *(end)*" if len(tried) > 1 and chosen in (tried[0], tried[-1]) else ""
    return f"{chosen}{end}", ", ".join(f"{t:g}" for t in tried)


def _body(r: dict) -> list[str]:
    b = r["bootstrap"]
    intro = [f"Intervals: paired bootstrap over utterances ({b['num_samples']} replicates, seed {b['seed']}), "
             "percentile 95% intervals; the same resampled utterances for every system of a comparison.", ""]
    return (intro + _table1_md(r) + ["", "![table 1](table1.png)", ""]
            + _share_md("## Share of the ensemble's frame-accuracy (and WER) gain kept by the distilled model",
                        r["gain_kept"], f"paper: more than {percent(PAPER_SHARE_KEPT)}")
            + _paper_claim_md(r["gain_kept"]) + _ensemble_size_md(r) + _fidelity_md(r) + [""]
            + _claims_md(r) + [""] + _small_md(r) + [""] + _students_md(r) + [""] + _cost_md(r) + [""]
            + _convergence_md(r) + [""] + _setup_md(r) + [""] + _details_md(r))


# ------------------------------------------------------------------------------------------------ publishing
def _headline(r: dict) -> dict:
    """The numbers a history row keeps of a run: Table 1's estimates, the gain kept, the 3% recovery."""
    t1 = r["table1"]
    row = {f"{system}_{key}": _get(t1, system, key, "estimate") for system in t1
           for key in ("dev_frame_acc", "test_wer")}
    for name, shares in (("kept", r["gain_kept"]), ("recovered", _get(r, "small_data_recovered", "small_soft"))):
        for group in ("dev", "test"):
            row[f"{name}_frames_{group}"] = _get(shares, "frames", group, "share", "estimate")
    return row


def _history_md(history: list[dict]) -> list[str]:
    if len(history) < 2:
        return []
    keys = list(history[0]["headline"])
    lines = ["## History (newest first)", "",
             "| date | commit | machine | stages s | wall s | " + " | ".join(keys) + " | command |",
             "|---" * (len(keys) + 6) + "|"]
    for h in history:
        lines.append(f"| {h['date']} | {h['git_commit']} | {h['machine']} | {h['total_seconds']:.0f} | "
                     f"{_fmt(h.get('wall_seconds'), 0)} | "
                     + " | ".join(_fmt(h["headline"].get(k), 3 if k.startswith(("kept", "recov")) else 1)
                                  for k in keys) + f" | `{h['command']}` |")
    return lines


def publish_results(results_dir: Path, report_dir: Path, meta: dict, r: dict, body: list[str],
                    header: list[str]) -> None:
    """RESULTS.md, results.json, the charts and history.json of one config's results dir.

    A new run goes on top of ``history.json``; re-publishing the same run (the report stage forced again)
    replaces its entry instead of adding one. Nothing of another config's results dir is touched.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    for png in report_dir.glob("*.png"):
        shutil.copy2(png, results_dir / png.name)
    history_path = results_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    entry = {"run": meta["run"], "date": meta["date"], "git_commit": meta["git_commit"],
             "machine": machine_kind(meta["machine"]),
             "command": meta["command"], "total_seconds": meta["total_seconds"],
             "wall_seconds": meta["wall_seconds"], "headline": _headline(r)}
    history = [entry] + [h for h in history if h.get("run") != meta["run"]]
    write_text_atomic(history_path, json.dumps(history, indent=1) + "\n")
    results_header = ["# RESULTS (generated by asr_kd.pipeline.report from a real run; do not edit by hand)", "",
                      "Command (from the repository root):", "", "```", meta["command"], "```", ""]
    write_text_atomic(results_dir / "RESULTS.md",
                      "\n".join(results_header + header[2:] + body + [""] + _history_md(history)) + "\n")
    write_text_atomic(results_dir / "results.json", json.dumps({k: v for k, v in r.items() if k != "config"},
                                                               indent=2, default=str) + "\n")


def _wall(meta: dict) -> str:
    """The header's whole-run line: minutes and seconds, or why it is unknown."""
    wall = meta.get("wall_seconds")
    if wall is None:
        return f"unknown ({NO_WHOLE_RUN})"
    return f"{wall:.0f} s ({int(wall) // 60} min {int(wall) % 60} s)"


def _numerics_line(cfg: DictConfig, ws: Workspace) -> str:
    """What every model of the run trained in, and why (the run's record of the auto setting's measurement)."""
    numerics = xp.recorded_numerics(cfg, ws)
    return numerics.describe() if numerics else "not chosen (no training stage has run)"


def write_report(cfg: DictConfig, ws: Workspace, stages: list[str]) -> dict:
    """Write exp/report/{report.md, report.json, *.png} and publish them to the config's results dir."""
    r = collect(ws, stages, cfg.report.bootstrap_samples, cfg.report.seed)
    out = ws.report
    out.mkdir(parents=True, exist_ok=True)
    charts.training_curves(ws, out / "training_curves.png")
    charts.temperature_sweep(r, out / "temperature_sweep.png")
    charts.table1(r, out / "table1.png")
    charts.comparisons(r, out / "comparisons.png")
    if r["ensemble_size"]:
        charts.ensemble_size(r, out / "ensemble_size.png")
    if r["students"]:
        charts.cost_accuracy(r, out / "cost_accuracy.png")
    results_dir = Path(cfg.results_dir) if cfg.get("results_dir") else ws.results
    finished = [str((read_summary(ws, name) or {}).get("finished")) for name in stages if name != "report"]
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": hashlib.sha256("|".join(finished).encode()).hexdigest()[:12],  # same stage outputs, same run
        "git_commit": git_commit(Path(__file__).resolve().parents[2], ignore=(results_dir,)),
        "machine": machine_description(),
        "training_numerics": _numerics_line(cfg, ws),
        "command": os.environ.get("ASR_KD_COMMAND", " ".join(sys.argv)),
        "total_seconds": round(sum(r["stage_seconds"].values()), 1),
        "wall_seconds": _get(r, "run_seconds", "wall"),
    }
    r["meta"] = meta
    r["config"] = OmegaConf.to_container(cfg, resolve=True)
    body = _body(r)
    header = ["# asr-kd report", "",
              f"- date: {meta['date']}", f"- git commit: {meta['git_commit']}",
              f"- machine: {machine_kind(meta['machine'])} ({meta['machine']['cpu']}), "
              f"torch {meta['machine']['torch']}",
              f"- training numerics: {meta['training_numerics']}",
              f"- total time of all stages: {meta['total_seconds']:.0f} s",
              f"- whole run, install and start-up included: {_wall(meta)}", ""]
    write_text_atomic(out / "report.md", "\n".join(header + body) + "\n")
    write_text_atomic(out / "report.json", json.dumps(r, indent=2, default=str) + "\n")
    publish_results(results_dir, out, meta, r, body, header)
    return {"report": str(out / "report.md"), "results": str(results_dir / "RESULTS.md"),
            "total_seconds": meta["total_seconds"]}
