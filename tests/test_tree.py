"""Tests of decision-tree state tying (decoding/tree.py) against known splits and the Kaldi bindings."""
from __future__ import annotations

import kaldifst  # (before kaldi_hmm_gmm: shared OpenFst registration order)
import kaldi_hmm_gmm as khg
import numpy as np
import pytest

from decoding.tree import (
    Tree,
    TreeConfig,
    TreeStats,
    accumulate_tree_stats,
    build_tree,
    cluster_phones_into_questions,
    gaussian_init_from_stats,
    load_tree,
    read_roots,
    read_tree,
    sum_stats,
    write_tree,
)
from decoding.tree_io import PDF_CLASS_KEY, SplitNode, map_events
from decoding.tree_stats import TreeStatsAccumulator, gauss_objf
from features.errors import InputError

SIL = 1
PHONES = list(range(1, 11))  # 1 = SIL (5 states), 2..10 speech phones (3 states)
NUM_PDF_CLASSES = {p: 5 if p == SIL else 3 for p in PHONES}
FRONT = {2, 3, 4, 5}  # right context in this set shifts dimension 2 of every speech phone


def _synthetic_corpus(num_utts: int = 150, seed: int = 0) -> tuple[dict, dict, dict]:
    """Utterances SIL w1..w8 SIL whose frames depend on the phone, the state and the right context."""
    rng = np.random.default_rng(seed)
    feats, contexts, pdf_classes = {}, {}, {}
    for u in range(num_utts):
        seq = [SIL, *rng.integers(2, 11, size=8).tolist(), SIL]
        f, c, p = [], [], []
        for i, ph in enumerate(seq):
            left = seq[i - 1] if i > 0 else 0
            right = seq[i + 1] if i + 1 < len(seq) else 0
            for state in range(NUM_PDF_CLASSES[ph]):
                n = int(rng.integers(2, 6))
                mean = np.array([2.0 * ph, 4.0 * state, 6.0 * (ph != SIL and right in FRONT), 0.0])
                f.append(mean + rng.normal(size=(n, 4)))
                c += [[left, ph, right]] * n
                p += [state] * n
        feats[f"u{u}"], contexts[f"u{u}"], pdf_classes[f"u{u}"] = np.concatenate(f), np.array(c), np.array(p)
    return feats, contexts, pdf_classes


@pytest.fixture(scope="module")
def corpus() -> tuple[dict, dict, dict]:
    return _synthetic_corpus()


@pytest.fixture(scope="module")
def stats(corpus) -> TreeStats:
    return accumulate_tree_stats(*corpus, ci_phones=[SIL])


@pytest.fixture(scope="module")
def tree(stats) -> Tree:
    cfg = TreeConfig(num_leaves=40, min_count=50.0)
    questions = cluster_phones_into_questions(stats, PHONES, extra_questions=[[SIL], sorted(FRONT)], cfg=cfg)
    return build_tree(stats, [[p] for p in PHONES], NUM_PDF_CLASSES, questions, cfg)


TOPO = """<Topology>
<TopologyEntry>
<ForPhones>
{speech}
</ForPhones>
<State> 0 <PdfClass> 0 <Transition> 0 0.75 <Transition> 1 0.25 </State>
<State> 1 <PdfClass> 1 <Transition> 1 0.75 <Transition> 2 0.25 </State>
<State> 2 <PdfClass> 2 <Transition> 2 0.75 <Transition> 3 0.25 </State>
<State> 3 </State>
</TopologyEntry>
<TopologyEntry>
<ForPhones>
{sil}
</ForPhones>
<State> 0 <PdfClass> 0 <Transition> 0 0.5 <Transition> 1 0.5 </State>
<State> 1 <PdfClass> 1 <Transition> 1 0.5 <Transition> 2 0.5 </State>
<State> 2 <PdfClass> 2 <Transition> 2 0.5 <Transition> 3 0.5 </State>
<State> 3 <PdfClass> 3 <Transition> 3 0.5 <Transition> 4 0.5 </State>
<State> 4 <PdfClass> 4 <Transition> 4 0.5 <Transition> 5 0.5 </State>
<State> 5 </State>
</TopologyEntry>
</Topology>
""".format(speech=" ".join(str(p) for p in PHONES if p != SIL), sil=SIL)


def _stats_from_events(events: list[tuple[tuple[int, int, int], int, float, list[float]]]) -> TreeStats:
    """Exact stats: each event has ``count`` frames at mean +-1 (variance 1 per dimension)."""
    ctx, pcl, cnt, sums, sumsq = [], [], [], [], []
    for context, pdf_class, count, mean in events:
        mean = np.asarray(mean, dtype=float)
        ctx.append(context), pcl.append(pdf_class), cnt.append(count)
        sums.append(count * mean), sumsq.append(count * (mean**2 + 1.0))
    return TreeStats(np.array(ctx, np.int32), np.array(pcl, np.int32), np.array(cnt), np.array(sums), np.array(sumsq))


# -------------------------------------------------------------------------------------------- statistics
def test_accumulate_matches_a_frame_loop_and_sums(corpus) -> None:
    feats, contexts, pdf_classes = corpus
    stats = accumulate_tree_stats(feats, contexts, pdf_classes, ci_phones=[SIL])
    expected: dict[tuple, np.ndarray] = {}
    for utt in feats:
        for x, c, p in zip(feats[utt], contexts[utt], pdf_classes[utt]):
            key = (int(p), -1, SIL, -1) if c[1] == SIL else (int(p), *map(int, c))
            expected.setdefault(key, np.zeros(9))
            expected[key] += np.r_[1.0, x, x * x]
    got = {(int(p), *map(int, c)): row for p, c, row in zip(stats.pdf_classes, stats.contexts, stats.stacked())}
    assert got.keys() == expected.keys()
    for key, row in expected.items():
        np.testing.assert_allclose(got[key], row, rtol=1e-10)
    half = sorted(feats)[: len(feats) // 2]
    parts = [
        accumulate_tree_stats({u: feats[u] for u in utts}, contexts, pdf_classes, ci_phones=[SIL])
        for utts in (half, sorted(set(feats) - set(half)))
    ]
    merged = sum_stats(parts)
    assert merged.num_events == stats.num_events
    np.testing.assert_allclose(merged.stacked(), stats.stacked(), rtol=1e-10)


def test_stats_fed_in_chunks_sum_exactly_as_sum_tree_stats_of_the_chunks(corpus, monkeypatch) -> None:
    """The accumulator pools every chunk of utterances and adds it to a running total: exactly the one sum of all
    chunks' stats (Kaldi's sum-tree-stats), so reading the utterances shard by shard changes no bit."""
    feats, contexts, pdf_classes = corpus
    utts = sorted(feats)
    chunks, chunk, held = [], [], 0
    for utt in utts:  # chunks of at least 300 frames, as the accumulator cuts them
        chunk.append(utt)
        held += len(feats[utt])
        if held >= 300:
            chunks.append(chunk)
            chunk, held = [], 0
    chunks += [chunk] if chunk else []
    assert len(chunks) > 5
    parts = [accumulate_tree_stats({u: feats[u] for u in c}, contexts, pdf_classes, ci_phones=[SIL]) for c in chunks]
    want = sum_stats(parts)
    monkeypatch.setattr("decoding.tree_stats._CHUNK_FRAMES", 300)
    acc = TreeStatsAccumulator(ci_phones=[SIL])
    for utt in utts:
        acc.add(utt, feats[utt], contexts[utt], pdf_classes[utt])
    got = acc.result()
    np.testing.assert_array_equal(got.stacked(), want.stacked())
    np.testing.assert_array_equal(got.contexts, want.contexts)
    np.testing.assert_array_equal(got.pdf_classes, want.pdf_classes)
    with pytest.raises(ValueError, match="no frames"):
        TreeStatsAccumulator().result()


def test_accumulate_rejects_mismatched_lengths(corpus) -> None:
    feats, contexts, pdf_classes = corpus
    with pytest.raises(ValueError, match="u0"):
        accumulate_tree_stats({"u0": feats["u0"][:-1]}, contexts, pdf_classes)


# ---------------------------------------------------------------------------------------- cluster-phones
def test_cluster_phones_first_question_separates_the_two_groups() -> None:
    low, high = [2, 3, 4], [5, 6, 7, 8]
    events = [((0, p, 0), 1, 500.0, [0.1 * p, 0.0]) for p in low]
    events += [((0, p, 0), 1, 500.0, [20.0 + 0.1 * p, 0.0]) for p in high]
    events += [((0, p, 0), 0, 500.0, [0.0, 0.0]) for p in low + high]  # pdf-class 0 is not used
    questions = cluster_phones_into_questions(_stats_from_events(events), low + high, extra_questions=[[2, 8]])
    assert questions[0] == low + high
    assert sorted(questions[1:3]) == [low, high]
    assert all([p] in questions for p in low + high)  # clustering goes down to single phones
    assert questions[-1] == [2, 8]
    capped = cluster_phones_into_questions(
        _stats_from_events(events), low + high, extra_questions=[[2, 8]], cfg=TreeConfig(num_phone_questions=3)
    )
    assert capped == questions[:3] + [[2, 8]]


# ------------------------------------------------------------------------------------------- build-tree
def test_first_split_is_the_known_best_question_and_limits_hold() -> None:
    # One phone (4) with one pdf-class; a right context in {2, 3} moves the mean by 5, left context is noise.
    rng = np.random.default_rng(1)
    events = [
        ((left, 4, right), 0, 200.0, [5.0 * (right in (2, 3)) + 0.05 * rng.normal(), 0.05 * rng.normal()])
        for left in range(2, 7)
        for right in range(2, 7)
    ]
    stats = _stats_from_events(events)
    questions = [[2, 4], [5, 6], [2, 3], [4, 5, 6], [2, 3, 4, 5, 6], [3]]
    cfg = TreeConfig(num_leaves=4, min_count=450.0, cluster_thresh=0.0, split_thresh=0.0)
    tree = build_tree(stats, [[4]], {4: 1}, questions, cfg)
    assert isinstance(tree.root, SplitNode)
    assert (tree.root.key, tree.root.yes_set) == (2, (2, 3))  # right context, first of the equal-gain pair
    assert tree.num_pdfs == 4  # num_leaves reached, not exceeded
    pdf = tree.leaf_ids(stats.contexts, stats.pdf_classes)
    counts = np.bincount(pdf, weights=stats.counts, minlength=tree.num_pdfs)
    assert counts.min() >= cfg.min_count
    # With a large minimum count no split at all is allowed.
    no_split = build_tree(stats, [[4]], {4: 1}, questions, TreeConfig(min_count=3000.0, split_thresh=0.0))
    assert no_split.num_pdfs == 1


def test_tree_splits_states_and_context_and_respects_min_count(tree, stats) -> None:
    assert 10 < tree.num_pdfs <= 40
    pdf = tree.leaf_ids(stats.contexts, stats.pdf_classes)
    assert sorted(set(pdf.tolist())) == list(range(tree.num_pdfs))  # every pdf has data, numbered 0..N-1
    # The right-context effect is found: two frames of the same phone/state, front vs back right context,
    # land on different pdfs; the left context never matters.
    ctx = np.array([[7, 6, 2], [7, 6, 8], [3, 6, 2], [9, 6, 8]])
    a, b, c, d = tree.leaf_ids(ctx, np.ones(4, dtype=int))
    assert a != b and a == c and b == d
    # All 5 silence states are seen with plenty of data and differ in their mean: 5 distinct pdfs.
    sil = tree.leaf_ids(np.array([[0, SIL, 0]] * 5), np.arange(5))
    assert len(set(sil.tolist())) == 5


def test_merging_leaves_no_cheap_pair_within_a_root(stats) -> None:
    questions = cluster_phones_into_questions(stats, PHONES, extra_questions=[sorted(FRONT)])
    kw = {"num_leaves": 60, "min_count": 20.0, "split_thresh": 0.0}
    roots = [[p] for p in PHONES]
    unmerged = build_tree(stats, roots, NUM_PDF_CLASSES, questions, TreeConfig(cluster_thresh=0, **kw))
    default = build_tree(stats, roots, NUM_PDF_CLASSES, questions, TreeConfig(**kw))
    thresh = 3000.0
    merged = build_tree(stats, roots, NUM_PDF_CLASSES, questions, TreeConfig(cluster_thresh=thresh, **kw))
    everything = build_tree(stats, roots, NUM_PDF_CLASSES, questions, TreeConfig(cluster_thresh=1e12, **kw))
    assert unmerged.num_pdfs == 60
    assert everything.num_pdfs == len(PHONES) < merged.num_pdfs < default.num_pdfs <= unmerged.num_pdfs
    # After merging, any two pdfs of one phone would lose at least `thresh` log-likelihood if pooled.
    pdf = merged.leaf_ids(stats.contexts, stats.pdf_classes)
    rows = stats.stacked()
    for phone in PHONES:
        sel = stats.contexts[:, 1] == phone
        pdfs, inverse = np.unique(pdf[sel], return_inverse=True)
        pooled = np.zeros((len(pdfs), rows.shape[1]))
        np.add.at(pooled, inverse, rows[sel])
        objf = gauss_objf(pooled, 0.01)
        for i in range(len(pdfs)):
            for j in range(i + 1, len(pdfs)):
                assert objf[i] + objf[j] - gauss_objf(pooled[i] + pooled[j], 0.01) >= thresh


def test_phone_to_num_pdf_classes_as_a_list(stats, tree) -> None:
    cfg = TreeConfig(num_leaves=40, min_count=50.0)
    questions = cluster_phones_into_questions(stats, PHONES, extra_questions=[[SIL], sorted(FRONT)], cfg=cfg)
    as_list = [0] + [NUM_PDF_CLASSES[p] for p in PHONES]  # HmmTopology.get_phone_to_num_pdf_classes() form
    assert build_tree(stats, [[p] for p in PHONES], as_list, questions, cfg) == tree


def test_read_roots(tmp_path) -> None:
    (tmp_path / "roots.int").write_text("not-shared not-split 1\nshared split 2 3\n\nshared split 4\n")
    assert read_roots(tmp_path / "roots.int") == ([[1], [2, 3], [4]], [False, True, True], [False, True, True])
    (tmp_path / "roots.txt").write_text("shared split SIL\n")
    with pytest.raises(InputError, match=r"roots.txt:1:"):
        read_roots(tmp_path / "roots.txt")


def test_unshared_and_unsplit_roots(stats) -> None:
    questions = [sorted(FRONT), [SIL]]
    cfg = TreeConfig(num_leaves=100, min_count=20.0, cluster_thresh=0.0)
    roots = [[SIL], [2, 3, 4, 5, 6], [7, 8, 9, 10]]
    tree = build_tree(stats, roots, NUM_PDF_CLASSES, questions, cfg, shared_roots=[False, True, True],
                      split_roots=[False, True, False])
    # Unshared SIL root: one pdf per state, never split further; unsplit root 7..10: one pdf for everything.
    sil = tree.leaf_ids(np.array([[0, SIL, 0]] * 5), np.arange(5))
    assert len(set(sil.tolist())) == 5
    back = tree.leaf_ids(np.array([[0, p, r] for p in (7, 8, 9, 10) for r in (2, 9)]), np.zeros(8, dtype=int))
    assert len(set(back.tolist())) == 1
    with pytest.raises(ValueError, match="no root"):
        build_tree(stats, [[p] for p in PHONES if p != 5], NUM_PDF_CLASSES, questions, cfg)


# --------------------------------------------------------------------------------- Kaldi format, bindings
def test_binary_round_trip_through_the_bindings_and_text_form(tree, tmp_path) -> None:
    ctx = tree.to_context_dependency()
    ctx.write(True, str(tmp_path / "tree.bin"))
    assert (tmp_path / "tree.bin").read_bytes() == tree.to_kaldi_binary()
    ctx.write(False, str(tmp_path / "tree.txt"))
    text = (tmp_path / "tree.txt").read_text()
    assert text == tree.to_kaldi_text()
    assert text.startswith("ContextDependency 3 1 ToPdf ")
    assert load_tree(tmp_path / "tree.txt") == tree  # the text form parses back to the same tree
    write_tree(tree, tmp_path / "tree")
    assert load_tree(tmp_path / "tree") == tree
    again = read_tree(tmp_path / "tree")
    assert (again.num_pdfs, again.context_width, again.central_position) == (tree.num_pdfs, 3, 1)
    (tmp_path / "bad").write_bytes(b"\0BContextDependency \x04\x03")
    with pytest.raises(InputError, match="bad"):
        load_tree(tmp_path / "bad")


def test_leaf_ids_agree_with_the_bindings_lookup(tree, monkeypatch) -> None:
    ctx = tree.to_context_dependency()
    rng = np.random.default_rng(3)
    central = rng.choice(PHONES, size=400)
    contexts = np.stack([rng.integers(0, 11, size=400), central, rng.integers(0, 11, size=400)], axis=1)
    pdf_classes = np.array([rng.integers(0, NUM_PDF_CLASSES[int(c)]) for c in central])
    ours = tree.leaf_ids(contexts, pdf_classes)
    theirs = []
    for c, p in zip(contexts.tolist(), pdf_classes.tolist()):
        ok, pdf = ctx.compute(c, p)
        assert ok
        theirs.append(pdf)
    assert ours.tolist() == theirs
    assert ctx.num_pdfs == tree.num_pdfs
    # The precomputed answer table agrees with walking the tree, also for phone ids the tree never mentions
    # and for absent keys (-1: the context of a context-independent phone).
    contexts[::7, 2] = rng.integers(11, 40, size=len(contexts[::7]))
    contexts[central == SIL, 0] = -1
    contexts[central == SIL, 2] = -1
    walked = map_events(tree.root, lambda k: pdf_classes if k == PDF_CLASS_KEY else contexts[:, k])
    assert tree.leaf_ids(contexts, pdf_classes).tolist() == walked.tolist()
    monkeypatch.setattr("decoding.tree._MAX_LOOKUP_TABLE", 0)  # a fresh tree too big for a table walks itself
    assert Tree(tree.root, tree.num_pdfs).leaf_ids(contexts, pdf_classes).tolist() == walked.tolist()


def test_transition_model_and_h_transducer(tree) -> None:
    topo = khg.HmmTopology()
    topo.read(TOPO)
    ctx = tree.to_context_dependency()
    tm = khg.TransitionModel(ctx, topo)
    assert tm.num_pdfs == tree.num_pdfs
    assert topo.get_phone_to_num_pdf_classes()[1:] == [NUM_PDF_CLASSES[p] for p in PHONES]
    # The bindings' own enumeration of the tree (pdf -> (phone, pdf-class) pairs) and the transition model's
    # pdfs per phone agree with what Tree.leaf_ids gives over all contexts.
    allc = np.array([[left, p, right] for p in PHONES for left in range(11) for right in range(11)])
    expected_pairs: dict[int, set] = {}
    for phone in PHONES:
        sel = allc[allc[:, 1] == phone]
        for state in range(NUM_PDF_CLASSES[phone]):
            for pdf in set(tree.leaf_ids(sel, np.full(len(sel), state)).tolist()):
                expected_pairs.setdefault(pdf, set()).add((phone, state))
    num_pdf_classes = [NUM_PDF_CLASSES.get(p, 0) for p in range(11)]
    info = ctx.get_pdf_info(PHONES, num_pdf_classes)
    assert {pdf: set(map(tuple, pairs)) for pdf, pairs in enumerate(info)} == expected_pairs
    pdfs_of_phone: dict[int, set] = {}
    for tid in range(1, tm.num_transition_ids + 1):
        pdfs_of_phone.setdefault(tm.transition_id_to_phone(tid), set()).add(tm.transition_id_to_pdf(tid))
    for phone in PHONES:
        expected = {pdf for pdf, pairs in expected_pairs.items() if any(p == phone for p, _ in pairs)}
        assert pdfs_of_phone[phone] == expected
    # H transducer over the context expansion of a small phone acceptor.
    fst = kaldifst.StdVectorFst()
    states = [fst.add_state() for _ in range(5)]
    fst.start = states[0]
    for s, phone in zip(states, [SIL, 4, 7, SIL]):
        fst.add_arc(s, kaldifst.StdArc(phone, phone, 0.0, s + 1))
    fst.set_final(states[-1], 0.0)
    _, ilabels = kaldifst.compose_context([], 3, 1, fst)
    h, disambig = khg.get_h_transducer(ilabels, ctx, tm, khg.HTransducerConfig(transition_scale=1.0))
    assert h.num_states > 1 and disambig == []


def test_gaussian_init_from_stats(tree, stats) -> None:
    counts, means, var = gaussian_init_from_stats(stats, tree, var_floor=0.01)
    assert counts.shape == (tree.num_pdfs,) and means.shape == var.shape == (tree.num_pdfs, 4)
    pdf = tree.leaf_ids(stats.contexts, stats.pdf_classes)
    for p in (0, tree.num_pdfs // 2, tree.num_pdfs - 1):
        sel = pdf == p
        n = stats.counts[sel].sum()
        assert counts[p] == pytest.approx(n)
        np.testing.assert_allclose(means[p], stats.sums[sel].sum(0) / n)
        np.testing.assert_allclose(var[p], stats.sumsq[sel].sum(0) / n - means[p] ** 2)
    sil_pdfs = tree.leaf_ids(np.array([[0, SIL, 0]] * 5), np.arange(5))
    np.testing.assert_allclose(means[sil_pdfs, 1], 4.0 * np.arange(5), atol=0.3)  # state means of SIL


def test_gaussian_init_for_a_phone_without_data(stats) -> None:
    # Phone 11 has a root but no frames: its pdf gets the Gaussian of its nearest ancestor with data.
    roots = [[p] for p in PHONES] + [[11]]
    cfg = TreeConfig(num_leaves=30, min_count=50.0)
    tree = build_tree(stats, roots, {**NUM_PDF_CLASSES, 11: 3}, [sorted(FRONT)], cfg)
    counts, means, var = gaussian_init_from_stats(stats, tree, var_floor=0.01)
    unseen = int(tree.leaf_ids(np.array([[0, 11, 0]]), np.array([0]))[0])
    assert counts[unseen] == 0
    assert np.isfinite(means[unseen]).all() and (var[unseen] >= 0.01).all()
    assert counts.sum() == pytest.approx(stats.counts.sum())
