"""Training arithmetic chosen by measurement (asr_kd.nn.numerics): bf16 autocast only where native *and* faster, one
choice per run, recorded, read back by every later stage and rank."""
from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch

from asr_kd.nn import numerics
from asr_kd.bench import random_frame_set
from asr_kd.nn.model import ModelConfig
from asr_kd.nn.numerics import BF16_MIN_SPEEDUP, choose, load_or_choose, measure_bf16_speedup, recorded
from asr_kd.nn.train import TrainConfig, train

CPU = torch.device("cpu")


@pytest.fixture()
def native(monkeypatch):
    """Pretend the CPU computes bf16 natively (set ``native.value = False`` for one that does not)."""

    class Flag:
        value = True

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: Flag.value)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return Flag


def _never() -> float:
    raise AssertionError("measured although the choice needs no measurement")


@pytest.mark.parametrize("speedup, bf16", [(0.645, False), (1.19, False), (BF16_MIN_SPEEDUP, True), (1.46, True)])
def test_auto_uses_bf16_only_when_measured_faster(native, speedup: float, bf16: bool) -> None:
    chosen = choose(None, CPU, lambda: speedup)
    assert chosen.bf16 is bf16 and chosen.speedup == pytest.approx(speedup)
    assert f"{speedup:.2f}x float32's speed" in chosen.describe()
    assert chosen.describe().startswith("bf16 autocast (" if bf16 else "float32 (")


def test_explicit_settings_and_cpus_without_bf16_measure_nothing(native) -> None:
    assert choose(True, CPU, _never).bf16 is True
    assert choose(False, CPU, _never).bf16 is False
    native.value = False
    for setting in (None, True, False):
        assert choose(setting, CPU, _never) == numerics.Numerics(False, "no native bf16 on cpu")


def test_a_run_measures_once_and_every_later_stage_reads_the_record(native, tmp_path: Path) -> None:
    record = tmp_path / "exp" / "numerics.json"
    calls = []
    first = load_or_choose(record, None, CPU, lambda: calls.append(1) or 0.64)
    assert first.bf16 is False and calls == [1]
    saved = json.loads(record.read_text())["cpu"]
    assert saved["bf16"] is False and saved["speedup"] == 0.64 and saved["threads"] == torch.get_num_threads()
    # a later stage (another process, another day) gets the same choice without timing anything
    assert load_or_choose(record, None, CPU, _never) == first
    assert recorded(record, None, CPU) == first
    # explicit settings do not read or write the record
    assert load_or_choose(record, True, CPU, _never).bf16 is True
    assert json.loads(record.read_text()).keys() == {"cpu"}
    assert recorded(tmp_path / "none.json", None, CPU) is None


def _stage(record: str, counter: str, out: str) -> None:
    """One rank entering a training stage at the same moment as another (a slow measurement widens the race)."""
    torch.cpu._is_avx512_bf16_supported = lambda: True

    def measure() -> float:
        with open(counter, "a") as f:
            f.write("x")
        time.sleep(0.5)
        return 1.5

    Path(out).write_text(json.dumps(load_or_choose(Path(record), None, CPU, measure).bf16))


def test_ranks_starting_together_measure_once(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    record, counter = tmp_path / "numerics.json", tmp_path / "calls"
    procs = [ctx.Process(target=_stage, args=(str(record), str(counter), str(tmp_path / f"out{r}")))
             for r in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert counter.read_text() == "x"
    assert [json.loads((tmp_path / f"out{r}").read_text()) for r in range(3)] == [True, True, True]


def test_measured_speedup_is_the_best_bf16_round_over_the_best_float32_round(monkeypatch) -> None:
    """The two arithmetics are timed in alternation on the model's real batch, and each keeps its best round: a slow
    round of either (other work on the machine) does not decide the ratio."""
    frames_per_s = {False: iter([100.0, 130.0, 90.0]), True: iter([150.0, 120.0, 195.0])}
    steps = []

    def timed(model, batches, device, bf16, steps_, warmup_steps=3, loss_fn=None) -> float:
        x, batch = batches()
        steps.append((bf16, steps_, tuple(x.shape), int(batch.targets.max()) < 10, model.num_classes))
        return next(frames_per_s[bf16])

    monkeypatch.setattr(numerics, "step_frames_per_s", timed)
    numerics._measured.cache_clear()
    try:
        ratio = measure_bf16_speedup(ModelConfig(hidden_layers=1, hidden_dim=16), 10, 32, CPU, steps=2, rounds=3)
    finally:
        numerics._measured.cache_clear()  # no fake timing stays cached for later tests
    assert ratio == pytest.approx(195.0 / 130.0)
    assert [s[0] for s in steps] == [False, True] * 3
    assert set(s[1:] for s in steps) == {(2, (32, 1040), True, 10)}


@pytest.mark.parametrize("speedup", [0.64, 1.46])
def test_train_decides_an_open_setting_once_and_writes_it(native, monkeypatch, tmp_path: Path,
                                                           speedup: float) -> None:
    """A library call with bf16 left open trains in the measured choice and says so in metrics.json; autocast
    really runs (bf16 logits reach the loss) exactly when bf16 was chosen."""
    monkeypatch.setattr(numerics, "measure_bf16_speedup", lambda *a, **k: speedup)
    cfg = ModelConfig(hidden_layers=1, hidden_dim=16)
    seen = []

    def loss_fn(logits, batch):
        seen.append(logits.dtype)
        return torch.nn.functional.cross_entropy(logits.float(), batch.targets)

    res = train(cfg, TrainConfig(epochs=1, batch_size=64, progress=False, lr_schedule="constant"),
                random_frame_set(cfg, 256, 10, CPU), random_frame_set(cfg, 64, 10, CPU), tmp_path, 10,
                loss_fn=loss_fn, device="cpu")
    assert json.loads(res.metrics_path.read_text())["train_cfg"]["bf16"] is (speedup >= BF16_MIN_SPEEDUP)
    assert set(seen) == {torch.bfloat16 if speedup >= BF16_MIN_SPEEDUP else torch.float32}


def test_the_loop_refuses_an_undecided_setting(tmp_path: Path) -> None:
    from asr_kd.nn.train import Trainee, build_members, fit

    cfg = ModelConfig(hidden_layers=1, hidden_dim=8)
    sets = random_frame_set(cfg, 64, 5, CPU), random_frame_set(cfg, 32, 5, CPU)
    with pytest.raises(ValueError, match="undecided"):
        fit(Trainee(build_members(cfg, 5, [0])[0]), TrainConfig(epochs=1, progress=False), *sets, [0],
            tmp_path / "c.pt", CPU)
