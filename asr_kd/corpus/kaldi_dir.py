"""Kaldi data directories: writing them, validating them, importing them.

A data dir is the contract between the corpus and every later stage: ``wav.scp text utt2spk spk2utt utt2dur``,
one utterance per line, sorted in C-locale (byte) order, utterance ids prefixed by their speaker id so that
sorting by utterance also groups speakers. Kaldi tools (and our features/CMVN code) silently misbehave on an
unsorted or inconsistent dir, so :func:`validate_data_dir` checks everything up front and names the file and
line of the first problem.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from asr_kd.corpus.summary import CorpusSummary, SplitSummary
from features.atomic import atomic_dir, write_text_atomic
from features.audio import load_audio
from features.errors import InputError
from features.tables import c_sorted, read_table, write_table

logger = logging.getLogger(__name__)

UNLABELED = "unlabeled"
"""The corpus split of untranscribed speech, a transfer set for distillation (``data/unlabeled``: ``wav.scp``,
``utt2spk``, ``utt2dur``, never ``text``)."""

REQUIRED_FILES = ("wav.scp", "text", "utt2spk")


def spk2utt_from_utt2spk(utt2spk: Mapping[str, str]) -> dict[str, list[str]]:
    """Invert utt2spk; speakers and their utterances in C order."""
    spk2utt: dict[str, list[str]] = {}
    for utt in c_sorted(utt2spk):
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    return {spk: spk2utt[spk] for spk in c_sorted(spk2utt)}


def write_spk2utt(data_dir: Path, utt2spk: Mapping[str, str]) -> None:
    """Write ``spk2utt`` (derived, never hand-edited) next to ``utt2spk``."""
    spk2utt = spk2utt_from_utt2spk(utt2spk)
    write_text_atomic(data_dir / "spk2utt", "".join(f"{s} {' '.join(u)}\n" for s, u in spk2utt.items()))


def write_data_dir(
    data_dir: Path,
    wav_scp: Mapping[str, str],
    text: Mapping[str, str] | None,
    utt2spk: Mapping[str, str],
    utt2dur: Mapping[str, float] | None = None,
) -> None:
    """Write the core files of a data dir (each atomically, all sorted); ``text`` None: untranscribed audio."""
    data_dir.mkdir(parents=True, exist_ok=True)
    write_table(data_dir / "wav.scp", wav_scp)
    if text is not None:
        write_table(data_dir / "text", text)
    write_table(data_dir / "utt2spk", utt2spk)
    write_spk2utt(data_dir, utt2spk)
    if utt2dur is not None:
        write_table(data_dir / "utt2dur", {u: f"{d:.4f}" for u, d in utt2dur.items()})


# ---------------------------------------------------------------------------------------------------------
# Validation
@dataclass
class ValidationReport:
    """What a valid data dir holds; OOV words are reported here rather than raised (they map to <UNK>)."""

    data_dir: Path
    num_utts: int
    num_speakers: int
    num_words: int  # transcript tokens
    hours: float | None  # from the audio headers (or utt2dur when audio is not checked); None if unknown
    oov_counts: dict[str, int] = field(default_factory=dict)  # word -> occurrences, most frequent first
    converted: int = 0  # utterances whose audio an import rewrote as 16 kHz mono wav

    def split_summary(self) -> SplitSummary:
        """The corpus-level description of this dir (what the report shows for any corpus)."""
        return SplitSummary(self.num_utts, self.num_speakers, None if self.hours is None else round(self.hours, 4),
                            self.num_words)

    @property
    def oov_rate(self) -> float:
        return sum(self.oov_counts.values()) / max(1, self.num_words)

    def summary(self) -> str:
        hours = "?" if self.hours is None else f"{self.hours:.2f}"
        text = (f"{self.data_dir}: {self.num_utts} utts, {self.num_speakers} speakers, {hours} h, "
                f"{len(self.oov_counts)} OOV types ({100 * self.oov_rate:.2f}% of tokens)")
        if self.oov_counts:
            text += ": " + " ".join(list(self.oov_counts)[:20]) + (" ..." if len(self.oov_counts) > 20 else "")
        return text


def _read(data_dir: Path, name: str, *, allow_empty_value: bool = False) -> list[tuple[str, str]]:
    path = data_dir / name
    if not path.is_file():
        raise InputError(f"required file {name} is missing", data_dir)
    return read_table(path, allow_empty_value=allow_empty_value)


def _check_same_ids(ref_name: str, ref: list[tuple[str, str]], other_name: str, other: list[tuple[str, str]],
                    data_dir: Path) -> None:
    """Raise for the first id present in one table and not the other, naming the id, file and line."""
    ref_ids = {k for k, _ in ref}
    other_ids = {k for k, _ in other}
    for lineno, (key, _) in enumerate(other, start=1):
        if key not in ref_ids:
            raise InputError(f"utterance {key!r} is not in {ref_name}", data_dir / other_name, lineno)
    for lineno, (key, _) in enumerate(ref, start=1):
        if key not in other_ids:
            raise InputError(f"utterance {key!r} is missing from {other_name}", data_dir / ref_name, lineno)


def audio_seconds(spec: str, where: tuple[Path, int]) -> float:
    """Duration of one ``wav.scp`` entry; raises InputError (file, line) if it is missing or unreadable.

    Files are checked through their header (cheap on a 1000-hour corpus); commands are run and decoded.
    """
    path, line = where
    if spec.endswith("|"):
        return len(load_audio(spec, 16000, where=where)) / 16000.0
    if not Path(spec).is_file():
        raise InputError(f"audio file {spec!r} does not exist", path, line)
    try:
        info = sf.info(spec)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise InputError(f"cannot read audio {spec!r}: {e}", path, line) from e
    if info.frames <= 0 or info.samplerate <= 0:
        raise InputError(f"audio {spec!r} holds no samples", path, line)
    return info.frames / info.samplerate


def validate_data_dir(data_dir: Path, lexicon_words: set[str] | None = None, check_audio: bool = True,
                      require_text: bool = True) -> ValidationReport:
    """Check a Kaldi data dir completely; raise InputError at the first problem, naming file and line.

    Checks: required files (wav.scp, text, utt2spk) exist; every table is well formed, sorted (C locale) and
    free of duplicates; the three tables hold the same utterances; no transcript is empty; speakers are sorted
    along utterances (Kaldi's requirement that utterance ids start with their speaker id); spk2utt, if present,
    agrees with utt2spk; utt2dur, if present, is numeric and covers the same utterances; and, with
    ``check_audio``, every wav.scp entry exists and is readable audio. Words missing from ``lexicon_words``
    are counted in the report. With ``require_text=False`` a dir without ``text`` is valid (recordings to
    decode, or a transfer set to distil on) is valid, and so is one without ``utt2spk`` (each utterance its own
speaker); a ``text`` that is present is checked as always.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError("data dir does not exist", data_dir)
    if (data_dir / "segments").exists():
        raise InputError("segments files are not supported: give one recording per utterance", data_dir / "segments")
    wav = _read(data_dir, "wav.scp")
    has_text = require_text or (data_dir / "text").exists()
    text = _read(data_dir, "text", allow_empty_value=True) if has_text else []
    # Untranscribed audio may come as wav.scp alone: then every utterance is its own speaker (per-utterance CMVN).
    utt2spk = _read(data_dir, "utt2spk") if require_text or (data_dir / "utt2spk").exists() else \
        [(utt, utt) for utt, _ in wav]
    if has_text:
        _check_same_ids("wav.scp", wav, "text", text, data_dir)
    _check_same_ids("wav.scp", wav, "utt2spk", utt2spk, data_dir)

    oov: Counter[str] = Counter()
    num_words = 0
    for lineno, (utt, transcript) in enumerate(text, start=1):
        words = transcript.split()
        if not words:
            raise InputError(f"empty transcript for utterance {utt!r}", data_dir / "text", lineno)
        num_words += len(words)
        if lexicon_words is not None:
            oov.update(w for w in words if w not in lexicon_words)

    prev_spk = ""
    for lineno, (utt, spk) in enumerate(utt2spk, start=1):
        if len(spk.split()) != 1:
            raise InputError(f"expected '<utt> <speaker>', got {utt} {spk!r}", data_dir / "utt2spk", lineno)
        if spk.encode() < prev_spk.encode():
            raise InputError(f"speaker {spk!r} of {utt!r} sorts before {prev_spk!r}: utterance ids must start "
                             "with their speaker id", data_dir / "utt2spk", lineno)
        prev_spk = spk
    speakers = dict(utt2spk)
    if (data_dir / "spk2utt").exists():
        expected = spk2utt_from_utt2spk(speakers)
        rows = read_table(data_dir / "spk2utt")
        for lineno, (spk, utts) in enumerate(rows, start=1):
            if expected.get(spk) != utts.split():
                raise InputError(f"speaker {spk!r} does not match utt2spk (regenerate spk2utt from utt2spk)",
                                 data_dir / "spk2utt", lineno)
        if len(rows) != len(expected):
            missing = next(s for s in expected if s not in dict(rows))
            raise InputError(f"speaker {missing!r} of utt2spk is missing", data_dir / "spk2utt")

    seconds: float | None = None
    if (data_dir / "utt2dur").exists():
        durs = read_table(data_dir / "utt2dur")
        _check_same_ids("wav.scp", wav, "utt2dur", durs, data_dir)
        seconds = 0.0
        for lineno, (utt, value) in enumerate(durs, start=1):
            try:
                seconds += float(value)
            except ValueError:
                raise InputError(f"duration {value!r} of {utt!r} is not a number",
                                 data_dir / "utt2dur", lineno) from None
    if check_audio:
        seconds = sum(audio_seconds(spec, (data_dir / "wav.scp", lineno))
                      for lineno, (_, spec) in enumerate(tqdm(wav, desc=f"checking {data_dir.name}", unit="utt",
                                                              disable=len(wav) < 1000), start=1))
    report = ValidationReport(
        data_dir=data_dir, num_utts=len(wav), num_speakers=len(set(speakers.values())), num_words=num_words,
        hours=None if seconds is None else seconds / 3600.0, oov_counts=dict(oov.most_common()),
    )
    logger.info("%s", report.summary())
    return report


# ---------------------------------------------------------------------------------------------------------
# Import
def _needs_conversion(spec: str, sample_rate: int) -> bool:
    if spec.endswith("|"):
        return True
    info = sf.info(spec)
    return info.samplerate != sample_rate or info.channels != 1 or info.format not in ("WAV", "FLAC")


def write_clean_dir(
    staging: Path, dst: Path, wav: Mapping[str, str], text: Mapping[str, str] | None, utt2spk: Mapping[str, str],
    sample_rate: int, where: Mapping[str, tuple[Path, int]],
) -> int:
    """Write a data dir into ``staging`` (the temporary twin of ``dst``); return how many files were converted.

    Audio already at ``sample_rate`` and mono stays where it is (its absolute path goes into wav.scp); other
    audio (other rates, several channels, commands) is decoded, resampled and written as 16-bit wav under
    ``dst/wav``. ``where`` gives, per utterance, the (file, line) to blame if its audio is unreadable.
    """
    (staging / "wav").mkdir(parents=True, exist_ok=True)
    new_wav: dict[str, str] = {}
    utt2dur: dict[str, float] = {}
    converted = 0
    for utt in tqdm(c_sorted(wav), desc=f"importing {dst.name}", unit="utt", disable=len(wav) < 1000):
        spec = wav[utt]
        if not spec.endswith("|"):
            spec = str(Path(spec).resolve())
            utt2dur[utt] = audio_seconds(spec, where[utt])  # raises InputError (file, line) if unreadable
        if _needs_conversion(spec, sample_rate):
            audio = load_audio(spec, sample_rate, where=where[utt])
            # Resampling can overshoot full scale a little; clip rather than let 16-bit samples wrap.
            sf.write(staging / "wav" / f"{utt}.wav", np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16",
                     format="WAV")
            spec = str((dst / "wav" / f"{utt}.wav").resolve())
            utt2dur[utt] = len(audio) / sample_rate
            converted += 1
        new_wav[utt] = spec
    upper = None if text is None else {u: " ".join(t.upper().split()) for u, t in text.items()}
    write_data_dir(staging, new_wav, upper, utt2spk, utt2dur)
    return converted


IMPORT_MARKER = ".imported"  # marks a directory written by an import, which a re-import may replace


def refuse_foreign_dir(dst: Path) -> None:
    """Never replace a directory that this module did not write (user data is not ours to delete)."""
    if dst.exists() and any(dst.iterdir()) and not (dst / IMPORT_MARKER).exists():
        raise InputError(f"exists and was not written by an import (no {IMPORT_MARKER}); choose a new directory", dst)


def import_kaldi_dir(src: Path, dst: Path, sample_rate: int = 16000, require_text: bool = True) -> ValidationReport:
    """Validate ``src`` and write a clean copy to ``dst``: sorted tables, spk2utt, utt2dur, UPPERCASE text,
    and audio at ``sample_rate`` mono (resampled into ``dst/wav`` only where needed).

    ``src`` is only read. ``dst`` appears complete or not at all (built in a temporary sibling); an existing
    ``dst`` is replaced only if it is an earlier import. ``require_text=False`` admits untranscribed audio
    (``dst`` then has no ``text`` either).
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if src == dst:
        raise InputError("import destination is the source directory", dst)
    validate_data_dir(src, check_audio=True, require_text=require_text)
    refuse_foreign_dir(dst)
    wav = dict(read_table(src / "wav.scp"))
    where = {utt: (src / "wav.scp", lineno) for lineno, utt in enumerate(wav, start=1)}
    with atomic_dir(dst) as staging:
        text = dict(read_table(src / "text")) if (src / "text").exists() else None
        utt2spk = dict(read_table(src / "utt2spk")) if (src / "utt2spk").exists() else {u: u for u in wav}
        converted = write_clean_dir(staging, dst, wav, text, utt2spk, sample_rate, where)
        (staging / IMPORT_MARKER).write_text(f"imported from {src}\n")
    report = validate_data_dir(dst, check_audio=False, require_text=require_text)
    report.converted = converted
    return report


# ---------------------------------------------------------------------------------------------------------
# The "kaldi" corpus: a user's own data dirs
@dataclass
class KaldiDirConfig:
    """Your own corpus as Kaldi data dirs ``source_dir/{train,dev,test}`` (wav.scp, text, utt2spk), and optionally
    untranscribed audio to distil on: ``unlabeled_dir``, a data dir with ``wav.scp`` (``utt2spk`` if you have
    speakers, ``text`` ignored), imported as ``data/unlabeled``."""

    source_dir: str | None = None
    sample_rate: int = 16000
    splits: tuple[str, ...] = ("train", "dev", "test")
    unlabeled_dir: str | None = None


def prepare_kaldi(out_dir: Path, cfg: KaldiDirConfig, nj: int = 1) -> CorpusSummary:
    """Validate and import ``cfg.source_dir/<split>`` into ``out_dir/<split>`` for every split.

    Every source dir is validated before anything is written (a bad line stops the import with its file and
    line, and nothing prepared earlier is touched); audio at another rate is resampled into ``out_dir/<split>/wav``.
    ``nj`` is accepted for the common corpus signature; imports run in this process.
    """
    if not cfg.source_dir:
        raise InputError("corpus=kaldi needs corpus.source_dir=<folder holding train/ dev/ test/ data dirs>")
    source = Path(cfg.source_dir)
    for split in cfg.splits:
        validate_data_dir(source / split, check_audio=True)
    if cfg.unlabeled_dir:
        validate_data_dir(Path(cfg.unlabeled_dir), check_audio=True, require_text=False)
    reports = {split: import_kaldi_dir(source / split, Path(out_dir) / split, cfg.sample_rate) for split in cfg.splits}
    if cfg.unlabeled_dir:
        reports[UNLABELED] = import_unlabeled_dir(Path(cfg.unlabeled_dir), Path(out_dir) / UNLABELED, cfg.sample_rate)
    return CorpusSummary("kaldi", {s: r.split_summary() for s, r in reports.items()},
                         details={"source_dir": str(source.resolve()),
                                  "converted": {s: r.converted for s, r in reports.items()}})


def import_unlabeled_dir(src: Path, dst: Path, sample_rate: int = 16000) -> ValidationReport:
    """Import ``src`` as untranscribed audio: :func:`import_kaldi_dir` without its ``text``, which a transfer set
    must not carry (a transcript there would be a label the student never sees, and a confusing one to leave)."""
    report = import_kaldi_dir(src, dst, sample_rate, require_text=False)
    text = Path(dst) / "text"
    if text.exists():
        logger.info("%s: transcripts of an unlabeled set ignored and removed from the import", src)
        text.unlink()
        report.num_words = 0
    return report
