"""Real English sentences for the synthetic corpus, normalized to exactly what a synthesizer will say.

The text comes from Debian packages of real English (:mod:`asr_kd.corpus.text_sources`).

A transcript is only useful if it matches the audio, so normalization is conservative: a sentence is kept only
when every token is a plain word (letters, optional inner apostrophe or hyphen) that the CMU dictionary knows.
Hyphens are read as spaces (the TTS front ends do the same), a few unambiguous abbreviations are expanded, and
any sentence with digits, symbols, quotes, brackets, an unexpanded abbreviation or an all-capitals acronym is
dropped rather than guessed at (a TTS front end may spell "NATO" or read "St." as "saint" or "street").
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


# Abbreviations whose reading does not depend on context.
_ABBREVIATIONS = {
    "Mr.": "Mister",
    "Mrs.": "Missus",
    "Dr.": "Doctor",
    "etc.": "et cetera",
    "vs.": "versus",
}
_TOKEN_RE = re.compile(r"^[A-Za-z]+(?:'[A-Za-z]+)?$")
_ALLOWED_CHARS_RE = re.compile(r"^[A-Za-z' ,.;:!?-]+$")


@dataclass(frozen=True)
class Sentence:
    """One sentence in two forms: what the synthesizer reads, and the transcript of what it says."""

    spoken: str  # natural casing and punctuation (prosody cues for the TTS front end)
    words: tuple[str, ...]  # UPPERCASE transcript words, each in the CMU dictionary

    @property
    def transcript(self) -> str:
        return " ".join(self.words)


def normalize_sentence(raw: str, lexicon: Mapping[str, object]) -> Sentence | None:
    """Return the spoken/transcript pair for ``raw``, or None when it cannot be read unambiguously."""
    text = " ".join(raw.split())
    for abbr, full in _ABBREVIATIONS.items():
        text = text.replace(abbr, full)
    text = text.rstrip()
    if not text or not _ALLOWED_CHARS_RE.match(text):
        return None
    # A period anywhere but the end marks an abbreviation or initial we cannot expand safely.
    if "." in text.rstrip(".!?"):
        return None
    text = text.replace("--", " ")
    spoken_tokens = text.replace("-", " ").split()
    words: list[str] = []
    for token in spoken_tokens:
        bare = token.strip(",.;:!?")
        if not _TOKEN_RE.match(bare):
            return None
        if len(bare) > 1 and bare.isupper():
            return None  # acronym: may be spelled letter by letter
        word = bare.upper()
        if word not in lexicon:
            return None
        words.append(word)
    spoken = " ".join(spoken_tokens)
    spoken = spoken[0].upper() + spoken[1:]
    if spoken[-1] not in ".!?":
        spoken += "."
    return Sentence(spoken=spoken, words=tuple(words))
