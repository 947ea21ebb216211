"""Stage time and memory against corpus size: the line through the runs and what it predicts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from asr_kd.pipeline.report.growth import fit_line, growth, memory_model, read_at, read_run, write_growth
from asr_kd.pipeline.workspace import Workspace
from features.errors import InputError


def _run(root: Path, hours: float, seconds: dict[str, float], mb: dict[str, float]) -> Path:
    """A work dir whose stage records say the corpus has ``hours`` of training audio and what each stage took."""
    ws = Workspace(root)
    splits = {"train": {"hours": hours}, "dev": {"hours": 0.1}, "test": {"hours": 0.3}}
    for name, s in {"corpus": 10.0, **seconds}.items():
        ws.stage(name).mkdir(parents=True, exist_ok=True)
        record = {"stage": name, "seconds": s, "finished": "x", "peak_memory_mb": mb.get(name),
                  "summary": {"splits": splits} if name == "corpus" else {}}
        (ws.stage(name) / "summary.json").write_text(json.dumps(record))
    return root


def test_fit_line_is_least_squares() -> None:
    assert fit_line([1.0, 2.0, 4.0], [3.0, 5.0, 9.0]) == pytest.approx((1.0, 2.0))
    intercept, slope = fit_line([0.0, 1.0, 2.0], [0.0, 2.0, 1.0])  # not on a line: the least-squares one
    assert (intercept, slope) == pytest.approx((0.5, 0.5))
    assert fit_line([1.0, 1.0], [2.0, 4.0]) == (3.0, 0.0)


def test_growth_extrapolates_training_stages_and_not_the_fixed_size_ones(tmp_path: Path) -> None:
    runs = [read_run(_run(tmp_path / f"w{h}", h, {"ensemble": 100 + 50 * h, "decode": 160.0, "mono": 20 * h,
                                                   "features": 10 * h, "graph": 30.0},
                          {"ensemble": 400 + 200 * h, "decode": 900.0, "mono": 1000 + 300 * h,
                           "features": 500 + 10 * h, "graph": 700.0})) for h in (2.0, 0.5, 1.0)]
    g = growth(runs)
    assert g["train_hours"] == [0.5, 1.0, 2.0]  # sorted by size
    ens = g["stages"]["ensemble"]
    assert ens["seconds"]["points"] == [125.0, 150.0, 200.0]
    assert ens["seconds"]["per_hour"] == pytest.approx(50.0) and ens["seconds"]["at"]["960"] == pytest.approx(48100)
    # in memory up to one buffer (40M frames, 111 h): the line; beyond it, what two buffers' frames cost on the line
    buffer_hours = 40e6 / 360_000
    assert ens["peak_memory_mb"]["at"] == pytest.approx({"960": 400 + 2 * 200 * buffer_hours,
                                                         "2000": 400 + 2 * 200 * buffer_hours})
    # a GMM stage's shards stop its growth: the largest run's peak plus 8 bytes a frame of alignments
    assert g["stages"]["mono"]["peak_memory_mb"]["at"]["960"] == pytest.approx(1600 + 8 * 360_000 * 958 / 2**20)
    assert g["stages"]["features"]["peak_memory_mb"]["at"]["960"] == 520  # a batch at a time: the largest run
    assert g["stages"]["graph"]["peak_memory_mb"]["at"]["960"] is None  # dev and test: not from these runs
    # streamed soft targets: one archive shard (1M frames) at a time
    assert read_at("soft_targets", memory_model("soft_targets"), 400.0, 200.0, 2.0, [800.0], 960.0, 40_000_000,
                   1_000_000) == pytest.approx(400 + 200 * 1e6 / 360_000)
    dec = g["stages"]["decode"]
    assert not dec["scales_with_train"] and dec["seconds"]["at"] == {"960": None, "2000": None}
    md = write_growth(runs, tmp_path / "out", "cmd") and (tmp_path / "out" / "GROWTH.md").read_text()
    assert "| ensemble | 125 | 150 | 200 | +50.0 | 48,100 | 100,100 | the line |" in md
    assert "| ensemble | 500 | 600 | 800 | +200.0 | 44,844 | 44,844 | the line, up to two shuffle buffers |" in md
    assert "| decode | 160 | 160 | 160 | +0.0 | not from these runs | not from these runs | - |" in md
    assert (tmp_path / "out" / "growth.png").stat().st_size > 1000


def test_no_extrapolation_falls_below_what_was_measured() -> None:
    """Noisy points with a falling line predict the largest measured value, not less."""
    assert read_at("ensemble", "buffers", 3000.0, -150.0, 1.0, [2900.0, 2850.0], 960.0, 40_000_000) == 2900.0
    assert read_at("distill", "line", 300.0, -10.0, 1.0, [290.0, 280.0], 2000.0, 40_000_000) == 290.0


def test_growth_needs_two_sizes_and_a_corpus_record(tmp_path: Path) -> None:
    one = read_run(_run(tmp_path / "a", 1.0, {"baseline": 5.0}, {}))
    with pytest.raises(ValueError, match="two or more corpus sizes"):
        growth([one, one])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="corpus stage summary"):
        read_run(tmp_path / "empty")
