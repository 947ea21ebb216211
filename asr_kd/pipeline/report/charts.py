"""The report's pictures: training curves, the temperature sweep, the ensemble-size curve, Table 1 with intervals, the
comparisons' intervals.

Every chart is drawn from the dict :func:`asr_kd.pipeline.report.collect.collect` returns (and the models'
metrics.json), never from numbers of its own, so a chart and the tables beside it cannot disagree.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from asr_kd.pipeline.workspace import Workspace  # noqa: E402


def training_curves(ws: Workspace, out: Path) -> None:
    """Dev frame accuracy per epoch of every trained network (baseline, members, students, 3% models)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for metrics in sorted(ws.dnn_root.glob("**/metrics.json")):
        epochs = json.loads(metrics.read_text()).get("epochs", [])
        accs = [100 * e["dev_acc"] for e in epochs if e.get("dev_acc") is not None]
        if not accs:
            continue
        name = str(metrics.parent.relative_to(ws.dnn_root))
        member = name.startswith("ensemble/")
        ax.plot(range(1, len(accs) + 1), accs, color="0.7" if member else None, label=None if member else name,
                linewidth=1 if member else 2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev frame accuracy (%)")
    ax.set_title("Training curves (grey: ensemble members)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    _save(fig, out)


def temperature_sweep(r: dict, out: Path) -> None:
    """Dev frame accuracy of the student at each temperature, with the baseline's and the ensemble's as lines."""
    sweep = r["temperature_sweep"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if sweep:
        temps = [float(t) for t in sweep]
        ax.plot(temps, [v["dev"]["all"] for v in sweep.values()], "o-", label="student (dev)")
        for key, style in (("baseline", "--"), ("ensemble", ":")):
            value = r["table1"][key]["dev_frame_acc"]
            if value is not None:
                ax.axhline(value["estimate"], linestyle=style, color="0.4", label=f"{key} (dev)")
        ax.set_xscale("log")
        ax.set_xticks(temps, [f"{t:g}" for t in temps])
        ax.legend(fontsize=8)
    ax.set_xlabel("temperature T")
    ax.set_ylabel("dev frame accuracy (%)")
    ax.grid(alpha=0.3)
    _save(fig, out)


def ensemble_size(r: dict, out: Path) -> None:
    """Frame accuracy of the first n members combined against n, per set, with the distilled model's and the
    baseline's accuracy as lines of the same colour: where the student's line crosses the curve is what it is worth."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for (split, v), color in zip(r["ensemble_size"].items(), ("#47a", "#a74", "#4a7")):
        sizes = range(1, len(v["by_size"]) + 1)
        ax.plot(sizes, v["by_size"], "o-", color=color, label=f"first n members ({split})")
        ax.axhline(v["distilled"], color=color, linestyle="--", label=f"distilled ({split})")
        baseline = r["table1"]["baseline"].get(f"{split}_frame_acc")
        if baseline is not None:
            ax.axhline(baseline["estimate"], color=color, linestyle=":", label=f"baseline ({split})")
    n = max(len(v["by_size"]) for v in r["ensemble_size"].values())
    ax.set_xticks(range(1, n + 1))
    ax.set_xlabel("ensemble members combined (n)")
    ax.set_ylabel("frame accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the plot: the curves fill it
    _save(fig, out)


def table1(r: dict, out: Path) -> None:
    """Test frame accuracy and test WER of the three systems, with their 95% intervals as error bars."""
    systems = list(r["table1"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, (key, title) in zip(axes, (("test_frame_acc", "test frame accuracy (%)"), ("test_wer", "test WER (%)"))):
        cells = [r["table1"][s][key] for s in systems]
        values = [c["estimate"] if c else 0.0 for c in cells]
        errors = [[c["estimate"] - c["low"] if c else 0.0 for c in cells],
                  [c["high"] - c["estimate"] if c else 0.0 for c in cells]]
        ax.bar(systems, values, yerr=errors, capsize=4, color=["#888", "#47a", "#a74"][:len(systems)])
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.1f}", ha="left", va="bottom", fontsize=8)
        ax.set_title(title)
    _save(fig, out)


def comparisons(r: dict, out: Path) -> None:
    """Every claim's difference with its 95% interval (a forest plot): whatever crosses zero is not shown real."""
    rows = [c for c in r["comparisons"] if c["diff"] is not None]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.2))
    for i, c in enumerate(rows):
        d = c["diff"]
        color = "#2a7" if c["significant"] else "0.5"
        ax.errorbar(d["estimate"], i, xerr=[[d["estimate"] - d["low"]], [d["high"] - d["estimate"]]], fmt="o",
                    color=color, capsize=3)
    ax.axvline(0.0, color="0.3", linewidth=1)
    ax.set_yticks(range(len(rows)), [f"{c['claim']}: {c['metric']}, {c['group']}" for c in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("difference B - A in points (frame accuracy: + is better; WER: - is better)")
    ax.grid(alpha=0.3, axis="x")
    _save(fig, out)


def cost_accuracy(r: dict, out: Path) -> None:
    """Test frame accuracy and test WER against measured one-thread acoustic-model time (log scale): one curve of
    hard-target students and one of distilled students by size (the member-shaped ends of the curves are the
    baseline and the distilled model), and the ensemble as a point."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    cost = r["cost"]
    for ax, (key, title) in zip(axes, (("test_frame_acc", "test frame accuracy (%)"), ("test_wer", "test WER (%)"))):
        for targets, member, style, label in (("hard", "baseline", "s--", "hard targets"),
                                              ("soft", "distilled", "o-", "distilled")):
            pts = [(cost[n]["cpu1_rtf"], st[key]) for n, st in r["students"].items()
                   if st["targets"] == targets and st[key] and n in cost and st.get("size_sweep")]
            if member in cost and r["table1"][member][key]:
                pts.append((cost[member]["cpu1_rtf"], r["table1"][member][key]))
            if pts:
                _errorbar(ax, sorted(pts, key=lambda p: p[0]), style, label)
        if "ensemble" in cost and r["table1"]["ensemble"][key]:
            _errorbar(ax, [(cost["ensemble"]["cpu1_rtf"], r["table1"]["ensemble"][key])], "r*", "10x ensemble")
        ax.set_xscale("log")
        ax.set_xlabel("acoustic-model time per second of audio, 1 CPU thread (log)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, out)


def transfer_curve(r: dict, out: Path) -> None:
    """The research curve: share of the ensemble's dev frame-accuracy gain kept (95% intervals) and agreement with
    the ensemble (transfer set and dev) against the transfer set's size, one line per student width."""
    curve = r["unlabeled"]["curve"].values()
    fig, (kept_ax, agree_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for width in sorted({c["width"] for c in curve}):
        points = sorted((c for c in curve if c["width"] == width), key=lambda c: c["size"])
        label = f"width {points[0]['hidden_dim']} ({width:g}x)"
        shares = [(c["size"], {k: 100 * v for k, v in c["kept"]["dev"].items()}) for c in points if c["kept"]["dev"]]
        if shares:
            _errorbar(kept_ax, shares, "o-", label)
        sizes = [c["size"] for c in points]
        line = agree_ax.plot(sizes, [c["agreement"]["transfer"] for c in points], "o-", label=f"{label}, transfer set")
        agree_ax.plot(sizes, [c["agreement"]["dev"] for c in points], "s--", color=line[0].get_color(),
                      label=f"{label}, dev")
    kept_ax.set_ylabel("share of the ensemble's gain kept, dev (%)")
    agree_ax.set_ylabel("agreement with the ensemble's arg-max (%)")
    for ax in (kept_ax, agree_ax):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("transfer set (x the training audio)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, out)


def _errorbar(ax: plt.Axes, pts: list[tuple[float, dict]], style: str, label: str) -> None:
    xs = [x for x, _ in pts]
    ys = [c["estimate"] for _, c in pts]
    err = [[c["estimate"] - c["low"] for _, c in pts], [c["high"] - c["estimate"] for _, c in pts]]
    ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=label)


def _save(fig: plt.Figure, out: Path) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
