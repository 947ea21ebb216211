"""Dict and lang preparation: lexicon contents, symbol tables, topology, and what L.fst / L_disambig.fst accept."""
from __future__ import annotations

import json
import math
from pathlib import Path

import kaldi_hmm_gmm as khg
import kaldifst
import pytest

from decoding.lang import (
    ARPABET,
    LexiconConfig,
    LangConfig,
    load_lang,
    prepare_dict,
    prepare_lang,
    read_lexicon,
    read_sentences,
)
from features.errors import InputError

# RED and READ share R EH D (homophones), and R EH D is a prefix of REDDEN: all three need #n symbols.
LEXICON = """<UNK> SPN
READ R EH D
READ R IY D
RED R EH D
REDDEN R EH D AH N
"""
NONSIL = ["AH", "D", "EH", "IY", "N", "R"]


@pytest.fixture
def lang_dir(tmp_path: Path) -> Path:
    dict_dir = tmp_path / "dict"
    dict_dir.mkdir()
    (dict_dir / "lexicon.txt").write_text(LEXICON)
    (dict_dir / "silence_phones.txt").write_text("SIL\nSPN\n")
    (dict_dir / "optional_silence.txt").write_text("SIL\n")
    (dict_dir / "nonsilence_phones.txt").write_text("".join(f"{p}\n" for p in NONSIL))
    (dict_dir / "extra_questions.txt").write_text("SIL SPN\n")
    prepare_lang(dict_dir, tmp_path / "lang", LangConfig(sil_prob=0.5))
    return tmp_path / "lang"


def _table(path: Path) -> dict[str, int]:
    return {s: int(i) for s, i in (line.split() for line in path.read_text().splitlines())}


def _transduce(fst_path: Path, phones: list[str], lang_dir: Path) -> tuple[list[str], float] | None:
    """Best (words, cost) for the phone string through the lexicon FST, or None if it is rejected."""
    lang = load_lang(lang_dir)
    lex = kaldifst.StdVectorFst.read(str(fst_path))
    kaldifst.arcsort(lex, sort_type="ilabel")
    composed = kaldifst.compose(kaldifst.make_linear_acceptor([lang.phones[p] for p in phones]), lex)
    if composed.num_states == 0:
        return None
    ok, _, olabels, weight = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(composed))
    assert ok
    return [lang.word_names[w] for w in olabels], weight.value


def test_symbol_tables_follow_kaldi_order(lang_dir: Path) -> None:
    phones = _table(lang_dir / "phones.txt")
    assert list(phones)[:3] == ["<eps>", "SIL", "SPN"] and phones["<eps>"] == 0
    assert list(phones)[3:9] == NONSIL
    # #1, #2 for the two R EH D homophones, #3 after optional silence, #0 for G's back-off
    assert list(phones)[9:] == ["#0", "#1", "#2", "#3"]
    words = _table(lang_dir / "words.txt")
    assert list(words) == ["<eps>", "READ", "RED", "REDDEN", "<UNK>", "#0", "<s>", "</s>"]
    assert list(words.values()) == list(range(len(words)))
    lang = load_lang(lang_dir)
    assert lang.oov_word == "<UNK>" and lang.oov_id == words["<UNK>"]
    assert lang.phone_disambig == [phones[f"#{i}"] for i in range(4)]
    assert lang.word_disambig == words["#0"]
    assert lang.silence_phones == [1, 2] and lang.optional_silence == 1
    assert (lang_dir / "phones" / "roots.txt").read_text().splitlines()[0] == "shared split SIL"


def test_topology_has_three_state_phones_and_five_state_silence(lang_dir: Path) -> None:
    topo = khg.HmmTopology()
    topo.read((lang_dir / "topo").read_text())
    lang = load_lang(lang_dir)
    assert sorted(topo.phones) == lang.real_phones
    classes = topo.get_phone_to_num_pdf_classes()
    assert {classes[p] for p in lang.nonsilence_phones} == {3}
    assert {classes[p] for p in lang.silence_phones} == {5}


def test_lexicon_fst_accepts_pronunciations_with_optional_silence(lang_dir: Path) -> None:
    lex = lang_dir / "L.fst"
    half = -math.log(0.5)
    words, cost = _transduce(lex, ["R", "IY", "D"], lang_dir)
    assert words == ["READ"] and cost == pytest.approx(2 * half)  # no silence before, none after
    words, cost = _transduce(lex, ["SIL", "R", "IY", "D", "SIL"], lang_dir)
    assert words == ["READ"] and cost == pytest.approx(2 * half)  # silence before and after: same costs
    words, _ = _transduce(lex, ["SIL", "R", "EH", "D", "AH", "N", "SIL", "R", "IY", "D"], lang_dir)
    assert words == ["REDDEN", "READ"]
    assert _transduce(lex, ["SPN"], lang_dir)[0] == ["<UNK>"]
    assert _transduce(lex, ["SIL", "SIL", "R", "IY", "D"], lang_dir) is None  # one optional silence at most
    assert _transduce(lex, ["R", "IY"], lang_dir) is None
    assert _transduce(lex, ["SIL"], lang_dir)[0] == []  # an all-silence utterance has an empty transcript
    assert _transduce(lex, ["SIL", "SIL"], lang_dir) is None


def test_lexicon_disambig_marks_homophones_and_prefixes(lang_dir: Path) -> None:
    lex = lang_dir / "L_disambig.fst"
    assert _transduce(lex, ["R", "EH", "D"], lang_dir) is None  # homophones need their #n
    first, second = _transduce(lex, ["R", "EH", "D", "#1"], lang_dir)[0], _transduce(lex, ["R", "EH", "D", "#2"],
                                                                                     lang_dir)[0]
    assert sorted(first + second) == ["READ", "RED"]
    assert _transduce(lex, ["R", "IY", "D"], lang_dir)[0] == ["READ"]  # unique, not a prefix: no #n
    assert _transduce(lex, ["R", "EH", "D", "AH", "N"], lang_dir)[0] == ["REDDEN"]
    # optional silence is followed by #3; #0 passes through (G's back-off symbol) as a word-side #0
    assert _transduce(lex, ["SIL", "#3", "R", "IY", "D"], lang_dir)[0] == ["READ"]
    assert _transduce(lex, ["SIL", "R", "IY", "D"], lang_dir) is None
    assert _transduce(lex, ["R", "IY", "D", "#0"], lang_dir)[0] == ["READ", "#0"]


def test_position_dependent_phones(tmp_path: Path, lang_dir: Path) -> None:
    prepare_lang(lang_dir.parent / "dict", tmp_path / "lang_pos", LangConfig(position_dependent_phones=True))
    phones = _table(tmp_path / "lang_pos" / "phones.txt")
    assert {"R_B", "R_E", "R_I", "R_S", "SIL", "SIL_B", "SPN_S"} <= set(phones) and "R" not in phones
    words, _ = _transduce(tmp_path / "lang_pos" / "L.fst", ["R_B", "IY_I", "D_E"], tmp_path / "lang_pos")
    assert words == ["READ"]
    assert _transduce(tmp_path / "lang_pos" / "L.fst", ["SPN_S"], tmp_path / "lang_pos")[0] == ["<UNK>"]


def test_prepare_dict_uses_cmudict_without_stress_and_reports_oovs(tmp_path: Path) -> None:
    (tmp_path / "text").write_text("utt-1 READ THE BOOK\nutt-2 ZORBLAXT READ\n")
    (tmp_path / "extra.txt").write_text("THE RED BOOK\n")
    report = prepare_dict([tmp_path / "text", tmp_path / "extra.txt"], tmp_path / "dict", LexiconConfig())
    lexicon = read_lexicon(tmp_path / "dict" / "lexicon.txt")
    prons = {}
    for word, pron in lexicon:
        prons.setdefault(word, []).append(pron)
    assert set(prons) == {"<UNK>", "READ", "THE", "BOOK", "RED", "ZORBLAXT"}  # no utterance ids
    assert prons["READ"] == [("R", "EH", "D"), ("R", "IY", "D")]  # both kept, stress removed
    assert prons["<UNK>"] == [("SPN",)]
    assert report["count"] == 1 and list(report["g2p"]) == ["ZORBLAXT"]
    assert prons["ZORBLAXT"][0][0] == "Z" and set(prons["ZORBLAXT"][0]) <= set(ARPABET)
    assert json.loads((tmp_path / "dict" / "oov_report.json").read_text()) == report
    used = {p for w, ps in prons.items() if w != "<UNK>" for pron in ps for p in pron}
    nonsil = (tmp_path / "dict" / "nonsilence_phones.txt").read_text().split()
    assert set(nonsil) == used and nonsil == [p for p in ARPABET if p in used]
    assert (tmp_path / "dict" / "silence_phones.txt").read_text().split() == ["SIL", "SPN"]

    report = prepare_dict([tmp_path / "text"], tmp_path / "dict_spn", LexiconConfig(oov_policy="spn"))
    assert report["mapped_to_unk"] == ["ZORBLAXT"] and report["g2p"] == {}
    assert "ZORBLAXT" not in {w for w, _ in read_lexicon(tmp_path / "dict_spn" / "lexicon.txt")}

    prepare_dict([tmp_path / "extra.txt"], tmp_path / "dict_stress", LexiconConfig(keep_stress=True))
    stressed = dict(read_lexicon(tmp_path / "dict_stress" / "lexicon.txt"))
    assert stressed["RED"] == ("R", "EH1", "D")
    assert "EH1" in (tmp_path / "dict_stress" / "nonsilence_phones.txt").read_text().split()


def test_read_sentences_tells_kaldi_text_from_plain_text(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("spk1-001 HELLO WORLD\nspk1-002 GOOD\n")
    (tmp_path / "b.txt").write_text("HELLO WORLD\n\nGOOD MORNING\n")
    assert read_sentences(tmp_path / "a.txt") == [["HELLO", "WORLD"], ["GOOD"]]
    assert read_sentences(tmp_path / "b.txt") == [["HELLO", "WORLD"], ["GOOD", "MORNING"]]
    assert read_sentences(tmp_path / "a.txt", "plain")[0] == ["spk1-001", "HELLO", "WORLD"]


def test_bad_dict_input_names_the_file(tmp_path: Path) -> None:
    dict_dir = tmp_path / "dict"
    dict_dir.mkdir()
    (dict_dir / "lexicon.txt").write_text("<UNK> SPN\nCAT K AE T\nDOG\n")
    with pytest.raises(InputError, match=r"lexicon.txt:3"):
        read_lexicon(dict_dir / "lexicon.txt")
    (dict_dir / "lexicon.txt").write_text("<UNK> SPN\nCAT K AE T\n")
    (dict_dir / "silence_phones.txt").write_text("SIL\nSPN\n")
    (dict_dir / "optional_silence.txt").write_text("SIL\n")
    (dict_dir / "nonsilence_phones.txt").write_text("K\nAE\n")
    with pytest.raises(InputError, match="undeclared phones"):
        prepare_lang(dict_dir, tmp_path / "lang")
