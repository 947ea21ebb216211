"""The committed results of every config agree with themselves: each derived number recomputed from the numbers it
derives from (:mod:`results_consistency`), and the check itself catches a wrong number of each kind."""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from results_consistency import check

REPO = Path(__file__).resolve().parent.parent
COMMITTED = sorted(REPO.glob("recipes/*/results/*/results.json"))


def _load(results: Path) -> tuple[dict, list[dict]]:
    return json.loads(results.read_text()), json.loads((results.parent / "history.json").read_text())


def test_every_config_with_results_is_checked() -> None:
    assert {p.parent.name for p in COMMITTED} >= {"tiny", "research", "wide"}


@pytest.mark.parametrize("results", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_results_are_consistent(results: Path) -> None:
    found = check(*_load(results))
    assert found.problems == []
    assert found.checked >= 250  # every section a report holds was checked, not just a few numbers


def _test_argmax(r: dict) -> None:
    """Record a temperature other than dev's arg-max: the one test prefers among the rest, as a choice made on test
    records where test disagrees with dev."""
    sweep = r["temperature_sweep"]
    others = [t for t in sweep if float(t) != r["best_temperature"]]
    r["best_temperature"] = float(max(others, key=lambda t: sweep[t]["test"]["all"]))


def _ties_to_highest(r: dict) -> None:
    """A sweep whose lowest and highest temperatures tie at its best dev accuracy, read with the highest-T tie rule."""
    sweep = r["temperature_sweep"]
    best = max(t["dev"]["all"] for t in sweep.values())
    lowest, highest = min(sweep, key=float), max(sweep, key=float)
    sweep[lowest]["dev"]["all"] = sweep[highest]["dev"]["all"] = best
    r["best_temperature"] = float(highest)


def _nudge(*keys: str | int, by: float = 0.01) -> Callable[[dict], None]:
    def mutate(r: dict) -> None:
        d = r
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] += by
    return mutate


def _mean_of_ratios_share(r: dict) -> None:
    """The 3% recovery replaced by a mean of per-group ratios: what an average of per-utterance shares drifts to."""
    groups = r["small_data_recovered"]["small_soft"]["frames"]
    mean = sum(g["share"]["estimate"] for g in groups.values()) / len(groups)
    groups["test"]["share"]["estimate"] = mean


@pytest.mark.parametrize(("mutate", "message"), [
    (_test_argmax, "best_temperature: the sweep's dev arg-max"),
    (_ties_to_highest, "best_temperature: the sweep's dev arg-max"),
    (_nudge("gain_kept", "frames", "test", "share", "estimate"), "gain_kept frames test: "),
    (_nudge("gain_kept", "wer", "dev", "share", "estimate"), "gain_kept wer dev: "),
    (_mean_of_ratios_share, "3% recovery small_soft frames test: "),
    (_nudge("table1", "distilled", "dev_frame_acc", "estimate", by=0.02),
     "Table 1 distilled dev vs the sweep at T="),
    (_nudge("small_data", "systems", "small_soft", "temperature", by=3.0), "3% small_soft temperature"),
    (_nudge("ensemble_members", "test", "member_mean", by=0.001), "ensemble members test mean"),
    (_nudge("cost", "ensemble", "params", by=1), "ensemble params"),
    (_nudge("cost", "gmm", "params", by=1), "gmm parameters"),
    (_nudge("comparisons", 0, "diff", "estimate", by=0.001), "claim ensemble vs baseline frame accuracy dev"),
])
def test_the_check_finds_a_wrong_number(mutate: Callable[[dict], None], message: str) -> None:
    r, history = _load(REPO / "recipes/synth/results/tiny/results.json")
    r = copy.deepcopy(r)
    mutate(r)
    problems = check(r, history).problems
    assert any(p.startswith(message) for p in problems), problems


@pytest.mark.parametrize(("mutate", "message"), [
    (_nudge("ensemble_size", "dev", "distilled_worth", by=1), "ensemble_size dev: members the distilled model"),
    (_nudge("students", "soft_1x16", "kept_frame_acc", "estimate"), "student soft_1x16 share of the ensemble's test"),
    (_nudge("cost", "soft_1x16", "macs_per_frame", by=16), "student soft_1x16 MACs per frame"),
    (_nudge("distillation_gain", 0, "frame_acc", "estimate"), "distillation gain hard_weight_0 - hard_plateau"),
    (_nudge("fidelity", "dev", "diff", "estimate"), "fidelity dev: distilled - baseline"),
])
def test_the_check_finds_a_wrong_number_of_the_newer_sections(mutate: Callable[[dict], None], message: str) -> None:
    r, history = _load(REPO / "recipes/synth/results/research/results.json")
    mutate(r)
    problems = check(r, history).problems
    assert any(p.startswith(message) for p in problems), problems


def test_the_history_row_must_be_this_runs_tables() -> None:
    r, history = _load(REPO / "recipes/synth/results/tiny/results.json")
    history[0]["headline"]["kept_frames_dev"], history[0]["headline"]["kept_frames_test"] = \
        history[0]["headline"]["kept_frames_test"], history[0]["headline"]["kept_frames_dev"]
    assert [p.split(":")[0] for p in check(r, history).problems] == ["history headline kept_frames_dev",
                                                                     "history headline kept_frames_test"]


def test_a_report_without_its_tables_is_a_problem() -> None:
    r, _ = _load(REPO / "recipes/synth/results/tiny/results.json")
    del r["gain_kept"]
    assert check(r).problems == ["sections missing: gain_kept"]
