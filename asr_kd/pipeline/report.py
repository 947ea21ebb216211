"""The headline output: the paper's tables, filled from what the stages measured, as Markdown + JSON + PNG.

Nothing here computes a result: every number is read from the ``summary.json`` a stage wrote
(:func:`asr_kd.pipeline.runner.read_summary`) or from a model's ``metrics.json``. The same Markdown body goes to
``exp/report/report.md`` and, with the command/machine/date header Kaldi's RESULTS files carry, to
``RESULTS.md`` in the results dir of the run's config (``recipes/<recipe>/results/<config>/`` for a recipe run in
place, ``<work_dir>/results/`` otherwise), so one config's results never overwrite another's. Every publication
is also appended to ``history.json`` there, and RESULTS.md lists the earlier runs newest first, as icefall's
RESULTS files do.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from asr_kd.distill import gain_kept  # noqa: E402
from asr_kd.pipeline.runner import git_commit, machine_description, read_summary  # noqa: E402
from asr_kd.pipeline.workspace import Workspace  # noqa: E402
from features.atomic import write_text_atomic  # noqa: E402

log = logging.getLogger(__name__)

PAPER_TABLE1 = {"baseline": (58.9, 10.9), "ensemble": (61.1, 10.7), "distilled": (60.8, 10.7)}
PAPER_SMALL = {"baseline_full": (63.4, 58.9), "small_hard": (67.3, 44.5), "small_soft": (65.4, 57.0)}


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _get(d: dict | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def collect(ws: Workspace, stages: list[str]) -> dict:
    """Everything the report shows, gathered from the summaries of ``stages`` (missing stages stay missing)."""
    summaries = {name: read_summary(ws, name) for name in stages}
    s = {name: (rec or {}).get("summary") for name, rec in summaries.items()}
    decode = s.get("decode") or {}
    ens = s.get("ensemble") or {}
    distill = s.get("distill") or {}
    acc = {"baseline": s.get("baseline"), "ensemble": _get(ens, "ensemble"), "distilled": _get(distill, "distilled")}
    table1 = {}
    for system, frame_acc in acc.items():
        table1[system] = {
            "dev_frame_acc": _get(frame_acc, "dev", "all"),
            "test_frame_acc": _get(frame_acc, "test", "all"),
            "test_frame_acc_seen": _get(frame_acc, "test", "seen"),
            "test_frame_acc_unseen": _get(frame_acc, "test", "unseen"),
            "dev_wer": _get(decode, system, "dev", "all"),
            "test_wer": _get(decode, system, "test", "all"),
            "test_wer_seen": _get(decode, system, "test", "seen"),
            "test_wer_unseen": _get(decode, system, "test", "unseen"),
        }
    kept = {}
    for key in ("dev_frame_acc", "test_frame_acc", "test_frame_acc_unseen"):
        b, e, d = (table1[k][key] for k in ("baseline", "ensemble", "distilled"))
        if None not in (b, e, d) and e != b:
            kept[key] = round(gain_kept(b, e, d), 3)
    return {
        "table1": table1,
        "gain_kept": kept,
        "gmm": _get(s.get("graph"), "gmm"),
        "ensemble_members": _get(ens, "members"),
        "temperature_sweep": {str(t): v for t, v in (_get(distill, "sweep") or {}).items()},
        "best_temperature": _get(distill, "best_temperature"),
        "small_data": s.get("small_data"),
        "small_data_wer": {k: decode.get(k) for k in ("small_hard", "small_soft") if k in decode},
        "soft_targets": s.get("soft_targets"),
        "lang": s.get("lang"),
        "alignment": {k: v for k, v in (s.get("tri") or {}).items() if k.startswith("boundaries")},
        "tree": _get(s.get("tri"), "train"),
        "graph": _get(s.get("graph"), "graph"),
        "decode_rtf": {"gmm": _get(s.get("graph"), "gmm", "rtf"), **{k: v.get("rtf") for k, v in decode.items()}},
        "corpus": s.get("corpus"),
        "stage_seconds": {name: rec["seconds"] for name, rec in summaries.items() if rec},
    }


def _table1_md(r: dict) -> list[str]:
    lines = ["## Table 1 analogue: frame accuracy and WER (%)", "",
             "| system | dev frame acc | test frame acc | test acc seen / unseen voice | dev WER | test WER "
             "| test WER seen / unseen | paper: frame acc / WER |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"baseline": "baseline single model", "ensemble": "ensemble", "distilled": "distilled single model"}
    for key, label in names.items():
        row = r["table1"][key]
        paper = PAPER_TABLE1[key]
        lines.append(f"| {label} | {_fmt(row['dev_frame_acc'])} | {_fmt(row['test_frame_acc'])} | "
                     f"{_fmt(row['test_frame_acc_seen'])} / {_fmt(row['test_frame_acc_unseen'])} | "
                     f"{_fmt(row['dev_wer'])} | {_fmt(row['test_wer'])} | "
                     f"{_fmt(row['test_wer_seen'])} / {_fmt(row['test_wer_unseen'])} | {paper[0]} / {paper[1]} |")
    if r["gain_kept"]:
        kept = ", ".join(f"{k.replace('_frame_acc', '')}: {100 * v:.0f}%" for k, v in r["gain_kept"].items())
        lines += ["", f"Share of the ensemble's frame-accuracy gain kept by the distilled model: {kept} "
                      "(paper: more than 80%)."]
    if r["gmm"]:
        lines += ["", f"GMM-HMM (tri1) baseline: dev WER {_fmt(r['gmm']['dev']['all'])}%, "
                      f"test WER {_fmt(r['gmm']['test']['all'])}%."]
    return lines


def _small_md(r: dict) -> list[str]:
    small = r.get("small_data")
    if not small:
        return []
    lines = ["## Soft targets as a regularizer (the paper's 3% experiment): frame accuracy (%)", "",
             f"Training subset: {_fmt(_get(small, 'fraction_percent'))}% of the training utterances "
             f"({_get(small, 'num_utts')} utterances); soft-target teacher: {_get(small, 'teacher')}.", "",
             "| system and training set | train frame acc | dev frame acc | test frame acc | test WER "
             "| paper: train / test |",
             "|---|---|---|---|---|---|"]
    pct = f"{_get(small, 'fraction_percent'):g}%"
    hard_es = ", early stopping" if small.get("hard_early_stopping") else ""
    soft_es = "" if small.get("soft_early_stopping") else " (no early stopping)"
    labels = {"baseline_full": "baseline, 100%", "small_hard": f"baseline, {pct} (hard targets{hard_es})",
              "small_soft": f"soft targets, {pct}{soft_es}"}
    for key, label in labels.items():
        row = _get(small, "systems", key) or {}
        wer = _get(r["small_data_wer"], key, "test", "all") if key != "baseline_full" else \
            r["table1"]["baseline"]["test_wer"]
        lines.append(f"| {label} | {_fmt(row.get('train'))} | {_fmt(row.get('dev'))} | {_fmt(row.get('test'))} | "
                     f"{_fmt(wer)} | {PAPER_SMALL[key][0]} / {PAPER_SMALL[key][1]} |")
    return lines


def _setup_md(r: dict) -> list[str]:
    """What the numbers were measured on: corpus, lexicon/LM, tied states, alignment quality, graph."""
    lines = ["## Set-up", ""]
    splits = _get(r["corpus"], "splits") or {}
    if splits:
        lines += ["| split | utterances | hours | speakers |", "|---|---|---|---|"]
        lines += [f"| {k} | {v.get('utts')} | {_fmt(v.get('hours'), 2)} | {v.get('speakers')} |"
                  for k, v in splits.items()]
        lines.append("")
    ppl = _get(r["lang"], "perplexity") or {}
    if ppl:
        lines.append("Trigram LM (training text only): " + ", ".join(
            f"{k} perplexity {_fmt(v.get('ppl'))} (OOV {_fmt(100 * v.get('oov_rate', 0))}%)" for k, v in ppl.items())
            + f"; lexicon {_get(r['lang'], 'oov', 'num_words')} words.")
    if r["tree"]:
        lines.append(f"GMM-HMM: {r['tree'].get('num_pdfs')} tied states (the DNN's output classes), "
                     f"{r['tree'].get('num_gauss')} Gaussians.")
    if r["graph"]:
        lines.append(f"HCLG: {r['graph'].get('HCLG_states')} states, {r['graph'].get('HCLG_arcs')} arcs, built in "
                     f"{_fmt(r['graph'].get('total_seconds'))} s.")
    if r["alignment"]:
        lines += ["", "Forced-alignment phone boundaries against the synthesizer's own timings "
                      "(test holds the unseen voice):", "",
                  "| split | phones matched | within 20 ms | within 40 ms | median error (ms) |",
                  "|---|---|---|---|---|"]
        for key, v in r["alignment"].items():
            lines.append(f"| {key.split('/')[-1]} | {v.get('matched_phones')}/{v.get('ref_phones')} | "
                         f"{_fmt(100 * v['within_20ms'])}% | {_fmt(100 * v['within_40ms'])}% | "
                         f"{_fmt(1000 * v['median_abs_error_s'])} |")
    return lines


def _details_md(r: dict) -> list[str]:
    lines = []
    if r["temperature_sweep"]:
        lines += ["## Temperature sweep (distilled student, frame accuracy %)", "",
                  "| T | dev | test |", "|---|---|---|"]
        for t, v in r["temperature_sweep"].items():
            lines.append(f"| {t} | {_fmt(_get(v, 'dev', 'all'))} | {_fmt(_get(v, 'test', 'all'))} |")
        lines += ["", f"Chosen on dev: T = {r['best_temperature']}.", "", "![temperature sweep](temperature_sweep.png)"]
    members = r.get("ensemble_members")
    if members:
        lines += ["", "## Ensemble members (frame accuracy %)", "",
                  "| split | members | worst | mean +- std | best | ensemble |", "|---|---|---|---|---|---|"]
        for split, m in members.items():
            accs = [100 * a for a in m["members"]]
            lines.append(f"| {split} | {len(accs)} | {min(accs):.1f} | {100 * m['member_mean']:.1f} +- "
                         f"{100 * m['member_std']:.1f} | {max(accs):.1f} | {100 * m['ensemble']:.1f} |")
    if r["soft_targets"]:
        lines += ["", "Stored soft targets: " + ", ".join(
            f"{k}: {v['bytes_per_frame']:.0f} B/frame, top-k mass {100 * v['mean_mass_kept']:.0f}%"
            for k, v in r["soft_targets"].items()) + "."]
    if r["decode_rtf"]:
        lines += ["", "Decoding real-time factor per core (test): " + ", ".join(
            f"{k} {_fmt(v, 3)}" for k, v in r["decode_rtf"].items() if v is not None) + "."]
    lines += ["", "## Time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in r["stage_seconds"].items()]
    lines += ["", "![training curves](training_curves.png)"]
    return lines


def _plot_curves(ws: Workspace, out: Path) -> None:
    """Dev frame accuracy per epoch of every trained network (baseline, members, students)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for metrics in sorted(ws.dnn_root.glob("**/metrics.json")):
        epochs = json.loads(metrics.read_text()).get("epochs", [])
        accs = [e.get("dev_acc") for e in epochs if e.get("dev_acc") is not None]
        if not accs:
            continue
        name = str(metrics.parent.relative_to(ws.dnn_root))
        member = name.startswith("ensemble/")
        ax.plot(range(1, len(accs) + 1), [100 * a if a <= 1 else a for a in accs], color="0.7" if member else None,
                label=None if member else name, linewidth=1 if member else 2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev frame accuracy (%)")
    ax.set_title("Training curves (grey: ensemble members)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _plot_sweep(r: dict, out: Path) -> None:
    sweep = r["temperature_sweep"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if sweep:
        temps = [float(t) for t in sweep]
        ax.plot(temps, [_get(v, "dev", "all") for v in sweep.values()], "o-", label="distilled (dev)")
        for key, style in (("baseline", "--"), ("ensemble", ":")):
            value = r["table1"][key]["dev_frame_acc"]
            if value is not None:
                ax.axhline(value, linestyle=style, color="0.4", label=f"{key} (dev)")
        ax.set_xscale("log")
        ax.set_xticks(temps, [f"{t:g}" for t in temps])
        ax.legend(fontsize=8)
    ax.set_xlabel("temperature T")
    ax.set_ylabel("dev frame accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _plot_table1(r: dict, out: Path) -> None:
    systems = list(r["table1"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, (key, title) in zip(axes, (("test_frame_acc", "test frame accuracy (%)"), ("test_wer", "test WER (%)"))):
        values = [r["table1"][s][key] or 0.0 for s in systems]
        ax.bar(systems, values, color=["#888", "#47a", "#a74"])
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _headline(r: dict) -> dict:
    """The numbers a history row keeps of a run: Table 1's frame accuracies and WERs, the gain kept, the 3% row."""
    t1 = r["table1"]
    small = _get(r.get("small_data"), "systems") or {}
    return {
        **{f"{system}_{key}": t1[system][key] for system in t1 for key in ("dev_frame_acc", "test_wer")},
        **{f"gain_kept_{k}": v for k, v in r["gain_kept"].items()},
        **{f"{k}_test_frame_acc": _get(small, k, "test") for k in ("small_hard", "small_soft")},
    }


def _history_md(history: list[dict]) -> list[str]:
    if len(history) < 2:
        return []
    keys = list(history[0]["headline"])
    lines = ["## History (newest first)", "",
             "| date | commit | machine | total s | " + " | ".join(keys) + " | command |",
             "|---" * (len(keys) + 5) + "|"]
    for h in history:
        lines.append(f"| {h['date']} | {h['git_commit']} | {h['machine']} | {h['total_seconds']:.0f} | "
                     + " | ".join(_fmt(h["headline"].get(k), 3 if k.startswith("gain") else 1) for k in keys)
                     + f" | `{h['command']}` |")
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
             "machine": f"{meta['machine']['cpus']} CPUs, GPU {meta['machine']['gpu']}",
             "command": meta["command"], "total_seconds": meta["total_seconds"], "headline": _headline(r)}
    history = [entry] + [h for h in history if h.get("run") != meta["run"]]
    write_text_atomic(history_path, json.dumps(history, indent=1) + "\n")
    results_header = ["# RESULTS (generated by asr_kd.pipeline.report from a real run; do not edit by hand)", "",
                      "Command (from the repository root):", "", "```", meta["command"], "```", ""]
    write_text_atomic(results_dir / "RESULTS.md",
                      "\n".join(results_header + header[2:] + body + [""] + _history_md(history)) + "\n")
    write_text_atomic(results_dir / "results.json", json.dumps({k: v for k, v in r.items() if k != "config"},
                                                               indent=2, default=str) + "\n")


def write_report(cfg: DictConfig, ws: Workspace, stages: list[str]) -> dict:
    """Write exp/report/{report.md, report.json, *.png} and publish them to the config's results dir."""
    r = collect(ws, stages)
    out = ws.report
    out.mkdir(parents=True, exist_ok=True)
    _plot_curves(ws, out / "training_curves.png")
    _plot_sweep(r, out / "temperature_sweep.png")
    _plot_table1(r, out / "table1.png")
    finished = [str((read_summary(ws, name) or {}).get("finished")) for name in stages if name != "report"]
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": hashlib.sha256("|".join(finished).encode()).hexdigest()[:12],  # same stage outputs, same run
        "git_commit": git_commit(Path(__file__).resolve().parents[2]),
        "machine": machine_description(),
        "command": os.environ.get("ASR_KD_COMMAND", " ".join(sys.argv)),
        "total_seconds": round(sum(r["stage_seconds"].values()), 1),
    }
    r["meta"] = meta
    r["config"] = OmegaConf.to_container(cfg, resolve=True)
    body = (_table1_md(r) + ["", "![table 1](table1.png)", ""] + _small_md(r) + [""] + _setup_md(r) + [""]
            + _details_md(r))
    header = ["# asr-kd report", "",
              f"- date: {meta['date']}", f"- git commit: {meta['git_commit']}",
              f"- machine: {meta['machine']['cpus']} CPUs ({meta['machine']['cpu']}), GPU: {meta['machine']['gpu']}, "
              f"torch {meta['machine']['torch']}",
              f"- total time of all stages: {meta['total_seconds']:.0f} s", ""]
    write_text_atomic(out / "report.md", "\n".join(header + body) + "\n")
    write_text_atomic(out / "report.json", json.dumps(r, indent=2, default=str) + "\n")
    results_dir = Path(cfg.results_dir) if cfg.get("results_dir") else ws.root / "results"
    publish_results(results_dir, out, meta, r, body, header)
    return {"report": str(out / "report.md"), "results": str(results_dir / "RESULTS.md"),
            "total_seconds": meta["total_seconds"]}
