"""The built-in corpus: real English sentences spoken by offline TTS voices, as Kaldi data dirs with timings.

Why synthetic: the paper's effects (ensembles beat single models, distillation keeps most of the gain, soft
targets regularize a 3%-data student) need a corpus anyone can build in minutes without a licence or network.
What makes it informative rather than trivial:

* many voices (flite, festival, espeak-ng accents and variants), one speaker id each;
* an UNSEEN voice that appears only in test, where generalization (and so the ensemble/distillation gap) is
  real; test also has the same sentences spoken by seen voices, so seen/unseen differ only in the voice;
* sentences disjoint between train, dev and test; LM extra text that never contains a dev/test sentence;
* optionally an UNLABELED pool (``unlabeled_hours``): more speech by the train voices, of sentences no other split
  (and no babble noise) uses, written as a data dir without ``text``: the transfer set a distilled student can
  learn from that no transcript covers, as every real user has;
* optional augmentation (speed, pitch, reverb, telephone band, noise/babble at 5-25 dB) drawn per utterance
  from the seed, making difficulty a dial;
* the synthesizer's own phone and word timings (``phones.ctm``/``words.ctm``, scaled by the speed factor),
  against which forced alignments can be graded.

Everything is a function of (config, seed): the manifest lists a sha256 for every written file (keyed by its
path relative to the corpus dir), and two builds with the same config produce the same manifest and the same
bytes regardless of ``nj``, of the order in which workers finish, and of the directory they are built in.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from asr_kd.corpus.summary import CorpusSummary, SplitSummary
from decoding.lexicon import cmu_lexicon
from features.atomic import write_text_atomic
from features.errors import InputError
from features.executor import Unit, cached, executor_for, load_pickle, publish
from features.tables import c_sorted, write_table

from .augment import AugmentConfig, apply_augmentation, draw_augmentation, utterance_rng
from .kaldi_dir import UNLABELED, write_data_dir
from .sentences import Sentence
from .text_sources import lm_sentences, spoken_pool
from .voices import (
    ALL_VOICES,
    SAMPLE_RATE,
    Segment,
    Voice,
    synthesize,
    tile_phones,
    voice_by_speaker,
)

logger = logging.getLogger(__name__)

# size -> (train hours, dev utterances, test utterances). tiny's test set is WSJ eval92's size (~300 utterances):
# with half that many, the 95% interval of a WER difference of the size distillation gives is about as wide as the
# difference itself, so whether it is significant would depend on the floating-point rounding of the machine
# that trained the models.
PRESETS: dict[str, tuple[float, int, int]] = {
    "ci": (0.025, 12, 16),
    "tiny": (1.0, 120, 300),
    "small": (10.0, 300, 300),
    "large": (50.0, 500, 500),
}
# Seconds per utterance estimated from its phone count, fitted on the default voices (used only to decide how
# many sentences make the requested hours; the manifest reports the real durations).
_SECONDS_PER_PHONE = 0.072
_SECONDS_PER_UTT = 0.45
SPLITS = ("train", "dev", "test")


@dataclass
class SynthConfig:
    """What to build. ``size`` picks a preset; the explicit fields override it."""

    size: str = "tiny"  # "ci" (~40 train utts, seconds), "tiny" (~1 h), "small" (~10 h), "large" (~50 h)
    train_hours: float | None = None
    dev_utts: int | None = None
    test_utts: int | None = None  # half by seen voices, half by the unseen voice, on the same sentences
    seed: int = 0
    augment: bool = True
    augment_cfg: AugmentConfig = field(default_factory=AugmentConfig)
    unseen_voice: str = "festival_ked"  # speaker id of the test-only voice
    seen_voices: tuple[str, ...] | None = None  # None = every other known voice
    # Which texts the voices read (train/dev/test), and which texts the LM may learn from beside the training
    # transcripts (minus every dev/test sentence); see asr_kd.corpus.text_sources.
    spoken_sources: tuple[str, ...] = ("austen", "harvard")
    lm_sources: tuple[str, ...] = ("austen", "harvard", "wordnet", "fortunes", "gcide")
    min_words: int = 4
    max_words: int = 30
    chunk_size: int = 40  # utterances per synthesis job (one festival process / flite voice per job)
    babble_bank_utts: int = 12  # clean utterances (of sentences no split uses) mixed into babble noise
    # Hours of untranscribed speech by the train voices (sentences no other split uses): data/unlabeled, a
    # transfer set for distillation. 0: none. The other splits are the same bytes with or without it.
    unlabeled_hours: float = 0.0

    def resolved(self) -> tuple[float, int, int]:
        if self.size not in PRESETS:
            raise ValueError(f"unknown size {self.size!r}; choose one of {sorted(PRESETS)}")
        hours, dev, test = PRESETS[self.size]
        return (
            hours if self.train_hours is None else self.train_hours,
            dev if self.dev_utts is None else self.dev_utts,
            test if self.test_utts is None else self.test_utts,
        )


@dataclass(frozen=True)
class _Utt:
    utt_id: str
    split: str
    speaker: str
    sentence: Sentence
    subset: str  # "seen" | "unseen"; "pool" for the unlabeled split


def estimated_seconds(sentence: Sentence) -> float:
    lexicon = cmu_lexicon()
    return _SECONDS_PER_UTT + _SECONDS_PER_PHONE * sum(len(lexicon[w][0]) for w in sentence.words)


def _voices(cfg: SynthConfig) -> tuple[list[Voice], Voice]:
    unseen = voice_by_speaker(cfg.unseen_voice)
    names = cfg.seen_voices or tuple(v.speaker for v in ALL_VOICES if v.speaker != unseen.speaker)
    seen = [voice_by_speaker(n) for n in names]
    if unseen in seen:
        raise ValueError(f"the unseen voice {unseen.speaker} is also listed as seen")
    return seen, unseen


def plan_corpus(cfg: SynthConfig, sentences: Sequence[Sentence]) -> tuple[list[_Utt], list[Sentence]]:
    """Assign sentences to splits and voices; return the utterances and the sentences no split uses.

    Sentences are drawn from a seeded permutation: test first, then dev, then train until the estimated hours
    are reached. If train needs more than the pool, sentences are reused with a different voice on each pass
    (never the same voice twice).
    """
    hours, n_dev, n_test = cfg.resolved()
    seen, unseen = _voices(cfg)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(sentences))
    n_test_sent = (n_test + 1) // 2
    if n_test_sent + n_dev >= len(order):
        raise ValueError(f"only {len(order)} sentences: too few for {n_dev} dev and {n_test} test utterances")
    test_ids = order[:n_test_sent]
    dev_ids = order[n_test_sent:n_test_sent + n_dev]
    pool = order[n_test_sent + n_dev:]

    def utt(split: str, voice: Voice, sid: int, subset: str = "seen") -> _Utt:
        return _Utt(f"{voice.speaker}-{sid:05d}", split, voice.speaker, sentences[sid], subset)

    utts: list[_Utt] = []
    for k, sid in enumerate(test_ids):
        utts.append(utt("test", seen[k % len(seen)], int(sid)))
        if k < n_test - n_test_sent:
            utts.append(utt("test", unseen, int(sid), "unseen"))
    utts.extend(utt("dev", seen[k % len(seen)], int(sid)) for k, sid in enumerate(dev_ids))

    target, total, k = hours * 3600.0, 0.0, 0
    used: set[int] = set()
    while total < target:
        passes, pos = divmod(k, len(pool))
        if passes >= len(seen):
            raise ValueError(f"{hours} h needs more than {len(seen)} voices x {len(pool)} sentences")
        sid = int(pool[pos])
        utts.append(utt("train", seen[(k + passes) % len(seen)], sid))
        used.add(sid)
        total += estimated_seconds(sentences[sid])
        k += 1
    unused = [sentences[int(s)] for s in pool if int(s) not in used]
    utts.extend(_unlabeled_pool(cfg, sentences, [int(s) for s in pool if int(s) not in used], seen, utt))
    return utts, unused


def _unlabeled_pool(cfg: SynthConfig, sentences: Sequence[Sentence], free: list[int], seen: list[Voice],
                    utt: Callable[..., _Utt]) -> list[_Utt]:
    """``cfg.unlabeled_hours`` of utterances of sentences no split uses, by the train voices in turn.

    The first ``babble_bank_utts`` free sentences are left to the babble noise, so the pool never changes what
    the other splits hear; the voices rotate as train's do. A pool that needs more sentences than are free is an
    error, not a pool that repeats the training text.
    """
    if cfg.unlabeled_hours <= 0:
        return []
    target, total, out = cfg.unlabeled_hours * 3600.0, 0.0, []
    candidates = free[cfg.babble_bank_utts:]
    for k, sid in enumerate(candidates):
        if total >= target:
            break
        out.append(utt(UNLABELED, seen[k % len(seen)], sid, "pool"))
        total += estimated_seconds(sentences[sid])
    if total < target:
        raise ValueError(f"unlabeled_hours={cfg.unlabeled_hours} needs more than the {len(candidates)} sentences "
                         "that no other split uses")
    return out


# ---------------------------------------------------------------------------------------------------------
# Worker side (runs in a worker process: local, or a Dask worker)
@dataclass(frozen=True)
class _SynthJob(Unit[list[dict]]):
    """One voice's chunk of utterances, a unit of :mod:`features.executor`: synthesized (and augmented), their wavs
    written under ``wav_root``; the babble noise's clean utterances are loaded from ``babble_bank`` (a file
    :func:`features.executor.publish` wrote) once per process."""

    speaker: str
    utts: tuple[_Utt, ...]
    wav_root: str
    seed: int
    augment: AugmentConfig | None
    babble_bank: Path | None

    def describe(self) -> str:
        return f"{len(self.utts)} utterances of voice {self.speaker}, from {self.utts[0].utt_id}"

    def run(self) -> list[dict]:
        bank = cached(load_pickle, self.babble_bank) if self.babble_bank is not None else []
        return _synth_job(self.speaker, list(self.utts), self.wav_root, self.seed, self.augment, bank)


def _init_worker() -> None:
    """Each worker stays on one thread: ``nj`` workers share the cores."""
    import torch

    torch.set_num_threads(1)


def _scale(segments: list[Segment], factor: float) -> list[Segment]:
    return [(s / factor, e / factor, label) for s, e, label in segments]


def _write_wav(path: Path, audio: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(tmp, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def _synth_job(speaker: str, utts: list[_Utt], wav_root: str, seed: int, augment: AugmentConfig | None,
               babble_bank: list[np.ndarray]) -> list[dict]:
    """Synthesize (and augment) one voice's chunk; write the wavs; return durations, timings, augmentation."""
    voice = voice_by_speaker(speaker)
    results = synthesize(voice, [u.sentence for u in utts])
    out = []
    for u, res in zip(utts, results):
        audio, phones, words, aug_desc = res.audio, res.phones, res.words, "none"
        if augment is not None:
            rng = utterance_rng(seed, u.utt_id)
            aug = draw_augmentation(rng, augment)
            audio = apply_augmentation(audio, aug, rng, augment, babble_bank)
            duration = len(audio) / SAMPLE_RATE
            phones = tile_phones(_scale(phones, aug.speed), duration) if phones else []
            words = [(s, min(e, duration), w) for s, e, w in _scale(words, aug.speed)]
            aug_desc = aug.describe()
        path = Path(wav_root) / u.split / f"{u.utt_id}.wav"
        _write_wav(path, audio)
        out.append({
            "utt": u.utt_id, "wav": str(path), "dur": len(audio) / SAMPLE_RATE,
            "phones": phones, "words": words, "aug": aug_desc,
        })
    return out


# ---------------------------------------------------------------------------------------------------------
def _babble_bank(cfg: SynthConfig, unused: list[Sentence], seen: list[Voice]) -> list[np.ndarray]:
    """Clean utterances of sentences no split uses (never dev/test text), by seen voices, for babble noise."""
    fast = [v for v in seen if v.engine != "festival"] or seen
    n = min(cfg.babble_bank_utts, len(unused))
    bank: list[np.ndarray] = []
    for k, voice in enumerate(fast[:n]):
        bank.extend(res.audio for res in synthesize(voice, unused[k:n:len(fast)]))
    return bank


def _ctm_lines(utt: str, segments: list[Segment]) -> str:
    lines = []
    for start, end, label in segments:
        s, e = round(start, 3), round(end, 3)
        if e > s:
            lines.append(f"{utt} 1 {s:.3f} {e - s:.3f} {label}\n")
    return "".join(lines)


def _sha256(path: Path, corpus_dir: Path) -> str:
    """Checksum of what ``path`` says, not of where the corpus lies, so that it is the same in any directory.

    wav.scp is the one file that holds the corpus dir: it must list absolute paths (Kaldi tools open them from
    anywhere), so it is hashed in a canonical form with that prefix written as ``<corpus_dir>/``.
    """
    data = path.read_bytes()
    if path.name == "wav.scp":
        data = data.replace(f"{corpus_dir}/".encode(), b"<corpus_dir>/")
    return hashlib.sha256(data).hexdigest()


def _config_json(cfg: SynthConfig) -> dict:
    """The config as the manifest records it (how many workers built the corpus is not part of it)."""
    return dataclasses.asdict(cfg)


def prepare_synth(out_dir: Path, cfg: SynthConfig, nj: int = 1) -> CorpusSummary:
    """Build the corpus under ``out_dir`` (a recipe's ``data/``) with ``nj`` worker processes; return its summary
    (also in manifest.json).

    A complete build (manifest with the same config) is reused. Refuses to write into a directory that holds
    a data dir it did not build, so a user's prepared data is never overwritten. With ``nj > 1`` the workers
    are spawned (not forked: the parent may hold torch/OpenMP threads), so a calling script needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    out_dir = Path(out_dir).resolve()
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config") == json.loads(json.dumps(_config_json(cfg))):
            logger.info("corpus in %s is already built with this config", out_dir)
            return CorpusSummary.from_dict(manifest["summary"])
    elif any((out_dir / s).exists() for s in (*SPLITS, UNLABELED)):
        raise InputError("holds data dirs that prepare_synth did not build (no manifest.json); "
                         "choose another output directory", out_dir)
    t0 = time.time()
    sentences = spoken_pool(cfg.spoken_sources, cfg.min_words, cfg.max_words)
    utts, unused = plan_corpus(cfg, sentences)
    seen, _ = _voices(cfg)
    bank = _babble_bank(cfg, unused, seen) if cfg.augment else []
    held_out = [u.sentence.words for u in utts if u.split in ("dev", "test")]
    lm_extra = lm_sentences(cfg.lm_sources, held_out, cfg.min_words, cfg.max_words)
    splits_built = [*SPLITS, *([UNLABELED] if any(u.split == UNLABELED for u in utts) else [])]
    for split in splits_built:
        (out_dir / "wav" / split).mkdir(parents=True, exist_ok=True)

    jobs: list[tuple[str, list[_Utt]]] = []
    by_speaker: dict[str, list[_Utt]] = {}
    for u in utts:
        by_speaker.setdefault(u.speaker, []).append(u)
    for speaker in c_sorted(by_speaker):
        group = by_speaker[speaker]
        jobs.extend((speaker, group[i:i + cfg.chunk_size]) for i in range(0, len(group), cfg.chunk_size))
    # Slow engines first, so the pool does not end waiting on one long festival job.
    jobs.sort(key=lambda j: (voice_by_speaker(j[0]).engine != "festival", j[0]))

    results: dict[str, dict] = {}
    augment = cfg.augment_cfg if cfg.augment else None
    bank_file = publish(bank, out_dir / ".babble") if bank else None
    units = [_SynthJob(spk, tuple(group), str(out_dir / "wav"), cfg.seed, augment, bank_file) for spk, group in jobs]
    # nj <= 1: in this process (no worker start-up cost for small builds); else spawned workers, not forked: this
    # process may hold torch/OpenMP threads
    for part in executor_for(nj).map(units, "synthesizing", setup=_init_worker, start_method="spawn"):
        results.update((r["utt"], r) for r in part)
    if bank_file is not None:
        shutil.rmtree(bank_file.parent, ignore_errors=True)

    splits, details = {}, {"timings": {}, "sentences": {}}
    for split in splits_built:
        mine = [u for u in utts if u.split == split]
        d = out_dir / split
        labeled = split != UNLABELED
        write_data_dir(
            d,
            wav_scp={u.utt_id: results[u.utt_id]["wav"] for u in mine},
            text={u.utt_id: u.sentence.transcript for u in mine} if labeled else None,
            utt2spk={u.utt_id: u.speaker for u in mine},
            utt2dur={u.utt_id: results[u.utt_id]["dur"] for u in mine},
        )
        ids = c_sorted(u.utt_id for u in mine)
        if labeled:  # the untranscribed pool keeps no trace of its words
            write_text_atomic(d / "phones.ctm", "".join(_ctm_lines(i, results[i]["phones"]) for i in ids))
            write_text_atomic(d / "words.ctm", "".join(_ctm_lines(i, results[i]["words"]) for i in ids))
        write_table(d / "utt2aug", {u.utt_id: results[u.utt_id]["aug"] for u in mine})
        if split == "test":
            write_table(d / "utt2subset", {u.utt_id: u.subset for u in mine})
        splits[split] = SplitSummary(
            utts=len(mine), speakers=len({u.speaker for u in mine}),
            hours=round(sum(results[u.utt_id]["dur"] for u in mine) / 3600.0, 4),
            words=sum(len(u.sentence.words) for u in mine) if labeled else 0)
        details["sentences"][split] = len({u.sentence.transcript for u in mine})
        details["timings"][split] = {
            "utts_with_phone_timings": sum(bool(results[u.utt_id]["phones"]) for u in mine),
            "utts_with_word_timings": sum(bool(results[u.utt_id]["words"]) for u in mine),
        }
    lm_extra_path = out_dir / "local" / "lm_extra.txt"
    write_text_atomic(lm_extra_path, "".join(s.transcript + "\n" for s in lm_extra))
    details.update(lm_extra_sentences=len(lm_extra), unseen_voice=cfg.unseen_voice,
                   seen_voices=[v.speaker for v in seen], augment=cfg.augment)
    summary = CorpusSummary("synth", splits, str(lm_extra_path.relative_to(out_dir)), details)

    # Only what this build wrote (a rebuild with another config may leave older wavs beside them).
    written = [Path(r["wav"]) for r in results.values()] + [lm_extra_path]
    written += [p for split in splits_built for p in (out_dir / split).iterdir() if not p.name.startswith(".")]
    checksums = {str(p.relative_to(out_dir)): _sha256(p, out_dir) for p in sorted(written)}
    manifest = {"config": _config_json(cfg), "summary": summary.to_dict(), "sha256": checksums}
    write_text_atomic(manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    logger.info("built %s in %.1f s: %s", out_dir, time.time() - t0, summary.splits)
    return summary
