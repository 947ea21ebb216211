"""Feature dirs read shard by shard: how shards are cut, that a shard reads what the whole-dir reader gives, that a
missing or cut-short archive is an input error naming it (shards as units of an executor: tests/test_executor.py)."""
from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest

from decoding.decode import ShardedLoglikes
from decoding.shards import FeatureShards, cut_shards
from features.cmvn import compute_cmvn_stats
from features.deltas import add_deltas
from features.errors import InputError
from features.extract import load_feats
from features.kaldi_io import write_mat_ark_scp


def write_feats_dir(d: Path, feats: dict[str, np.ndarray], utts_per_speaker: int = 3) -> Path:
    """A feature dir as the features stage writes it: feats.scp (+ ark), utt2num_frames, cmvn.scp, utt2spk."""
    d.mkdir(parents=True, exist_ok=True)
    utts = sorted(feats)
    spk = {u: f"spk{i // utts_per_speaker}" for i, u in enumerate(utts)}
    write_mat_ark_scp(((u, feats[u]) for u in utts), d / "feats.ark", d / "feats.scp")
    (d / "utt2num_frames").write_text("".join(f"{u} {len(feats[u])}\n" for u in utts))
    stats = {s: compute_cmvn_stats([feats[u] for u in utts if spk[u] == s]) for s in sorted(set(spk.values()))}
    write_mat_ark_scp(sorted(stats.items()), d / "cmvn.ark", d / "cmvn.scp")
    (d / "utt2spk").write_text("".join(f"{u} {spk[u]}\n" for u in utts))
    return d


def _corpus(num_utts: int = 10, dim: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"u{i:02d}": rng.normal(3.0, 2.0, (int(rng.integers(5, 40)), dim)).astype(np.float32)
            for i in range(num_utts)}


def test_shards_are_contiguous_runs_of_at_most_max_frames() -> None:
    frames = {"a": 4, "b": 3, "c": 9, "d": 1, "e": 2, "f": 20}
    shards = cut_shards(frames, 8)
    assert [s.utts for s in shards] == [("a", "b"), ("c",), ("d", "e"), ("f",)]  # longer than 8: a shard alone
    assert [s.num_frames for s in shards] == [7, 9, 3, 20] and [s.index for s in shards] == [0, 1, 2, 3]
    assert [s.utts for s in cut_shards(frames, 1000)] == [tuple(frames)]
    with pytest.raises(ValueError):
        cut_shards(frames, 0)


@pytest.mark.parametrize("norm_vars, deltas", [(False, True), (True, False)])
def test_a_shard_reads_what_the_whole_dir_reader_gives(tmp_path: Path, norm_vars: bool, deltas: bool) -> None:
    """GMM features (mean normalisation + deltas) and DNN features (mean and variance), bit for bit."""
    feats = _corpus()
    d = write_feats_dir(tmp_path / "feats", feats)
    whole = load_feats(d, cmvn="speaker", norm_vars=norm_vars)
    shards = FeatureShards(d, 60, norm_vars=norm_vars, deltas=deltas)
    assert len(shards.shards) > 2 and shards.num_frames == sum(len(m) for m in feats.values())
    assert [u for s in shards.shards for u in s.utts] == sorted(feats) == shards.utts
    for shard in shards.shards:
        got = shards.read(shard.utts)
        assert list(got) == list(shard.utts) and sum(len(m) for m in got.values()) == shard.num_frames <= 60
        for utt, mat in got.items():
            want = add_deltas(whole[utt]) if deltas else whole[utt]
            assert mat.dtype == np.float32 and np.array_equal(mat, want), utt
    head = shards.head(50)
    assert sum(len(m) for m in head.values()) >= 50 > sum(len(m) for m in list(head.values())[:-1])
    assert list(head) == sorted(feats)[:len(head)]


def test_a_missing_or_cut_short_archive_names_the_file_and_the_stage_that_writes_it(tmp_path: Path) -> None:
    d = write_feats_dir(tmp_path / "feats", _corpus())
    shards = FeatureShards(d, 60)
    ark = d / "feats.ark"
    data = ark.read_bytes()
    ark.write_bytes(data[:len(data) - 7])  # the last matrix loses its tail
    shards.read(shards.shards[0].utts)  # the first shards are whole
    with pytest.raises(InputError, match="features stage") as err:
        shards.read(shards.shards[-1].utts)
    assert err.value.path == ark.resolve() and "cut short" in str(err.value)
    ark.unlink()
    with pytest.raises(InputError, match="features stage") as err:
        shards.read(shards.shards[0].utts)
    assert err.value.path == ark.resolve() and "missing" in str(err.value)


def test_frame_counts_that_disagree_with_the_archive_are_an_input_error(tmp_path: Path) -> None:
    feats = _corpus()
    d = write_feats_dir(tmp_path / "feats", feats)
    first = sorted(feats)[0]
    lines = (d / "utt2num_frames").read_text().splitlines()
    (d / "utt2num_frames").write_text("\n".join([f"{first} {len(feats[first]) + 1}", *lines[1:]]) + "\n")
    with pytest.raises(InputError, match="utt2num_frames") as err:
        FeatureShards(d, 60).read([first])
    assert err.value.path == (d / "feats.ark").resolve()
    (d / "utt2num_frames").unlink()
    with pytest.raises(InputError, match="features stage") as err:
        FeatureShards(d, 60)
    assert err.value.path == d / "utt2num_frames"


def test_sharded_loglikes_compute_each_shard_from_its_features_alone(tmp_path: Path) -> None:
    """Each pass reads the shards again; when a shard's log-likelihoods are computed, neither the features nor the
    log-likelihoods of the shard before are alive (the consumer here drops each shard before asking for the next)."""
    feats = _corpus(num_utts=12)
    shards = FeatureShards(write_feats_dir(tmp_path / "feats", feats), 50, norm_vars=True)
    earlier: list[weakref.ref] = []
    alive: list[int] = []

    def loglikes(shard: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        alive.append(sum(ref() is not None for ref in earlier))
        out = {u: np.log1p(np.abs(m)) for u, m in shard.items()}
        earlier[:] = [weakref.ref(m) for m in [*shard.values(), *out.values()]]
        return out

    source = ShardedLoglikes(shards, loglikes)
    whole = load_feats(tmp_path / "feats", norm_vars=True)
    for _ in range(2):
        got: dict[str, np.ndarray] = {}
        for shard in source:
            got.update((u, m.sum(1)) for u, m in shard.items())
            del shard
        assert list(got) == sorted(feats)
        assert all(np.array_equal(got[u], np.log1p(np.abs(whole[u])).sum(1)) for u in got)
    assert len(alive) == 2 * len(shards.shards) > 4 and not any(alive)
