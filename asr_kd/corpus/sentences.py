"""Real English sentences for the synthetic corpus, normalized to exactly what a synthesizer will say.

The text comes from the example sentences of WordNet (Debian ``wordnet-base``, ~33k quoted examples in the
``data.*`` files): real usage written by lexicographers, installable without R or network access.

A transcript is only useful if it matches the audio, so normalization is conservative: a sentence is kept only
when every token is a plain word (letters, optional inner apostrophe or hyphen) that the CMU dictionary knows.
Hyphens are read as spaces (the TTS front ends do the same), a few unambiguous abbreviations are expanded, and
any sentence with digits, symbols, quotes, brackets, an unexpanded abbreviation or an all-capitals acronym is
dropped rather than guessed at (a TTS front end may spell "NATO" or read "St." as "saint" or "street").
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from decoding.lexicon import cmu_lexicon

logger = logging.getLogger(__name__)

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")

# Abbreviations whose reading does not depend on context.
_ABBREVIATIONS = {
    "Mr.": "Mister",
    "Mrs.": "Missus",
    "Dr.": "Doctor",
    "etc.": "et cetera",
    "vs.": "versus",
}
_EXAMPLE_RE = re.compile(r'"([^"]+)"')
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


def normalize_sentence(raw: str, lexicon: dict[str, list[list[str]]]) -> Sentence | None:
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


def wordnet_examples(wordnet_dir: Path = WORDNET_DIR) -> list[str]:
    """All quoted example sentences of the WordNet ``data.*`` files, in file order."""
    examples: list[str] = []
    for name in WORDNET_FILES:
        path = wordnet_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: install the Debian package wordnet-base")
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                _, _, gloss = line.partition(" | ")
                examples.extend(_EXAMPLE_RE.findall(gloss))
    return examples


def load_sentences(min_words: int = 4, max_words: int = 30, wordnet_dir: Path = WORDNET_DIR) -> tuple[Sentence, ...]:
    """Unique normalized sentences of ``min_words``..``max_words`` words, sorted by transcript.

    Sorting (instead of file order) makes the pool independent of how the source files are concatenated;
    uniqueness is by transcript so that two spellings of one sentence never straddle a train/test split.
    """
    return _load_sentences(min_words, max_words, Path(wordnet_dir))


@functools.lru_cache(maxsize=4)
def _load_sentences(min_words: int, max_words: int, wordnet_dir: Path) -> tuple[Sentence, ...]:
    lexicon = cmu_lexicon()
    by_transcript: dict[str, Sentence] = {}
    raw = wordnet_examples(wordnet_dir)
    for example in raw:
        sentence = normalize_sentence(example, lexicon)
        if sentence is None or not min_words <= len(sentence.words) <= max_words:
            continue
        by_transcript.setdefault(sentence.transcript, sentence)
    logger.info("kept %d of %d WordNet examples", len(by_transcript), len(raw))
    return tuple(by_transcript[t] for t in sorted(by_transcript))
