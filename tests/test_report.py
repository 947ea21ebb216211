"""The report pins its numbers to what the stages wrote: a small fake workspace with known accuracies and WERs.

Every system gets its own distinct numbers, so a swapped row, a percent/fraction mix-up or a number taken from the
wrong split changes what the report shows and fails here.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from asr_kd.pipeline.report import markdown, write_report
from asr_kd.pipeline.report.collect import collect, extra_students, run_time
from asr_kd.pipeline.report.statistics import members_worth, share_verdict
from asr_kd.pipeline.runner import machine_description, machine_kind
from asr_kd.pipeline.workspace import Workspace
from features.kaldi_io import write_vec_int_ark_scp
from features.tables import write_table, write_text

UTTS = {"dev": [f"d{i:02d}" for i in range(20)], "test": [f"t{i:02d}" for i in range(20)]}
FRAMES = 10  # per utterance
# (dev frame accuracy, test frame accuracy, dev WER, test WER) in percent, distinct for every system
KNOWN = {"baseline": (50.0, 40.0, 30.0, 40.0), "ensemble": (60.0, 50.0, 20.0, 30.0),
         "distilled": (58.0, 46.0, 22.0, 35.0), "small_hard": (30.0, 20.0, 60.0, 70.0),
         "small_soft": (45.0, 35.0, 40.0, 50.0)}
WORDS = ["ONE", "TWO", "THREE", "FOUR", "FIVE"]  # every reference: 5 words, so 100 words per split


def _correct_per_utt(accuracy: float, n_utts: int) -> list[int]:
    """Correct frames per utterance adding up to ``accuracy`` percent of n_utts * FRAMES, spread unevenly."""
    total = round(accuracy / 100 * n_utts * FRAMES)
    per = [total // n_utts] * n_utts
    for i in range(total % n_utts):
        per[i] += 1
    return per


def _errors_per_utt(wer: float, n_utts: int) -> list[int]:
    total = round(wer / 100 * n_utts * len(WORDS))
    per = [min(len(WORDS), total // n_utts)] * n_utts
    for i in range(total - sum(per)):
        per[i % n_utts] += 1
    return per


@pytest.fixture()
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path)
    for split, utts in UTTS.items():
        write_vec_int_ark_scp(((u, np.zeros(FRAMES, dtype=np.int32)) for u in utts), ws.ali(split) / "pdf.ark",
                              ws.ali(split) / "pdf.scp")
        write_text(ws.data(split) / "text", {u: WORDS for u in utts})
        if split == "test":
            write_table(ws.data(split) / "utt2subset", {u: "seen" if i < 10 else "unseen" for i, u in enumerate(utts)})
        for system, known in KNOWN.items():
            acc, wer = known[0 if split == "dev" else 1], known[2 if split == "dev" else 3]
            preds = {}
            for u, correct in zip(utts, _correct_per_utt(acc, len(utts))):
                preds[u] = np.array([0] * correct + [1] * (FRAMES - correct), dtype=np.int32)
            out = ws.eval(system, split)
            write_vec_int_ark_scp(preds.items(), out / "pred.ark", out / "pred.scp")
            hyps = {u: ["WRONG"] * e + WORDS[e:] for u, e in zip(utts, _errors_per_utt(wer, len(utts)))}
            write_text(ws.decode(system, split) / "hyp.txt", hyps)
    # training-frame predictions (the fidelity row's transfer set): the ensemble predicts pdf 0 everywhere, the
    # baseline agrees on 7 of 10 frames per utterance, the distilled model on 9
    for system, agree in (("ensemble", FRAMES), ("baseline", 7), ("distilled", 9)):
        out = ws.eval(system, "train")
        write_vec_int_ark_scp(((f"r{i:02d}", np.array([0] * agree + [1] * (FRAMES - agree), dtype=np.int32))
                               for i in range(10)), out / "pred.ark", out / "pred.scp")
    summaries = {
        "ensemble": {"members": {"dev": {"members": [54.0, 55.0, 56.0], "member_mean": 55.0, "member_std": 1.0,
                                         "ensemble": 60.0, "by_size": [54.0, 57.0, 60.0], "combine": "arith",
                                         "frames": 200}}},
        "small_data": {"fraction_percent": 3.0, "num_utts": 7, "num_frames": 700, "teacher": "ensemble",
                       "temperature": 5.0, "hard_weight": 0.0, "top_k": None, "hard_early_stopping": True,
                       "soft_early_stopping": False,
                       "systems": {"baseline_full": {"train": 63.0}, "small_hard": {"train": 90.0},
                                   "small_soft": {"teacher": "ensemble", "train": 70.0, "temperature": 5.0,
                                                  "dev_by_temperature": {"2": 43.5, "5": 45.0}}}},
        "distill": {"best_temperature": 2.0, "schedules": {"students": "plateau", "members": "newbob"},
                    "sweep": {"2.0": {"dev": {"all": 58.0}, "test": {"all": 46.0}, "epochs_run": 12},
                              "5.0": {"dev": {"all": 57.5}, "test": {"all": 46.5}, "epochs_run": 14}}},
        "decode": {"baseline": {"acoustic_scale": 0.1, "rtf": 0.05, "dev": {"no_path": [], "no_final_state": []},
                                "test": {"no_path": ["t03"], "no_final_state": ["t04", "t05"]},
                                "dev_wer_by_scale": {"0.12": 23.0, "0.1": 22.0, "0.08": 22.5}},
                   "ensemble": {"acoustic_scale": 0.14, "rtf": 0.04, "dev": {}, "test": {},
                                "dev_wer_by_scale": {"0.12": 21.0, "0.14": 20.5, "0.1": 22.0}}},
        "tri": {f"boundaries/{split}": {
            "matched_phones": 90, "ref_phones": 100, "boundaries": 80, "within_20ms": w20, "within_40ms": 0.95,
            "median_abs_error_s": 0.0085,
            "by_group": {"voice_a": {"boundaries": 50, "within_20ms": a20}, "voice_b": {"boundaries": 30,
                                                                                   "within_20ms": b20}}}
            for split, w20, a20, b20 in (("dev", 0.8, 0.9, 0.6333), ("test", 0.7, 0.8, 0.5333))},
    }
    for stage, summary in summaries.items():
        ws.stage(stage).mkdir(parents=True)
        (ws.stage(stage) / "summary.json").write_text(json.dumps({"stage": stage, "seconds": 1.0,
                                                                  "finished": "now", "summary": summary}))
    for model, accs, stopped in (("baseline", [0.40, 0.50, 0.501], "newbob converged"),
                                 ("small_data/small_soft", [0.40, 0.45, 0.46], "max epochs"),
                                 ("small_data/small_hard", [0.30, 0.25, 0.20], "early stopping"),
                                 ("distilled", [0.50, 0.55, 0.58], "early stopping")):
        d = ws.dnn(model)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({
            "epochs": [{"dev_acc": a} for a in accs], "stopped": stopped, "best_epoch": accs.index(max(accs)) + 1,
            "best_dev_acc": max(accs)}))
    return ws


def test_every_number_comes_from_the_stage_outputs(workspace: Workspace) -> None:
    r = collect(workspace, ["ensemble", "small_data", "decode"], num_samples=200)
    for system in ("baseline", "ensemble", "distilled"):
        dev_acc, test_acc, dev_wer, test_wer = KNOWN[system]
        row = r["table1"][system]
        assert row["dev_frame_acc"]["estimate"] == pytest.approx(dev_acc)
        assert row["test_frame_acc"]["estimate"] == pytest.approx(test_acc)
        assert row["dev_wer"]["estimate"] == pytest.approx(dev_wer)
        assert row["test_wer"]["estimate"] == pytest.approx(test_wer)
        assert row["dev_frame_acc"]["low"] <= dev_acc <= row["dev_frame_acc"]["high"]
        assert row["test_seen_frame_acc"] is not None and row["test_unseen_wer"] is not None
    # share of the ensemble's gain the distilled model keeps: (58 - 50) / (60 - 50) on dev, (46 - 40) / 10 on test
    assert r["gain_kept"]["frames"]["dev"]["share"]["estimate"] == pytest.approx(0.8)
    assert r["gain_kept"]["frames"]["test"]["share"]["estimate"] == pytest.approx(0.6)
    assert r["gain_kept"]["wer"]["test"]["share"]["estimate"] == pytest.approx(0.5)
    assert r["ensemble_size"] == {"dev": {"by_size": [54.0, 57.0, 60.0], "distilled": pytest.approx(58.0),
                                          "distilled_worth": 2}}
    # agreement with the ensemble's arg-max: train as written; dev and test from the accuracies (every system
    # predicts pdf 0 on its first correct frames), e.g. dev: ensemble 6 per utterance, baseline 5 -> 90%
    fid = {split: {k: v["estimate"] for k, v in row.items()} for split, row in r["fidelity"].items()}
    assert fid == {"train": {"baseline": pytest.approx(70.0), "distilled": pytest.approx(90.0),
                             "diff": pytest.approx(20.0)},
                   "dev": {"baseline": pytest.approx(90.0), "distilled": pytest.approx(98.0),
                           "diff": pytest.approx(8.0)},
                   "test": {"baseline": pytest.approx(90.0), "distilled": pytest.approx(96.0),
                            "diff": pytest.approx(6.0)}}
    # the 3% rows: the full-data baseline, then the hard and soft models, each with its own numbers
    small = r["small_data_table"]
    assert small["baseline_full"]["test"]["estimate"] == pytest.approx(40.0)
    assert small["small_hard"]["test"]["estimate"] == pytest.approx(20.0)
    assert small["small_soft"]["dev"]["estimate"] == pytest.approx(45.0)
    assert small["small_soft"]["test_wer"]["estimate"] == pytest.approx(50.0)
    assert (small["small_hard"]["train"], small["small_soft"]["train"]) == (90.0, 70.0)
    assert r["small_data_recovered"]["small_soft"]["frames"]["test"]["share"]["estimate"] == \
        pytest.approx((35 - 20) / (40 - 20))
    claim = {(c["claim"], c["metric"], c["group"]): c for c in r["comparisons"]}
    assert claim[("ensemble vs baseline", "frame accuracy", "dev")]["diff"]["estimate"] == pytest.approx(10.0)
    assert claim[("distilled vs ensemble", "WER", "test")]["diff"]["estimate"] == pytest.approx(5.0)
    assert claim[("3% soft vs full baseline", "frame accuracy", "test")]["diff"]["estimate"] == pytest.approx(-5.0)
    assert claim[("ensemble vs baseline", "frame accuracy", "dev")]["significant"]
    assert {c["group"] for c in r["comparisons"]} == {"dev", "test", "test seen", "test unseen"}
    assert r["decoding"]["baseline"]["no_path"] == {"dev": 0, "test": 1}
    assert r["decoding"]["baseline"]["no_final_state"] == {"dev": 0, "test": 2}
    assert r["decoding"]["baseline"]["scales_tried"] == [0.08, 0.1, 0.12]
    flagged = {c["model"]: c["converged"] for c in r["convergence"]}
    assert flagged == {"baseline": True, "distilled": False, "small_data/small_hard": True,
                       "small_data/small_soft": False}


def test_markdown_shows_the_collected_numbers(workspace: Workspace) -> None:
    cfg = OmegaConf.create({"report": {"bootstrap_samples": 200, "seed": 0}, "results_dir": None})
    write_report(cfg, workspace, ["tri", "ensemble", "distill", "small_data", "decode"])
    md = (workspace.report / "report.md").read_text()
    assert "| dev | 90/100 | 80.0% | 95.0% | 8.5 |" in md and "| test | 90/100 | 70.0% | 95.0% | 8.5 |" in md
    # per speaker, dev then test: a swapped split or a fraction shown as a percent would not match
    assert "| voice_a | 90.0% (50) | 80.0% (50) |" in md and "| voice_b | 63.3% (30) | 53.3% (30) |" in md
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert rows["baseline single model"].split("|")[2].strip().startswith("50.0 [")
    assert rows["3x ensemble"].split("|")[2].strip().startswith("60.0 [")
    assert rows["distilled single model"].split("|")[5].strip().startswith("22.0 [")  # dev WER column
    assert "| frame accuracy | 80% [" in md  # share kept on dev
    # and the paper's "more than 80%" judged from each interval: test's 60% share is said to fall short or not,
    # never simply printed
    claim = next(line for line in md.splitlines() if line.startswith("The paper's claim"))
    assert re.search(r"on dev 80% \[\d+%, \d+%\]: undecided \(the interval contains 80%\); "
                     r"on test 60% \[\d+%, \d+%\]: (undecided|does not hold) \(", claim), claim
    assert "**Flagged: distilled, small_data/small_soft.**" in md
    # the scales dev tried, in order, and a choice at an end of them marked (dev wanted to go further)
    assert "| baseline | 0.1 | 0.08, 0.1, 0.12 | 0.050 | 0 / 1 | 0 / 2 |" in md
    assert "| ensemble | 0.14 *(end)* | 0.1, 0.12, 0.14 | 0.040 | 0 / 0 | 0 / 0 |" in md
    # the ensemble-size curve, and the distilled model (dev 58) between the first 2 (57) and 3 (60) members
    assert "| dev | 54.00 | 57.00 | 60.00 | 58.00 | 2 of 3 |" in md and "![ensemble size](ensemble_size.png)" in md
    assert (workspace.report / "ensemble_size.png").stat().st_size > 0
    # fidelity: columns train, dev, test; every utterance agrees equally on train, so its interval is a point
    assert "| system | train (the paper's transfer set) | dev | test |" in md
    assert any(line.startswith("| baseline | 70.0 [70.0, 70.0] | 90.0 [") for line in md.splitlines())
    assert any(line.startswith("| distilled | 90.0 [90.0, 90.0] | 98.0 [") for line in md.splitlines())
    assert rows["distilled - baseline (points)"].startswith(
        "| distilled - baseline (points) | +20.0 [+20.0, +20.0] | +8.0 [")
    assert ("The distilled model agrees with the ensemble on 90.0% of its transfer set's frames and on 98.0% of dev "
            "frames: 8.0 points more on new speech (the baseline: 20.0 points more on new speech).") in md
    assert "| 2.0 | 58.00 | 46.00 | 12 |" in md and "| 5.0 | 57.50 | 46.50 | 14 |" in md
    assert ("Chosen on dev: T = 2.0. Learning-rate schedule of the students: plateau; of the baseline and the "
            "members: newbob") in md
    assert "- small_hard: best 30.00 at epoch 1 of 3, last 20.00 (-10.00): falls." in md
    assert "- small_soft: best 46.00 at epoch 3 of 3, last 46.00 (+0.00): does not fall." in md
    assert ("soft targets over all classes, hard-target weight 0, at T=5 (chosen on dev frame accuracy: "
            "T=2: 43.50, T=5: 45.00).") in md
    assert "| soft targets of the full-data ensemble, 3%, T=5 (no early stopping) | 70.0 | 45.0 [" in md
    assert (workspace.root / "results" / "RESULTS.md").read_text().count("50.0 [") >= 1
    kind = machine_kind(machine_description())
    assert f"- machine: {kind} (" in md
    assert json.loads((workspace.root / "results" / "history.json").read_text())[0]["machine"] == kind
    assert json.loads((workspace.root / "results" / "history.json").read_text())[0]["headline"][
        "baseline_dev_frame_acc"] == pytest.approx(50.0)


# Four test utterances of unequal length, each system with its own correct frames and word errors per utterance, so
# that every utterance keeps a different share of a gain: the published share is the ratio of summed counts and a
# mean of the per-utterance shares (in brackets) would differ.
UNEQUAL_FRAMES = [10, 30, 20, 40]
UNEQUAL_WORDS = [3, 9, 5, 13]
CORRECT = {"baseline": [2, 6, 10, 8], "ensemble": [4, 21, 14, 20], "distilled": [4, 9, 13, 18],  # 18/33 (0.70)
           "small_hard": [1, 3, 2, 4], "small_soft": [2, 5, 3, 8]}  # of small_hard's gap to baseline: 8/16 (0.70)
ERRORS = {"baseline": [2, 6, 4, 8], "ensemble": [0, 3, 3, 2], "distilled": [1, 5, 4, 4],  # 6/12 (0.375)
          "small_hard": [3, 9, 5, 12], "small_soft": [2, 9, 5, 8]}  # 5/9 (0.5)


def test_published_shares_are_ratios_of_sums_over_unequal_utterances(tmp_path: Path) -> None:
    """The share of the ensemble's gain the distilled model keeps and the 3% recovery, as the report publishes them
    (results.json and the history's headline), on utterances of unequal length with unequal shares."""
    ws = Workspace(tmp_path)
    utts = [f"t{i}" for i in range(len(UNEQUAL_FRAMES))]
    write_vec_int_ark_scp(((u, np.zeros(n, dtype=np.int32)) for u, n in zip(utts, UNEQUAL_FRAMES)),
                          ws.ali("test") / "pdf.ark", ws.ali("test") / "pdf.scp")
    refs = {u: [f"W{k}" for k in range(n)] for u, n in zip(utts, UNEQUAL_WORDS)}
    write_text(ws.data("test") / "text", refs)
    for system in CORRECT:
        preds = ((u, np.array([0] * c + [1] * (n - c), dtype=np.int32))
                 for u, c, n in zip(utts, CORRECT[system], UNEQUAL_FRAMES))
        write_vec_int_ark_scp(preds, ws.eval(system, "test") / "pred.ark", ws.eval(system, "test") / "pred.scp")
        write_text(ws.decode(system, "test") / "hyp.txt",
                   {u: ["WRONG"] * e + refs[u][e:] for u, e in zip(utts, ERRORS[system])})
    ws.stage("small_data").mkdir(parents=True)
    systems = {"baseline_full": {"train": 60.0}, "small_hard": {"train": 90.0},
               "small_soft": {"teacher": "ensemble", "train": 70.0, "temperature": 5.0}}
    (ws.stage("small_data") / "summary.json").write_text(json.dumps(
        {"stage": "small_data", "seconds": 1.0, "finished": "now",
         "summary": {"fraction_percent": 3.0, "num_utts": 1, "num_frames": 10, "temperature": 5.0, "hard_weight": 0.0,
                     "top_k": None, "systems": systems}}))
    write_report(OmegaConf.create({"report": {"bootstrap_samples": 200, "seed": 0}, "results_dir": None}), ws,
                 ["small_data"])
    r = json.loads((ws.root / "results" / "results.json").read_text())
    kept, recovered = r["gain_kept"], r["small_data_recovered"]["small_soft"]
    assert kept["frames"]["test"]["share"]["estimate"] == pytest.approx(18 / 33)
    assert kept["wer"]["test"]["share"]["estimate"] == pytest.approx(6 / 12)
    assert recovered["frames"]["test"]["share"]["estimate"] == pytest.approx(8 / 16)
    assert recovered["wer"]["test"]["share"]["estimate"] == pytest.approx(5 / 9)
    for share in (kept["frames"]["test"]["share"], recovered["wer"]["test"]["share"]):
        assert share["low"] < share["estimate"] < share["high"]  # four unequal utterances: a real interval
    headline = json.loads((ws.root / "results" / "history.json").read_text())[0]["headline"]
    assert headline["kept_frames_test"] == pytest.approx(18 / 33)
    assert headline["recovered_frames_test"] == pytest.approx(8 / 16)


@pytest.mark.parametrize("accuracy, worth", [(53.0, 0), (54.0, 1), (58.5, 3), (59.5, 3), (61.0, 4)])
def test_members_worth_is_the_largest_ensemble_matched(accuracy: float, worth: int) -> None:
    # a curve that dips at n=3 (seed noise): 58.5 is below the first 2 members' 59 but matches the first 3's 58
    assert members_worth([54.0, 59.0, 58.0, 60.0], accuracy) == worth


@pytest.mark.parametrize("low, high, verdict", [(0.81, 0.95, "holds"), (0.6, 0.79, "does not hold"),
                                                 (0.7, 0.9, "undecided"), (0.8, 0.8, "undecided")])
def test_share_verdict_needs_the_whole_interval_on_one_side(low: float, high: float, verdict: str) -> None:
    assert share_verdict({"estimate": (low + high) / 2, "low": low, "high": high}, 0.8).startswith(verdict + " (")


@pytest.mark.parametrize("native", [True, False])
def test_report_says_what_training_ran_in(workspace: Workspace, monkeypatch, native: bool) -> None:
    """The numerics line comes from the run's record of the auto setting (bf16 was measured slower here: float32),
    from an explicit train.bf16, or from a CPU without native bf16 (float32 whatever the setting)."""
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    stages = ["tri", "ensemble", "distill", "small_data", "decode"]
    base = OmegaConf.create({"report": {"bootstrap_samples": 20, "seed": 0}, "results_dir": None, "device": "cpu",
                             "train": {"bf16": None}})

    def line(cfg) -> str:
        write_report(cfg, workspace, stages)
        return next(x for x in (workspace.report / "report.md").read_text().splitlines()
                    if x.startswith("- training numerics: "))

    none = "- training numerics: float32 (no native bf16 on cpu)"
    assert line(base) == ("- training numerics: not chosen (no training stage has run)" if native else none)
    workspace.numerics.write_text(json.dumps({"cpu": {"bf16": False, "speedup": 0.64, "reason": "auto on cpu: "
                                                      "a bf16-autocast training step measured 0.64x float32's speed, "
                                                      "below 1.2x"}}))
    assert line(base) == (none if not native else "- training numerics: float32 (auto on cpu: a bf16-autocast "
                          "training step measured 0.64x float32's speed, below 1.2x)")
    assert line(OmegaConf.merge(base, {"train": {"bf16": True}})) == (
        "- training numerics: bf16 autocast (train.bf16=true, native bf16 on cpu)" if native else none)


def test_distillation_gain_names_each_pair_of_one_shape() -> None:
    """Every (hard, distilled) pair of one shape gets its own row, named, with the sign of distilled - hard: a
    shape holding several students (an ablation beside the size sweep) must not print anonymous repeated rows."""
    def pair(a: str, b: str, estimate: float) -> dict:
        return {"name_a": a, "name_b": b, "significant": True,
                "diff": {"estimate": estimate, "low": estimate - 0.5, "high": estimate + 0.5}}

    specs = {name: {"targets": targets, "hidden_layers": 3, "hidden_dim": 128, "params": 1000, "budget": "converge",
                    "size_sweep": True, "epochs_run": 5, "temperature": 2.0, "hard_weight": 0.5, "top_k": 20}
             for name, targets in (("hard_3x128", "hard"), ("soft_3x128", "soft"), ("soft_other", "soft"))}
    test_pairs = [pair("soft_3x128", "hard_3x128", -2.0), pair("hard_3x128", "soft_other", 1.0)]
    stats = {"frames": {"students": {"test": {"groups": {"all": {"systems": {}, "pairs": test_pairs,
                                                                "shares": []}}}}}}
    gains = extra_students(stats, specs)["distillation_gain"]
    by_soft = {g["distilled"]: g for g in gains}
    assert set(by_soft) == {"soft_3x128", "soft_other"} and {g["hard"] for g in gains} == {"hard_3x128"}
    # (hard - soft) = -2 read the other way round: the distilled student is 2 points better
    assert by_soft["soft_3x128"]["frame_acc"]["estimate"] == pytest.approx(2.0)
    assert by_soft["soft_3x128"]["frame_acc"]["low"] == pytest.approx(1.5)
    assert by_soft["soft_other"]["frame_acc"]["estimate"] == pytest.approx(1.0)
    students = {name: {**spec, "kept_frame_acc": None, "dev_frame_acc": None, "test_frame_acc": None,
                       "test_wer": None} for name, spec in specs.items()}
    md = "\n".join(markdown._students_md({"students": students, "distillation_gain": gains, "cost": {},
                                        "gain_kept": {}}))
    assert "| 3x128 | 1,000 | hard_3x128 | soft_3x128 | +2.00 [+1.50, +2.50] | **yes** | - | no |" in md
    assert "| 3x128 | 1,000 | hard_3x128 | soft_other | +1.00 [+0.50, +1.50] | **yes** | - | no |" in md


def _records(*finished: str) -> dict[str, dict]:
    return {f"s{i}": {"seconds": 10.0, "finished": f} for i, f in enumerate(finished)}


def test_the_whole_runs_time_counts_install_and_start_up(monkeypatch) -> None:
    """run.sh's clock (started before installing) splits the wall time into install, stages and the rest, but only
    when every stage ran in that invocation: a stage finished before it started means a resumed run."""
    start = datetime(2026, 12, 4, 10, 0, 0, tzinfo=timezone.utc)
    monkeypatch.setenv("ASR_KD_RUN_STARTED", str(int(start.timestamp())))
    monkeypatch.setenv("ASR_KD_INSTALL_SECONDS", "37")
    now = start.timestamp() + 100.0
    after = (start + timedelta(seconds=60)).isoformat()
    assert run_time(_records(after, after), now) == {"wall": 100.0, "install": 37.0, "stages": 20.0,
                                                            "other": 43.0}
    assert run_time(_records(start.isoformat(), after), now) is not None  # finished in the start's second
    assert run_time(_records((start - timedelta(seconds=1)).isoformat(), after), now) is None
    assert run_time({**_records(after), "cost": None}, now) is None  # a stage that never ran
    assert run_time(_records("now"), now) is None
    monkeypatch.delenv("ASR_KD_RUN_STARTED")
    assert run_time(_records(after), now) is None  # not started by run.sh


def test_time_table_adds_install_and_wall_clock_only_for_a_whole_run(workspace: Workspace, monkeypatch) -> None:
    cfg = OmegaConf.create({"report": {"bootstrap_samples": 20, "seed": 0}, "results_dir": None})
    stages = ["tri", "ensemble", "distill", "small_data", "decode", "report"]
    write_report(cfg, workspace, stages)  # the fixture's stages "finished" at no parseable time
    md = (workspace.report / "report.md").read_text()
    assert "Install and start-up are not counted" in md and "whole run, wall clock" not in md
    assert "- whole run, install and start-up included: unknown" in md
    (workspace.stage("report")).mkdir(parents=True, exist_ok=True)
    (workspace.stage("report") / "summary.json").write_text(json.dumps(
        {"stage": "report", "seconds": 999.0, "finished": "2000-01-01T00:00:00+00:00", "summary": {}}))
    started = datetime.now(timezone.utc) - timedelta(seconds=300)
    for stage in stages[:-1]:
        path = workspace.stage(stage) / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "seconds": 50.0,
                                    "finished": (started + timedelta(seconds=200)).isoformat(timespec="seconds")}))
    monkeypatch.setenv("ASR_KD_RUN_STARTED", str(int(started.timestamp())))
    monkeypatch.setenv("ASR_KD_INSTALL_SECONDS", "40")
    write_report(cfg, workspace, stages)
    r = json.loads((workspace.report / "report.json").read_text())
    assert "report" not in r["stage_seconds"]  # its own previous run is not a stage of this one
    run = r["run_seconds"]
    assert run["stages"] == 250.0 and run["install"] == 40.0 and 300.0 <= run["wall"] < 360.0
    assert run["other"] == pytest.approx(run["wall"] - 290.0)
    md = (workspace.report / "report.md").read_text()
    assert "| install (recipes/tools/install.sh) | 40 |" in md
    assert f"| **whole run, wall clock** | **{run['wall']:.0f}** |" in md
    assert f"- whole run, install and start-up included: {run['wall']:.0f} s (5 min " in md
    history = json.loads((workspace.root / "results" / "history.json").read_text())
    assert history[0]["wall_seconds"] == run["wall"]
    results = (workspace.root / "results" / "RESULTS.md").read_text()
    assert "| date | commit | machine | stages s | wall s |" in results


def _add_unlabeled_arm(ws: Workspace) -> None:
    """The transfer stage's outputs: a student on train + 20 untranscribed utterances (dev 59, test 48; dev WER 21,
    test WER 33) and its summary; every model's arg-max on the pool, where the ensemble predicts pdf 0 throughout,
    the baseline agrees on 6 of 10 frames, the distilled models on 8 and 10 of 10."""
    for split, (acc, wer) in {"dev": (59.0, 21.0), "test": (48.0, 33.0)}.items():
        utts = UTTS[split]
        preds = {u: np.array([0] * c + [1] * (FRAMES - c), dtype=np.int32)
                 for u, c in zip(utts, _correct_per_utt(acc, len(utts)))}
        out = ws.eval("distilled_unlabeled", split)
        write_vec_int_ark_scp(preds.items(), out / "pred.ark", out / "pred.scp")
        write_text(ws.decode("distilled_unlabeled", split) / "hyp.txt",
                   {u: ["WRONG"] * e + WORDS[e:] for u, e in zip(utts, _errors_per_utt(wer, len(utts)))})
    out = ws.eval("distilled_unlabeled", "train")
    write_vec_int_ark_scp(((f"r{i:02d}", np.zeros(FRAMES, dtype=np.int32)) for i in range(10)), out / "pred.ark",
                          out / "pred.scp")
    for system, agree in (("ensemble", FRAMES), ("baseline", 6), ("distilled", 8), ("distilled_unlabeled", 10)):
        out = ws.eval(system, "unlabeled")
        write_vec_int_ark_scp(((f"p{i:02d}", np.array([0] * agree + [1] * (FRAMES - agree), dtype=np.int32))
                               for i in range(20)), out / "pred.ark", out / "pred.scp")
    summary = {"temperature": 2.0, "small_data_temperature": 5.0,
               "pool": {"labeled_frames": 100, "unlabeled_frames": 200, "unlabeled_utts": 20, "size": 3.0},
               "models": {"distilled_unlabeled": {"dev": {"all": 59.0}, "test": {"all": 48.0}, "epochs_run": 9}}}
    ws.stage("transfer").mkdir(parents=True)
    (ws.stage("transfer") / "summary.json").write_text(json.dumps({"stage": "transfer", "seconds": 1.0,
                                                                   "finished": "now", "summary": summary}))


def test_the_untranscribed_pool_arm_is_a_second_distilled_row_with_its_share_and_agreement(
        workspace: Workspace) -> None:
    _add_unlabeled_arm(workspace)
    r = collect(workspace, ["ensemble", "small_data", "transfer", "decode"], num_samples=200)
    assert list(r["table1"]) == ["baseline", "ensemble", "distilled"]  # the paper's arm as it is
    row = r["unlabeled"]["row"]
    assert (row["dev_frame_acc"]["estimate"], row["test_frame_acc"]["estimate"]) == (pytest.approx(59.0),
                                                                                      pytest.approx(48.0))
    assert row["test_wer"]["estimate"] == pytest.approx(33.0)
    kept = r["unlabeled"]["gain_kept"]
    assert kept["frames"]["dev"]["share"]["estimate"] == pytest.approx((59 - 50) / (60 - 50))
    assert kept["frames"]["test"]["share"]["estimate"] == pytest.approx((48 - 40) / (50 - 40))
    assert kept["wer"]["test"]["share"]["estimate"] == pytest.approx((40 - 33) / (40 - 30))
    assert r["gain_kept"]["frames"]["dev"]["share"]["estimate"] == pytest.approx(0.8)  # unchanged by the new arm
    # agreement on the pool student's transfer set: train (10 x 10 frames, all pdf 0 like the ensemble) + pool
    fid = r["fidelity"]["transfer"]
    assert fid["distilled_unlabeled"]["estimate"] == pytest.approx(100.0)
    assert fid["baseline"]["estimate"] == pytest.approx(100 * (70 + 120) / 300)
    assert fid["distilled"]["estimate"] == pytest.approx(100 * (90 + 160) / 300)
    assert r["fidelity"]["train"]["distilled"]["estimate"] == pytest.approx(90.0)  # the paper's transfer set
    claims = {(c["claim"], c["metric"], c["group"]): c for c in r["comparisons"]}
    assert claims[("distilled with untranscribed pool vs distilled", "frame accuracy", "dev")]["diff"][
        "estimate"] == pytest.approx(1.0)
    md = "\n".join(markdown.body(r))
    assert "| distilled, transfer set = train + untranscribed pool (3.0x train) | 59.0 [" in md
    assert "| system | train (the paper's transfer set) | train + untranscribed pool | dev | test |" in md
    assert "Target (at least 85% of the frame-accuracy gain kept, the interval's lower end at or above 75%): on dev " \
           "90% [" in md and "**missed**" in md  # test keeps 80%: below the target whatever its interval
    assert "Transfer set: the 100 training frames (soft and hard targets) plus 200 frames of 20 untranscribed" in md
