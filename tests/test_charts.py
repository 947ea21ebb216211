"""The report's charts draw the report's own numbers: each figure is caught before it is saved and its bars, lines,
points and error bars are read back against the dict it was drawn from."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure

from asr_kd.pipeline.report import charts


def _iv(estimate: float, low: float, high: float) -> dict:
    return {"estimate": estimate, "low": low, "high": high}


REPORT = {
    "table1": {"baseline": {"dev_frame_acc": _iv(55.0, 54.0, 56.5), "test_frame_acc": _iv(50.0, 48.0, 52.0),
                            "test_wer": _iv(30.0, 28.0, 33.0)},
               "ensemble": {"dev_frame_acc": _iv(60.0, 59.0, 61.0), "test_frame_acc": _iv(56.0, 55.0, 57.5),
                            "test_wer": _iv(25.0, 23.5, 27.0)},
               "distilled": {"dev_frame_acc": _iv(58.5, 57.0, 59.0), "test_frame_acc": _iv(54.0, 52.5, 55.0),
                             "test_wer": _iv(27.0, 25.0, 28.0)}},
    "temperature_sweep": {"1.0": {"dev": {"all": 57.0}}, "2.0": {"dev": {"all": 58.5}},
                          "5.0": {"dev": {"all": 58.0}}},
    "ensemble_size": {"dev": {"by_size": [55.5, 58.0, 60.0], "distilled": 58.5, "distilled_worth": 2}},
    "comparisons": [
        {"claim": "ensemble vs baseline", "metric": "frame accuracy", "group": "dev", "diff": _iv(5.0, 4.0, 6.5),
         "significant": True},
        {"claim": "distilled vs ensemble", "metric": "WER", "group": "test", "diff": _iv(2.0, -0.5, 4.0),
         "significant": False}],
    "students": {"hard_1x16": {"targets": "hard", "size_sweep": True, "test_frame_acc": _iv(40.0, 38.0, 41.0),
                               "test_wer": _iv(45.0, 42.0, 47.0)},
                 "soft_1x16": {"targets": "soft", "size_sweep": True, "test_frame_acc": _iv(44.0, 43.0, 46.0),
                               "test_wer": _iv(41.0, 40.0, 43.0)},
                 "ablation": {"targets": "soft", "size_sweep": False, "test_frame_acc": _iv(10.0, 9.0, 11.0),
                              "test_wer": _iv(90.0, 89.0, 91.0)}},
    "cost": {"baseline": {"cpu1_rtf": 0.004}, "ensemble": {"cpu1_rtf": 0.04}, "distilled": {"cpu1_rtf": 0.005},
             "hard_1x16": {"cpu1_rtf": 0.0002}, "soft_1x16": {"cpu1_rtf": 0.0003}, "ablation": {"cpu1_rtf": 0.001}},
}


@pytest.fixture()
def drawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Figure]]:
    """The figures the charts would have saved, in order (closed afterwards)."""
    figures: list[Figure] = []
    monkeypatch.setattr(charts, "_save", lambda fig, out: figures.append(fig))
    yield figures
    for fig in figures:
        plt.close(fig)


def _errorbars(ax: Axes) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(data points, error-bar segments) of each errorbar call on ``ax``."""
    return [(c.lines[0].get_xydata() if c.lines[0] is not None else None, list(c.lines[2][0].get_segments()))
            for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_table1_bars_are_the_test_estimates_with_their_intervals(drawn: list[Figure]) -> None:
    charts.table1(REPORT, Path("unused.png"))
    for ax, key in zip(drawn[0].axes, ("test_frame_acc", "test_wer")):
        cells = [REPORT["table1"][s][key] for s in ("baseline", "ensemble", "distilled")]
        bars = next(c for c in ax.containers if isinstance(c, BarContainer))
        assert [b.get_height() for b in bars] == [c["estimate"] for c in cells]
        (_, segments), = _errorbars(ax)
        assert [(s[0][1], s[1][1]) for s in segments] == [(c["low"], c["high"]) for c in cells]


def test_temperature_sweep_is_the_dev_column_beside_the_baselines_and_ensembles_dev(drawn: list[Figure]) -> None:
    charts.temperature_sweep(REPORT, Path("unused.png"))
    student, baseline, ensemble = drawn[0].axes[0].lines
    assert list(student.get_xdata()) == [1.0, 2.0, 5.0] and list(student.get_ydata()) == [57.0, 58.5, 58.0]
    assert list(baseline.get_ydata()) == [55.0, 55.0] and list(ensemble.get_ydata()) == [60.0, 60.0]


def test_ensemble_size_curve_crosses_the_distilled_models_line(drawn: list[Figure]) -> None:
    charts.ensemble_size(REPORT, Path("unused.png"))
    curve, distilled, baseline = drawn[0].axes[0].lines
    assert list(curve.get_xdata()) == [1, 2, 3] and list(curve.get_ydata()) == [55.5, 58.0, 60.0]
    assert list(distilled.get_ydata()) == [58.5, 58.5] and list(baseline.get_ydata()) == [55.0, 55.0]


def test_comparisons_are_each_claims_difference_and_interval(drawn: list[Figure]) -> None:
    charts.comparisons(REPORT, Path("unused.png"))
    bars = _errorbars(drawn[0].axes[0])
    assert [tuple(points[0]) for points, _ in bars] == [(5.0, 0), (2.0, 1)]
    assert [(s[0][0][0], s[0][1][0]) for _, s in bars] == [(4.0, 6.5), (-0.5, 4.0)]


def test_cost_accuracy_puts_each_size_sweep_student_at_its_measured_time(drawn: list[Figure]) -> None:
    """One point per size-sweep student and per member-shaped model (x: one-thread RTF), sorted by time; the ablation
    (not part of the size sweep) is left out; the ensemble is its own point."""
    charts.cost_accuracy(REPORT, Path("unused.png"))
    for ax, key in zip(drawn[0].axes, ("test_frame_acc", "test_wer")):
        hard, soft, ensemble = _errorbars(ax)
        rows = REPORT["students"]
        assert [tuple(p) for p in hard[0]] == [(0.0002, rows["hard_1x16"][key]["estimate"]),
                                               (0.004, REPORT["table1"]["baseline"][key]["estimate"])]
        assert [tuple(p) for p in soft[0]] == [(0.0003, rows["soft_1x16"][key]["estimate"]),
                                               (0.005, REPORT["table1"]["distilled"][key]["estimate"])]
        assert [tuple(p) for p in ensemble[0]] == [(0.04, REPORT["table1"]["ensemble"][key]["estimate"])]
        student, distilled = rows["soft_1x16"][key], REPORT["table1"]["distilled"][key]
        assert [(s[0][1], s[1][1]) for s in soft[1]] == [(student["low"], student["high"]),
                                                         (distilled["low"], distilled["high"])]
