"""The experiment config: every stage's own dataclass, composed into one typed tree for hydra.

Each module defines the config of its own stage (``SynthConfig`` next to ``prepare_synth``, ``TrainConfig``
next to ``train``...); this file only composes them, so a field is documented where it is used. Recipes
(``recipes/*/conf/*.yaml``) override fields; the command line overrides the recipe
(``python -m asr_kd.cli --config-dir conf --config-name tiny stage=baseline train.lr=0.002``).
Model shapes are a hydra config group (``model=paper``, ``model=small``...) built from
:data:`asr_kd.model.PRESETS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from asr_kd.corpus.synth import SynthConfig
from asr_kd.decode_data import DecodeDataConfig
from asr_kd.distill import DistillConfig, SmallDataConfig
from asr_kd.ensemble import EnsembleConfig
from asr_kd.model import PRESETS, ModelConfig
from asr_kd.soft_targets import SoftTargetConfig
from asr_kd.train import TrainConfig
from decoding.decode import DecodeConfig
from decoding.gmm import MonoConfig, TriConfig
from decoding.graph import GraphConfig
from decoding.lang import DictConfig as LexiconConfig
from decoding.lang import LangConfig
from decoding.lm import LmConfig
from features.extract import FeatureConfig


@dataclass
class CorpusConfig:
    """Which corpus the recipe runs on: the built-in TTS corpus, a LibriSpeech copy, or Kaldi data dirs."""

    name: str = "synth"  # synth | librispeech | kaldi
    synth: SynthConfig = field(default_factory=SynthConfig)
    # librispeech: the folder holding train-clean-100/ ...; kaldi: a folder with train/ dev/ test/ data dirs
    source_dir: str | None = None
    librispeech_parts: dict[str, str] = field(
        default_factory=lambda: {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"})


@dataclass
class DecodeStageConfig:
    """Hybrid decoding: the decoder's settings plus the acoustic scales tried on dev (the best one is used on test)."""

    decoder: DecodeConfig = field(default_factory=DecodeConfig)
    acoustic_scales: list[float] = field(default_factory=lambda: [0.05, 0.08, 0.1, 0.15])
    systems: list[str] = field(
        default_factory=lambda: ["baseline", "ensemble", "distilled", "small_hard", "small_soft"])


@dataclass
class ExperimentConfig:
    """One whole experiment, corpus to report."""

    stage: str = "all"  # which stage cli.py runs (run.sh passes one at a time)
    force: bool = False  # redo a stage even if its .done marker exists
    work_dir: str = "."  # data/ and exp/ go below it
    nj: int = 2  # parallel jobs for CPU stages (Kaldi's nj)
    device: str = "auto"  # auto | cpu | cuda
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    fbank: FeatureConfig = field(default_factory=lambda: FeatureConfig(kind="fbank"))
    mfcc: FeatureConfig = field(default_factory=lambda: FeatureConfig(kind="mfcc"))
    lm_extra_sentences: int = -1  # sentences of the corpus's extra LM text used beside train text (-1: all, 0: none)
    dict: LexiconConfig = field(default_factory=LexiconConfig)
    lang: LangConfig = field(default_factory=LangConfig)
    lm: LmConfig = field(default_factory=LmConfig)
    mono: MonoConfig = field(default_factory=MonoConfig)
    tri: TriConfig = field(default_factory=TriConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    soft_targets: SoftTargetConfig = field(default_factory=SoftTargetConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    small_data: SmallDataConfig = field(default_factory=SmallDataConfig)
    decode: DecodeStageConfig = field(default_factory=DecodeStageConfig)
    decode_data: DecodeDataConfig = field(default_factory=DecodeDataConfig)  # stage=decode_data: a new data dir


def register() -> None:
    """Make the schema and the model presets known to hydra (``defaults: [asr_kd, {model: small}]``)."""
    cs = ConfigStore.instance()
    cs.store(name="asr_kd", node=ExperimentConfig)
    for name, preset in PRESETS.items():
        cs.store(group="model", name=name, node=preset)
