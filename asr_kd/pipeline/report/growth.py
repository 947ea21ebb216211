"""How each stage's time and peak memory grow with the training audio, and what that predicts for a large corpus.

Runs of one config at several corpus sizes (``corpus.train_hours=...``, each in its own work dir) leave each
stage's seconds and peak memory in ``exp/stages/<stage>/summary.json`` and the corpus's hours in the corpus
stage's summary. A least-squares line per stage through those points (seconds and MB against training hours) gives
the stage's fixed part and its slope, and the line read at a target size (LibriSpeech's 960 h, the paper's 2000 h)
is what the stage would take on the same CPU with the same networks.

Only the stages whose work grows with the training set are extrapolated that way. The decoding and cost stages
work on dev and test, and the lexicon/LM stage on the LM text, which stay the same size across these runs: their
line is flat by construction, and at a target size they cost what dev, test and the LM text of that corpus cost.
The corpus stage synthesizes the built-in corpus, which a real corpus is imported instead of: not extrapolated.

Memory is read off the line only where nothing bounds it. The GMM stages work a shard at a time, so once a run has
full shards only the driver's alignments still grow (:data:`SHARDED_BYTES_PER_FRAME`): their memory at a target is
the largest run's peak plus that. The DNN stages hold a split in memory up to one shuffle buffer of frames
(``data.buffer_frames``) and stream beyond it with two buffers alive: their memory at a target is the line, or the
line's cost of two buffers, whichever is smaller. The soft targets of a streamed split are computed one archive
shard (``data.shard_frames``) at a time and written as they come: the line, up to one shard. Feature extraction
holds a batch of utterances per process and writes as it goes: the largest measured peak. No extrapolation is
below the largest measured value.

    python -m asr_kd.pipeline.report.growth --work-dir W1 --work-dir W2 --work-dir W3 --out DIR

writes ``DIR/GROWTH.md``, ``growth.json`` and ``growth.png``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

from asr_kd.pipeline.runner import git_commit, machine_description, machine_kind, read_summary  # noqa: E402
from asr_kd.pipeline.stages import STAGES  # noqa: E402
from asr_kd.pipeline.workspace import Workspace  # noqa: E402
from features.atomic import write_text_atomic  # noqa: E402
from features.errors import InputError  # noqa: E402

FIXED_SIZE_STAGES = ("corpus", "lang", "graph", "decode", "cost", "report")
"""Stages not extrapolated: their input does not grow with the training audio here (LM text, dev and test), or
their work is the built-in corpus's synthesis."""
TARGET_HOURS = (960.0, 2000.0)
"""LibriSpeech's 960 hours and the paper's 2000 hours of training audio."""
FRAMES_PER_HOUR = 360_000
"""10 ms frames."""
SHARDED_BYTES_PER_FRAME = {"mono": 8, "tri": 8}
"""What still grows per training frame in a GMM stage that works a shard at a time: the driver's alignments, 4
bytes a frame, 8 while a realignment replaces them."""
BUFFERED = ("baseline", "ensemble", "distill", "small_data", "students")
"""DNN stages: a split in memory up to ``data.buffer_frames`` frames, two buffers of it when streamed."""
PER_SHARD = ("soft_targets",)
"""A DNN stage that works a streamed split one archive shard at a time."""
PER_BATCH = ("features",)
"""Stages whose processes hold a batch of utterances at a time and write as they go: no growth with the corpus."""
DEFAULT_BUFFER_FRAMES = 40_000_000
DEFAULT_SHARD_FRAMES = 1_000_000


@dataclass
class Run:
    """One run's size and what each of its stages took."""

    work_dir: str
    train_hours: float
    seconds: dict[str, float]
    peak_memory_mb: dict[str, float | None]
    buffer_frames: int = DEFAULT_BUFFER_FRAMES
    shard_frames: int = DEFAULT_SHARD_FRAMES


def _data_setting(ws: Workspace, key: str, default: int) -> int:
    """``data.<key>`` of the run's first DNN stage (its saved config), or the default."""
    config = ws.stage("baseline") / "config.yaml"
    if not config.exists():
        return default
    return int(OmegaConf.load(config).get("data", {}).get(key, default))


def read_run(work_dir: Path) -> Run:
    """The training hours (corpus stage) and each finished stage's seconds and peak memory of a work dir."""
    ws = Workspace(work_dir.resolve())
    corpus = read_summary(ws, "corpus")
    hours = ((corpus or {}).get("summary") or {}).get("splits", {}).get("train", {}).get("hours")
    if hours is None:
        raise InputError("no corpus stage summary with the training hours (run the recipe there first)",
                         ws.stage("corpus") / "summary.json")
    records = {name: read_summary(ws, name) for name in STAGES}
    done = {name: rec for name, rec in records.items() if rec}
    return Run(str(ws.root), float(hours), {n: float(r["seconds"]) for n, r in done.items()},
               {n: r.get("peak_memory_mb") for n, r in done.items()},
               _data_setting(ws, "buffer_frames", DEFAULT_BUFFER_FRAMES),
               _data_setting(ws, "shard_frames", DEFAULT_SHARD_FRAMES))


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of ``ys`` against ``xs`` (slope 0 where every x is the same)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def growth(runs: list[Run], targets: tuple[float, ...] = TARGET_HOURS) -> dict:
    """Per stage present in every run: its points, its line (seconds and MB per training hour) and the line read
    at each target size (None for :data:`FIXED_SIZE_STAGES`, whose input does not grow here)."""
    if len(runs) < 2 or len({r.train_hours for r in runs}) < 2:
        raise ValueError("growth needs runs at two or more corpus sizes")
    runs = sorted(runs, key=lambda r: r.train_hours)
    hours = [r.train_hours for r in runs]
    stages = {}
    for name in STAGES:
        if not all(name in r.seconds for r in runs):
            continue
        row: dict = {"scales_with_train": name not in FIXED_SIZE_STAGES}
        for key, values in (("seconds", [r.seconds[name] for r in runs]),
                            ("peak_memory_mb", [r.peak_memory_mb.get(name) for r in runs])):
            if any(v is None for v in values):
                continue
            intercept, slope = fit_line(hours, values)
            model = memory_model(name) if key == "peak_memory_mb" else "line"
            at = {f"{t:g}": (read_at(name, model, intercept, slope, hours[-1], values, t, runs[-1].buffer_frames,
                                     runs[-1].shard_frames) if row["scales_with_train"] else None) for t in targets}
            row[key] = {"points": values, "intercept": intercept, "per_hour": slope, "model": model, "at": at}
        stages[name] = row
    return {"train_hours": hours, "runs": [asdict(r) for r in runs], "targets": list(targets), "stages": stages}


def memory_model(stage: str) -> str:
    """How a stage's peak memory grows: ``shards`` (GMM: a shard at a time, alignments grow), ``buffers`` (DNN:
    in memory up to a buffer, two buffers beyond), ``archive shard`` (soft targets: one archive shard at a time once
    streamed), ``batch`` (features: a batch of utterances at a time), or ``line``."""
    if stage in SHARDED_BYTES_PER_FRAME:
        return "shards"
    if stage in PER_BATCH:
        return "batch"
    return "buffers" if stage in BUFFERED else "archive shard" if stage in PER_SHARD else "line"


def read_at(stage: str, model: str, intercept: float, slope: float, largest_hours: float, values: list[float],
            target: float, buffer_frames: int, shard_frames: int = DEFAULT_SHARD_FRAMES) -> float:
    """Stage ``stage``'s seconds or MB at ``target`` hours by its ``model`` (see the module docstring), never below
    the largest measured value (a negative slope between noisy points is no prediction)."""
    line = intercept + slope * target
    if model == "batch":
        return max(values)
    if model == "shards":
        grown = SHARDED_BYTES_PER_FRAME[stage] * FRAMES_PER_HOUR * (target - largest_hours) / 2**20
        line = values[-1] + grown
    elif model == "buffers" and target * FRAMES_PER_HOUR > buffer_frames:
        line = min(line, intercept + 2 * slope * buffer_frames / FRAMES_PER_HOUR)
    elif model == "archive shard" and target * FRAMES_PER_HOUR > buffer_frames:
        line = min(line, intercept + slope * shard_frames / FRAMES_PER_HOUR)
    return max(line, max(values))


def _cell(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def growth_markdown(g: dict) -> list[str]:
    """The growth tables: points, slope and extrapolation per stage, seconds and memory."""
    hours = g["train_hours"]
    targets = [f"{t:g}" for t in g["targets"]]
    lines = []
    for key, unit, title in (("seconds", "s", "Time"), ("peak_memory_mb", "MB", "Peak memory")):
        lines += [f"## {title} ({unit}) against training audio", "",
                  "| stage | " + " | ".join(f"{h:.2f} h" for h in hours) + " | per training hour | "
                  + " | ".join(f"at {t} h" for t in targets) + " | read at a target as |",
                  "|---" * (len(hours) + len(targets) + 3) + "|"]
        for name, row in g["stages"].items():
            fit = row.get(key)
            if not fit:
                continue
            at = [_cell(fit["at"][t]) if row["scales_with_train"] else "not from these runs" for t in targets]
            lines.append(f"| {name} | " + " | ".join(_cell(v) for v in fit["points"]) + f" | {fit['per_hour']:+,.1f} | "
                         + " | ".join(at) + f" | {_READ_AS[fit['model']] if row['scales_with_train'] else '-'} |")
        lines.append("")
    return lines


_READ_AS = {"line": "the line", "shards": "the largest run + 8 B per frame of alignments",
            "buffers": "the line, up to two shuffle buffers", "archive shard": "the line, up to one archive shard",
            "batch": "the largest measured peak (a batch of utterances at a time)"}


def growth_chart(g: dict, out: Path) -> None:
    """Seconds and peak memory of the stages that grow with the training audio, against it."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "seconds", "seconds"), (axes[1], "peak_memory_mb", "peak memory (MB)")):
        for name, row in g["stages"].items():
            if row["scales_with_train"] and row.get(key):
                ax.plot(g["train_hours"], row[key]["points"], marker="o", label=name)
        ax.set_xlabel("training audio (hours)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write_growth(runs: list[Run], out_dir: Path, command: str) -> dict:
    """GROWTH.md, growth.json and growth.png in ``out_dir``, with the command, machine, date and commit."""
    g = growth(runs)
    machine = machine_description()
    g["meta"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
                 "git_commit": git_commit(Path(__file__).resolve().parents[3], ignore=(out_dir,)),
                 "machine": machine}
    out_dir.mkdir(parents=True, exist_ok=True)
    growth_chart(g, out_dir / "growth.png")
    header = ["# Stage time and memory against corpus size (generated by asr_kd.pipeline.report.growth; do not edit "
              "by hand)", "", "Command (from the repository root):", "", "```", command, "```", "",
              f"- date: {g['meta']['date']}", f"- git commit: {g['meta']['git_commit']}",
              f"- machine: {machine_kind(machine)} ({machine['cpu']}), torch {machine['torch']}",
              "- runs: " + ", ".join(f"`{r['work_dir']}` ({r['train_hours']:.2f} h of training audio)"
                                     for r in g["runs"]), "",
              "A line per stage through the runs (least squares); read at a target size, it is what the stage would "
              "take on this CPU with these networks. Memory is read off the line only where nothing bounds it: GMM "
              "stages work a shard at a time (only the alignments grow), DNN stages stream a split larger than one "
              "shuffle buffer with two buffers alive. Stages marked *not from these runs* work on the LM text, dev "
              "and test, which are the same size in every run, or synthesize the built-in corpus.", ""]
    write_text_atomic(out_dir / "GROWTH.md", "\n".join(header + growth_markdown(g) + ["![growth](growth.png)"])
                      + "\n")
    write_text_atomic(out_dir / "growth.json", json.dumps(g, indent=2) + "\n")
    return g


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", action="append", type=Path, required=True,
                        help="a finished run's work dir (give two or more, at different corpus sizes)")
    parser.add_argument("--out", type=Path, required=True, help="where GROWTH.md, growth.json, growth.png go")
    args = parser.parse_args(argv)
    command = "python -m asr_kd.pipeline.report.growth " + " ".join(
        f"--work-dir {w}" for w in args.work_dir) + f" --out {args.out}"
    write_growth([read_run(w) for w in args.work_dir], args.out, command)


if __name__ == "__main__":
    main()
