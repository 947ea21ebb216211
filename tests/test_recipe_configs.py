"""Every config a recipe ships (recipes/*/conf/*.yaml) composes into the typed schema, every dataclass in it
validates, and every extra student's overrides name real fields: a typo in a research config fails here, in
seconds, not an hour into its run."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asr_kd.conf.schema import register
from asr_kd.pipeline.experiment import student_train_config
from asr_kd.pipeline.students import student_configs

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (REPO / "recipes").glob("*/conf/*.yaml"))


def _check(path: Path, work: Path) -> None:
    register()
    with initialize_config_dir(str(path.parent), version_base="1.3"):
        cfg = compose(path.stem, overrides=[f"work_dir={work}"])
    OmegaConf.to_object(cfg)  # builds every dataclass: their __post_init__ checks run
    student_train_config(cfg)  # how the distill stage's students train
    for name in cfg.students:
        student_configs(cfg, name)  # the settings the students stage trains it with


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.parent.name}/{p.stem}" for p in CONFIGS])
def test_recipe_config_composes_and_validates(path: Path, tmp_path: Path) -> None:
    _check(path, tmp_path)


def test_a_misspelt_student_override_is_caught(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    shutil.copy(REPO / "recipes" / "synth" / "conf" / "tiny.yaml", conf)
    (conf / "bad.yaml").write_text("defaults:\n  - tiny\n  - _self_\n\n"
                                   "students:\n  s: {train: {newbob_strat_impr: 0.002}}\n")
    _check(conf / "tiny.yaml", tmp_path)
    with pytest.raises(Exception, match="newbob_strat_impr"):
        _check(conf / "bad.yaml", tmp_path)


def test_soft_students_train_with_student_train_and_hard_ones_with_train(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    shutil.copy(REPO / "recipes" / "synth" / "conf" / "tiny.yaml", conf)
    (conf / "mix.yaml").write_text(
        "defaults:\n  - tiny\n  - _self_\n\ntrain: {lr_schedule: newbob, patience: 2}\n"
        "student_train: {lr_schedule: plateau, patience: 3}\n"
        "students:\n  soft: {}\n  soft_member: {train: {patience: 5}}\n  hard: {targets: hard}\n")
    register()
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("mix", overrides=[f"work_dir={tmp_path}"])
    assert (student_train_config(cfg).lr_schedule, student_train_config(cfg).patience) == ("plateau", 3)
    assert cfg.train.lr_schedule == "newbob"  # members and the baseline keep theirs
    schedules = {name: (student_configs(cfg, name)[1].lr_schedule, student_configs(cfg, name)[1].patience)
                 for name in cfg.students}
    assert schedules == {"soft": ("plateau", 3), "soft_member": ("plateau", 5), "hard": ("newbob", 2)}
