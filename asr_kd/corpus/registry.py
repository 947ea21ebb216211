"""The corpora a recipe can run on, by name: adding one is a module with ``prepare_<name>`` and its config
dataclass, plus one line here (and a recipe dir under ``recipes/``); see ARCHITECTURE.md.

Every preparer has the signature ``prepare_<name>(out_dir: Path, cfg: <Config>, nj: int) -> CorpusSummary``: it
writes Kaldi data dirs ``out_dir/{train,dev,test}`` (and may provide extra LM text), and returns what they hold.
The hydra config group ``corpus`` has one option per entry (``corpus=librispeech corpus.source_dir=/data/LS``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr_kd.corpus.kaldi_dir import KaldiDirConfig, prepare_kaldi
from asr_kd.corpus.librispeech import LibriSpeechConfig, prepare_librispeech
from asr_kd.corpus.summary import CorpusSummary
from asr_kd.corpus.synth import SynthConfig, prepare_synth


@dataclass(frozen=True)
class Corpus:
    """A corpus recipe: its config dataclass and the function that prepares it."""

    config: type
    prepare: Callable[[Path, Any, int], CorpusSummary]


CORPORA: dict[str, Corpus] = {
    "synth": Corpus(SynthConfig, prepare_synth),
    "librispeech": Corpus(LibriSpeechConfig, prepare_librispeech),
    "kaldi": Corpus(KaldiDirConfig, prepare_kaldi),
}


def corpus_for(config_type: type) -> tuple[str, Corpus]:
    """The registry entry whose config dataclass is ``config_type`` (the type of ``cfg.corpus``)."""
    for name, corpus in CORPORA.items():
        if corpus.config is config_type:
            return name, corpus
    raise ValueError(f"no corpus is registered for config {config_type.__name__}; known: {', '.join(CORPORA)}")
