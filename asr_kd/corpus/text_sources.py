"""Real English text from Debian packages: the spoken corpus's sentences and the language model's training text.

Why: a recipe's LM is trained on far more text than its acoustic transcripts (WSJ: 37M words of newswire,
LibriSpeech: 800M words of books). Offline, the largest clean English text one can install comes from a few
Debian packages; together they give ~1M words of sentences every word of which is in CMUdict, against ~0.2M in
WordNet's examples alone. Each source is read by a ``*_raw()`` function that yields candidate sentences as
plain strings (headers, attributions and markup removed, paragraphs split into sentences) and normalized by
:func:`asr_kd.corpus.sentences.normalize_sentence`, which keeps a sentence only when every word is a plain word
CMUdict knows (so a TTS voice says exactly its transcript, and no word needs letter-to-sound rules).

==========  ============================  ======================================================  ==============
source      Debian package                text                                                    used for
==========  ============================  ======================================================  ==============
austen      r-cran-janeaustenr            six novels, 1811-1817 (LibriSpeech reads the same)      spoken + LM
harvard     r-cran-stringr                the 720 IEEE Harvard sentences (phonetically balanced)  spoken + LM
wordnet     wordnet-base                  lexicographers' example sentences, short                LM
fortunes    fortunes, fortune-mod         quotations and jokes, modern                            LM
gcide       dict-gcide                    quotations in Webster 1913 (Shakespeare, Milton, ...)   LM
==========  ============================  ======================================================  ==============

The sources were chosen by what each does to a trigram LM's held-out perplexity and OOV rate at a fixed
vocabulary: WordNet's examples stay much harder to predict than held-out Austen sentences however much text the
LM has; adding the King James Bible makes held-out perplexity worse and Moby-Dick does not change it, so neither
is read. Everything is deterministic: sources are read in a fixed order, de-duplicated by transcript.
"""
from __future__ import annotations

import functools
import gzip
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from asr_kd.corpus.sentences import Sentence, normalize_sentence
from decoding.lexicon import cmu_lexicon

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
GCIDE_DICT = Path("/usr/share/dictd/gcide.dict.dz")
# Fortune files that are not prose (pictures made of characters).
_FORTUNE_SKIP = frozenset({"ascii-art"})
JANEAUSTEN_BOOKS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
_EXAMPLE_RE = re.compile(r'"([^"]+)"')

# Typographic characters -> what normalize_sentence understands. Dashes become " -- " (read as a pause/space).
_TYPOGRAPHY = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": " -- ", "\u2013": " -- ",
    "\u00a0": " ", "\ufeff": "", "\u2026": "...",
})
# Words after which a period does not end a sentence (titles, initials are handled separately).
_NO_SPLIT_AFTER = frozenset({"Mr", "Mrs", "Dr", "St", "Messrs", "Mme", "Mlle", "Jr", "Sr", "vs", "No", "Capt",
                             "Col", "Gen", "Lieut", "Rev", "Prof", "Mt", "Esq", "Gov", "Sen", "Rep", "i.e", "e.g",
                             "cf", "viz", "Ch", "ch", "Vol", "vol"})
_BOUNDARY_RE = re.compile(r"[.!?]+['\")\]]*\s+(?=['\"(\[]*[A-Z])")
_LAST_TOKEN_RE = re.compile(r"(\S+?)[.!?]*['\")\]]*$")
_BRACKETED_RE = re.compile(r"\[[^\]]*\]")  # editorial notes: [Footnote ...], [Obs.], [1913 Webster]
_ALL_CAPS_RE = re.compile(r"\b[A-Z]{2,}\b")
_EDGE_QUOTES_RE = re.compile(r"^'*(.*?)'*([,.;:!?]*)'*$")


# --------------------------------------------------------------------------------------------- helpers
def split_sentences(text: str) -> list[str]:
    """Split running text at ``.``, ``!`` or ``?`` (+ closing quotes) followed by a capital letter.

    A period after a title or initial ("Mr. Darcy", "J. Smith") does not end a sentence; that is the only
    abbreviation handling needed here because :func:`normalize_sentence` expands a few titles and drops every
    other sentence that still has an inner period. Gutenberg texts glue a dash to the end of a sentence
    ("me.--Consider"): such a dash is a boundary.
    """
    text = text.translate(_TYPOGRAPHY)
    text = re.sub(r"([.!?]['\")]*)\s*--+\s*", r"\1 ", text)
    text = " ".join(text.split())
    pieces, start = [], 0
    for m in _BOUNDARY_RE.finditer(text):
        if text[m.start()] == ".":
            last = _LAST_TOKEN_RE.search(text[start:m.start() + 1])
            token = last.group(1).lstrip("'\"([") if last else ""
            if token in _NO_SPLIT_AFTER or (len(token) == 1 and token.isupper()):
                continue
        pieces.append(text[start:m.end()].strip())
        start = m.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def clean_for_speech(sentence: str) -> str:
    """Remove what a reader does not pronounce: quotation marks, emphasis underscores, brackets, quote-apostrophes.

    Double quotes and ``_emphasis_`` are dropped; parentheses are dropped but their words kept; square-bracketed
    editorial notes are dropped with their content; a single quote that opens or closes a quotation (a token
    that starts or ends with ``'``, e.g. ``'Tis`` or ``dogs'``) loses it; ``&`` is read "and".
    """
    s = sentence.translate(_TYPOGRAPHY)
    s = _BRACKETED_RE.sub(" ", s)
    s = s.replace('"', " ").replace("_", " ").replace("(", " ").replace(")", " ").replace(" & ", " and ")
    tokens: list[str] = []
    for token in s.split():
        core = token.strip("'")
        if not core.strip(",.;:!?"):  # punctuation left alone by a removed quote: back onto the previous word
            if tokens and core:
                tokens[-1] += core
            continue
        # "'Tis," -> "Tis,": keep trailing punctuation, drop apostrophes at the token's edges
        m = _EDGE_QUOTES_RE.match(token)
        tokens.append((m.group(1) + m.group(2)) if m else core)
    return " ".join(tokens)


def recase_emphasis(text: str) -> str:
    """Lower-case ALL-CAPITALS words: in the Gutenberg novels and the KJV they mark emphasis ("for THEM") or
    small capitals ("the LORD"), not acronyms, which :func:`normalize_sentence` would drop the sentence for.
    Only for sources known to have no acronyms; "I" and one-letter words are untouched."""
    def recase(m: re.Match[str]) -> str:
        word = m.group(0)
        return word.capitalize() if word in ("LORD", "GOD") else word.lower()

    return _ALL_CAPS_RE.sub(recase, text)


def _paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """Blank-line separated paragraphs of ``lines``, each joined into one line."""
    block: list[str] = []
    for line in lines:
        if line.strip():
            block.append(line.strip())
        elif block:
            yield " ".join(block)
            block = []
    if block:
        yield " ".join(block)


def _rscript_lines(expr: str, package: str) -> list[str]:
    """Lines printed by ``Rscript -e expr`` (R data sets ship as R lazy-load databases; R reads them)."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        raise FileNotFoundError(f"Rscript not found: install the Debian package {package} (it pulls in R)")
    proc = subprocess.run([rscript, "-e", expr], capture_output=True, text=True, encoding="utf-8")
    if proc.returncode != 0:
        raise FileNotFoundError(f"R could not read the data: install the Debian package {package}: "
                                f"{proc.stderr.strip()[-300:]}")
    return proc.stdout.splitlines()


def _r_dataset(package: str, r_package: str, name: str) -> list[str]:
    expr = f'e <- new.env(); data(list = "{name}", package = "{r_package}", envir = e); writeLines(e[["{name}"]])'
    return _rscript_lines(expr, package)


# --------------------------------------------------------------------------------------------- sources
def wordnet_raw(wordnet_dir: Path = WORDNET_DIR) -> Iterator[str]:
    """All quoted example sentences of the WordNet ``data.*`` files (the gloss after `` | ``), in file order."""
    for name in WORDNET_FILES:
        path = wordnet_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: install the Debian package wordnet-base")
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                _, _, gloss = line.partition(" | ")
                yield from _EXAMPLE_RE.findall(gloss)


def harvard_raw() -> Iterator[str]:
    """The 720 Harvard sentences (IEEE 1969) from R's stringr::sentences, one sentence per element."""
    yield from _r_dataset("r-cran-stringr", "stringr", "sentences")


def austen_raw(books: Sequence[str] = JANEAUSTEN_BOOKS) -> Iterator[str]:
    """Sentences of Jane Austen's six novels (R's janeaustenr, Project Gutenberg text without its licence).

    Each book is a character vector of lines; paragraphs are separated by empty lines. Headings ("CHAPTER I",
    "VOLUME II", the title) are single-line all-capitals paragraphs and are skipped; all-capitals words inside
    a paragraph are emphasis (the e-texts' rendering of italics) and are lower-cased.
    """
    for book in books:
        for para in _paragraphs(_r_dataset("r-cran-janeaustenr", "janeaustenr", book)):
            if para.upper() == para:
                continue
            for s in split_sentences(recase_emphasis(para)):
                yield clean_for_speech(s)


def fortunes_raw(fortune_dir: Path = FORTUNE_DIR) -> Iterator[str]:
    """Sentences of the fortune cookies (fortunes + fortunes-min), files in name order.

    A file holds cookies separated by lines of ``%``. Attribution lines (``-- Author``), lines indented by a
    tab (titles, poem layout) that start a cookie, and "Q:"/"A:" prefixes are removed; each paragraph is split
    into sentences. Only the plain-text cookie files are read (not ``*.dat`` indexes, ``*.u8`` links, or
    the ``off/`` offensive section, which Debian ships separately in fortunes-off).
    """
    if not fortune_dir.is_dir():
        raise FileNotFoundError(f"{fortune_dir} not found: install the Debian packages fortunes fortune-mod")
    for path in sorted(fortune_dir.iterdir()):
        if path.suffix or path.is_symlink() or not path.is_file() or path.name in _FORTUNE_SKIP:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for cookie in re.split(r"^%\s*$", text, flags=re.M):
            lines = [ln for ln in cookie.splitlines() if not re.match(r"^\s*--", ln)]
            lines = [re.sub(r"^\s*[QA]:\s*", "", ln) for ln in lines]
            for para in _paragraphs(lines):
                for s in split_sentences(para):
                    yield clean_for_speech(s)


def gcide_raw(path: Path = GCIDE_DICT) -> Iterator[str]:
    """Quotations in the GNU Collaborative International Dictionary of English (Webster 1913 + additions).

    Definitions themselves are fragments ("The quality of being absolute; ..."), so only quotations are taken:
    block quotations (lines indented by 8+ spaces, ended by an attribution line ``--Author.``) and inline quotes
    (``"..." --Author``). Elided quotations (". . .") are split at the ellipsis. The dictd file is dictzip, which
    gzip reads.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install the Debian package dict-gcide")
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    quotes: list[str] = []
    block: list[str] = []
    para: list[str] = []
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        stripped = line.strip()
        if indent >= 20 and stripped.startswith("--"):  # attribution of a block quotation
            if block:
                quotes.append(" ".join(block))
            block = []
            continue
        if indent >= 8 and stripped and not stripped.startswith("["):
            block.append(stripped)
        else:
            block = []
        if indent >= 3 and stripped:
            para.append(stripped)
        elif para:
            quotes.extend(re.findall(r'"([^"]{10,}?)"\s*--', " ".join(para)))
            para = []
    for quote in quotes:
        for piece in re.split(r"\s*\.\s\.\s\.\s*\.?\s*", quote):
            for s in split_sentences(piece):
                yield clean_for_speech(s)


SOURCES: dict[str, Callable[[], Iterator[str]]] = {
    "austen": austen_raw,
    "harvard": harvard_raw,
    "wordnet": wordnet_raw,
    "fortunes": fortunes_raw,
    "gcide": gcide_raw,
}
"""Every source by name: its raw sentence reader."""


@functools.lru_cache(maxsize=16)
def load_source(name: str, min_words: int = 4, max_words: int = 30) -> tuple[Sentence, ...]:
    """Normalized sentences of one source of ``min_words``..``max_words`` words, unique by transcript, in source
    order (cached: a corpus build reads each source once)."""
    if name not in SOURCES:
        raise ValueError(f"unknown text source {name!r}; sources: {', '.join(SOURCES)}")
    lexicon = cmu_lexicon()
    seen: dict[str, Sentence] = {}
    for raw in SOURCES[name]():
        sentence = normalize_sentence(raw, lexicon)
        if sentence is not None and min_words <= len(sentence.words) <= max_words:
            seen.setdefault(sentence.transcript, sentence)
    return tuple(seen.values())


def spoken_pool(sources: Sequence[str], min_words: int = 4, max_words: int = 30) -> tuple[Sentence, ...]:
    """The sentences a corpus may speak: every source's, unique by transcript, sorted by transcript.

    Sorting (instead of source order) makes the pool independent of how the sources are listed; uniqueness is by
    transcript so that two spellings of one sentence never straddle a train/test split.
    """
    pool = {s.transcript: s for name in sources for s in load_source(name, min_words, max_words)}
    return tuple(pool[t] for t in sorted(pool))


def _contains_any(words: tuple[str, ...], by_bigram: Mapping[tuple[str, str], list[tuple[str, ...]]]) -> bool:
    """True when one of the indexed word sequences occurs contiguously in ``words`` (indexed by first bigram)."""
    for i in range(len(words) - 1):
        for candidate in by_bigram.get((words[i], words[i + 1]), ()):
            if words[i:i + len(candidate)] == candidate:
                return True
    return False


def lm_sentences(sources: Sequence[str], exclude: Iterable[Sequence[str]], min_words: int = 4,
                 max_words: int = 30) -> list[Sentence]:
    """All sentences of ``sources`` (in that order), de-duplicated by transcript, minus held-out text.

    ``exclude`` holds the word sequences of the dev and test sentences. A sentence is dropped when it equals one
    of them or contains one as a contiguous word sequence (a quotation sometimes embeds a held-out sentence in a
    longer one), so that no dev or test sentence leaks into the LM.
    """
    by_bigram: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    for s in exclude:
        words = tuple(w.upper() for w in s)
        if len(words) >= 2:
            by_bigram.setdefault((words[0], words[1]), []).append(words)
    out: dict[str, Sentence] = {}
    for name in sources:
        for sentence in load_source(name, min_words, max_words):
            if not _contains_any(sentence.words, by_bigram):
                out.setdefault(sentence.transcript, sentence)
    return list(out.values())
