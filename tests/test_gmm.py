"""GMM statistics against the bindings, flat-start and triphone training, alignment outputs, boundary grading."""
from __future__ import annotations

import itertools
import json
import weakref
from collections.abc import Iterable
from pathlib import Path

import kaldi_hmm_gmm as khg
import kaldi_io
import numpy as np
import pytest
from gmm_toy import make_corpus, make_lang

from decoding import gmm, hmm
from decoding.align_eval import BOUNDARY_OFFSET, FRAME_SHIFT, boundary_accuracy
from decoding.gmm_accum import (
    GmmParams,
    GmmStats,
    MleOptions,
    accumulate,
    accumulate_utterances,
    diag_gmm,
    mix_up,
    mle_update,
    split_targets,
    to_am,
)
from decoding.lang import load_lang
from decoding.shards import FeatureShards
from decoding.tree import read_tree
from features.cmvn import compute_cmvn_stats
from features.kaldi_io import load_vec_int_scp, write_mat_ark_scp


def _random_am(num_pdfs: int, dim: int, rng: np.random.Generator) -> khg.AmDiagGmm:
    am = khg.AmDiagGmm()
    for p in range(num_pdfs):
        n = 1 + p % 4
        am.add_pdf(diag_gmm(rng.dirichlet(np.ones(n)), rng.normal(0, 2, (n, dim)), rng.uniform(0.3, 3, (n, dim))))
    return am


def _kaldi_accs(am: khg.AmDiagGmm, feats: np.ndarray, pdfs: np.ndarray) -> tuple[khg.AccumAmDiagGmm, float]:
    acc = khg.AccumAmDiagGmm()
    acc.init(am, khg.str_to_gmm_flags("mvw"))
    tot = sum(acc.accumulate_for_gmm(am, f, int(p), 1.0) for f, p in zip(feats, pdfs))
    return acc, tot


def test_vectorized_accumulation_equals_per_frame_bindings() -> None:
    rng = np.random.default_rng(1)
    am = _random_am(6, 4, rng)
    feats = rng.normal(0, 2, (300, 4)).astype(np.float32)
    pdfs = rng.integers(0, 5, 300)  # pdf 5 gets no frames
    acc, tot = _kaldi_accs(am, feats, pdfs)
    params = GmmParams.from_am(am)
    stats = accumulate(params, feats, pdfs)
    assert stats.tot_loglike == pytest.approx(tot, rel=1e-5)
    for p in range(6):
        g0, g1 = params.offsets[p], params.offsets[p + 1]
        ref = acc.get_acc(p)
        np.testing.assert_allclose(stats.occ[g0:g1], ref.occupancy, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(stats.x[g0:g1], ref.mean_accumulator, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats.x2[g0:g1], ref.variance_accumulator, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.pdf_occupancy(params.offsets), np.bincount(pdfs, minlength=6))


def test_mle_update_equals_kaldi_update() -> None:
    rng = np.random.default_rng(2)
    am = _random_am(5, 3, rng)
    feats = rng.normal(0, 2, (400, 3)).astype(np.float32)
    pdfs = rng.choice(5, 400, p=[0.4, 0.3, 0.25, 0.05, 0.0])  # pdf 3: few frames -> low-count removal
    acc, _ = _kaldi_accs(am, feats, pdfs)
    params = GmmParams.from_am(am)
    ours = to_am(mle_update(params, accumulate(params, feats, pdfs), MleOptions()))
    khg.mle_am_diag_gmm_update(khg.MleDiagGmmOptions(), acc, khg.str_to_gmm_flags("mvw"), am)
    assert ours.num_gauss == am.num_gauss < params.offsets[-1]
    for p in range(5):
        a, b = ours.get_pdf(p), am.get_pdf(p)
        np.testing.assert_allclose(a.weights, b.weights, rtol=1e-4)
        np.testing.assert_allclose(a.means, b.means, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.vars, b.vars, rtol=1e-4, atol=1e-5)


def test_mixing_up_matches_kaldi_split_by_count() -> None:
    rng = np.random.default_rng(5)
    am = _random_am(6, 3, rng)
    occs = np.array([500.0, 90.0, 2000.0, 0.0, 45.0, 800.0])
    params = GmmParams.from_am(am)
    pdfs = mle_update(params, accumulate(params, rng.normal(size=(10, 3)), np.zeros(10, int)),
                      MleOptions(min_gaussian_occupancy=0.0, remove_low_count_gaussians=False))
    ours = mix_up(pdfs, occs, 40, 0.01, 0.2, 20.0, np.random.default_rng(0))
    am.split_by_count(occs.astype(np.float32), 40, 0.01, 0.2, 20.0)
    assert [len(g.weights) for g in ours] == [am.num_gauss_in_pdf(p) for p in range(6)]
    assert split_targets(occs, 40, 0.2, 20.0)[[1, 3, 4]].tolist() == [4, 1, 2]  # min_count caps; no data: 1
    again = mix_up(pdfs, occs, 40, 0.01, 0.2, 20.0, np.random.default_rng(0))
    for a, b in zip(ours, again, strict=True):  # reproducible for a seed; weights still sum to one
        np.testing.assert_array_equal(a.means, b.means)
        assert a.weights.sum() == pytest.approx(1.0)


def test_gmm_loglikes_equal_bindings(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    lang_dir = tmp_path / "lang"
    make_lang(lang_dir)
    topo = hmm.make_topology(lang_dir)
    tm = hmm.transition_model(hmm.monophone_tree(topo), topo)
    am = _random_am(tm.num_pdfs, 4, rng)
    hmm.write_model(tmp_path / "final.mdl", tm, am)
    feats = rng.normal(0, 2, (7, 4)).astype(np.float32)
    ll = gmm.gmm_loglikes(tmp_path, feats)
    assert ll.shape == (7, tm.num_pdfs)
    ref = np.array([[am.log_likelihood(p, f) for p in range(tm.num_pdfs)] for f in feats])
    np.testing.assert_allclose(ll, ref, rtol=1e-4, atol=1e-3)


def test_boost_silence_scales_only_silence_likelihoods() -> None:
    rng = np.random.default_rng(4)
    am = _random_am(4, 3, rng)
    boosted = gmm.boost_silence(am, [1, 3], 1.5)
    x = rng.normal(size=3).astype(np.float32)
    diff = [boosted.log_likelihood(p, x) - am.log_likelihood(p, x) for p in range(4)]
    np.testing.assert_allclose(diff, [0.0, np.log(1.5), 0.0, np.log(1.5)], atol=1e-4)
    assert gmm.boost_silence(am, [1], 1.0) is am


def _write_feats_dir(d: Path, feats: dict[str, np.ndarray], texts: dict[str, list[str]]) -> None:
    """A feature dir as features.extract writes it: feats.scp, utt2num_frames, cmvn.scp (one speaker per 4 utts),
    utt2spk, text."""
    d.mkdir(parents=True)
    spk = {u: f"spk{i // 4}" for i, u in enumerate(sorted(feats))}
    write_mat_ark_scp(sorted(feats.items()), d / "feats.ark", d / "feats.scp")
    (d / "utt2num_frames").write_text("".join(f"{u} {len(feats[u])}\n" for u in sorted(feats)))
    cmvn = {s: compute_cmvn_stats([feats[u] for u in feats if spk[u] == s]) for s in set(spk.values())}
    write_mat_ark_scp(sorted(cmvn.items()), d / "cmvn.ark", d / "cmvn.scp")
    (d / "utt2spk").write_text("".join(f"{u} {spk[u]}\n" for u in sorted(feats)))
    (d / "text").write_text("".join(f"{u} {' '.join(texts[u])}\n" for u in sorted(texts)))


def _write_ctm(path: Path, segments: dict[str, list[tuple[str, int, int]]]) -> None:
    def t(frame: int) -> float:
        return 0.0 if frame == 0 else frame * FRAME_SHIFT + BOUNDARY_OFFSET

    path.write_text("".join(f"{u} 1 {t(s):.4f} {t(e) - t(s):.4f} {p}\n"
                            for u, segs in segments.items() for p, s, e in segs))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Mono + tri training through the directory API on 60 toy utterances (~5 s on one core)."""
    root = tmp_path_factory.mktemp("gmm")
    make_lang(root / "lang")
    feats, texts, segments = make_corpus(60, dim=4, seed=5)
    _write_feats_dir(root / "feats", feats, texts)
    mono_cfg = gmm.MonoConfig(num_iters=10, max_gauss=80, max_iter_inc=6, realign_iters=(1, 2, 3, 5, 7))
    mono = gmm.train_mono(root / "feats", root / "lang", root / "mono", mono_cfg, nj=2)
    tri_cfg = gmm.TriConfig(num_leaves=40, max_gauss=120, num_iters=6, max_iter_inc=4, realign_iters=(3, 5),
                            tree_min_count=30)
    tri = gmm.train_tri(root / "feats", root / "lang", root / "mono", root / "tri", tri_cfg, nj=2)
    return {"root": root, "mono": mono, "tri": tri, "feats": feats, "texts": texts, "segments": segments}


def test_mono_training_raises_likelihood(trained: dict) -> None:
    root = trained["root"]
    rows = [json.loads(line) for line in (root / "mono" / "log" / "iterations.jsonl").read_text().splitlines()]
    lls = [r["avg_loglike"] for r in rows]
    assert len(lls) == 10 and lls[-1] > lls[0] + 1.0
    assert all(b >= a - 0.05 for a, b in itertools.pairwise(lls))  # EM never gets materially worse
    assert trained["mono"]["num_gauss"] > trained["mono"]["num_pdfs"]  # mixed up
    assert trained["mono"]["num_failed"] == 0
    assert (root / "mono" / "final.mdl").is_file() and (root / "mono" / "tree").is_file()
    assert len(load_vec_int_scp(root / "mono" / "ali.scp")) == 60


def test_tri_training_ties_states(trained: dict) -> None:
    tri = trained["tri"]
    roots = hmm.tree_roots(load_lang(trained["root"] / "lang"))
    assert len(roots) < tri["num_pdfs"] <= 40  # the tree split its per-phone roots, up to num_leaves
    assert tri["avg_loglike"] > trained["mono"]["avg_loglike_first"]
    tm, am = hmm.read_model(trained["root"] / "tri" / "final.mdl")
    assert tm.num_pdfs == am.num_pdfs == tri["num_pdfs"]


def test_align_outputs_and_boundaries(trained: dict, tmp_path: Path) -> None:
    root, feats, texts = trained["root"], dict(trained["feats"]), dict(trained["texts"])
    feats["short"] = feats["utt000"][:5]  # too few frames for its transcript
    texts["short"] = texts["utt000"]
    feats["notext"] = feats["utt001"]
    _write_feats_dir(tmp_path / "feats", feats, texts)
    out = tmp_path / "ali"
    summary = gmm.align(root / "tri", tmp_path / "feats", root / "lang", out, nj=2)
    assert summary["num_failed"] == 2 and summary["num_aligned"] == 60
    failed = dict(line.split(" ", 1) for line in (out / "failed.txt").read_text().splitlines())
    assert set(failed) == {"short", "notext"} and failed["notext"] == "no transcript"
    # one process gives the same files and the same summed objective as two (merged in shard order, not as
    # workers finish)
    one = gmm.align(root / "tri", tmp_path / "feats", root / "lang", tmp_path / "ali1", nj=1)
    assert {k: v for k, v in one.items() if k != "seconds"} == {k: v for k, v in summary.items() if k != "seconds"}
    for name in ("failed.txt", "ali.ark", "pdf.ark", "pdf_counts"):
        assert (tmp_path / "ali1" / name).read_bytes() == (out / name).read_bytes(), name

    num_pdfs = int((out / "num_pdfs").read_text())
    assert num_pdfs == trained["tri"]["num_pdfs"]
    # The reference reader (kaldi-io) reads both the ark and each scp entry.
    pdf_ali = dict(kaldi_io.read_vec_int_ark(str(out / "pdf.ark")))
    for line in (out / "pdf.scp").read_text().splitlines():
        utt, rxspec = line.split(" ", 1)
        np.testing.assert_array_equal(kaldi_io.read_vec_int(rxspec), pdf_ali[utt])
    tid_ali = load_vec_int_scp(out / "ali.scp")
    assert set(pdf_ali) == set(tid_ali) == set(trained["feats"])
    tm, _ = hmm.read_model(out / "final.mdl")
    tables = hmm.transition_tables(tm)
    for utt, pdfs in pdf_ali.items():
        assert len(pdfs) == len(tid_ali[utt]) == len(feats[utt])
        assert pdfs.max() < num_pdfs
        np.testing.assert_array_equal(pdfs, tables.pdf[tid_ali[utt]])
    counts = np.array((out / "pdf_counts").read_text().strip("[] \n").split(), dtype=np.int64)
    assert counts.sum() == summary["num_frames"] == sum(len(v) for v in pdf_ali.values())

    _write_ctm(tmp_path / "phones.ctm", trained["segments"])
    acc = boundary_accuracy(out, out / "final.mdl", tmp_path / "phones.ctm", root / "lang" / "phones.txt")
    assert acc["utterances"] == 60 and acc["matched_phones"] >= 0.95 * acc["ref_phones"]
    # Flat-start EM on 60 utterances leaves a few phone pairs in local optima (a phone absorbing the first
    # state of the next), but most boundaries are exact.
    assert acc["median_abs_error_s"] < 0.005
    assert acc["within_20ms"] > 0.8 and acc["within_40ms"] > 0.9


def test_boundary_accuracy_penalises_shifted_timings(trained: dict, tmp_path: Path) -> None:
    root = trained["root"]
    shifted = {u: [(p, s + 5 if i else s, e + 5) for i, (p, s, e) in enumerate(segs)]
               for u, segs in trained["segments"].items()}
    _write_ctm(tmp_path / "phones.ctm", shifted)
    acc = boundary_accuracy(root / "mono", root / "mono" / "final.mdl", tmp_path / "phones.ctm",
                            root / "lang" / "phones.txt")
    assert acc["within_20ms"] < 0.3 and acc["median_abs_error_s"] == pytest.approx(0.05, abs=0.011)


def test_gmm_features_add_deltas_after_speaker_cmn(trained: dict) -> None:
    shards = gmm.gmm_features(trained["root"] / "feats")
    loaded = shards.read(shards.utts)
    raw = trained["feats"]
    assert set(loaded) == set(raw)
    assert loaded["utt000"].shape == (len(raw["utt000"]), 12)
    spk0 = [f"utt{i:03d}" for i in range(4)]  # one speaker: static part has zero mean over its frames
    np.testing.assert_allclose(np.concatenate([loaded[u][:, :4] for u in spk0]).mean(0), 0.0, atol=1e-4)


def test_align_with_monophone_model_dir(trained: dict, tmp_path: Path) -> None:
    root = trained["root"]
    summary = gmm.align(root / "mono", root / "feats", root / "lang", tmp_path, nj=1)
    assert summary["num_aligned"] == 60 and summary["num_pdfs"] == trained["mono"]["num_pdfs"]
    # Same model and graphs as train_mono's final pass: identical alignments, whatever nj.
    ours, theirs = load_vec_int_scp(tmp_path / "ali.scp"), load_vec_int_scp(root / "mono" / "ali.scp")
    assert all(np.array_equal(ours[u], theirs[u]) for u in theirs)


def test_boundary_accuracy_by_group_finds_the_one_off_reference(trained: dict, tmp_path: Path) -> None:
    """Half the utterances get a reference 50 ms late (one voice whose synthesizer labels differently): the
    per-group summary shows that group alone, and the groups add up to the overall numbers."""
    root = trained["root"]
    utts = sorted(trained["segments"])
    late = set(utts[::2])
    shifted = {u: [(p, s + 5 if i and u in late else s, e + 5 if u in late else e) for i, (p, s, e) in
                   enumerate(segs)] for u, segs in trained["segments"].items()}
    _write_ctm(tmp_path / "phones.ctm", shifted)
    groups = {u: "late" if u in late else "exact" for u in utts}
    acc = boundary_accuracy(root / "mono", root / "mono" / "final.mdl", tmp_path / "phones.ctm",
                            root / "lang" / "phones.txt", groups=groups)
    by = acc["by_group"]
    assert set(by) == {"exact", "late"}
    assert by["late"]["within_20ms"] < 0.3 < 0.8 < by["exact"]["within_20ms"]
    assert by["late"]["boundaries"] + by["exact"]["boundaries"] == acc["boundaries"]
    weighted = sum(g["within_20ms"] * g["boundaries"] for g in by.values()) / acc["boundaries"]
    assert weighted == pytest.approx(acc["within_20ms"])
    assert "by_group" not in boundary_accuracy(root / "mono", root / "mono" / "final.mdl", tmp_path / "phones.ctm",
                                               root / "lang" / "phones.txt")


# ------------------------------------------------------------------------------------------------ shards
def _mono_pass(root: Path, shard_frames: int, nj: int) -> GmmStats:
    """gmm-acc-stats-ali with the monophone model on its own alignments, over shards of ``shard_frames``."""
    data = gmm._load_training_data(root / "feats", root / "lang", None, shard_frames)
    tm, am = hmm.read_model(root / "mono" / "final.mdl")
    model = gmm._PassModel(root / "passes").publish(tm, read_tree(root / "mono" / "tree"), am)
    _, stats = gmm._run_pass(data, model, nj, "test", alignments=load_vec_int_scp(root / "mono" / "ali.scp"))
    assert stats is not None
    return stats


def test_statistics_from_shards_are_the_whole_corpus_ones(trained: dict) -> None:
    """One shard: exactly the statistics of all frames at once. More shards: sums within each shard, then shard after
    shard, which moves only the last bits; the same bits whatever the number of processes."""
    root = trained["root"]
    tm, am = hmm.read_model(root / "mono" / "final.mdl")
    tables = hmm.transition_tables(tm)
    alignments = load_vec_int_scp(root / "mono" / "ali.scp")
    whole = gmm.gmm_features(root / "feats")
    assert len(whole.shards) == 1
    ref = accumulate_utterances(GmmParams.from_am(am), whole.read(whole.utts),
                                {u: tables.pdf[a] for u, a in alignments.items()})
    fields = ("occ", "x", "x2", "tot_loglike", "num_frames")
    one = _mono_pass(root, 10**9, 2)
    assert all(np.array_equal(getattr(one, f), getattr(ref, f)) for f in fields)
    for shard_frames in (997, 151):
        by_nj = [_mono_pass(root, shard_frames, nj) for nj in (1, 2)]
        assert all(np.array_equal(getattr(by_nj[0], f), getattr(by_nj[1], f)) for f in fields)
        got = by_nj[0]
        assert got.num_frames == ref.num_frames
        np.testing.assert_allclose(got.occ, ref.occ, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got.x, ref.x, rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(got.x2, ref.x2, rtol=1e-12, atol=1e-10)
        assert got.tot_loglike == pytest.approx(ref.tot_loglike, rel=1e-13)


def test_monophone_start_is_numpys_whole_corpus_mean_and_variance_whatever_the_shards(trained: dict) -> None:
    feats_dir = trained["root"] / "feats"
    whole = gmm.gmm_features(feats_dir)
    frames = np.concatenate(list(whole.read(whole.utts).values())).astype(np.float64)
    ref = khg.AmDiagGmm()  # gmm-init-mono from every frame at once
    ref.init(diag_gmm(np.ones(1), frames.mean(0)[None], np.maximum(frames.var(0), 1e-3)[None]), 4)
    want = GmmParams.from_am(ref)
    for shard_frames in (10**9, 500, 37):
        got = GmmParams.from_am(gmm._init_mono_am(4, gmm.gmm_features(feats_dir, shard_frames)))
        for name in ("gconst", "means_invvars", "inv_vars", "weights"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def test_tree_statistics_do_not_depend_on_the_shards(trained: dict) -> None:
    root = trained["root"]
    tm, _ = hmm.read_model(root / "mono" / "final.mdl")
    tables = hmm.transition_tables(tm)
    alignments = load_vec_int_scp(root / "mono" / "ali.scp")
    results = [gmm._tree_stats(gmm._load_training_data(root / "feats", root / "lang", None, n), alignments, tables)
               for n in (10**9, 400, 23)]
    for other in results[1:]:
        np.testing.assert_array_equal(other.stacked(), results[0].stacked())
        np.testing.assert_array_equal(other.contexts, results[0].contexts)


def test_training_on_shards_gives_the_same_files_whatever_nj(trained: dict, tmp_path: Path) -> None:
    """Many small shards, one process or two: byte-identical models and alignments; and they stay within float
    rounding of the one-shard run of the fixture."""
    root = trained["root"]
    mono_cfg = gmm.MonoConfig(num_iters=10, max_gauss=80, max_iter_inc=6, realign_iters=(1, 2, 3, 5, 7),
                              shard_frames=300)
    tri_cfg = gmm.TriConfig(num_leaves=40, max_gauss=120, num_iters=6, max_iter_inc=4, realign_iters=(3, 5),
                            tree_min_count=30, shard_frames=300)
    for nj in (1, 2):
        gmm.train_mono(root / "feats", root / "lang", tmp_path / f"mono{nj}", mono_cfg, nj=nj)
        gmm.train_tri(root / "feats", root / "lang", tmp_path / f"mono{nj}", tmp_path / f"tri{nj}", tri_cfg, nj=nj)
    for name in ("mono/final.mdl", "mono/ali.ark", "mono/tree", "tri/final.mdl", "tri/tree"):
        one, two = (tmp_path / name.replace("/", "1/", 1)), (tmp_path / name.replace("/", "2/", 1))
        assert one.read_bytes() == two.read_bytes(), name
    for model in ("mono", "tri"):
        sharded = GmmParams.from_am(hmm.read_model(tmp_path / f"{model}1" / "final.mdl")[1])
        whole = GmmParams.from_am(hmm.read_model(root / model / "final.mdl")[1])
        np.testing.assert_array_equal(sharded.offsets, whole.offsets)
        np.testing.assert_allclose(sharded.means, whole.means, rtol=1e-5, atol=1e-5)


def test_gmm_training_and_alignment_hold_one_shard_of_features_at_a_time(trained: dict, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read of a shard finds every matrix of the shards read before it gone (in one process, nj=1, where the
    driver itself does every shard's work)."""
    root = trained["root"]
    read = FeatureShards.read
    live: list[weakref.ref] = []
    calls = []

    def checked_read(self: FeatureShards, utts: Iterable[str]) -> dict[str, np.ndarray]:
        calls.append(sum(ref() is not None for ref in live))
        out = read(self, utts)
        live[:] = [weakref.ref(m) for m in out.values()]
        return out

    monkeypatch.setattr(FeatureShards, "read", checked_read)
    mono_cfg = gmm.MonoConfig(num_iters=4, max_gauss=60, max_iter_inc=2, realign_iters=(1, 2), shard_frames=500)
    gmm.train_mono(root / "feats", root / "lang", tmp_path / "mono", mono_cfg, nj=1)
    tri_cfg = gmm.TriConfig(num_leaves=40, max_gauss=80, num_iters=3, max_iter_inc=2, realign_iters=(2,),
                            tree_min_count=30, shard_frames=500)
    gmm.train_tri(root / "feats", root / "lang", tmp_path / "mono", tmp_path / "tri", tri_cfg, nj=1)
    gmm.align(tmp_path / "tri", root / "feats", root / "lang", tmp_path / "ali", nj=1, shard_frames=500)
    shards = len(gmm.gmm_features(root / "feats", 500).shards)
    assert shards > 3 and len(calls) >= shards * (2 + 4 + 1 + 1 + 2 + 1)  # init, EM passes, final, tree, EM, align
    assert not any(calls), f"reads that found an earlier shard's matrices alive: {sum(map(bool, calls))}"


def test_gmm_loglikes_of_shards_are_those_of_the_whole_split(trained: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    root = trained["root"]
    whole = gmm.gmm_features(root / "feats")
    want = {u: gmm.gmm_loglikes(root / "tri", f) for u, f in whole.read(whole.utts).items()}
    monkeypatch.setattr("decoding.decode.DECODE_SHARD_BYTES", 4 * gmm.gmm_params(root / "tri").num_pdfs * 300)
    shards = gmm.gmm_loglike_shards(root / "tri", root / "feats")
    assert len(shards.feats.shards) > 3
    got = [shard for shard in shards]
    assert [u for shard in got for u in shard] == list(want)
    assert all(np.array_equal(shard[u], want[u]) for shard in got for u in shard)
