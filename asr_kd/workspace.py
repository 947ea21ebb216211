"""Where every stage reads and writes: the on-disk layout of one experiment, in one place.

Stages never build paths by hand; they ask a :class:`Workspace`. That keeps the layout documented in
ARCHITECTURE.md true, and lets a user point any stage at another work dir.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Workspace:
    """Paths of one experiment, rooted at ``root`` (Kaldi's recipe directory: data/ and exp/ below it)."""

    root: Path

    def data(self, split: str) -> Path:
        return self.root / "data" / split

    @property
    def local(self) -> Path:
        return self.root / "data" / "local"

    @property
    def dict_dir(self) -> Path:
        return self.local / "dict"

    @property
    def lang(self) -> Path:
        return self.root / "data" / "lang"

    @property
    def lang_test(self) -> Path:
        return self.root / "data" / "lang_test"

    def fbank(self, split: str) -> Path:
        return self.root / "data" / "fbank" / split

    def mfcc(self, split: str) -> Path:
        return self.root / "data" / "mfcc" / split

    @property
    def mono(self) -> Path:
        return self.root / "exp" / "mono"

    @property
    def tri(self) -> Path:
        return self.root / "exp" / "tri1"

    def ali(self, split: str) -> Path:
        return self.root / "exp" / "tri1_ali" / split

    @property
    def graph(self) -> Path:
        return self.tri / "graph"

    def dnn(self, system: str) -> Path:
        return self.root / "exp" / "dnn" / system

    def soft_targets(self, name: str) -> Path:
        return self.root / "exp" / "soft_targets" / name

    def decode(self, system: str, split: str) -> Path:
        return self.root / "exp" / "decode" / system / split

    @property
    def report(self) -> Path:
        return self.root / "exp" / "report"

    def stage(self, name: str) -> Path:
        """Per-stage bookkeeping: ``.done`` marker, ``log.txt``, resolved ``config.yaml``, ``summary.json``."""
        return self.root / "exp" / "stages" / name
