"""HCLG from a tiny lexicon + trigram LM, then hybrid decoding of crafted log-likelihoods.

The log-likelihood matrices are built from a known word sequence: its phones (with silence at both ends and
optionally between words), every HMM state for a few frames, each frame scoring its own pdf high and every
other pdf low. A correct graph and decoder must return exactly those words; a graph with wrong context, wrong
transition-ids or leftover disambiguation symbols cannot.
"""
from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path

import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np
import pytest

from decoding.decode import DecodeConfig, decode_loglikes, posteriors_to_loglikes, search_scale, tune_and_decode
from decoding.graph import GraphConfig, make_hclg, remove_input_symbols
from decoding.lang import LexiconConfig, LangConfig, load_lang, prepare_dict, prepare_lang, read_lexicon
from decoding.lm import LmConfig, make_lang_test, train_lm
from decoding.tree_io import ConstantNode, SplitNode, TableNode, context_dependency_bytes

LM_TEXT = """THE CAT SAT ON THE MAT
A DOG SAT ON A LOG
THE DOG RAN TO THE CAT
A CAT RAN TO A DOG
THE MAT IS ON THE LOG
A DOG IS ON THE MAT
THE CAT IS A DOG
"""
FRAMES_PER_STATE = 3


@pytest.fixture(scope="module")
def lang_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("graph")
    (root / "lm.txt").write_text(LM_TEXT)
    prepare_dict([root / "lm.txt"], root / "dict", LexiconConfig(oov_policy="spn"))
    prepare_lang(root / "dict", root / "lang", LangConfig())
    arpa = train_lm([root / "lm.txt"], root / "lm", LmConfig(order=3, prune_threshold=0.0))
    make_lang_test(root / "lang", arpa, root / "lang_test")
    return root / "lang_test"


def _topology(lang_dir: Path) -> khg.HmmTopology:
    topo = khg.HmmTopology()
    topo.read((lang_dir / "topo").read_text())
    return topo


def _triphone_tree(lang_dir: Path, topo: khg.HmmTopology) -> khg.ContextDependency:
    """A real context-dependent tree (N=3, P=1): every (phone, pdf-class) its own pdf, and the first state of
    each non-silence phone split by whether its left neighbour is a silence phone (or the utterance start)."""
    lang = load_lang(lang_dir)
    classes = topo.get_phone_to_num_pdf_classes()
    left_sil = tuple(sorted([0] + lang.silence_phones))
    next_pdf = 0
    table: list = [None] * (max(lang.real_phones) + 1)
    for phone in lang.real_phones:
        leaves: list = []
        for pdf_class in range(classes[phone]):
            if pdf_class == 0 and phone in lang.nonsilence_phones:
                leaves.append(SplitNode(0, left_sil, ConstantNode(next_pdf), ConstantNode(next_pdf + 1)))
                next_pdf += 2
            else:
                leaves.append(ConstantNode(next_pdf))
                next_pdf += 1
        table[phone] = TableNode(-1, tuple(leaves))
    data = context_dependency_bytes(3, 1, TableNode(1, tuple(table)), binary=True)
    ctx = khg.ContextDependency.__new__(khg.ContextDependency)
    ctx.__setstate__((np.frombuffer(data, dtype=np.int8).tolist(),))
    return ctx


def _loglikes(words: list[str], lang_dir: Path, ctx: khg.ContextDependency, topo: khg.HmmTopology,
              num_pdfs: int, sil_after: set[int] = frozenset()) -> np.ndarray:
    """[T, num_pdfs] log-likelihoods that favour the pdf path of ``words`` (first pronunciations)."""
    lang = load_lang(lang_dir)
    prons = {}
    for word, pron in read_lexicon(lang_dir.parent / "dict" / "lexicon.txt"):
        prons.setdefault(word, pron)
    phones = ["SIL"]
    for i, word in enumerate(words):
        phones += list(prons[word]) + (["SIL"] if i in sil_after else [])
    phones.append("SIL")
    ids = [lang.phones[p] for p in phones]
    classes = topo.get_phone_to_num_pdf_classes()
    width, center = ctx.context_width, ctx.central_position
    padded = [0] * center + ids + [0] * (width - center - 1)
    path = []
    for k, phone in enumerate(ids):
        window = padded[k:k + width]
        for pdf_class in range(classes[phone]):
            ok, pdf = ctx.compute(window, pdf_class)
            assert ok
            path += [pdf] * FRAMES_PER_STATE
    mat = np.full((len(path), num_pdfs), -8.0, dtype=np.float32)
    mat[np.arange(len(path)), path] = 0.0
    return mat


UTTS = {
    "u1": (["THE", "DOG", "SAT", "ON", "THE", "MAT"], set()),     # not a training sentence
    "u2": (["A", "CAT", "IS", "ON", "A", "LOG"], {1, 3}),          # silences between words
    "u3": (["DOG", "RAN", "TO", "THE", "LOG"], set()),
}


@pytest.mark.slow
@pytest.mark.parametrize("tree_kind", ["monophone", "triphone"])
def test_decoding_returns_the_crafted_word_sequence(lang_test: Path, tmp_path: Path, tree_kind: str) -> None:
    topo = _topology(lang_test)
    if tree_kind == "monophone":
        ctx = khg.monophone_context_dependency(list(topo.phones), topo.get_phone_to_num_pdf_classes())
    else:
        ctx = _triphone_tree(lang_test, topo)
    tm = khg.TransitionModel(ctx, topo)
    info = make_hclg(lang_test, ctx, tm, tmp_path / "graph", GraphConfig())
    assert info["context_width"] == (1 if tree_kind == "monophone" else 3)
    assert info["HCLG_states"] > 0 and info["HCLG_arcs"] > info["HCLG_states"]
    assert (tmp_path / "graph" / "words.txt").read_text() == (lang_test / "words.txt").read_text()

    hclg = kaldifst.StdVectorFst.read(str(tmp_path / "graph" / "HCLG.fst"))
    max_label = max(arc.ilabel for s in kaldifst.StateIterator(hclg) for arc in kaldifst.ArcIterator(hclg, s))
    assert max_label <= tm.num_transition_ids, "disambiguation transition-ids left in HCLG"

    loglikes = {utt: _loglikes(words, lang_test, ctx, topo, tm.num_pdfs, sil) for utt, (words, sil) in UTTS.items()}
    result = decode_loglikes(tmp_path / "graph", tm, loglikes, DecodeConfig(), nj=1)
    assert result.hyps == {utt: words for utt, (words, _) in UTTS.items()}
    assert not result.failed and not result.partial
    assert result.frames == sum(m.shape[0] for m in loglikes.values())
    # per-utterance decoding times (one process: within the call's wall time) per second of audio
    assert 0 < result.seconds <= result.wall_seconds
    assert result.real_time_factor == pytest.approx(result.seconds / (result.frames * 0.01))

    parallel = decode_loglikes(tmp_path / "graph", tm, loglikes, DecodeConfig(), nj=2)
    assert parallel.hyps == result.hyps


@pytest.mark.slow
def test_wrong_acoustics_give_other_words_and_tuning_picks_a_scale(lang_test: Path, tmp_path: Path) -> None:
    """The decoder follows the acoustics, not just the LM: evidence for an unlikely sentence wins over the
    LM's preference, and tune_and_decode reports a dev WER for every scale it tried."""
    topo = _topology(lang_test)
    ctx = khg.monophone_context_dependency(list(topo.phones), topo.get_phone_to_num_pdf_classes())
    tm = khg.TransitionModel(ctx, topo)
    make_hclg(lang_test, ctx, tm, tmp_path / "graph", GraphConfig())
    unlikely = ["MAT", "MAT", "DOG", "A"]
    dev = {"d1": _loglikes(unlikely, lang_test, ctx, topo, tm.num_pdfs)}
    scales = (0.05, 0.1, 0.2)
    tuned = tune_and_decode(tmp_path / "graph", tm, dev, {"d1": unlikely}, dev, DecodeConfig(),
                            acoustic_scales=scales, nj=1)
    best, dev_wer, test = tuned.acoustic_scale, tuned.dev_wer, tuned.test
    assert tuned.dev.hyps == test.hyps  # dev and test are the same utterances here
    assert set(dev_wer) == set(scales)
    assert dev_wer[best].wer == 0.0 and best == max(s for s in scales if dev_wer[s].wer == 0.0)
    assert test.hyps == {"d1": unlikely}


class _Shards:
    """Log-likelihoods in shards, made afresh on every pass: counts the passes and, as each shard is made, how many
    matrices of earlier shards are still alive somewhere (a decoder holding one shard at a time leaves none)."""

    def __init__(self, shards: list[dict[str, np.ndarray]]) -> None:
        self.shards = shards
        self.passes = 0
        self.alive_when_made: list[int] = []

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.passes += 1
        earlier: list[weakref.ref] = []
        for shard in self.shards:
            self.alive_when_made.append(sum(ref() is not None for ref in earlier))
            made = {u: m.copy() for u, m in shard.items()}
            earlier += [weakref.ref(m) for m in made.values()]
            yield made
            del made


@pytest.mark.slow
def test_decoding_shard_by_shard_gives_the_whole_splits_results_holding_one_shard(lang_test: Path,
                                                                                  tmp_path: Path) -> None:
    """The same hypotheses whether a split comes as one mapping or in shards, in one process or two; a shard is
    dropped before the next is made; tuning decodes every scale of its grid in one pass over dev's shards."""
    topo = _topology(lang_test)
    ctx = khg.monophone_context_dependency(list(topo.phones), topo.get_phone_to_num_pdf_classes())
    tm = khg.TransitionModel(ctx, topo)
    make_hclg(lang_test, ctx, tm, tmp_path / "graph", GraphConfig())
    sentences = [["THE", "DOG", "SAT"], ["A", "CAT", "IS", "ON", "A", "LOG"], ["MAT", "MAT", "DOG", "A"],
                 ["DOG", "RAN", "TO", "THE", "LOG"], ["THE", "CAT", "IS", "A", "DOG"]]
    loglikes = {f"s{i}": _loglikes(words, lang_test, ctx, topo, tm.num_pdfs) for i, words in enumerate(sentences)}
    loglikes["s0"][::4] += np.random.default_rng(0).normal(0.0, 3.0, loglikes["s0"][::4].shape).astype(np.float32)
    whole = decode_loglikes(tmp_path / "graph", tm, loglikes, DecodeConfig(), nj=1)
    utts = sorted(loglikes)
    for nj in (1, 2):
        shards = _Shards([{u: loglikes[u] for u in utts[i:i + 2]} for i in range(0, len(utts), 2)])
        sharded = decode_loglikes(tmp_path / "graph", tm, shards, DecodeConfig(), nj=nj)
        assert (sharded.hyps, sharded.failed, sharded.partial, sharded.frames) == (
            whole.hyps, whole.failed, whole.partial, whole.frames)
        assert shards.passes == 1 and shards.alive_when_made == [0, 0, 0]

    scales = (0.05, 0.1, 0.2)
    refs = {u: words for u, words in zip(utts, sentences)}
    tuned_whole = tune_and_decode(tmp_path / "graph", tm, loglikes, refs, loglikes, DecodeConfig(),
                                  acoustic_scales=scales, nj=2)
    dev = _Shards([{u: loglikes[u]} for u in utts])
    test = _Shards([{u: loglikes[u] for u in utts[:3]}, {u: loglikes[u] for u in utts[3:]}])
    tuned = tune_and_decode(tmp_path / "graph", tm, dev, refs, test, DecodeConfig(), acoustic_scales=scales, nj=2)
    assert dev.passes == 1 and test.passes == 1 and not any(dev.alive_when_made + test.alive_when_made)
    assert tuned.acoustic_scale == tuned_whole.acoustic_scale
    assert {s: w.wer for s, w in tuned.dev_wer.items()} == {s: w.wer for s, w in tuned_whole.dev_wer.items()}
    assert tuned.dev.hyps == tuned_whole.dev.hyps and tuned.test.hyps == tuned_whole.test.hyps
    extended = tune_and_decode(tmp_path / "graph", tm, dev, refs, test, DecodeConfig(), acoustic_scales=(0.01, 0.02),
                               nj=1, extend_edges=2)
    assert len(extended.dev_wer) == 2 + (dev.passes - 2)  # a scale beyond the grid: one more pass over dev each
    assert dev.passes > 2


class _Dev:
    """A dev WER curve with its minimum at ``best``, that counts the scales it was asked for."""

    def __init__(self, best: float) -> None:
        self.best = best
        self.asked: list[float] = []

    def __call__(self, scale: float) -> float:
        self.asked.append(scale)
        return round(100 * abs(scale - self.best), 6)


@pytest.mark.parametrize("best, extend, chosen, asked", [
    (0.10, 3, 0.10, [0.06, 0.08, 0.1, 0.12, 0.14]),             # inside the grid: nothing more is tried
    (0.18, 3, 0.18, [0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2]),   # past the top: out until dev turns
    (0.30, 3, 0.20, [0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2]),   # ... but at most 3 steps
    (0.18, 0, 0.14, [0.06, 0.08, 0.1, 0.12, 0.14]),             # extend_edges=0: the grid alone (Kaldi's LMWT)
    (0.03, 3, 0.04, [0.06, 0.08, 0.1, 0.12, 0.14, 0.04, 0.02]),  # below: down, never to 0
])
def test_search_scale_goes_past_an_end_of_the_grid_while_dev_improves(best: float, extend: int, chosen: float,
                                                                       asked: list[float]) -> None:
    dev = _Dev(best)
    assert search_scale(dev, [0.14, 0.1, 0.06, 0.12, 0.08], extend) == pytest.approx(chosen)
    assert dev.asked == pytest.approx(asked)


def test_search_scale_ties_go_to_the_larger_scale_and_bad_grids_are_refused() -> None:
    assert search_scale(lambda s: 10.0, [0.08, 0.1], extend_edges=2) == pytest.approx(0.14)  # a flat dev climbs
    assert search_scale(lambda s: 5.0, [0.1], extend_edges=3) == 0.1   # one scale: no step to take
    with pytest.raises(ValueError):
        search_scale(lambda s: 0.0, [], 1)
    with pytest.raises(ValueError):
        search_scale(lambda s: 0.0, [0.1, 0.2], -1)


def test_posteriors_to_loglikes_divides_by_the_prior() -> None:
    log_post = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    log_prior = np.log(np.array([0.5, 0.25, 0.25]))
    out = posteriors_to_loglikes(log_post, log_prior)
    np.testing.assert_allclose(np.exp(out), [[1.4, 0.8, 0.4], [0.2, 0.4, 3.2]], rtol=1e-6)
    assert out.dtype == np.float32
    with pytest.raises(ValueError):
        posteriors_to_loglikes(log_post, log_prior[:2])


def test_remove_input_symbols_epsilons_exactly_the_given_labels() -> None:
    fst = kaldifst.StdVectorFst()
    for _ in range(4):
        fst.add_state()
    fst.start = 0
    fst.set_final(3, 0.0)
    for src, ilabel, olabel in [(0, 1, 10), (1, 5, 0), (2, 2, 11)]:
        fst.add_arc(src, kaldifst.StdArc(ilabel, olabel, 0.5, src + 1))
    out = remove_input_symbols(fst, {5}, num_symbols=5)
    ok, ilabels, olabels, weight = kaldifst.get_linear_symbol_sequence(out)
    assert ok and ilabels == [1, 2] and olabels == [10, 11]
    assert weight.value == pytest.approx(1.5)


@pytest.mark.slow
def test_utterances_without_a_path_or_a_final_state_are_counted(lang_test: Path, tmp_path: Path) -> None:
    """No surviving path (every frame impossible) gives no hypothesis and a place in ``failed``; a path that
    cannot reach a final state (too few frames for any sentence) is kept, as Kaldi's --allow-partial does, and
    listed in ``partial``. Both are scored: a missing hypothesis counts as all deletions."""
    topo = _topology(lang_test)
    ctx = khg.monophone_context_dependency(list(topo.phones), topo.get_phone_to_num_pdf_classes())
    tm = khg.TransitionModel(ctx, topo)
    make_hclg(lang_test, ctx, tm, tmp_path / "graph", GraphConfig())
    good = _loglikes(["THE", "DOG", "SAT"], lang_test, ctx, topo, tm.num_pdfs)
    loglikes = {"good": good, "impossible": np.full_like(good, -np.inf), "short": good[:2]}
    result = decode_loglikes(tmp_path / "graph", tm, loglikes, DecodeConfig(), nj=1)
    assert result.failed == ["impossible"] and "impossible" not in result.hyps
    assert result.partial == ["short"] and "short" in result.hyps
    assert result.hyps["good"] == ["THE", "DOG", "SAT"]
