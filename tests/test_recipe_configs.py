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
from asr_kd.pipeline.students import student_configs

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (REPO / "recipes").glob("*/conf/*.yaml"))


def _check(path: Path, work: Path) -> None:
    register()
    with initialize_config_dir(str(path.parent), version_base="1.3"):
        cfg = compose(path.stem, overrides=[f"work_dir={work}"])
    OmegaConf.to_object(cfg)  # builds every dataclass: their __post_init__ checks run
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
