"""Offline English voices (flite, festival, espeak-ng) that return 16 kHz audio WITH the synthesizer's timings.

Each engine knows where it put every phone, and that is the ground truth a forced aligner can be graded against.
How each engine reveals it:

* flite prints ``phone:end_time`` with ``-psdur`` (CMU phones, lowercase, ``pau`` for silence). It does not
  mark words, so word spans come from aligning flite's phone string to the CMU dictionary pronunciations of the
  transcript (Levenshtein; flite's lexicon is CMU-derived, so the two nearly always agree).
* festival exposes its Segment relation (phone end times) and Word relation (``word_start``/``word_end``);
  one batch process synthesizes a whole list, which avoids paying for voice loading per utterance.
* espeak-ng, driven through its C API (``espeak.py``), emits a word event and a phoneme event (with the sample
  offset) for everything it says. Its phoneme names are mapped to ARPAbet; the few espeak phonemes that stand
  for two ARPAbet phones (r-coloured vowels in non-rhotic accents, syllabic ``@L``) have their duration split
  evenly, which is an approximation documented here and nowhere hidden. espeak puts the phoneme event of a
  voiceless stop or affricate at its burst, so the closure before it would count as the previous phone; the
  closure (the near-silence espeak writes there) is given back to the stop, as flite, festival and TIMIT-style
  labels have it (``_espeak_closures``).

All timings are returned as (start, end, label) in seconds of the returned 16 kHz signal, with phones tiling
the utterance (gaps filled with ``SIL``) and labels in ARPAbet without stress, uppercase.
"""
from __future__ import annotations

import hashlib
import logging
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from decoding.lexicon import cmu_lexicon, strip_stress

from . import espeak
from .sentences import Sentence

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000

Segment = tuple[float, float, str]


@dataclass(frozen=True)
class Voice:
    """One speaker of the corpus: an engine, its voice, and (espeak only) the prosody settings."""

    speaker: str  # speaker id; also the utterance-id prefix
    engine: str  # "flite" | "festival" | "espeak"
    name: str  # engine voice name, e.g. "awb", "kal_diphone", "en-us+m3"
    rate: int = 175  # espeak words per minute
    pitch: int = 50  # espeak base pitch 0..99


@dataclass
class Synthesized:
    """16 kHz float audio in [-1, 1] with the synthesizer's own phone and word timings."""

    audio: np.ndarray
    phones: list[Segment] = field(default_factory=list)
    words: list[Segment] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


# Voices a recipe trains on. flite kal16 and festival kal share a diphone inventory, as do flite slt and
# festival slt-hts a speaker, but the engines' prosody and signal processing differ enough to count as voices.
SEEN_VOICES: tuple[Voice, ...] = (
    Voice("flite_awb", "flite", "awb"),
    Voice("flite_kal16", "flite", "kal16"),
    Voice("flite_rms", "flite", "rms"),
    Voice("flite_slt", "flite", "slt"),
    Voice("festival_kal", "festival", "kal_diphone"),
    Voice("festival_slthts", "festival", "cmu_us_slt_arctic_hts"),
    Voice("espeak_en029_f3", "espeak", "en-029+f3", rate=160, pitch=60),
    Voice("espeak_engb_f2", "espeak", "en+f2", rate=165, pitch=55),
    Voice("espeak_engbrp_m5", "espeak", "en-gb-x-rp+m5", rate=170, pitch=40),
    Voice("espeak_engbscot_m1", "espeak", "en-gb-scotland+m1", rate=155, pitch=35),
    Voice("espeak_enus_klatt3", "espeak", "en-us+klatt3", rate=175, pitch=50),
    Voice("espeak_enus_m3", "espeak", "en-us+m3", rate=170, pitch=45),
    Voice("espeak_enusnyc_f4", "espeak", "en-us-nyc+f4", rate=180, pitch=65),
    Voice("espeak_engbclan_m2", "espeak", "en-gb-x-gbclan+m2", rate=160, pitch=50),
)
# festival ked: a diphone voice no training voice shares an inventory with.
UNSEEN_VOICE = Voice("festival_ked", "festival", "ked_diphone")
ALL_VOICES: tuple[Voice, ...] = SEEN_VOICES + (UNSEEN_VOICE,)


def voice_by_speaker(speaker: str) -> Voice:
    for voice in ALL_VOICES:
        if voice.speaker == speaker:
            return voice
    raise KeyError(f"unknown voice {speaker!r}; known: {[v.speaker for v in ALL_VOICES]}")


# ---------------------------------------------------------------------------------------------------------
# Phone sets
# CMU phones as flite and festival print them (lowercase; schwa variants folded into ARPAbet).
_CMU_TO_ARPA = {"ax": "AH", "axr": "ER", "ix": "IH", "pau": "SIL", "h#": "SIL", "#": "SIL", "brth": "SIL"}

# espeak-ng English phoneme mnemonics -> ARPAbet (one or two phones). Built from the phonemes the English
# accents above actually emit on the sentence pool.
_ESPEAK_TO_ARPA: dict[str, tuple[str, ...]] = {
    "p": ("P",), "b": ("B",), "t": ("T",), "d": ("D",), "k": ("K",), "g": ("G",), "f": ("F",), "v": ("V",),
    "T": ("TH",), "D": ("DH",), "s": ("S",), "z": ("Z",), "S": ("SH",), "Z": ("ZH",), "h": ("HH",),
    "tS": ("CH",), "dZ": ("JH",), "m": ("M",), "n": ("N",), "N": ("NG",), "l": ("L",), "r": ("R",),
    "w": ("W",), "j": ("Y",), "t#": ("T",), "d#": ("D",), "r-": ("R",), "l/": ("L",), "l/2": ("L",),
    "n-": ("N",), "m-": ("M",), "?": ("T",), "x": ("K",), "W": ("W",), "z#": ("Z",), "s2": ("S",),
    "a": ("AE",), "a#": ("AE",), "aa": ("AE",), "A:": ("AA",), "A": ("AA",), "0": ("AA",), "02": ("AA",),
    "@": ("AH",), "@2": ("AH",), "@5": ("AH",), "@L": ("AH", "L"), "a2": ("AH",), "V": ("AH",),
    "3": ("ER",), "3:": ("ER",), "@r": ("ER",), "a@": ("AA", "R"), "A@": ("AA", "R"), "A@r": ("AA", "R"),
    "aI": ("AY",), "aI2": ("AY",), "aI@": ("AY", "ER"), "aI3": ("AY", "ER"), "aU": ("AW",), "aU@": ("AW", "ER"),
    "E": ("EH",), "E2": ("EH",), "E@": ("EH", "R"), "e@": ("EH", "R"), "eI": ("EY",),
    "I": ("IH",), "I2": ("IH",), "I#": ("IH",), "i": ("IY",), "i:": ("IY",), "i@": ("IH", "R"),
    "i@3": ("IH", "R"), "IR": ("IH", "R"), "O": ("AO",), "O:": ("AO",), "O@": ("AO", "R"), "o@": ("AO", "R"),
    "OI": ("OY",), "oU": ("OW",), "o": ("OW",), "@U": ("OW",), "U": ("UH",), "U@": ("UH", "R"),
    "u:": ("UW",), "u": ("UW",), "O2": ("AO",), "t[": ("T",), "t2": ("T",), "w#": ("W",), "@-": ("AH",),
    "A~": ("AA", "N"), "ju:": ("Y", "UW"), "3:r": ("ER",), "VR": ("ER",), "0@": ("AO", "R"),
    "_": ("SIL",), "_:": ("SIL",), "_!": ("SIL",), "_|": ("SIL",),
}
# Zero-width espeak markers (syllable/linking signs) that carry no audio of their own.
_ESPEAK_MARKERS = {";", "#", "'", ",", "%", "=", "_^_", "||", "|"}


def tile_phones(phones: list[Segment], duration: float) -> list[Segment]:
    """Clip to [0, duration], merge adjacent silences and fill gaps with SIL so that phones tile the audio.

    Engines disagree at the edges (flite's final pause can overrun the samples it wrote; espeak starts its
    first phone a few ms in), and a consumer grading boundaries needs one consistent convention.
    """
    out: list[Segment] = []
    cursor = 0.0
    for start, end, phone in phones:
        start, end = max(start, cursor), min(end, duration)
        if end - start < 1e-4:
            continue
        if start - cursor > 1e-4:
            out.append((cursor, start, "SIL"))
        out.append((start, end, phone))
        cursor = end
    if duration - cursor > 1e-4:
        out.append((cursor, duration, "SIL"))
    merged: list[Segment] = []
    for seg in out:
        if merged and seg[2] == "SIL" and merged[-1][2] == "SIL":
            merged[-1] = (merged[-1][0], seg[1], "SIL")
        else:
            merged.append(seg)
    return merged


def align_words_to_phones(phones: list[Segment], words: tuple[str, ...]) -> list[Segment] | None:
    """Word spans from a phone string, by aligning it to the dictionary pronunciations of ``words``.

    Levenshtein alignment; each synthesized phone belongs to the word of the reference phone it matched or
    substituted, an inserted phone to the word before it. Returns None when some word gets no phone at all
    (the synthesizer said something else), so that no invented boundary is ever written.
    """
    lexicon = cmu_lexicon()
    ref: list[tuple[str, int]] = []
    for w, word in enumerate(words):
        ref.extend((strip_stress(p), w) for p in lexicon[word][0])
    hyp = [seg for seg in phones if seg[2] != "SIL"]
    n, m = len(ref), len(hyp)
    cost = np.zeros((n + 1, m + 1), dtype=np.int32)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            sub = cost[i - 1, j - 1] + (ref[i - 1][0] != hyp[j - 1][2])
            cost[i, j] = min(sub, cost[i - 1, j] + 1, cost[i, j - 1] + 1)
    owner = [-1] * m
    i, j = n, m
    while i > 0 and j > 0:
        if cost[i, j] == cost[i - 1, j - 1] + (ref[i - 1][0] != hyp[j - 1][2]):
            owner[j - 1] = ref[i - 1][1]
            i, j = i - 1, j - 1
        elif cost[i, j] == cost[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    # Inserted phones (owner -1) join the preceding word; leading insertions join the first word.
    last = 0
    for k in range(m):
        if owner[k] < 0:
            owner[k] = last
        last = owner[k]
    spans: list[Segment] = []
    for w, word in enumerate(words):
        mine = [hyp[k] for k in range(m) if owner[k] == w]
        if not mine:
            return None
        spans.append((mine[0][0], mine[-1][1], word))
    return spans


def _resample(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    if sample_rate == SAMPLE_RATE:
        return audio
    return AF.resample(torch.from_numpy(audio), sample_rate, SAMPLE_RATE).numpy()


# ---------------------------------------------------------------------------------------------------------
# flite
def _synth_flite(voice: Voice, sentences: list[Sentence], tmp: Path) -> list[Synthesized]:
    out = []
    for k, sentence in enumerate(sentences):
        wav = tmp / f"{k}.wav"
        proc = subprocess.run(
            ["flite", "-voice", voice.name, "-psdur", "-t", sentence.spoken, "-o", str(wav)],
            check=True, capture_output=True, text=True,
        )
        audio, sr = sf.read(wav, dtype="float32")
        audio = _resample(audio, sr)
        phones: list[Segment] = []
        start = 0.0
        for item in proc.stdout.split():
            name, _, end_s = item.rpartition(":")
            end = float(end_s)
            phones.append((start, end, _CMU_TO_ARPA.get(name, name.upper())))
            start = end
        phones = tile_phones(phones, len(audio) / SAMPLE_RATE)
        words = align_words_to_phones(phones, sentence.words)
        if words is None:
            logger.warning("flite %s: could not place words of %r", voice.name, sentence.transcript)
        out.append(Synthesized(audio, phones, words or []))
    return out


# ---------------------------------------------------------------------------------------------------------
# festival
_FESTIVAL_SCRIPT = """
(voice_{voice})
(define (synth_one text wavfile)
  (let ((utt (utt.synth (eval (list 'Utterance 'Text text)))))
    (utt.wave.resample utt {rate})
    (utt.save.wave utt wavfile 'riff)
    (format t "UTT %s\\n" wavfile)
    (mapcar (lambda (seg) (format t "P %s %f\\n" (item.name seg) (item.feat seg 'end)))
            (utt.relation.items utt 'Segment))
    (mapcar (lambda (w) (format t "W %s %f %f\\n" (item.name w) (item.feat w 'word_start) (item.feat w 'word_end)))
            (utt.relation.items utt 'Word))
    t))
"""


def _synth_festival(voice: Voice, sentences: list[Sentence], tmp: Path) -> list[Synthesized]:
    lines = [_FESTIVAL_SCRIPT.format(voice=voice.name, rate=SAMPLE_RATE)]
    for k, sentence in enumerate(sentences):
        lines.append(f'(synth_one "{sentence.spoken}" "{tmp / f"{k}.wav"}")')
    script = tmp / "synth.scm"
    script.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(["festival", "--batch", str(script)], check=True, capture_output=True, text=True)
    phones_of: dict[str, list[tuple[float, str]]] = {}
    words_of: dict[str, list[tuple[float, float]]] = {}
    current = ""
    for line in proc.stdout.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "UTT":
            current = parts[1]
            phones_of[current], words_of[current] = [], []
        elif parts[0] == "P" and current:
            phones_of[current].append((float(parts[2]), _CMU_TO_ARPA.get(parts[1], parts[1].upper())))
        elif parts[0] == "W" and current:
            words_of[current].append((float(parts[2]), float(parts[3])))
    out = []
    for k, sentence in enumerate(sentences):
        wav = str(tmp / f"{k}.wav")
        if wav not in phones_of:
            raise RuntimeError(f"festival {voice.name} produced no output for {sentence.spoken!r}: {proc.stderr}")
        audio, sr = sf.read(wav, dtype="float32")
        audio = _resample(audio, sr)
        duration = len(audio) / SAMPLE_RATE
        phones, start = [], 0.0
        for end, phone in phones_of[wav]:
            phones.append((start, end, phone))
            start = end
        phones = tile_phones(phones, duration)
        spans = words_of[wav]
        words: list[Segment] = []
        if len(spans) == len(sentence.words):
            words = [(s, min(e, duration), w) for (s, e), w in zip(spans, sentence.words)]
        else:  # festival tokenized differently (e.g. "let's" -> "let" "'s"): place words from the phones
            words = align_words_to_phones(phones, sentence.words) or []
        out.append(Synthesized(audio, phones, words))
    return out


# ---------------------------------------------------------------------------------------------------------
# espeak-ng (driven through its C API in a child process, see espeak.py)
def _token_index(spoken: str) -> list[int]:
    """For each character of ``spoken``, the index of the whitespace-separated token it belongs to (or -1)."""
    owner, token, in_token = [], -1, False
    for ch in spoken:
        if ch.isspace():
            in_token = False
            owner.append(-1)
        else:
            if not in_token:
                token, in_token = token + 1, True
            owner.append(token)
    return owner


def _espeak_words(owned: list[tuple[float, float, str, int]], words: tuple[str, ...]) -> list[Segment]:
    """Word spans from phones tagged with the token espeak attributed them to.

    espeak joins short function words to a neighbour ("of the" is one word event, its phones all carry the
    position of "of"). The tokens with phones of their own anchor exact boundaries; each group made of an
    anchor and the phone-less tokens after it is split by aligning the group's phones to the dictionary.
    """
    anchors = sorted({owner for *_, owner in owned if owner >= 0})
    if not anchors:
        return []
    groups: list[list[int]] = []
    for w in range(len(words)):
        if w in anchors or not groups:
            groups.append([w])
        else:
            groups[-1].append(w)
    spans: list[Segment] = []
    for group in groups:
        phones = [(s, e, p) for s, e, p, owner in owned if owner in group and e > s]
        if not phones:
            return []
        if len(group) == 1:
            spans.append((phones[0][0], phones[-1][1], words[group[0]]))
            continue
        placed = align_words_to_phones(phones, tuple(words[w] for w in group))
        if placed is None:
            return []
        spans.extend(placed)
    return spans


# Phones whose closure espeak books to the phone before them (its event comes at the burst).
_CLOSURE_PHONES = frozenset({"P", "T", "K", "CH"})
_CLOSURE_HOP = 0.005  # s: energy measured over 5-ms hops
_CLOSURE_LEVEL_DB = -40.0  # a hop this far below the utterance's loudest hop counts as closure silence
_CLOSURE_MAX = 0.15  # s: no stop closure is longer
_MIN_PHONE = 0.01  # s: what the previous phone keeps at least


def _espeak_closures(owned: list[tuple[float, float, str, int]], audio: np.ndarray
                     ) -> list[tuple[float, float, str, int]]:
    """Move the start of each voiceless stop/affricate back over the closure silence espeak booked to the phone
    before it.

    Against forced alignments of the built-in corpus, espeak's P/T/K/CH start late by about the length of their
    closure, while flite's and festival's agree to within a few ms; the clean signal shows why: the 30-40 ms
    before espeak's stop event are digital near-silence, the closure. Only a closure that follows a non-silence
    phone moves (after a pause, closure and pause are one silence), and only over hops that are really silent,
    so a stop without a closure keeps espeak's time.
    """
    hop = round(_CLOSURE_HOP * SAMPLE_RATE)
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop).astype(np.float64)
    if frames.size == 0:
        return owned
    level = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
    silent = level < level.max() + _CLOSURE_LEVEL_DB
    out = list(owned)
    for k in range(1, len(out)):
        start, end, phone, word = out[k]
        p_start, p_end, p_phone, p_word = out[k - 1]
        if phone not in _CLOSURE_PHONES or p_phone == "SIL" or abs(p_end - start) > 1e-6:
            continue
        limit = max(p_start + _MIN_PHONE, start - _CLOSURE_MAX)
        hop_end = int(start / _CLOSURE_HOP)  # the hop that ends at (or just before) the burst
        onset = start
        while hop_end > 0 and (hop_end - 1) * _CLOSURE_HOP >= limit and silent[min(hop_end - 1, len(silent) - 1)]:
            hop_end -= 1
            onset = hop_end * _CLOSURE_HOP
        if onset < start:
            out[k - 1] = (p_start, onset, p_phone, p_word)
            out[k] = (onset, end, phone, word)
    return out


def _synth_espeak(voice: Voice, sentences: list[Sentence], tmp: Path) -> list[Synthesized]:
    out = []
    spoken = espeak.speak(voice.name, voice.rate, voice.pitch, [s.spoken for s in sentences])
    for sentence, said in zip(sentences, spoken):
        audio = _resample(np.frombuffer(said.pcm, dtype="<i2").astype(np.float32) / 32768.0, said.sample_rate)
        duration = len(audio) / SAMPLE_RATE
        ratio = SAMPLE_RATE / said.sample_rate
        events = said.events
        # Phoneme events mark phone starts (in engine samples) and carry the 1-based character position of
        # the word they belong to; a phone ends where the next phoneme event starts.
        token_of = _token_index(sentence.spoken)
        marks = [(sample * ratio / SAMPLE_RATE, name, pos - 1)
                 for kind, pos, sample, name in events if kind == espeak.EV_PHONEME and name not in _ESPEAK_MARKERS]
        owned: list[tuple[float, float, str, int]] = []
        unknown = set()
        for k, (start, name, pos) in enumerate(marks):
            end = min(marks[k + 1][0] if k + 1 < len(marks) else duration, duration)
            arpa = _ESPEAK_TO_ARPA.get(name)
            if arpa is None:
                unknown.add(name)
                continue
            word = token_of[pos] if 0 <= pos < len(token_of) and arpa != ("SIL",) else -1
            step = (end - start) / len(arpa)
            owned.extend((start + i * step, start + (i + 1) * step, p, word) for i, p in enumerate(arpa))
        if unknown:  # an unmapped phoneme would make every later boundary suspect: give no timings at all
            logger.warning("espeak %s: unmapped phonemes %s in %r", voice.name, sorted(unknown), sentence.spoken)
            out.append(Synthesized(audio))
            continue
        owned = _espeak_closures(owned, audio)
        phones = tile_phones([(s, e, p) for s, e, p, _ in owned], duration)
        out.append(Synthesized(audio, phones, _espeak_words(owned, sentence.words)))
    return out


_ENGINES = {"flite": _synth_flite, "festival": _synth_festival, "espeak": _synth_espeak}


# Engines whose output is checked by running them twice (see synthesize).
_RUN_TWICE = frozenset({"espeak"})


def synthesize(voice: Voice, sentences: list[Sentence], tries: int = 4) -> list[Synthesized]:
    """Speak every sentence with ``voice``; one engine process (or library) serves the whole list.

    espeak voices run until two consecutive runs give the same audio and timings. Why: espeak has returned a
    different waveform for the same sentence and voice settings on a freshly set-up machine, rarely and not
    reproducibly, and one changed babble-bank utterance changes every wav it is mixed into; the check covers the
    whole espeak path (engine, resampling, timings), logs a disagreement and keeps it out of the corpus. flite
    and festival run once: they have not been seen to vary. Raises when no two consecutive of ``tries`` runs
    agree.
    """
    def run() -> list[Synthesized]:
        with tempfile.TemporaryDirectory(prefix="asrkd_tts_") as tmp:
            return _ENGINES[voice.engine](voice, sentences, Path(tmp))

    if voice.engine not in _RUN_TWICE:
        return run()
    previous_digest = None
    for attempt in range(1, tries + 1):
        out = run()
        digest = _digest(out)
        if digest == previous_digest:
            return out
        if previous_digest is not None:
            logger.warning("%s %s: run %d differs from run %d (%d sentences from %r); running again",
                           voice.engine, voice.name, attempt, attempt - 1, len(sentences), sentences[0].spoken)
        previous_digest = digest
    raise RuntimeError(f"{voice.engine} {voice.name}: no two consecutive of {tries} runs gave the same audio "
                       f"({len(sentences)} sentences from {sentences[0].spoken!r}); the corpus would not be "
                       "reproducible")


def _digest(out: list[Synthesized]) -> str:
    """sha256 of what a synthesis run returned: every sample and every phone and word timing."""
    h = hashlib.sha256()
    for s in out:
        h.update(np.ascontiguousarray(s.audio, dtype=np.float32).tobytes())
        h.update(repr((s.phones, s.words)).encode())
    return h.hexdigest()
