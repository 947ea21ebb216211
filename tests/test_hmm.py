"""Topology, transition model, training graphs, model I/O and phone splitting on a toy lang dir."""
from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np
import pytest
from gmm_toy import LEXICON, make_corpus, make_lang

from decoding import hmm
from decoding.align import equal_align_utterances, frame_contexts, phone_instances
from decoding.gmm_accum import diag_gmm
from decoding.lang import Lang, load_lang
from decoding.model_io import am_diag_gmm_bytes, transition_model_bytes
from features.errors import InputError


@pytest.fixture(scope="module")
def lang(tmp_path_factory: pytest.TempPathFactory) -> Lang:
    d = tmp_path_factory.mktemp("lang")
    make_lang(d)
    return load_lang(d)


@pytest.fixture(scope="module")
def mono(lang: Lang) -> tuple[khg.ContextDependency, khg.TransitionModel]:
    topo = hmm.make_topology(lang)
    ctx = hmm.monophone_tree(topo)
    return ctx, hmm.transition_model(ctx, topo)


def test_topology_and_transition_model(lang: Lang, mono) -> None:
    _, tm = mono
    sil, nonsil = lang.silence_phones, lang.nonsilence_phones
    # 5 pdfs for silence, 3 per other phone; transitions: silence 4+4+4+4+2, others 2+2+2.
    assert tm.num_pdfs == 5 * len(sil) + 3 * len(nonsil)
    assert tm.num_transition_ids == 18 * len(sil) + 6 * len(nonsil)
    tables = hmm.transition_tables(tm)
    # Every pdf belongs to exactly one phone in a monophone system.
    for pdf in range(tm.num_pdfs):
        assert len(set(tables.phone[1:][tables.pdf[1:] == pdf])) == 1
    # Each 3-state phone has exactly one transition into its final state, silence one too (state 4 -> 5).
    for phone in lang.real_phones:
        assert tables.ends_phone[1:][tables.phone[1:] == phone].sum() == 1
    # Initial probabilities come from the topology: nonsilence self-loops 0.75.
    log_probs = np.asarray(tm.__getstate__()[6])
    loops = np.flatnonzero(tables.is_self_loop & np.isin(tables.phone, nonsil))
    np.testing.assert_allclose(np.exp(log_probs[loops]), 0.75, rtol=1e-6)


def test_missing_topology_entry_is_an_input_error(lang: Lang) -> None:
    broken = dataclasses.replace(lang, nonsilence_phones=[*lang.nonsilence_phones, max(lang.phones.values()) + 1])
    with pytest.raises(InputError, match="no topology entry"):
        hmm.make_topology(broken)


def test_training_graph_accepts_only_the_transcript(lang: Lang, mono) -> None:
    ctx, tm = mono
    compiler = hmm.GraphCompiler(tm, ctx, lang)
    texts = {"a": ["BAD", "BEE"], "b": ["NOTAWORD"]}
    assert compiler.count_oov(texts) == 1
    graphs = compiler.compile(texts)
    tables = hmm.transition_tables(tm)
    name = {i: p for p, i in lang.phones.items()}
    for utt, words in (("a", ["BAD", "BEE"]), ("b", ["<UNK>"])):
        ok, path = kaldifst.equal_align(graphs[utt], 60, 1, 10)
        assert ok
        _, ali, osyms, _ = kaldifst.get_linear_symbol_sequence(path)
        assert [w for w, i in lang.words.items() for o in osyms if o == i] == words
        phones, _ = phone_instances(np.asarray(ali), tables)
        speech = [name[int(p)] for p in phones if name[int(p)] != "SIL"]
        assert speech == [p for w in words for p in LEXICON[w] if p != "SIL"]
    # compile-train-graphs default: no HMM transition weights at compile time, only the lexicon's silence
    # choices (-log 0.5 each) remain on a path.
    for seed in range(5):
        ok, path = kaldifst.equal_align(graphs["a"], 40, seed, 10)
        cost = kaldifst.get_linear_symbol_sequence(path)[3].value / np.log(2.0)
        assert cost == pytest.approx(round(cost), abs=1e-3)


def test_phone_instances_and_contexts_on_equal_alignment(lang: Lang, mono) -> None:
    ctx, tm = mono
    feats, texts, _ = make_corpus(6, seed=3)
    graphs = hmm.GraphCompiler(tm, ctx, lang).compile(texts)
    result = equal_align_utterances(graphs, feats)
    assert not result.failed and set(result.alignments) == set(feats)
    tables = hmm.transition_tables(tm)
    for utt, ali in result.alignments.items():
        assert len(ali) == len(feats[utt])
        phones, starts = phone_instances(ali, tables)
        assert starts[0] == 0 and starts[-1] == len(ali) and np.all(np.diff(starts) >= 3)
        # Each instance's frames all belong to its phone.
        for p, s, e in zip(phones, starts[:-1], starts[1:]):
            assert set(tables.phone[ali[s:e]].tolist()) == {int(p)}
        c = frame_contexts(ali, tables)
        assert c.shape == (len(ali), 3)
        np.testing.assert_array_equal(c[:, 1], tables.phone[ali])
        assert c[0, 0] == 0 and c[-1, 2] == 0


def test_phone_instances_separates_repeated_phones(mono) -> None:
    _, tm = mono
    tables = hmm.transition_tables(tm)
    phone = int(tables.phone[np.flatnonzero(tables.pdf_class == 2)[-1]])  # a 3-state phone
    tids = {(int(tables.hmm_state[t]), bool(tables.is_self_loop[t])): t for t in range(1, len(tables.pdf))
            if tables.phone[t] == phone}
    # reorder=True layout per state: forward transition first, then self-loops.
    one = [tids[(0, False)], tids[(0, True)], tids[(1, False)], tids[(2, False)], tids[(2, True)]]
    phones, starts = phone_instances(np.asarray(one + one), tables)
    assert phones.tolist() == [phone, phone] and starts.tolist() == [0, 5, 10]
    with pytest.raises(ValueError, match="end of a phone"):
        phone_instances(np.asarray(one[:3]), tables)


def test_model_round_trip_is_byte_exact_kaldi_layout(mono, tmp_path: Path) -> None:
    _, tm = mono
    rng = np.random.default_rng(0)
    am = khg.AmDiagGmm()
    for p in range(tm.num_pdfs):
        n = 1 + p % 3
        am.add_pdf(diag_gmm(rng.dirichlet(np.ones(n)), rng.normal(size=(n, 4)), rng.uniform(0.5, 2, (n, 4))))
    path = tmp_path / "final.mdl"
    hmm.write_model(path, tm, am)
    data = path.read_bytes()
    assert data.startswith(b"\0B<TransitionModel> <Topology> ")
    # <DIMENSION> and <NUMPDFS> as Kaldi binary int32s (size byte 4, little endian).
    dim_at = data.index(b"<DIMENSION> ") + len(b"<DIMENSION> ")
    assert data[dim_at] == 4 and struct.unpack_from("<i", data, dim_at + 1)[0] == 4
    tm2, am2 = hmm.read_model(path)
    assert transition_model_bytes(tm2) == transition_model_bytes(tm)
    assert am_diag_gmm_bytes(am2) == am_diag_gmm_bytes(am)
    assert tm2.__getstate__()[2:6] == tm.__getstate__()[2:6]  # state2id, id2state, id2pdf, num_pdfs
    np.testing.assert_allclose(tm2.__getstate__()[7], tm.__getstate__()[7], rtol=1e-6)
    np.testing.assert_allclose(am2.get_pdf(5).gconsts, am.get_pdf(5).gconsts, rtol=1e-5)
    for broken in (data[:-10], data[: len(data) // 2], data[2:]):
        path.write_bytes(broken)
        with pytest.raises(InputError, match="final.mdl"):
            hmm.read_model(path)


def test_tree_roots_default_and_from_file(lang: Lang, tmp_path: Path) -> None:
    make_lang(tmp_path)
    (tmp_path / "phones" / "roots.int").unlink()
    (tmp_path / "phones" / "extra_questions.int").unlink()
    bare = load_lang(tmp_path)  # a lang dir without the tree inputs gets Kaldi's defaults
    assert hmm.tree_roots(bare) == [hmm.TreeRoot([p]) for p in lang.real_phones]
    assert hmm.tree_extra_questions(bare) == [lang.silence_phones, lang.nonsilence_phones]
    sil, rest = lang.silence_phones, lang.nonsilence_phones
    (tmp_path / "phones" / "roots.int").write_text(
        f"not-shared not-split {' '.join(map(str, sil))}\nshared split {' '.join(map(str, rest))}\n")
    (tmp_path / "phones" / "extra_questions.int").write_text(f"{' '.join(map(str, sil))}\n")
    custom = load_lang(tmp_path)
    assert hmm.tree_roots(custom) == [hmm.TreeRoot(sil, False, False), hmm.TreeRoot(rest)]
    assert hmm.tree_extra_questions(custom) == [sil]
    (tmp_path / "phones" / "roots.int").write_text("shared maybe 3 4\n")
    with pytest.raises(InputError, match=r"roots.int:1"):
        hmm.tree_roots(custom)
