"""The whole recipe, corpus to report, on a CI-sized corpus (the shared ``ci_experiment`` run): every stage's
outputs exist, the report has every row, and re-running is idempotent (every stage skipped)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from asr_kd.nn.frames import load_frameset
from asr_kd.pipeline import experiment as xp
from asr_kd.pipeline.stages import STAGES
from asr_kd.pipeline.workspace import Workspace
from asr_kd.evaluation.systems import System, split_by_utterance


@pytest.mark.slow
def test_every_stage_leaves_its_outputs(ci_experiment: Path):
    work = ci_experiment
    for split in ("train", "dev", "test"):
        assert (work / "data" / split / "wav.scp").exists()
        assert (work / "data" / "fbank" / split / "feats.scp").exists()
        assert (work / "data" / "mfcc" / split / "feats.scp").exists()
        assert (work / "exp" / "tri1_ali" / split / "pdf.scp").exists()
    assert (work / "data" / "lang_test" / "G.fst").exists()
    assert (work / "exp" / "tri1" / "graph" / "HCLG.fst").exists()
    for system in ("baseline", "distilled", "small_data/small_hard", "small_data/small_soft"):
        assert (work / "exp" / "dnn" / system / "model.pt").exists(), system
    assert len(list((work / "exp" / "dnn" / "ensemble").glob("member*/model.pt"))) == 3
    for system in ("gmm", "baseline", "ensemble", "distilled", "small_hard", "small_soft"):
        for split in ("dev", "test"):
            assert list((work / "exp" / "decode" / system / split).glob("errs-*.txt")), (system, split)
    done = sorted(p.parent.name for p in (work / "exp" / "stages").glob("*/.done"))
    assert done == sorted(STAGES), done
    for stage in done:  # every stage keeps its log and the resolved config next to its summary
        for name in ("log.txt", "config.yaml", "summary.json"):
            assert (work / "exp" / "stages" / stage / name).exists(), (stage, name)


@pytest.mark.slow
def test_report_has_every_row(ci_experiment: Path):
    report_dir = ci_experiment / "exp" / "report"
    report = json.loads((report_dir / "report.json").read_text())
    for system in ("baseline", "ensemble", "distilled"):
        row = report["table1"][system]
        for key in ("dev_frame_acc", "test_frame_acc", "test_unseen_frame_acc", "dev_wer", "test_wer",
                    "test_seen_wer", "test_unseen_wer"):
            cell = row[key]
            assert isinstance(cell["estimate"], float), (system, key, row)
            assert 0.0 <= cell["low"] <= cell["estimate"] <= cell["high"] <= 200.0
    small = report["small_data_table"]
    for system in ("baseline_full", "small_hard", "small_soft"):
        assert isinstance(small[system]["train"], float) and isinstance(small[system]["test"]["estimate"], float)
    assert set(report["temperature_sweep"]) == {"1.0", "2.0"}
    assert {c["claim"] for c in report["comparisons"]} >= {"ensemble vs baseline", "distilled vs ensemble",
                                                           "3% soft vs 3% hard"}
    md = (report_dir / "report.md").read_text()
    for row in ("baseline single model", "x ensemble", "distilled single model", "baseline, 20%",
                "soft targets of the full-data ensemble, 20%", "Dev frame accuracy over training",
                "Which differences are real", "Temperature sweep", "Ensemble members", "Convergence",
                "Where the time went"):
        assert row in md, row
    assert set(report["fidelity"]) == {"train", "dev", "test"} and "train (the transfer set)" in md
    run = report["run_seconds"]  # run.sh ran every stage: its wall clock, install included, is accounted for
    assert run["install"] >= 0 and run["stages"] == pytest.approx(sum(report["stage_seconds"].values()), abs=0.2)
    assert run["wall"] >= run["install"] + run["stages"] and "| **whole run, wall clock** |" in md
    for png in ("training_curves.png", "temperature_sweep.png", "table1.png", "comparisons.png"):
        assert (report_dir / png).stat().st_size > 1000
    results = (ci_experiment / "results" / "RESULTS.md").read_text()
    assert results.startswith("# RESULTS") and "git commit" in results
    assert f"recipes/synth/run.sh --work-dir {ci_experiment} --config ci\n" in results  # the command, as typed
    assert (ci_experiment / "results" / "table1.png").exists()


@pytest.mark.slow
def test_rerun_skips_every_stage(ci_experiment_copy: Path, run_recipe):
    started = time.time()
    again = run_recipe("synth", ci_experiment_copy, "--config", "ci")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("already done") == len(STAGES)
    assert time.time() - started < 180
    report = list(STAGES).index("report")
    partial = run_recipe("synth", ci_experiment_copy, "--config", "ci", "--stage", str(report), "--stop-stage",
                         str(report), "force=true")
    assert partial.returncode == 0, partial.stderr[-3000:]
    out = partial.stdout + partial.stderr
    assert f"stages {report}..{report}: report\n" in partial.stdout  # run.sh names the stages of its range
    assert "stage report: start" in out and "stage cost" not in out  # and only that one runs
    forced = json.loads((ci_experiment_copy / "exp" / "report" / "report.json").read_text())
    assert forced["run_seconds"] is None  # the other stages ran in an earlier invocation: no whole-run time


@pytest.mark.slow
def test_the_ensembles_training_predictions_are_its_own_arg_max(ci_experiment: Path):
    """The fidelity row's training-frame teacher (the top class of the stored T=1 targets) is what the ensemble
    itself predicts on those frames, frame for frame in the same order."""
    ws = Workspace(ci_experiment)
    train = load_frameset(ws.fbank("train"), ws.ali("train"))
    predicted = System("ensemble", xp.member_paths(ws), "arith").log_posteriors(train).argmax(1).numpy()
    stored = xp.predictions(ws, "ensemble", "train")
    assert list(stored) == train.utt_ids
    same = sum(int((stored[u] == p).sum()) for u, p in split_by_utterance(predicted, train).items())
    assert same >= 0.999 * train.num_frames, (same, train.num_frames)

