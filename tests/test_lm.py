"""ARPA training on exactly the given texts, pruning, perplexity conventions and G.fst."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import kaldifst
import pytest
from kaldingram.ppl import compute_ppl
from kaldingram.prune import ArpaParser

from decoding.lang import LexiconConfig, LangConfig, load_lang, prepare_dict, prepare_lang
from decoding.lm import LmConfig, lm_vocabulary, make_lang_test, perplexity, train_lm
from features.errors import InputError

SUBJECTS = ["THE CAT", "A DOG", "THE BIRD", "MY FRIEND", "HER SISTER"]
VERBS = ["SAW", "LIKED", "FOUND", "CALLED"]
OBJECTS = ["THE HOUSE", "A TREE", "THE RIVER", "HIS COAT", "THE CAT"]
TRAIN = [f"{s} {v} {o}" for i, s in enumerate(SUBJECTS) for j, v in enumerate(VERBS) for k, o in enumerate(OBJECTS)
         if (i + j + k) % 3]
HELD_OUT = [f"{s} {v} {o}" for i, s in enumerate(SUBJECTS) for j, v in enumerate(VERBS)
            for k, o in enumerate(OBJECTS) if (i + j + k) % 3 == 0]

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], (str, Path)):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def texts(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "text").write_text("".join(f"utt-{i:03d} {s}\n" for i, s in enumerate(TRAIN[:40])))
    (tmp_path / "extra.txt").write_text("".join(f"{s}\n" for s in TRAIN[40:]))
    (tmp_path / "dev.txt").write_text("".join(f"{s} TOMORROW\n" for s in HELD_OUT))  # must never be read
    return {"text": tmp_path / "text", "extra": tmp_path / "extra.txt", "dev": tmp_path / "dev.txt"}


def test_train_lm_reads_only_the_given_texts(texts: dict[str, Path], tmp_path: Path) -> None:
    global _opened
    _opened = []
    try:
        arpa = train_lm([texts["text"], texts["extra"]], tmp_path / "lm", LmConfig(order=3))
    finally:
        opened, _opened = _opened, None
    inside = {Path(p).resolve() for p in opened if Path(p).resolve().is_relative_to(tmp_path.resolve())}
    allowed = {texts["text"].resolve(), texts["extra"].resolve()}
    assert inside - allowed, "train_lm opened none of its inputs?"
    assert all(p in allowed or p.is_relative_to((tmp_path / "lm").resolve()) for p in inside), inside
    vocab = lm_vocabulary(arpa)
    assert vocab == {w for s in TRAIN for w in s.split()} | {"<s>", "</s>"}
    assert "TOMORROW" not in vocab and not any(w.startswith("utt-") for w in vocab)
    assert (tmp_path / "lm" / "lm_train.txt").read_text().splitlines() == TRAIN


def test_perplexity_of_held_out_text_is_finite_and_follows_srilm(texts: dict[str, Path], tmp_path: Path) -> None:
    arpa = train_lm([texts["text"], texts["extra"]], tmp_path / "lm", LmConfig(order=3))
    assert not set(HELD_OUT) & set(TRAIN)
    (tmp_path / "held_out.txt").write_text("".join(f"{s}\n" for s in HELD_OUT))
    result = perplexity(arpa, tmp_path / "held_out.txt")
    assert result["sentences"] == len(HELD_OUT) and result["oovs"] == 0
    assert 1.0 < result["ppl"] < 30.0 and math.isfinite(result["ppl1"])
    reference = compute_ppl(ArpaParser().loadf(str(arpa), encoding="utf-8")[0], HELD_OUT)
    assert result["ppl"] == pytest.approx(reference["ppl"], rel=1e-9)
    (tmp_path / "reversed.txt").write_text("".join(" ".join(s.split()[::-1]) + "\n" for s in HELD_OUT))
    assert perplexity(arpa, tmp_path / "reversed.txt")["ppl"] > 3 * result["ppl"]  # word order matters

    # OOVs are counted and skipped (SRILM), not scored and not fatal
    with_oov = perplexity(arpa, texts["dev"])
    assert with_oov["oovs"] == len(HELD_OUT) and with_oov["words"] == result["words"] + len(HELD_OUT)
    assert with_oov["logprob"] < result["logprob"]  # </s> after an unknown word backs off further


def test_pruning_drops_ngrams(texts: dict[str, Path], tmp_path: Path) -> None:
    full = train_lm([texts["text"], texts["extra"]], tmp_path / "full", LmConfig(order=3, prune_threshold=0.0))
    pruned = train_lm([texts["text"], texts["extra"]], tmp_path / "pruned", LmConfig(order=3, prune_threshold=1e-2))
    counts = [dict(ArpaParser().loadf(str(p), encoding="utf-8")[0].counts()) for p in (full, pruned)]
    assert counts[1][1] == counts[0][1] and counts[1][3] < counts[0][3]
    assert full.read_text() == (tmp_path / "full" / "lm_unpruned.arpa").read_text()


def test_make_lang_test_compiles_g_with_backoff_disambiguation(texts: dict[str, Path], tmp_path: Path) -> None:
    prepare_dict([texts["text"], texts["extra"]], tmp_path / "dict", LexiconConfig(oov_policy="spn"))
    prepare_lang(tmp_path / "dict", tmp_path / "lang", LangConfig())
    arpa = train_lm([texts["text"], texts["extra"]], tmp_path / "lm", LmConfig(order=3))
    make_lang_test(tmp_path / "lang", arpa, tmp_path / "lang_test")
    out = tmp_path / "lang_test"
    assert (out / "L_disambig.fst").read_bytes() == (tmp_path / "lang" / "L_disambig.fst").read_bytes()
    assert (out / "lm.arpa").read_text() == arpa.read_text()
    lang = load_lang(out)
    g = kaldifst.StdVectorFst.read(str(out / "G.fst"))
    labels = {(a.ilabel, a.olabel) for s in kaldifst.StateIterator(g) for a in kaldifst.ArcIterator(g, s)}
    assert (lang.word_disambig, 0) in labels  # back-off arcs read #0
    assert all(i == o or (i == lang.word_disambig and o == 0) for i, o in labels)  # an acceptor otherwise
    used = {i for i, _ in labels}
    assert lang.words["<s>"] not in used and lang.words["</s>"] not in used  # they became epsilon / final
    assert {lang.words[w] for s in TRAIN for w in s.split()} <= used


def test_too_little_text_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "tiny.txt").write_text("")
    with pytest.raises(InputError, match="no sentences"):
        train_lm([tmp_path / "tiny.txt"], tmp_path / "lm")
