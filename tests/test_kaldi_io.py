"""Binary Kaldi ark/scp: round trips, readability by the independent kaldi-io readers, error locations."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KALDI_ROOT", "/tmp")
import kaldi_io

from features.errors import InputError
from features.kaldi_io import (
    load_mat_scp,
    load_vec_int_scp,
    read_mat_scp,
    read_post_ark,
    read_vec_int_scp,
    write_mat_ark_scp,
    write_post_ark,
    write_vec_int_ark_scp,
)


@pytest.fixture()
def mats() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"utt-a": rng.standard_normal((7, 40)).astype(np.float32),
            "utt-b": rng.standard_normal((1, 40)).astype(np.float32),
            "utt-c": np.zeros((0, 40), dtype=np.float32),
            "utt-d": rng.standard_normal((2, 41))}  # float64 (e.g. CMVN stats) stays float64


def test_matrix_round_trip(tmp_path: Path, mats: dict[str, np.ndarray]) -> None:
    write_mat_ark_scp(mats.items(), tmp_path / "f.ark", tmp_path / "f.scp")
    got = load_mat_scp(tmp_path / "f.scp")
    assert list(got) == list(mats)
    for key, mat in mats.items():
        assert got[key].dtype == mat.dtype and got[key].flags.writeable
        np.testing.assert_array_equal(got[key], mat)
    # The scp is a plain Kaldi scp (absolute ark path and byte offset) that the kaldi-io package reads too.
    first = (tmp_path / "f.scp").read_text().splitlines()[0]
    assert first == f"utt-a {(tmp_path / 'f.ark').resolve()}:6"
    theirs = dict(kaldi_io.read_mat_scp(str(tmp_path / "f.scp")))
    np.testing.assert_array_equal(theirs["utt-a"], mats["utt-a"])
    np.testing.assert_array_equal(theirs["utt-d"], mats["utt-d"])
    theirs_ark = dict(kaldi_io.read_mat_ark(str(tmp_path / "f.ark")))
    assert list(theirs_ark) == list(mats)


def test_other_dtypes_become_float32(tmp_path: Path) -> None:
    write_mat_ark_scp([("u", np.arange(6, dtype=np.int64).reshape(2, 3))], tmp_path / "i.ark", tmp_path / "i.scp")
    (_, mat), = read_mat_scp(tmp_path / "i.scp")
    assert mat.dtype == np.float32
    np.testing.assert_array_equal(mat, np.arange(6).reshape(2, 3))


def test_scp_ranges_are_inclusive_like_kaldi(tmp_path: Path, mats: dict[str, np.ndarray]) -> None:
    write_mat_ark_scp(mats.items(), tmp_path / "f.ark", tmp_path / "f.scp")
    key, spec = (tmp_path / "f.scp").read_text().splitlines()[0].split()
    (tmp_path / "r.scp").write_text(f"{key} {spec}[2:4]\n{key}-cols {spec}[1:2,0:9]\n")
    got = load_mat_scp(tmp_path / "r.scp")
    np.testing.assert_array_equal(got[key], mats[key][2:5])
    np.testing.assert_array_equal(got[f"{key}-cols"], mats[key][1:3, 0:10])


def test_recorded_ark_path_can_differ(tmp_path: Path, mats: dict[str, np.ndarray]) -> None:
    write_mat_ark_scp(mats.items(), tmp_path / "tmp.ark", tmp_path / "f.scp", ark_path_in_scp=tmp_path / "final.ark")
    assert all(" " + str(tmp_path / "final.ark") + ":" in line
               for line in (tmp_path / "f.scp").read_text().splitlines())
    os.replace(tmp_path / "tmp.ark", tmp_path / "final.ark")
    np.testing.assert_array_equal(load_mat_scp(tmp_path / "f.scp")["utt-a"], mats["utt-a"])


def test_bad_scp_entries_name_file_and_line(tmp_path: Path, mats: dict[str, np.ndarray]) -> None:
    write_mat_ark_scp(mats.items(), tmp_path / "f.ark", tmp_path / "f.scp")
    good = (tmp_path / "f.scp").read_text().splitlines()[0]
    bad = tmp_path / "bad.scp"
    bad.write_text(f"{good}\nu2 {tmp_path / 'missing.ark'}:3\n")
    with pytest.raises(InputError) as e:
        load_mat_scp(bad)
    assert e.value.path == bad and e.value.line == 2
    bad.write_text(f"{good}\nu2 {tmp_path / 'f.ark'}:1\n")  # offset not at a matrix
    with pytest.raises(InputError) as e:
        load_mat_scp(bad)
    assert e.value.line == 2


def test_failed_write_leaves_no_table(tmp_path: Path, mats: dict[str, np.ndarray]) -> None:
    ark, scp = tmp_path / "f.ark", tmp_path / "f.scp"
    write_mat_ark_scp(mats.items(), ark, scp)

    def items():
        yield "ok", np.ones((2, 2), dtype=np.float32)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_mat_ark_scp(items(), ark, scp)
    assert not scp.exists()  # no scp pointing at offsets of an ark it no longer matches
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.ark"]  # old ark intact, no temp files left
    with pytest.raises(ValueError, match="invalid Kaldi table key"):
        write_mat_ark_scp([("has space", np.ones((1, 1)))], ark, scp)


def test_int_vector_round_trip(tmp_path: Path) -> None:
    vecs = {"a": np.array([1, 2, 3, -4, 2 ** 31 - 1], dtype=np.int64), "b": np.array([], dtype=np.int32),
            "c": np.arange(1000, dtype=np.int32)}
    write_vec_int_ark_scp(vecs.items(), tmp_path / "ali.ark", tmp_path / "ali.scp")
    got = load_vec_int_scp(tmp_path / "ali.scp")
    assert list(got) == list(vecs)
    for key, vec in vecs.items():
        assert got[key].dtype == np.int32
        np.testing.assert_array_equal(got[key], vec)
    theirs = dict(kaldi_io.read_vec_int_ark(str(tmp_path / "ali.ark")))
    np.testing.assert_array_equal(theirs["a"], vecs["a"])
    np.testing.assert_array_equal(theirs["c"], vecs["c"])
    assert [k for k, _ in read_vec_int_scp(tmp_path / "ali.scp")] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="int32"):
        write_vec_int_ark_scp([("x", np.array([2 ** 40]))], tmp_path / "x.ark", tmp_path / "x.scp")


def test_posterior_round_trip(tmp_path: Path) -> None:
    ragged = [[(3, 0.5), (7, 0.25), (1, 0.25)], [(0, 1.0)], [], [(2, 0.125), (9, 0.875)]]
    rng = np.random.default_rng(0)
    topk_idx = rng.integers(0, 2000, size=(5, 4))
    topk_val = rng.random((5, 4)).astype(np.float32)
    ark = tmp_path / "post.ark"
    write_post_ark([("r", ragged), ("t", (topk_idx, topk_val))], ark)
    got = dict(read_post_ark(ark))
    assert got["r"] == ragged  # weights chosen exactly representable in float32
    assert [[i for i, _ in frame] for frame in got["t"]] == topk_idx.tolist()
    np.testing.assert_array_equal(np.array([[w for _, w in frame] for frame in got["t"]], dtype=np.float32),
                                  topk_val)
    # The top-k array form is readable by kaldi-io (which cannot read empty frames, so only "t" there).
    write_post_ark([("t", (topk_idx, topk_val))], tmp_path / "t.ark", scp=tmp_path / "t.scp")
    (key, theirs), = kaldi_io.read_post_ark(str(tmp_path / "t.ark"))
    assert key == "t" and [[i for i, _ in f] for f in theirs] == topk_idx.tolist()
    np.testing.assert_allclose([[w for _, w in f] for f in theirs], topk_val)
    (key, theirs), = kaldi_io.read_post_scp(str(tmp_path / "t.scp"))
    assert key == "t" and len(theirs) == 5


def test_truncated_posterior_ark_is_an_input_error(tmp_path: Path) -> None:
    ark = tmp_path / "post.ark"
    write_post_ark([("a", [[(1, 1.0)]] * 10)], ark)
    ark.write_bytes(ark.read_bytes()[:-7])
    with pytest.raises(InputError, match="'a'"):
        list(read_post_ark(ark))
