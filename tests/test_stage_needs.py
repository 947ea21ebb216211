"""What each stage declares it reads from the earlier stages (``NEEDS``): declared for every stage and every shipped
config, made by an earlier stage, the right files for a config's choices, and, on the shared CI experiment, each
written by the very stage the declaration names (while that stage ran)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from asr_kd.conf.schema import StudentConfig, register
from asr_kd.pipeline.stages import NEEDS, STAGES, stage_needs
from asr_kd.pipeline.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (REPO / "recipes").glob("*/conf/*.yaml"))


def _config(path: Path, work: Path, *overrides: str) -> DictConfig:
    register()
    with initialize_config_dir(str(path.parent), version_base="1.3"):
        return compose(path.stem, overrides=[f"work_dir={work}", *overrides])


def _with_students(tmp_path: Path, students: str) -> DictConfig:
    """The CI config with exactly these extra ``students`` (YAML) instead of its own."""
    cfg = _config(REPO / "recipes" / "synth" / "conf" / "ci.yaml", tmp_path)
    cfg.students = {name: OmegaConf.merge(OmegaConf.structured(StudentConfig), spec)
                    for name, spec in OmegaConf.create(students).items()}
    return cfg


def _needs(name: str, cfg: DictConfig, ws: Workspace) -> set[tuple[Path, str]]:
    return {(need.path, need.stage) for need in stage_needs(name, cfg, ws)}


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.parent.name}/{p.stem}" for p in CONFIGS])
def test_every_need_is_a_file_of_the_work_dir_made_by_an_earlier_stage(path: Path, tmp_path: Path) -> None:
    """So a run.sh range that holds both stages makes the need before the stage that reads it starts."""
    assert list(NEEDS) == list(STAGES)
    ws = Workspace(tmp_path)
    cfg = _config(path, tmp_path)
    for number, name in enumerate(STAGES):
        for need in stage_needs(name, cfg, ws):
            assert need.path.is_relative_to(tmp_path), (name, need)
            assert need.number == list(STAGES).index(need.stage) < number, (name, need)
    assert stage_needs("corpus", cfg, ws) == [] and stage_needs("report", cfg, ws) == []


def test_needs_follow_the_config_and_the_systems_trained_so_far(tmp_path: Path) -> None:
    ci = REPO / "recipes" / "synth" / "conf" / "ci.yaml"
    ws = Workspace(tmp_path)
    members = {(ws.dnn("ensemble") / f"member{m:02d}" / "model.pt", "ensemble") for m in range(3)}
    baseline = (ws.dnn("baseline") / "model.pt", "baseline")

    cfg = _config(ci, tmp_path)  # the ensemble teaches the 3% model; two temperatures in the distill sweep
    assert members | {baseline} <= _needs("small_data", cfg, ws)
    assert {(ws.soft_targets("ensemble", t) / "meta.json", "soft_targets") for t in (1.0, 2.0)} <= _needs(
        "distill", cfg, ws)
    teacher_baseline = _needs("small_data", _config(ci, tmp_path, "small_data.teacher=baseline"), ws)
    assert baseline in teacher_baseline and not members & teacher_baseline

    assert _needs("students", _with_students(tmp_path, "{}"), ws) == set()  # no extra students: nothing read
    assert members <= _needs("students", cfg, ws)  # the CI config's soft student is taught by the members
    hard = _needs("students", _with_students(tmp_path, "{h: {targets: hard}}"), ws)
    assert (ws.num_pdfs_file, "tri") in hard and not members & hard
    for students in ("{s: {targets: soft}}", "{h: {targets: hard, budget: member}}"):
        assert members <= _needs("students", _with_students(tmp_path, students), ws), students

    assert _needs("transfer", cfg, ws) == set()  # no untranscribed audio: nothing to distil on, nothing read
    (ws.data("unlabeled")).mkdir(parents=True)
    (ws.data("unlabeled") / "wav.scp").write_text("")
    pool = _needs("transfer", cfg, ws)
    assert members | {(ws.distill_sweep / "sweep.json", "distill"), (ws.fbank("unlabeled") / "feats.scp", "features"),
                      (ws.small_data / "small_data.json", "small_data")} <= pool
    assert (ws.small_data / "small_data.json", "small_data") not in _needs(
        "transfer", _config(ci, tmp_path, "transfer.small_data=false"), ws)

    graph = (ws.graph / "HCLG.fst", "graph")
    assert graph not in _needs("decode", cfg, ws)  # nothing to decode yet: the graph is not read
    ws.dnn("baseline").mkdir(parents=True)
    (ws.dnn("baseline") / "model.pt").write_bytes(b"")
    assert graph in _needs("decode", cfg, ws)


@pytest.mark.slow
def test_every_need_is_written_by_the_stage_it_names(ci_experiment: Path) -> None:
    """Each need of each stage was written while the stage it names ran: after that stage saved its config, before
    its .done marker."""
    ws = Workspace(ci_experiment)
    cfg = _config(REPO / "recipes" / "synth" / "conf" / "ci.yaml", ci_experiment)
    checked = set()
    for name in STAGES:
        for need in stage_needs(name, cfg, ws):
            started = (ws.stage(need.stage) / "config.yaml").stat().st_mtime_ns
            done = (ws.stage(need.stage) / ".done").stat().st_mtime_ns
            assert need.path.exists() and started <= need.path.stat().st_mtime_ns <= done, (name, need)
            checked.add(need.stage)
    assert checked == {"corpus", "features", "lang", "mono", "tri", "graph", "baseline", "ensemble", "soft_targets",
                       "distill", "small_data"}  # the last two: what the transfer stage reads
