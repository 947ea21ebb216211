"""The experiment config: every library function's own dataclass, composed into one typed tree for hydra.

Each library module defines the config of its own step (``SynthConfig`` next to ``prepare_synth``, ``TrainConfig``
next to ``train``...); this file only composes them, and holds the few settings that belong to the pipeline
itself (which stage, where, how many jobs, decoding sweeps). It imports no stage code: the pipeline modules
import it, never the other way round. Recipes (``recipes/*/conf/*.yaml``) override fields; the command line
overrides the recipe (``python -m asr_kd.cli --config-dir conf --config-name tiny stage=baseline train.lr=0.002``).
Two fields are hydra config groups: ``corpus`` (one option per corpus of :data:`asr_kd.corpus.registry.CORPORA`:
``corpus=librispeech corpus.source_dir=/data/LS``) and ``model`` (:data:`asr_kd.nn.model.PRESETS`: ``model=paper``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from asr_kd.corpus.registry import CORPORA
from asr_kd.distillation.distill import DistillConfig
from asr_kd.distillation.small_data import SmallDataConfig
from asr_kd.distillation.ensemble import EnsembleConfig
from asr_kd.nn.jobs import JobsConfig
from asr_kd.nn.model import PRESETS, ModelConfig
from asr_kd.distillation.soft_targets import SoftTargetConfig
from asr_kd.distillation.transfer import TransferConfig
from asr_kd.nn.stream import DataConfig
from asr_kd.nn.train import TrainConfig
from decoding.decode import DecodeConfig
from decoding.gmm import MonoConfig, TriConfig
from decoding.graph import GraphConfig
from decoding.lang import LangConfig, LexiconConfig
from decoding.lm import LmConfig
from features.executor import ExecutorConfig
from features.extract import FeatureConfig


@dataclass
class DecodeStageConfig:
    """Hybrid decoding: the decoder's settings plus the acoustic scales tried on dev (the best one is used on test);
    while dev's best is at an end of the scales tried, up to ``extend_edges`` more steps beyond it are tried
    (:func:`decoding.decode.search_scale`)."""

    decoder: DecodeConfig = field(default_factory=DecodeConfig)
    acoustic_scales: list[float] = field(default_factory=lambda: [0.05, 0.08, 0.1, 0.15])
    extend_edges: int = 3
    systems: list[str] = field(
        default_factory=lambda: ["baseline", "ensemble", "distilled", "distilled_unlabeled", "small_hard",
                                 "small_soft", "small_soft_baseline", "small_soft_unlabeled"])


@dataclass
class DecodeDataConfig:
    """``stage=decode_data decode_data.dir=/path/to/data``: which dir, which systems, under what name.

    ``systems`` empty means every system the experiment has trained (the GMM and each DNN system it decoded);
    ``name`` defaults to the dir's own name and becomes ``data/<name>`` and ``exp/decode/<system>/<name>``.
    """

    dir: str | None = None
    systems: list[str] = field(default_factory=list)
    name: str | None = None


@dataclass
class StudentConfig:
    """One extra student (``students.<name>`` of a research config): the experiment's model, training and
    distillation settings with these overrides. ``targets``: ``soft`` (distilled from the ensemble) or ``hard``;
    ``budget``: ``converge`` (until its dev criterion stops it) or ``member`` (at most a member's epochs);
    ``size_sweep``: the student is a point of the report's accuracy-against-cost curves (an ablation of the
    objective is not)."""

    targets: str = "soft"
    budget: str = "converge"
    size_sweep: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportConfig:
    """How the report's confidence intervals are drawn (paired bootstrap over utterances)."""

    bootstrap_samples: int = 1000
    seed: int = 0


@dataclass
class ExperimentConfig:
    """One whole experiment, corpus to report."""

    stage: str = "all"  # which stages cli.py runs: all, one, or 'a,b,c' (run.sh: those in range); "list" prints them
    force: bool = False  # redo a stage even if its .done marker exists, training its models from the start
    debug: bool = False  # show the full traceback of an input error instead of its one-line message
    work_dir: str = "."  # data/ and exp/ go below it
    results_dir: str | None = None  # where the report publishes RESULTS.md (None: <work_dir>/results)
    nj: int = 2  # parallel jobs for CPU stages (Kaldi's nj); never changes a result
    # Where the CPU stages' units run (synthesis, features, GMM training and alignment, decoding):
    # executor.backend=local, nj processes on this machine; or executor.backend=dask with
    # executor.scheduler=tcp://host:8786 (or a scheduler file), or executor.cluster.system=slurm|sge|pbs to start the
    # workers as batch jobs. Never changes a result (docs/cluster.md).
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    # torchrun ranks for the stages whose work splits into independent shares (members, temperatures, students, the
    # 3% models, the soft targets' frames): each rank does its share alone. On a CPU, 2 single-thread processes
    # train ~1.5x faster than one 2-thread process; on GPUs, one rank per GPU. Part of what a result is a function
    # of: a rank computes with 1 thread, and float sums in another thread count round differently. With
    # jobs.backend=submitit the independent models go out as batch jobs instead, one per model (jobs.* below).
    procs: int = 1
    # Where the stages of independent models train them: jobs.backend=ranks, procs torchrun ranks (the default); or
    # jobs.backend=submitit, one batch job per model on Slurm (jobs.partition=gpu jobs.gpus_per_job=1 ...), or on
    # this machine with jobs.cluster=local. A job computes as a rank does: never changes a result (docs/cluster.md).
    jobs: JobsConfig = field(default_factory=JobsConfig)
    device: str = "auto"  # auto | cpu | cuda: where the DNNs compute (asr_kd.nn.device.select_device)
    corpus: Any = MISSING  # a config group: one option per registered corpus
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
    data: DataConfig = field(default_factory=DataConfig)  # frames in memory, or streamed from disk in shuffle buffers
    train: TrainConfig = field(default_factory=TrainConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    soft_targets: SoftTargetConfig = field(default_factory=SoftTargetConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # ``train`` overrides for every model trained on the ensemble's soft targets (the sweep's students and the soft
    # students of a research config; not the 3% models, which have their own schedule): soft targets do not overfit
    # the way hard targets do, so they may earn another schedule, chosen on dev (see asr_kd.nn.train, "plateau").
    student_train: dict[str, Any] = field(default_factory=lambda: {})
    small_data: SmallDataConfig = field(default_factory=SmallDataConfig)
    # Distillation on untranscribed audio (the corpus's data/unlabeled: corpus.unlabeled_hours of the built-in
    # corpus, corpus.unlabeled_dir of your own, corpus.unlabeled_parts of LibriSpeech) beside the training set.
    transfer: TransferConfig = field(default_factory=TransferConfig)
    students: dict[str, StudentConfig] = field(default_factory=lambda: {})  # research configs (the class has a
    # field named "dict", hence no default_factory=dict): ablations, size sweeps
    decode: DecodeStageConfig = field(default_factory=DecodeStageConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    decode_data: DecodeDataConfig = field(default_factory=DecodeDataConfig)  # stage=decode_data: a new data dir


def register() -> None:
    """Make the schema, the corpora and the model presets known to hydra
    (``defaults: [asr_kd, {corpus: synth}, {model: small}, _self_]``)."""
    cs = ConfigStore.instance()
    cs.store(name="asr_kd", node=ExperimentConfig)
    for name, corpus in CORPORA.items():
        cs.store(group="corpus", name=name, node=corpus.config)
    for name, preset in PRESETS.items():
        cs.store(group="model", name=name, node=preset)
