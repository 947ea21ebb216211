"""Where every stage reads and writes: the on-disk layout of one experiment, in one place.

Stages and the report never build paths by hand; they ask a :class:`Workspace`. That keeps the layout documented
in ARCHITECTURE.md true, gives every artifact one name, and lets a user point any stage at another work dir.
Library functions below the pipeline take explicit paths and name only the files inside the directory they are
given (an ensemble its ``memberNN/``, a trainer its ``model.pt``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Workspace:
    """Paths of one experiment, rooted at ``root`` (Kaldi's recipe directory: data/ and exp/ below it)."""

    root: Path

    # ------------------------------------------------------------------------------------------------ data/
    @property
    def corpus(self) -> Path:
        """Where the corpus stage writes: one Kaldi data dir per split, plus ``local/`` (extra LM text)."""
        return self.root / "data"

    def data(self, split: str) -> Path:
        return self.corpus / split

    @property
    def local(self) -> Path:
        return self.corpus / "local"

    @property
    def lm_extra(self) -> Path:
        """Extra LM text a corpus may provide (never holds a dev/test sentence)."""
        return self.local / "lm_extra.txt"

    @property
    def lm_extra_used(self) -> Path:
        """The part of the extra LM text an experiment uses when it uses only the first sentences."""
        return self.local / "lm_extra.used.txt"

    @property
    def dict_dir(self) -> Path:
        return self.local / "dict"

    @property
    def lm_dir(self) -> Path:
        """ARPA LM and the text it was trained on."""
        return self.local / "lm"

    @property
    def lang(self) -> Path:
        return self.corpus / "lang"

    @property
    def lang_test(self) -> Path:
        return self.corpus / "lang_test"

    @property
    def perplexity(self) -> Path:
        """Dev/test perplexity and OOV rate of the LM in ``lang_test``."""
        return self.lang_test / "perplexity.json"

    def fbank(self, split: str) -> Path:
        return self.corpus / "fbank" / split

    def mfcc(self, split: str) -> Path:
        return self.corpus / "mfcc" / split

    # ------------------------------------------------------------------------------------------- exp/: HMM side
    @property
    def mono(self) -> Path:
        return self.root / "exp" / "mono"

    @property
    def tri(self) -> Path:
        return self.root / "exp" / "tri1"

    @property
    def model(self) -> Path:
        """The triphone GMM-HMM (transition model + GMMs) every graph and decoder uses."""
        return self.tri / "final.mdl"

    def ali(self, split: str) -> Path:
        return self.root / "exp" / "tri1_ali" / split

    @property
    def pdf_counts(self) -> Path:
        """Per-pdf frame counts of the training alignments (the priors of hybrid decoding)."""
        return self.ali("train") / "pdf_counts"

    @property
    def num_pdfs_file(self) -> Path:
        return self.ali("train") / "num_pdfs"

    @property
    def graph(self) -> Path:
        return self.tri / "graph"

    # ------------------------------------------------------------------------------------------ exp/: DNN side
    @property
    def dnn_root(self) -> Path:
        return self.root / "exp" / "dnn"

    def frame_archive(self, split: str) -> Path:
        """A split's aligned frames in shards on disk (features after CMVN, targets), for the DNN stages that stream
        it; written by the first of them and kept (:mod:`asr_kd.nn.archive`)."""
        return self.root / "exp" / "frames" / split

    @property
    def numerics(self) -> Path:
        """The run's training arithmetic (bf16 autocast or float32) as its first training stage measured it."""
        return self.root / "exp" / "numerics.json"

    def dnn(self, system: str) -> Path:
        """Directory of one trained network system: baseline, ensemble (its members inside), distilled."""
        return self.dnn_root / system

    @property
    def distill_sweep(self) -> Path:
        """One student per temperature (``T<T>/``) and ``sweep.json``; the best on dev is copied to ``distilled``."""
        return self.dnn_root / "distill_sweep"

    @property
    def small_data(self) -> Path:
        """The 3% experiment: ``small_hard/``, ``small_soft/``, the subset list and ``small_data.json``."""
        return self.dnn_root / "small_data"

    @property
    def transfer(self) -> Path:
        """Students distilled on transfer sets with untranscribed audio, one directory each (stage transfer)."""
        return self.dnn_root / "transfer"

    def soft_targets_share(self, teacher: str, temperature: float, rank: int) -> Path:
        """One torchrun rank's share of :meth:`soft_targets` before rank 0 joins them (removed afterwards)."""
        return self.soft_targets(teacher, temperature).with_name(f"{teacher}_T{temperature:g}.rank{rank}")

    @property
    def students(self) -> Path:
        """The extra students of a research config, one directory each (:meth:`student`)."""
        return self.dnn_root / "students"

    def student(self, name: str) -> Path:
        """An extra student of a research config (ablations, size sweeps)."""
        return self.students / name

    def soft_targets(self, teacher: str, temperature: float) -> Path:
        return self.root / "exp" / "soft_targets" / f"{teacher}_T{temperature:g}"

    def eval(self, system: str, split: str) -> Path:
        """Frame-level predictions of a system on a split (``pred.scp``) and its frame accuracy (``acc.json``)."""
        return self.root / "exp" / "eval" / system / split

    def decode(self, system: str, split: str) -> Path:
        """Hypotheses and scoring files of one system on one split (``hyp.txt errs-* recogs-* wer.json``)."""
        return self.root / "exp" / "decode" / system / split

    def decode_tuning(self, system: str) -> Path:
        """The acoustic scale a system chose on dev, and its dev WER at every scale tried."""
        return self.root / "exp" / "decode" / system / "tuning.json"

    def decode_data_summary(self, name: str) -> Path:
        """What decoding a new data dir ``name`` gave for every system (``stage=decode_data``)."""
        return self.root / "exp" / "decode" / f"{name}.json"

    # ---------------------------------------------------------------------------------------- exp/: bookkeeping
    @property
    def report(self) -> Path:
        return self.root / "exp" / "report"

    @property
    def results(self) -> Path:
        """Where the report publishes RESULTS.md when the run names no results dir of its config."""
        return self.root / "results"

    def jobs(self, stage: str) -> Path:
        """The batch jobs that trained stage ``stage``'s models (``jobs.backend=submitit``): scripts, logs."""
        return self.root / "exp" / "jobs" / stage

    def stage(self, name: str) -> Path:
        """Per-stage bookkeeping: ``.done`` marker, ``log.txt``, resolved ``config.yaml``, ``summary.json``."""
        return self.root / "exp" / "stages" / name
