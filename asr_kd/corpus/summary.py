"""What every corpus preparer returns: the same summary whatever the corpus, so the report can describe any of them.

A preparer (``prepare_<corpus>(out_dir, cfg, nj) -> CorpusSummary``, see :mod:`asr_kd.corpus.registry`) writes
Kaldi data dirs ``out_dir/{train,dev,test}`` and says what is in them: per split the utterances, speakers, hours
and transcript words, the extra LM text it provides (if any), and free-form corpus-specific facts (``details``:
voices and augmentation for the synthetic corpus, resampled files for an import...).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SplitSummary:
    """One Kaldi data dir of the corpus."""

    utts: int
    speakers: int
    hours: float | None  # None when the audio was not measured
    words: int


@dataclass
class CorpusSummary:
    """A prepared corpus: its splits, the extra LM text it brings (relative to the corpus dir) and its details."""

    name: str
    splits: dict[str, SplitSummary]
    lm_text: str | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CorpusSummary:
        splits = {k: SplitSummary(**v) for k, v in data["splits"].items()}
        return cls(data["name"], splits, data.get("lm_text"), dict(data.get("details") or {}))

    def lm_text_path(self, corpus_dir: Path) -> Path | None:
        """Absolute path of the extra LM text, if the corpus provides one."""
        return None if self.lm_text is None else Path(corpus_dir) / self.lm_text
