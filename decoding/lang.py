"""Pronunciation dictionary and Kaldi ``lang`` directory (Kaldi's ``prepare_dict`` + ``prepare_lang.sh``).

``prepare_dict`` turns the words of some texts into a Kaldi dict dir with CMUdict pronunciations (stress
removed, every pronunciation kept), pronouncing the rest with an offline letter-to-sound tool or mapping them to
``<UNK>``. ``prepare_lang`` turns a dict dir into a lang dir: symbol tables, the HMM topology and the lexicon
transducers L.fst / L_disambig.fst with the semantics of Kaldi's ``make_lexicon_fst`` (optional silence between
words, ``#n`` disambiguation symbols for homophones and prefixes, ``#0`` self-loops that let G's back-off
symbol through). Kaldi tools can read every file written here.
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import kaldifst

from decoding.lexicon import ARPABET, cmu_lexicon, flite_pronunciation, normalize_phones, strip_stress
from features.atomic import atomic_dir, atomic_write, write_text_atomic
from features.errors import InputError

__all__ = [
    "ARPABET",
    "LexiconConfig",
    "Lang",
    "LangConfig",
    "load_lang",
    "prepare_dict",
    "prepare_lang",
    "read_lexicon",
    "read_sentences",
]

logger = logging.getLogger(__name__)

SILENCE_PHONES = ("SIL", "SPN")
OPTIONAL_SILENCE = "SIL"
UNK_WORD = "<UNK>"
UNK_PHONE = "SPN"
_WORD_POSITIONS = ("_B", "_E", "_I", "_S")


# ----------------------------------------------------------------------------------------------- texts
def _looks_like_kaldi_text(lines: Sequence[str]) -> bool:
    """True when every line starts with a token that cannot be a word of our UPPERCASE vocabulary.

    Utterance ids (``spk-0001``, ``1089-134686-0000``) contain digits, lower case or ``_``/``-``, while words
    are upper case letters and apostrophes, so the first token tells a Kaldi ``text`` file from plain sentences.
    """
    heads = [line.split(maxsplit=1)[0] for line in lines if line.strip()]
    return bool(heads) and all(re.search(r"[^A-Z']", h) for h in heads) and len(set(heads)) == len(heads)


def read_sentences(path: Path, text_format: str = "auto") -> list[list[str]]:
    """Word sequences of a Kaldi ``text`` file (``<utt> WORDS``) or of a plain file with one sentence per line.

    ``text_format`` is ``"kaldi"``, ``"plain"`` or ``"auto"`` (a file named ``text`` or whose first tokens all
    look like utterance ids is read as Kaldi text). Empty lines of a plain file are skipped; a Kaldi text line
    with an id and no words is an empty utterance.
    """
    path = Path(path)
    if text_format not in ("auto", "kaldi", "plain"):
        raise ValueError(f"text_format must be 'auto', 'kaldi' or 'plain', got {text_format!r}")
    if not path.is_file():
        raise InputError("missing text file", path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text: {e}", path) from e
    kaldi = text_format == "kaldi" or (text_format == "auto" and (path.name == "text" or _looks_like_kaldi_text(lines)))
    sentences = []
    for line in lines:
        tokens = line.split()
        if kaldi and tokens:
            tokens = tokens[1:]
        if tokens or kaldi and line.strip():
            sentences.append(tokens)
    return sentences


# ----------------------------------------------------------------------------------------------- dict
@dataclass
class LexiconConfig:
    """How words become pronunciations.

    ``oov_policy``: ``"g2p"`` pronounces words missing from CMUdict with flite's offline letter-to-sound rules
    (``t2p``), ``"spn"`` maps them to ``<UNK>``, pronounced ``SPN`` (spoken noise). ``keep_stress`` keeps
    CMUdict's stress digits; it is off because 39 phones x 3 stress levels triple the phone inventory and split
    the training data of every vowel three ways, which a corpus of a few hours cannot afford, while the decision
    tree's context questions recover much of what stress predicts about a vowel's acoustics. ``text_format``:
    how the text files are read (see :func:`read_sentences`).
    """

    oov_policy: str = "g2p"
    keep_stress: bool = False
    text_format: str = "auto"


def prepare_dict(text_files: Sequence[Path], dict_dir: Path, cfg: LexiconConfig | None = None) -> dict:
    """Write a Kaldi dict dir covering every word of ``text_files``; return (and write) the OOV report.

    lexicon.txt holds each word's CMUdict pronunciations (all of them, stress removed unless ``keep_stress``,
    duplicates that only differed in stress merged) plus ``<UNK> SPN``. Words CMUdict lacks are pronounced by
    ``t2p`` or left out (so they map to ``<UNK>``), as ``cfg.oov_policy`` says; ``oov_report.json`` lists them.
    nonsilence_phones.txt lists only phones some pronunciation uses, so no phone gets an HMM that no word
    needs. extra_questions.txt holds the silence set (and, with stress, one set per stress level), the
    questions Kaldi's recipes add to those the tree builder finds by clustering.
    """
    cfg = cfg or LexiconConfig()
    if cfg.oov_policy not in ("g2p", "spn"):
        raise ValueError(f"oov_policy must be 'g2p' or 'spn', got {cfg.oov_policy!r}")
    words: Counter[str] = Counter()
    for path in text_files:
        for sentence in read_sentences(Path(path), cfg.text_format):
            words.update(w.upper() for w in sentence)
    words.pop(UNK_WORD, None)
    cmu = cmu_lexicon()
    lexicon: dict[str, list[tuple[str, ...]]] = {}
    g2p: dict[str, list[str]] = {}
    mapped: list[str] = []
    for word in sorted(words):
        prons = [normalize_phones(p, cfg.keep_stress) for p in cmu.get(word, [])]
        if not prons and cfg.oov_policy == "g2p":
            pron = flite_pronunciation(word, cfg.keep_stress)
            if pron:
                g2p[word] = list(pron)
                prons = [pron]
        if not prons:
            mapped.append(word)
            continue
        lexicon[word] = list(dict.fromkeys(prons))
    report = {
        "policy": cfg.oov_policy,
        "num_words": len(words),
        "count": len(g2p) + len(mapped),
        "g2p": g2p,
        "mapped_to_unk": mapped,
        "mapped_to_unk_tokens": sum(words[w] for w in mapped),
    }

    used = {p for prons in lexicon.values() for pron in prons for p in pron}
    base_of = {p: strip_stress(p) for p in used}
    nonsil_lines = [" ".join(sorted(p for p in used if base_of[p] == base)) for base in ARPABET
                    if any(b == base for b in base_of.values())]
    extra_questions = [" ".join(SILENCE_PHONES)]
    if cfg.keep_stress:
        for level in "012":
            stressed = sorted(p for p in used if p.endswith(level))
            if stressed:
                extra_questions.append(" ".join(stressed))

    with atomic_dir(dict_dir) as tmp:
        with atomic_write(tmp / "lexicon.txt") as f:
            f.write(f"{UNK_WORD} {UNK_PHONE}\n")
            for word, prons in lexicon.items():
                for pron in prons:
                    f.write(f"{word} {' '.join(pron)}\n")
        write_text_atomic(tmp / "silence_phones.txt", "".join(f"{p}\n" for p in SILENCE_PHONES))
        write_text_atomic(tmp / "optional_silence.txt", f"{OPTIONAL_SILENCE}\n")
        write_text_atomic(tmp / "nonsilence_phones.txt", "".join(f"{line}\n" for line in nonsil_lines))
        write_text_atomic(tmp / "extra_questions.txt", "".join(f"{line}\n" for line in extra_questions))
        write_text_atomic(tmp / "oov_report.json", json.dumps(report, indent=1) + "\n")
    logger.info("dict %s: %d words, %d by g2p, %d mapped to %s", dict_dir, len(words), len(g2p), len(mapped),
                UNK_WORD)
    return report


def read_lexicon(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(word, phones) entries of a Kaldi lexicon.txt, in file order; a word with no phones is an error."""
    path = Path(path)
    if not path.is_file():
        raise InputError("missing lexicon", path)
    entries = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise InputError(f"word {parts[0]!r} has no pronunciation", path, n)
        if any(_is_float(t) for t in parts[1:2]):
            raise InputError("pronunciation probabilities (lexiconp.txt) are not supported", path, n)
        entries.append((parts[0], tuple(parts[1:])))
    return entries


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _read_phone_lines(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise InputError("missing phone list", path)
    return [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.split()]


# ----------------------------------------------------------------------------------------------- lang
@dataclass
class LangConfig:
    """Options of Kaldi's ``prepare_lang.sh`` that we support.

    ``sil_prob``: probability of optional silence at the start and after each word (Kaldi's default 0.5).
    ``position_dependent_phones``: word-position variants ``_B _E _I _S`` of every phone (Kaldi's default is on;
    ours is off because the variants quadruple the contexts a tiny corpus must fill). ``num_nonsil_states`` and
    ``num_sil_states``: HMM states of the left-to-right phone topology and of the ergodic silence topology.
    """

    sil_prob: float = 0.5
    position_dependent_phones: bool = False
    num_nonsil_states: int = 3
    num_sil_states: int = 5


def _position_variants(phone: str) -> list[str]:
    return [phone + s for s in _WORD_POSITIONS]


def _with_positions(pron: tuple[str, ...]) -> tuple[str, ...]:
    if len(pron) == 1:
        return (pron[0] + "_S",)
    return (pron[0] + "_B",) + tuple(p + "_I" for p in pron[1:-1]) + (pron[-1] + "_E",)


def _add_disambig(lexicon: list[tuple[str, tuple[str, ...]]]) -> tuple[list[tuple[str, tuple[str, ...]]], int]:
    """Append ``#1, #2, ...`` to pronunciations that are shared by several words or are a prefix of another.

    Kaldi's ``add_lex_disambig.pl``: after this, no phone sequence of L_disambig is a prefix of another, so
    ``L o G`` is determinizable. Returns the new lexicon and the highest ``#n`` used (0 if none).
    """
    count = Counter(pron for _, pron in lexicon)
    prefixes = {pron[:i] for _, pron in lexicon for i in range(1, len(pron))}
    next_index: Counter[tuple[str, ...]] = Counter()
    out, max_disambig = [], 0
    for word, pron in lexicon:
        if count[pron] > 1 or pron in prefixes:
            next_index[pron] += 1
            max_disambig = max(max_disambig, next_index[pron])
            pron = pron + (f"#{next_index[pron]}",)
        out.append((word, pron))
    return out, max_disambig


def _topology_text(nonsil_ids: Sequence[int], sil_ids: Sequence[int], cfg: LangConfig) -> str:
    """Kaldi text topology as ``utils/gen_topo.pl`` writes it.

    Non-silence phones: ``num_nonsil_states`` left-to-right states, self-loop 0.75. Silence: the first state
    may jump to any of the first ``n-1`` states, the middle states are fully connected among states 1..n-1,
    the last state loops or exits; this lets silence model pauses of very different lengths.
    """
    lines = ["<Topology>", "<TopologyEntry>", "<ForPhones>", " ".join(map(str, nonsil_ids)), "</ForPhones>"]
    n = cfg.num_nonsil_states
    for s in range(n):
        lines.append(f"<State> {s} <PdfClass> {s} <Transition> {s} 0.75 <Transition> {s + 1} 0.25 </State>")
    lines += [f"<State> {n} </State>", "</TopologyEntry>"]
    lines += ["<TopologyEntry>", "<ForPhones>", " ".join(map(str, sil_ids)), "</ForPhones>"]
    n = cfg.num_sil_states
    if n == 1:
        lines.append("<State> 0 <PdfClass> 0 <Transition> 0 0.75 <Transition> 1 0.25 </State>")
    else:
        p = 1.0 / (n - 1)
        lines.append("<State> 0 <PdfClass> 0 " + " ".join(f"<Transition> {d} {p:g}" for d in range(n - 1))
                     + " </State>")
        for s in range(1, n - 1):
            lines.append(f"<State> {s} <PdfClass> {s} " + " ".join(f"<Transition> {d} {p:g}" for d in range(1, n))
                         + " </State>")
        lines.append(f"<State> {n - 1} <PdfClass> {n - 1} <Transition> {n - 1} 0.75 <Transition> {n} 0.25 "
                     "</State>")
    lines += [f"<State> {n} </State>", "</TopologyEntry>", "</Topology>"]
    return "\n".join(lines) + "\n"


def _lexicon_fst(lexicon: Sequence[tuple[str, tuple[str, ...]]], phones: dict[str, int], words: dict[str, int],
                 sil_prob: float, sil_phone: str, sil_disambig: str | None) -> kaldifst.StdVectorFst:
    """The lexicon transducer (phones in, words out) of Kaldi's ``make_lexicon_fst``.

    With ``0 < sil_prob < 1``: a start state that goes to the loop state directly (cost -log(1-p)) or over
    one silence phone (cost -log p); every pronunciation leaves the loop state with its word on the first arc
    and returns to the loop state (cost -log(1-p)) or to the silence state (cost -log p) whose silence arc
    leads back to the loop state. With ``sil_disambig`` (L_disambig.fst) every silence arc is followed by that
    symbol, which keeps LG determinizable. Only the loop state is final.
    """
    fst = kaldifst.StdVectorFst()
    arc = kaldifst.StdArc

    def add(src: int, dst: int, ilabel: int, olabel: int, cost: float = 0.0) -> None:
        fst.add_arc(src, arc(ilabel, olabel, cost, dst))

    if not 0.0 <= sil_prob < 1.0:
        raise ValueError(f"sil_prob must be in [0, 1), got {sil_prob}")
    start = fst.add_state()
    fst.start = start
    if sil_prob == 0.0:
        loop, sil_state, nosil_cost, sil_cost = start, None, 0.0, 0.0
    else:
        loop, sil_state = fst.add_state(), fst.add_state()
        nosil_cost, sil_cost = -math.log(1.0 - sil_prob), -math.log(sil_prob)
        sil = phones[sil_phone]
        add(start, loop, 0, 0, nosil_cost)
        if sil_disambig is None:
            add(start, loop, sil, 0, sil_cost)
            add(sil_state, loop, sil, 0)
        else:
            disambig_state = fst.add_state()
            add(start, disambig_state, sil, 0, sil_cost)
            add(sil_state, disambig_state, sil, 0)
            add(disambig_state, loop, phones[sil_disambig], 0)
    for word, pron in lexicon:
        src, olabel = loop, words[word]
        for i, p in enumerate(pron):
            if i < len(pron) - 1:
                dst = fst.add_state()
                add(src, dst, phones[p], olabel)
                src, olabel = dst, 0
            elif sil_state is None or p == sil_phone:  # no optional silence after a silence word
                add(src, loop, phones[p], olabel)
            else:
                add(src, loop, phones[p], olabel, nosil_cost)
                add(src, sil_state, phones[p], olabel, sil_cost)
    fst.set_final(loop, 0.0)
    return fst


def prepare_lang(dict_dir: Path, lang_dir: Path, cfg: LangConfig | None = None) -> None:
    """Write a Kaldi lang dir for ``dict_dir`` (what ``utils/prepare_lang.sh <dict> "<UNK>" <tmp> <lang>`` makes).

    phones.txt numbers ``<eps>``, the silence phones, the non-silence phones, then ``#0..#k`` (``#0`` is G's
    back-off symbol, ``#k`` follows optional silence in L_disambig). words.txt numbers ``<eps>``, the words,
    ``<UNK>``, ``#0``, ``<s>``, ``</s>``. Also: topo; L.fst (for training graphs) and L_disambig.fst (with
    ``#n`` and ``#0`` self-loops, olabel-sorted, for HCLG); phones/{silence,nonsilence,disambig,optional_silence,
    context_indep,roots,sets,extra_questions}.{txt,int}; oov.txt/oov.int.
    """
    cfg = cfg or LangConfig()
    dict_dir = Path(dict_dir)
    lexicon = read_lexicon(dict_dir / "lexicon.txt")
    sil_sets = _read_phone_lines(dict_dir / "silence_phones.txt")
    nonsil_sets = _read_phone_lines(dict_dir / "nonsilence_phones.txt")
    opt_sil = _read_phone_lines(dict_dir / "optional_silence.txt")
    extra_path = dict_dir / "extra_questions.txt"
    extra = _read_phone_lines(extra_path) if extra_path.is_file() else []
    if len(opt_sil) != 1 or len(opt_sil[0]) != 1:
        raise InputError("expected exactly one optional silence phone", dict_dir / "optional_silence.txt")
    sil_phone = opt_sil[0][0]
    known = {p for s in sil_sets + nonsil_sets for p in s}
    if sil_phone not in known:
        raise InputError(f"optional silence {sil_phone!r} is not a silence phone", dict_dir / "optional_silence.txt")
    for word, pron in lexicon:
        missing = [p for p in pron if p not in known]
        if missing:
            raise InputError(f"word {word!r} uses undeclared phones {missing}", dict_dir / "lexicon.txt")
    if not any(w == UNK_WORD for w, _ in lexicon):
        raise InputError(f"lexicon has no {UNK_WORD} entry (the OOV word)", dict_dir / "lexicon.txt")

    if cfg.position_dependent_phones:
        lexicon = [(w, _with_positions(p)) for w, p in lexicon]
        sil_sets = [[q for p in s for q in [p] + _position_variants(p)] for s in sil_sets]
        nonsil_sets = [[q for p in s for q in _position_variants(p)] for s in nonsil_sets]
        extra = ([[q for p in s for q in [p] + _position_variants(p)] for s in extra]
                 + [[p for s in sil_sets for p in s if not p.endswith(_WORD_POSITIONS)]]
                 + [[p for s in sil_sets + nonsil_sets for p in s if p.endswith(pos)] for pos in _WORD_POSITIONS])
    lexicon_disambig, max_disambig = _add_disambig(lexicon)
    num_disambig = max_disambig + 1  # one more for the symbol after optional silence

    sil_phones = [p for s in sil_sets for p in s]
    nonsil_phones = [p for s in nonsil_sets for p in s]
    disambig = [f"#{i}" for i in range(num_disambig + 1)]
    phone_list = ["<eps>"] + sil_phones + nonsil_phones + disambig
    phones = {p: i for i, p in enumerate(phone_list)}
    if len(phones) != len(phone_list):
        raise InputError("a phone is listed twice", dict_dir / "nonsilence_phones.txt")
    word_list = ["<eps>"] + sorted({w for w, _ in lexicon} - {UNK_WORD}) + [UNK_WORD, "#0", "<s>", "</s>"]
    words = {w: i for i, w in enumerate(word_list)}

    lang_dir = Path(lang_dir)
    with atomic_dir(lang_dir) as tmp:
        (tmp / "phones").mkdir()
        write_text_atomic(tmp / "phones.txt", "".join(f"{p} {i}\n" for i, p in enumerate(phone_list)))
        write_text_atomic(tmp / "words.txt", "".join(f"{w} {i}\n" for i, w in enumerate(word_list)))
        write_text_atomic(tmp / "topo", _topology_text([phones[p] for p in nonsil_phones],
                                                        [phones[p] for p in sil_phones], cfg))
        write_text_atomic(tmp / "oov.txt", f"{UNK_WORD}\n")
        write_text_atomic(tmp / "oov.int", f"{words[UNK_WORD]}\n")
        phone_files = {
            "silence": [sil_phones],
            "nonsilence": [nonsil_phones],
            "disambig": [disambig],
            "optional_silence": [[sil_phone]],
            "context_indep": [sil_phones],
            "sets": sil_sets + nonsil_sets,
            "extra_questions": extra,
            "wdisambig_phones": [["#0"]],
        }
        for name, sets in phone_files.items():
            one_per_line = name in ("silence", "nonsilence", "disambig", "context_indep")
            rows = [[p] for s in sets for p in s] if one_per_line else sets
            write_text_atomic(tmp / "phones" / f"{name}.txt", "".join(" ".join(r) + "\n" for r in rows))
            write_text_atomic(tmp / "phones" / f"{name}.int",
                              "".join(" ".join(str(phones[p]) for p in r) + "\n" for r in rows))
        roots = [("shared", "split", s) for s in sil_sets + nonsil_sets]
        write_text_atomic(tmp / "phones" / "roots.txt", "".join(f"{a} {b} {' '.join(s)}\n" for a, b, s in roots))
        write_text_atomic(tmp / "phones" / "roots.int",
                          "".join(f"{a} {b} {' '.join(str(phones[p]) for p in s)}\n" for a, b, s in roots))
        write_text_atomic(tmp / "phones" / "wdisambig_words.int", f"{words['#0']}\n")

        lex_fst = _lexicon_fst(lexicon, phones, words, cfg.sil_prob, sil_phone, None)
        kaldifst.arcsort(lex_fst, sort_type="olabel")
        lex_fst.write(str(tmp / "L.fst"))
        lex_disambig = _lexicon_fst(lexicon_disambig, phones, words, cfg.sil_prob, sil_phone,
                                    f"#{num_disambig}" if cfg.sil_prob > 0 else None)
        kaldifst.add_self_loops(lex_disambig, isyms=[phones["#0"]], osyms=[words["#0"]])
        kaldifst.arcsort(lex_disambig, sort_type="olabel")
        lex_disambig.write(str(tmp / "L_disambig.fst"))
    logger.info("lang %s: %d phones, %d words, %d disambiguation symbols", lang_dir, len(sil_phones + nonsil_phones),
                len(word_list) - 5, len(disambig))


@dataclass
class Lang:
    """A lang dir in memory: what HMM training, graph building and decoding look up.

    Ids are those of phones.txt / words.txt; ``*_phones`` lists are phone ids; ``word_disambig`` is the id of
    ``#0`` in words.txt (G's back-off symbol), ``phone_disambig`` the ids of ``#0..#k`` in phones.txt.
    """

    lang_dir: Path
    phones: dict[str, int]
    words: dict[str, int]
    topo_text: str
    silence_phones: list[int]
    nonsilence_phones: list[int]
    optional_silence: int
    phone_disambig: list[int]
    word_disambig: int
    oov_word: str
    oov_id: int
    phone_names: dict[int, str] = field(init=False)
    word_names: dict[int, str] = field(init=False)

    def __post_init__(self) -> None:
        self.phone_names = {i: p for p, i in self.phones.items()}
        self.word_names = {i: w for w, i in self.words.items()}

    @property
    def real_phones(self) -> list[int]:
        """Phones with an HMM (no ``<eps>``, no ``#n``), sorted."""
        return sorted(self.silence_phones + self.nonsilence_phones)

    @property
    def lexicon_fst_path(self) -> Path:
        return self.lang_dir / "L.fst"

    @property
    def lexicon_disambig_fst_path(self) -> Path:
        return self.lang_dir / "L_disambig.fst"


def read_symbol_table(path: Path) -> dict[str, int]:
    """A Kaldi symbol table (``symbol id`` per line) as a dict; malformed lines raise InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError("missing symbol table", path)
    table: dict[str, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise InputError(f"expected '<symbol> <id>', got {line!r}", path, n)
        table[parts[0]] = int(parts[1])
    return table


def _read_ids(path: Path) -> list[int]:
    if not path.is_file():
        raise InputError("missing id list", path)
    ids = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not all(t.isdigit() for t in line.split()):
            raise InputError(f"expected integer ids, got {line!r}", path, n)
        ids += [int(t) for t in line.split()]
    return ids


def load_lang(lang_dir: Path) -> Lang:
    """Read a lang dir (ours or Kaldi's ``prepare_lang.sh`` output); missing or malformed files raise InputError."""
    lang_dir = Path(lang_dir)
    phones = read_symbol_table(lang_dir / "phones.txt")
    words = read_symbol_table(lang_dir / "words.txt")
    topo = lang_dir / "topo"
    if not topo.is_file():
        raise InputError("missing HMM topology", topo)
    oov_path = lang_dir / "oov.txt"
    oov = oov_path.read_text().split()[0] if oov_path.is_file() else UNK_WORD
    if oov not in words:
        raise InputError(f"OOV word {oov!r} is not in words.txt", oov_path)
    if "#0" not in words:
        raise InputError("words.txt has no #0 (G's back-off symbol)", lang_dir / "words.txt")
    opt_sil = _read_ids(lang_dir / "phones" / "optional_silence.int")
    if len(opt_sil) != 1:
        raise InputError("expected one optional silence phone", lang_dir / "phones" / "optional_silence.int")
    return Lang(
        lang_dir=lang_dir,
        phones=phones,
        words=words,
        topo_text=topo.read_text(),
        silence_phones=_read_ids(lang_dir / "phones" / "silence.int"),
        nonsilence_phones=_read_ids(lang_dir / "phones" / "nonsilence.int"),
        optional_silence=opt_sil[0],
        phone_disambig=_read_ids(lang_dir / "phones" / "disambig.int"),
        word_disambig=words["#0"],
        oov_word=oov,
        oov_id=words[oov],
    )
