"""Stage time and memory against corpus size: the line through the runs and what it predicts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from asr_kd.pipeline.report.growth import fit_line, growth, read_run, write_growth
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
    runs = [read_run(_run(tmp_path / f"w{h}", h, {"ensemble": 100 + 50 * h, "decode": 160.0},
                          {"ensemble": 400 + 200 * h, "decode": 900.0})) for h in (2.0, 0.5, 1.0)]
    g = growth(runs)
    assert g["train_hours"] == [0.5, 1.0, 2.0]  # sorted by size
    ens = g["stages"]["ensemble"]
    assert ens["seconds"]["points"] == [125.0, 150.0, 200.0]
    assert ens["seconds"]["per_hour"] == pytest.approx(50.0) and ens["seconds"]["at"]["960"] == pytest.approx(48100)
    assert ens["peak_memory_mb"]["at"]["2000"] == pytest.approx(400400)
    dec = g["stages"]["decode"]
    assert not dec["scales_with_train"] and dec["seconds"]["at"] == {"960": None, "2000": None}
    md = write_growth(runs, tmp_path / "out", "cmd") and (tmp_path / "out" / "GROWTH.md").read_text()
    assert "| ensemble | 125 | 150 | 200 | +50.0 | 48,100 | 100,100 |" in md
    assert "| decode | 160 | 160 | 160 | +0.0 | not from these runs | not from these runs |" in md
    assert (tmp_path / "out" / "growth.png").stat().st_size > 1000


def test_growth_needs_two_sizes_and_a_corpus_record(tmp_path: Path) -> None:
    one = read_run(_run(tmp_path / "a", 1.0, {"baseline": 5.0}, {}))
    with pytest.raises(ValueError, match="two or more corpus sizes"):
        growth([one, one])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="corpus stage summary"):
        read_run(tmp_path / "empty")
