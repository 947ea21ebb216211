"""The stage mechanics: .done markers make re-runs idempotent, failures leave no marker, config/log/summary saved,
a stage whose needs are missing does not start."""
from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from asr_kd.pipeline.runner import Need, git_commit, machine_description, machine_kind, read_summary, run_stage
from asr_kd.pipeline.stages import stage_trains
from asr_kd.pipeline.workspace import Workspace
from features.errors import InputError


def test_stage_runs_once_and_records(tmp_path):
    ws = Workspace(tmp_path)
    cfg = OmegaConf.create({"x": 1, "y": "${x}"})
    calls = []

    def stage(c, w):
        calls.append(1)
        logging.getLogger("asr_kd.test").info("working on %s", w.root)
        return {"answer": 42}

    assert run_stage("demo", stage, cfg, ws) == {"answer": 42}
    assert run_stage("demo", stage, cfg, ws) is None  # skipped: .done exists
    assert len(calls) == 1
    d = ws.stage("demo")
    assert (d / ".done").exists()
    assert OmegaConf.load(d / "config.yaml").y == 1  # the resolved config is saved
    assert "working on" in (d / "log.txt").read_text()
    rec = read_summary(ws, "demo")
    assert rec["summary"] == {"answer": 42} and rec["seconds"] >= 0
    assert run_stage("demo", stage, cfg, ws, force=True) == {"answer": 42}
    assert len(calls) == 2


def test_an_interrupted_training_stage_resumes_and_a_forced_one_trains_from_the_start(tmp_path):
    """What a training stage keeps between attempts (a finished member, a checkpoint) is reused when the stage
    is run again after a failure, and removed when it is forced: a forced stage never hands back old models."""
    ws = Workspace(tmp_path)
    trains = stage_trains("ensemble", ws)
    assert trains == [ws.dnn("ensemble")] and stage_trains("features", ws) == []
    member = ws.dnn("ensemble") / "member00" / "model.pt"
    seen = []

    def ensemble(c, w):
        seen.append(member.exists())
        member.parent.mkdir(parents=True, exist_ok=True)
        member.write_text(f"attempt {len(seen)}")
        if len(seen) == 1:
            raise RuntimeError("killed after member 0")
        return {}

    cfg = OmegaConf.create({})
    with pytest.raises(RuntimeError):
        run_stage("ensemble", ensemble, cfg, ws, trains=trains)
    run_stage("ensemble", ensemble, cfg, ws, trains=trains)  # resumes: member 0 is there
    run_stage("ensemble", ensemble, cfg, ws, force=True, trains=trains)  # redone: member 0 is not
    assert seen == [False, True, False] and member.read_text() == "attempt 3"


def test_failed_stage_leaves_no_marker_and_reruns(tmp_path):
    ws = Workspace(tmp_path)
    cfg = OmegaConf.create({})
    attempts = []

    def flaky(c, w):
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("killed half way")
        return {}

    with pytest.raises(RuntimeError):
        run_stage("flaky", flaky, cfg, ws)
    assert not (ws.stage("flaky") / ".done").exists()
    assert read_summary(ws, "flaky") is None
    assert "killed half way" in (ws.stage("flaky") / "log.txt").read_text()
    run_stage("flaky", flaky, cfg, ws)
    assert (ws.stage("flaky") / ".done").exists()
    assert json.loads((ws.stage("flaky") / "summary.json").read_text())["stage"] == "flaky"


def test_a_stage_missing_a_need_does_not_start_and_names_the_earliest_stage_to_run(tmp_path):
    ws = Workspace(tmp_path)
    made = tmp_path / "made"
    made.write_text("")
    needs = [Need(made, "first", 0), Need(tmp_path / "late", "later", 5), Need(tmp_path / "early", "earlier", 2)]
    calls = []
    with pytest.raises(InputError) as e:
        run_stage("demo", lambda c, w: calls.append(1) or {}, OmegaConf.create({}), ws, needs=needs)
    assert str(e.value) == (f"stage demo needs {tmp_path / 'early'}, which stage 2 (earlier) makes: "
                            "run it first (run.sh --stage 2)")
    assert not calls and not ws.stage("demo").exists()  # nothing started, nothing written

    ws.stage("earlier").mkdir(parents=True)
    (ws.stage("earlier") / ".done").write_text("")  # done, but its output deleted since: a plain re-run skips it
    with pytest.raises(InputError, match=r"marked done but the file is gone, so redo it "
                                         r"\(run.sh --stage 2 --stop-stage 2 force=true\)$"):
        run_stage("demo", lambda c, w: {}, OmegaConf.create({}), ws, needs=needs)


def test_a_done_stage_is_skipped_without_checking_its_needs(tmp_path):
    ws = Workspace(tmp_path)
    assert run_stage("demo", lambda c, w: {}, OmegaConf.create({}), ws) == {}
    assert run_stage("demo", lambda c, w: {}, OmegaConf.create({}), ws, needs=[Need(tmp_path / "gone", "a", 0)]) is None


def test_machine_kind_names_the_kernels_bf16_and_amx(monkeypatch):
    """Results name what they reproduce on and what sets their speed: the CPU's vector kernels, whether it computes
    bf16 natively, and whether it has AMX tiles."""
    import torch

    for avx512_bf16, amx, suffix in ((True, False, "+BF16"), (False, False, ""), (True, True, "+BF16+AMX")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=avx512_bf16: n)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda a=amx: a)
        m = machine_description()
        assert m["bf16_native"] is avx512_bf16 and m["amx"] is amx
        assert m["simd"] == torch.backends.cpu.get_cpu_capability()
        assert machine_kind(m) == f"{m['cpus']} CPUs {m['simd']}{suffix}, GPU {m['gpu']}"
    assert machine_kind({"cpus": 2, "gpu": None}) == "2 CPUs, GPU None"  # a history row without the kernels


def test_git_commit_ignores_the_results_dir_it_publishes_to(tmp_path: Path) -> None:
    """A report rerun after a full run finds the committed results already rewritten: still the clean commit.
    A change to the code, or to results outside the ignored dir, still reads as dirty."""
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "a").mkdir(parents=True)
    (tmp_path / "results" / "a" / "RESULTS.md").write_text("old\n")
    (tmp_path / "results" / "b.md").write_text("old\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    rev = git_commit(tmp_path)
    assert rev and not rev.endswith("+dirty") and rev != "unknown"
    (tmp_path / "results" / "a" / "RESULTS.md").write_text("new\n")
    assert git_commit(tmp_path, ignore=(tmp_path / "results" / "a",)) == rev
    assert git_commit(tmp_path) == rev + "+dirty"
    (tmp_path / "results" / "b.md").write_text("new\n")
    assert git_commit(tmp_path, ignore=(tmp_path / "results" / "a",)) == rev + "+dirty"
    git("checkout", "-q", "--", "results/b.md")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path, ignore=(tmp_path / "results" / "a", Path("/elsewhere"))) == rev + "+dirty"
