"""LibriSpeech (or anything in its layout) as Kaldi data dirs.

Layout: ``<part>/<speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac`` plus one
``<speaker>-<chapter>.trans.txt`` per chapter with lines ``<utt-id> TRANSCRIPT``. As in Kaldi's recipe, the
Kaldi speaker is ``<speaker>-<chapter>``: recording conditions change from chapter to chapter, and per-speaker
CMVN should follow them. LibriSpeech utterance ids already start with that prefix, so sorting is consistent.

16 kHz mono flac files are referenced where they are (no copy of a 100-hour corpus); audio at any other rate is
resampled into ``<dst>/<part>/wav`` (see :func:`asr_kd.corpus.kaldi_dir.write_clean_dir`).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asr_kd.corpus.summary import CorpusSummary
from features.atomic import atomic_dir
from features.errors import InputError

from .kaldi_dir import (
    IMPORT_MARKER,
    UNLABELED,
    ValidationReport,
    refuse_foreign_dir,
    validate_data_dir,
    write_clean_dir,
)

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".flac", ".wav")


def _read_part(part_dir: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str], dict[str, tuple[Path, int]]]:
    """Collect (wav, text, utt2spk, where) for one part; every transcript line must have its audio and back."""
    wav: dict[str, str] = {}
    text: dict[str, str] = {}
    utt2spk: dict[str, str] = {}
    where: dict[str, tuple[Path, int]] = {}
    trans_files = sorted(part_dir.glob("*/*/*.trans.txt"))
    if not trans_files:
        raise InputError("no <speaker>/<chapter>/*.trans.txt files: not a LibriSpeech part", part_dir)
    for trans in trans_files:
        chapter_dir = trans.parent
        speaker = f"{chapter_dir.parent.name}-{chapter_dir.name}"
        audio = {p.stem: p for p in chapter_dir.iterdir() if p.suffix in AUDIO_SUFFIXES}
        with open(trans, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                parts = line.split(maxsplit=1)
                if not parts:
                    raise InputError("empty line", trans, lineno)
                utt = parts[0]
                if len(parts) < 2 or not parts[1].strip():
                    raise InputError(f"empty transcript for utterance {utt!r}", trans, lineno)
                if not utt.startswith(speaker + "-"):
                    raise InputError(f"utterance {utt!r} does not belong to chapter {speaker}", trans, lineno)
                if utt in text:
                    raise InputError(f"duplicate utterance {utt!r}", trans, lineno)
                if utt not in audio:
                    raise InputError(f"no audio {utt}.flac for this transcript line", trans, lineno)
                wav[utt] = str(audio.pop(utt).resolve())
                text[utt] = " ".join(parts[1].split())
                utt2spk[utt] = speaker
                where[utt] = (trans, lineno)
        if audio:
            orphan = min(audio)
            raise InputError(f"audio {audio[orphan].name} has no transcript line ({len(audio)} such files)", trans)
    return wav, text, utt2spk, where


def import_librispeech_parts(src_dir: Path, dst_dir: Path, parts: Sequence[str] | Mapping[str, str],
                            sample_rate: int = 16000) -> dict[str, ValidationReport]:
    """One Kaldi data dir per part: ``dst_dir/<part with '-' as '_'>`` (``dev-clean`` -> ``dev_clean``), or
    ``dst_dir/<name>`` when ``parts`` maps part -> name (a recipe's splits: ``{"dev-clean": "dev"}``).

    Each dir is written atomically and validated, in place (resampled audio lives inside it, so it must not be
    moved afterwards); ``src_dir`` is only read. A destination that exists and is not an earlier import is left
    alone (InputError). Reports are keyed by part.
    """
    src_dir, dst_dir = Path(src_dir).resolve(), Path(dst_dir).resolve()
    reports: dict[str, ValidationReport] = {}
    names = dict(parts) if isinstance(parts, Mapping) else {part: part.replace("-", "_") for part in parts}
    for part, name in names.items():
        part_dir = src_dir / part
        if not part_dir.is_dir():
            raise InputError(f"part {part!r} not found", part_dir)
        dst = dst_dir / name
        refuse_foreign_dir(dst)
        wav, text, utt2spk, where = _read_part(part_dir)
        with atomic_dir(dst) as staging:
            converted = write_clean_dir(staging, dst, wav, text, utt2spk, sample_rate, where)
            (staging / IMPORT_MARKER).write_text(f"imported from {part_dir}\n")
        report = validate_data_dir(dst, check_audio=False)
        report.converted = converted
        reports[part] = report
        logger.info("%s (%d files resampled)", report.summary(), converted)
    return reports


@dataclass
class LibriSpeechConfig:
    """A local LibriSpeech copy (``source_dir`` holds ``train-clean-100/ dev-clean/ ...`` as unpacked from
    OpenSLR 12) and which part becomes which Kaldi split."""

    source_dir: str | None = None
    parts: dict[str, str] = field(
        default_factory=lambda: {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"})
    sample_rate: int = 16000
    # Parts used as untranscribed audio (their transcripts are never read into the data dir), joined into
    # data/unlabeled: a transfer set for distillation, e.g. [train-clean-360, train-other-500].
    unlabeled_parts: list[str] = field(default_factory=list)


def prepare_librispeech(out_dir: Path, cfg: LibriSpeechConfig, nj: int = 1) -> CorpusSummary:
    """The corpus interface: ``out_dir/<split>`` for every split of ``cfg.parts``
    (see :func:`import_librispeech_parts`).

    ``nj`` is accepted for the common corpus signature; the import reads transcripts and headers in this process.
    """
    if not cfg.source_dir:
        raise InputError("corpus=librispeech needs corpus.source_dir=<folder holding train-clean-100/ ...>")
    split_of = {part: split for split, part in cfg.parts.items()}
    clash = sorted(set(cfg.unlabeled_parts) & set(split_of))
    if clash:
        raise InputError(f"part {clash[0]!r} is both a split of corpus.parts and unlabeled: a transfer set must not "
                         "hold the utterances it is compared on")
    reports = import_librispeech_parts(Path(cfg.source_dir), Path(out_dir), split_of, cfg.sample_rate)
    splits = {split_of[part]: r.split_summary() for part, r in reports.items()}
    converted = {split_of[part]: r.converted for part, r in reports.items()}
    if cfg.unlabeled_parts:
        report = import_unlabeled_parts(Path(cfg.source_dir), Path(out_dir) / UNLABELED, cfg.unlabeled_parts,
                                        cfg.sample_rate)
        splits[UNLABELED], converted[UNLABELED] = report.split_summary(), report.converted
    return CorpusSummary("librispeech", splits,
                         details={"source_dir": str(Path(cfg.source_dir).resolve()), "parts": dict(cfg.parts),
                                  "unlabeled_parts": list(cfg.unlabeled_parts), "converted": converted})


def import_unlabeled_parts(src_dir: Path, dst: Path, parts: Sequence[str], sample_rate: int = 16000
                           ) -> ValidationReport:
    """Several LibriSpeech parts as ONE data dir of untranscribed audio (wav.scp, utt2spk, utt2dur; no ``text``):
    the transcripts list the utterances and nothing else is taken from them. Written atomically, like a split."""
    src_dir, dst = Path(src_dir).resolve(), Path(dst).resolve()
    wav: dict[str, str] = {}
    utt2spk: dict[str, str] = {}
    where: dict[str, tuple[Path, int]] = {}
    for part in parts:
        part_dir = src_dir / part
        if not part_dir.is_dir():
            raise InputError(f"part {part!r} not found", part_dir)
        part_wav, _, part_spk, part_where = _read_part(part_dir)
        wav.update(part_wav)
        utt2spk.update(part_spk)
        where.update(part_where)
    refuse_foreign_dir(dst)
    with atomic_dir(dst) as staging:
        converted = write_clean_dir(staging, dst, wav, None, utt2spk, sample_rate, where)
        (staging / IMPORT_MARKER).write_text(f"imported without transcripts from {', '.join(parts)} of {src_dir}\n")
    report = validate_data_dir(dst, check_audio=False, require_text=False)
    report.converted = converted
    logger.info("%s (%d files resampled)", report.summary(), converted)
    return report
