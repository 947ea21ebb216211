"""Everything a report shows, gathered from what the stages wrote into one JSON-able dict."""
from __future__ import annotations

import json
import os
import time
from datetime import datetime

from asr_kd.pipeline.report.statistics import (
    MAIN_SYSTEMS,
    SMALL_SOFT,
    SMALL_UNLABELED,
    UNLABELED_STUDENT,
    claims,
    comparisons,
    fidelity,
    groups_of,
    lookup,
    members_worth,
    shares_of,
    system_cell,
)
from asr_kd.pipeline.runner import read_summary
from asr_kd.pipeline.workspace import Workspace

CONVERGENCE_POINTS = 0.2
"""A model whose last epoch still raised its best dev frame accuracy by more than this (points) is flagged."""
FALL_POINTS = 1.0
"""A 3% model's dev accuracy *falls* when its last epoch ends this many points below its best: early stopping's
patience window alone moves a converged model by a few tenths (the members' epoch-to-epoch noise), overfitting by
more."""


def convergence(ws: Workspace) -> list[dict]:
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


def extra_students(stats: dict, specs: dict) -> dict:
    """Per extra student: its spec and measured numbers, intervals, share of the ensemble's gain; and per model
    shape with both a hard-target and a distilled student, the distillation gain (distilled - hard)."""
    rows = {}
    for name, spec in specs.items():
        row = {k: spec.get(k) for k in ("targets", "budget", "size_sweep", "hidden_layers", "hidden_dim", "params",
                                        "epochs_run", "min_epochs", "temperature", "hard_weight", "top_k", "teacher",
                                        "augment")}
        for metric, key in (("frames", "frame_acc"), ("wer", "wer")):
            for group in ("dev", "test"):
                row[f"{group}_{key}"] = system_cell(stats, metric, "students", group, name)
            test = lookup(groups_of(stats, metric, "students"), "test", "shares") or []
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
                pair = next((p for p in lookup(groups_of(stats, metric, "students"), "test", "pairs") or []
                             if {p["name_a"], p["name_b"]} == {hard, soft}), None)
                if pair:
                    d_ = pair["diff"]
                    flip = pair["name_a"] != hard
                    gain[key] = ({"estimate": -d_["estimate"], "low": -d_["high"], "high": -d_["low"]} if flip
                                 else d_) | {"significant": pair["significant"]}
            gains.append(gain)
    return {"students": rows, "distillation_gain": gains}


def unlabeled_arm(stats: dict, transfer: dict) -> dict | None:
    """The student distilled on the training set plus untranscribed audio: its Table 1 row, its share of the
    ensemble's gain, what its transfer set held, and the research curve (None without untranscribed audio)."""
    if not lookup(transfer, "models", UNLABELED_STUDENT):
        return None
    row = {}
    for metric, key in (("frames", "frame_acc"), ("wer", "wer")):
        for group in ("dev", "test", "test seen", "test unseen"):
            row[f"{group.replace(' ', '_')}_{key}"] = system_cell(stats, metric, "main", group, UNLABELED_STUDENT)
    curve = {name: {k: m.get(k) for k in ("size", "width", "hidden_dim", "unlabeled_frames", "agreement",
                                           "epochs_run")}
             | {f"{split}_frame_acc": system_cell(stats, "frames", "curve", split, name) for split in ("dev", "test")}
             | {"kept": {split: lookup(shares_of(stats, "curve", name), "frames", split, "share")
                         for split in ("dev", "test")}}
             for name, m in transfer["models"].items() if "size" in m}
    return {"row": row, "gain_kept": shares_of(stats, "main", UNLABELED_STUDENT), "pool": transfer["pool"],
            "temperature": transfer["temperature"],
            "epochs_run": lookup(transfer, "models", UNLABELED_STUDENT, "epochs_run"), "curve": curve}


def ensemble_size(members: dict | None, table1: dict) -> dict:
    """Per split: the ensemble-size curve and how many members the distilled model is worth on it."""
    out = {}
    for split, m in (members or {}).items():
        distilled = lookup(table1, "distilled", f"{split}_frame_acc", "estimate")
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
    whole-run time is what a user waits for a run from a fresh clone, install included; a stage that finished
    before the invocation started (a resumed run, a forced report) or a run outside run.sh leaves it unknown.
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
    curve = [name for name, m in (lookup(s.get("transfer"), "models") or {}).items() if "size" in m]
    stats = comparisons(ws, num_samples, seed, list(student_specs), curve)
    table1 = {}
    for system in MAIN_SYSTEMS:
        cell = {}
        for metric, key in (("frames", "frame_acc"), ("wer", "wer")):
            for group in ("dev", "test", "test seen", "test unseen"):
                cell[f"{group.replace(' ', '_')}_{key}"] = system_cell(stats, metric, "main", group, system)
        table1[system] = cell
    small_systems = lookup(s.get("small_data"), "systems") or {}
    transfer = s.get("transfer") or {}
    if lookup(transfer, "models", SMALL_UNLABELED):  # the 3% subset plus the untranscribed pool
        small_systems = {**small_systems, SMALL_UNLABELED: {"teacher": "ensemble",
                                                            "temperature": transfer["small_data_temperature"]}}
    small = {}
    for key, system in (("baseline_full", "baseline"), ("small_hard", "small_hard"),
                        *((s, s) for s in (*SMALL_SOFT, SMALL_UNLABELED))):
        if key not in small_systems:
            continue
        small[key] = {"train": lookup(small_systems, key, "train"), "teacher": lookup(small_systems, key, "teacher"),
                      "temperature": lookup(small_systems, key, "temperature"),
                      "dev": system_cell(stats, "frames", "small", "dev", system),
                      "test": system_cell(stats, "frames", "small", "test", system),
                      "test_wer": system_cell(stats, "wer", "small", "test", system)}
    decode = s.get("decode") or {}
    return {
        "table1": table1,
        "comparisons": claims(stats),
        "gain_kept": shares_of(stats, "main", "distilled"),
        "unlabeled": unlabeled_arm(stats, transfer),
        "small_data_recovered": {s: shares_of(stats, "small", s) for s in (*SMALL_SOFT, SMALL_UNLABELED)
                                 if s in small},
        "small_data_table": small,
        "small_data": s.get("small_data"),
        "gmm": lookup(s.get("graph"), "gmm"),
        "ensemble_members": lookup(s.get("ensemble"), "members"),
        "ensemble_size": ensemble_size(lookup(s.get("ensemble"), "members"), table1),
        "fidelity": fidelity(ws, num_samples, seed),
        "temperature_sweep": {str(t): v for t, v in (lookup(s.get("distill"), "sweep") or {}).items()},
        "best_temperature": lookup(s.get("distill"), "best_temperature"),
        "schedules": lookup(s.get("distill"), "schedules"),
        "convergence": convergence(ws),
        "soft_targets": s.get("soft_targets"),
        "lang": s.get("lang"),
        "alignment": {k: v for k, v in (s.get("tri") or {}).items() if k.startswith(("boundaries", "align"))},
        "tree": lookup(s.get("tri"), "train"),
        "graph": lookup(s.get("graph"), "graph"),
        "decoding": {name: {"acoustic_scale": v.get("acoustic_scale"), "rtf": v.get("rtf"),
                            "scales_tried": sorted(float(k) for k in v.get("dev_wer_by_scale") or {}),
                            "no_path": {sp: len(lookup(v, sp, "no_path") or []) for sp in ("dev", "test")},
                            "no_final_state": {sp: len(lookup(v, sp, "no_final_state") or [])
                                               for sp in ("dev", "test")}}
                     for name, v in {"gmm": lookup(s.get("graph"), "gmm") or {}, **decode}.items() if v},
        "corpus": s.get("corpus"),
        "cost": s.get("cost") or {},
        **extra_students(stats, student_specs),
        "bootstrap": {"num_samples": num_samples, "seed": seed, "level": 0.95, "resampled": "utterances"},
        "stage_seconds": {name: rec["seconds"] for name, rec in summaries.items() if rec},
        "stage_peak_memory_mb": {name: rec.get("peak_memory_mb") for name, rec in summaries.items() if rec},
        "run_seconds": run_time(summaries, time.time()),
    }
