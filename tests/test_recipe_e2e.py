"""The whole recipe, corpus to report, on a CI-sized corpus (the shared ``ci_experiment`` run): every stage's
outputs exist, the report has every row (the extra students' included), every number it publishes agrees with
the files it came from and with the numbers it derives from, and re-running is idempotent (every stage skipped)."""
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
from features.kaldi_io import load_vec_int_scp
from results_consistency import check

STUDENTS = ("hard_1x16", "soft_1x16")  # ci.yaml's: one hidden layer of 16 units, hard targets and distilled


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
    for system in ("baseline", "distilled", "small_data/small_hard", "small_data/small_soft",
                   *(f"students/{name}" for name in STUDENTS)):
        assert (work / "exp" / "dnn" / system / "model.pt").exists(), system
    assert len(list((work / "exp" / "dnn" / "ensemble").glob("member*/model.pt"))) == 3
    for system in ("gmm", "baseline", "ensemble", "distilled", "small_hard", "small_soft", *STUDENTS):
        for split in ("dev", "test"):
            assert list((work / "exp" / "decode" / system / split).glob("errs-*.txt")), (system, split)
    best = json.loads((work / "exp" / "dnn" / "distill_sweep" / "sweep.json").read_text())["best_temperature"]
    assert (work / "exp" / "dnn" / "distilled" / "model.pt").read_bytes() == \
        (work / "exp" / "dnn" / "distill_sweep" / f"T{best:g}" / "model.pt").read_bytes()
    done = sorted(p.parent.name for p in (work / "exp" / "stages").glob("*/.done"))
    assert done == sorted(STAGES), done
    for stage in done:  # every stage keeps its log and the resolved config next to its summary
        for name in ("log.txt", "config.yaml", "summary.json"):
            assert (work / "exp" / "stages" / stage / name).exists(), (stage, name)


@pytest.mark.slow
def test_report_has_every_row(ci_experiment: Path):
    report_dir = ci_experiment / "exp" / "report"
    report = json.loads((report_dir / "report.json").read_text())
    ws = Workspace(ci_experiment)
    decoded = json.loads((ws.stage("decode") / "summary.json").read_text())["summary"]
    for system in ("baseline", "ensemble", "distilled"):
        row = report["table1"][system]
        for split, subset in (("dev", None), ("test", None), ("test", "seen"), ("test", "unseen")):
            group = split if subset is None else f"{split}_{subset}"
            assert row[f"{group}_frame_acc"]["estimate"] == pytest.approx(
                _frame_accuracy(ws, system, split, subset), abs=1e-9), (system, group)
        for split, subset in (("dev", "all"), ("test", "all"), ("test", "seen"), ("test", "unseen")):
            group = split if subset == "all" else f"{split}_{subset}"
            assert row[f"{group}_wer"]["estimate"] == pytest.approx(decoded[system][split][subset], abs=1e-9)
        for key, cell in row.items():  # frame accuracy differs from utterance to utterance: its intervals have a width
            assert cell["low"] <= cell["estimate"] <= cell["high"], (system, key, cell)
            assert cell["low"] < cell["high"] or key.endswith("_wer"), (system, key, cell)
    assert check(report, json.loads((ci_experiment / "results" / "history.json").read_text())).problems == []
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
                "Where the time and memory went"):
        assert row in md, row
    peaks = report["stage_peak_memory_mb"]  # measured by run.sh's process over each stage's process tree
    assert set(peaks) == set(report["stage_seconds"]) and all(peak > 100 for peak in peaks.values()), peaks
    assert set(report["fidelity"]) == {"train", "transfer", "dev", "test"} and "train (the paper's transfer set)" in md
    assert "train + untranscribed pool" in md and "| distilled_unlabeled |" in md
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
def test_the_untranscribed_pool_makes_a_second_distilled_row_and_a_3_percent_row(ci_experiment: Path):
    """ci.yaml's corpus has twice its training audio again as untranscribed speech: stage transfer distils a student
    on train + pool and a 3% model on its subset + pool; both are decoded and reported."""
    work, ws = ci_experiment, Workspace(ci_experiment)
    assert not (work / "data" / "unlabeled" / "text").exists()
    assert not (work / "exp" / "tri1_ali" / "unlabeled").exists()  # no alignment: it has no transcript
    transfer = json.loads((ws.stage("transfer") / "summary.json").read_text())["summary"]
    pool = transfer["pool"]
    train_frames = sum(int(n) for n in (work / "data" / "fbank" / "train" / "utt2num_frames").read_text().split()[1::2])
    assert pool["labeled_frames"] <= train_frames  # the aligned ones, each once
    assert pool["unlabeled_frames"] == sum(int(n) for n in (
        work / "data" / "fbank" / "unlabeled" / "utt2num_frames").read_text().split()[1::2])
    assert pool["size"] > 2.5  # twice train's hours of untranscribed speech beside it
    best = json.loads((work / "exp" / "dnn" / "distill_sweep" / "sweep.json").read_text())["best_temperature"]
    assert transfer["temperature"] == best
    objective = json.loads((ws.transfer / "distilled_unlabeled" / "distill.json").read_text())
    assert (objective["temperature"], objective["hard_weight"], objective["top_k"]) == (best, 0.5, 20)
    small = json.loads((ws.transfer / "small_soft_unlabeled" / "distill.json").read_text())
    assert (small["temperature"], small["hard_weight"]) == (transfer["small_data_temperature"], 0.0)
    for system in ("distilled_unlabeled", "small_soft_unlabeled"):
        for split in ("dev", "test"):
            assert list((work / "exp" / "decode" / system / split).glob("errs-*.txt")), (system, split)
    pool_preds = xp.predictions(ws, "ensemble", "unlabeled")
    assert sum(len(p) for p in pool_preds.values()) == pool["unlabeled_frames"]
    report = json.loads((work / "exp" / "report" / "report.json").read_text())
    row = report["unlabeled"]["row"]
    assert row["dev_frame_acc"]["estimate"] == pytest.approx(_frame_accuracy(ws, "distilled_unlabeled", "dev", None),
                                                            abs=1e-9)
    assert set(report["unlabeled"]["gain_kept"]["frames"]) >= {"dev", "test"}
    assert "small_soft_unlabeled" in report["small_data_table"] and \
        "small_soft_unlabeled" in report["small_data_recovered"]
    md = (work / "exp" / "report" / "report.md").read_text()
    assert "Distillation on untranscribed audio" in md and "distilled, transfer set = train + untranscribed pool" in md
    assert {c["claim"] for c in report["comparisons"]} >= {"distilled with untranscribed pool vs ensemble",
                                                           "3% soft with untranscribed pool vs 3% soft"}


def _frame_accuracy(ws: Workspace, system: str, split: str, subset: str | None) -> float:
    """Percent of aligned frames whose kept prediction is the aligned pdf (of one voice condition's utterances)."""
    pred, ali, labels = xp.predictions(ws, system, split), load_vec_int_scp(ws.ali(split) / "pdf.scp"), \
        xp.utt2subset(ws, split)
    utts = [u for u in ali if subset is None or labels[u] == subset]
    return 100.0 * sum(int((pred[u] == ali[u]).sum()) for u in utts) / sum(len(ali[u]) for u in utts)


@pytest.mark.slow
def test_the_extra_students_are_trained_reported_and_costed(ci_experiment: Path):
    """The students stage's rows: each student's shape and parameters (a hand count for 1x16 over the run's tied
    states), the soft one's objective (the temperature the distill stage chose), its intervals and share of the
    ensemble's gain, the distillation gain of the shape, and the cost stage's parameters and MACs per frame."""
    report = json.loads((ci_experiment / "exp" / "report" / "report.json").read_text())
    classes = xp.num_pdfs(Workspace(ci_experiment))
    params, macs = 1040 * 16 + 16 + 16 * classes + classes, 1040 * 16 + 16 * classes
    students = report["students"]
    assert set(students) == set(STUDENTS)
    for name, targets in zip(STUDENTS, ("hard", "soft")):
        st = students[name]
        assert (st["targets"], st["hidden_layers"], st["hidden_dim"], st["params"]) == (targets, 1, 16, params)
        assert 1 <= st["epochs_run"] <= 3  # ci.yaml's train.epochs caps every student
        for key in ("dev_frame_acc", "test_frame_acc", "dev_wer", "test_wer"):
            assert st[key]["low"] <= st[key]["estimate"] <= st[key]["high"], (name, key)
        assert st["test_frame_acc"]["low"] < st["test_frame_acc"]["high"]
        assert st["kept_frame_acc"] is not None  # WER's share is undefined when the ensemble gains no word on test
        assert (report["cost"][name]["params"], report["cost"][name]["macs_per_frame"]) == (params, macs)
    assert students["soft_1x16"]["temperature"] == report["best_temperature"]
    assert (students["soft_1x16"]["hard_weight"], students["soft_1x16"]["top_k"]) == (0.5, 20)  # distill's defaults
    assert students["hard_1x16"]["temperature"] is None
    (gain,) = report["distillation_gain"]
    assert (gain["shape"], gain["params"], gain["hard"], gain["distilled"]) == ("1x16", params, *STUDENTS)
    assert gain["frame_acc"]["estimate"] == pytest.approx(
        students["soft_1x16"]["test_frame_acc"]["estimate"] - students["hard_1x16"]["test_frame_acc"]["estimate"])
    md = (ci_experiment / "exp" / "report" / "report.md").read_text()
    assert f"| hard_1x16 | hard | 1x16 | {params:,} | {macs:,} |" in md
    assert f"| soft_1x16 | soft | 1x16 | {params:,} | {macs:,} |" in md
    assert f"| 1x16 | {params:,} | hard_1x16 | soft_1x16 |" in md
    assert (ci_experiment / "exp" / "report" / "cost_accuracy.png").stat().st_size > 1000


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

