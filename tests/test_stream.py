"""Frames streamed from a frame archive on disk: the archive holds the in-memory frames bit for bit, the shuffle is
deterministic, covers every frame once per epoch and mixes shards, streamed training learns and resumes exactly,
soft targets stream beside the frames, and memory and damaged shards are refused with the numbers and the names."""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_kd.distillation.distill import DistillConfig, make_stored_loss, with_soft_targets
from asr_kd.distillation.soft_targets import (
    SoftTargetConfig,
    SoftTargets,
    compute_soft_targets,
    compute_soft_targets_to,
    concat_saved,
)
from asr_kd.evaluation.systems import System
from asr_kd.nn.archive import FrameArchive, ensure_frame_archive, write_frame_archive
from asr_kd.nn.batches import FrameBatch, MemoryBatches
from asr_kd.nn.device import DistContext
from asr_kd.nn.frames import iter_windows, load_frameset
from asr_kd.nn.inference import frame_accuracy, load_model
from asr_kd.nn.model import PRESETS, DNN
from asr_kd.nn.stream import DataConfig, Prefetcher, StreamedFrames
from asr_kd.nn.train import TrainConfig, train
from features.errors import InputError
from features.kaldi_io import write_mat_ark_scp, write_vec_int_ark_scp

MODEL = dataclasses.replace(PRESETS["tiny"], left_context=3, right_context=1, feat_dim=6)
CLASSES = 5


def write_split(root: Path, num_utts: int, seed: int, cmvn_identity: bool = True) -> tuple[Path, Path]:
    """A data/fbank/<split> dir and an exp/tri1_ali/<split> dir: utterances of 20-60 frames, labels a function of
    the frame and its left neighbour (learnable), one utterance without an alignment. With ``cmvn_identity`` the
    CMVN stats are mean 0 and variance 1, so the normalised features are the written ones."""
    rng = np.random.default_rng(seed)
    feats_dir, ali_dir = root / "fbank", root / "ali"
    feats_dir.mkdir(parents=True)
    ali_dir.mkdir(parents=True)
    utts = [f"u{seed}_{i:03d}" for i in range(num_utts)]
    mats = {u: rng.normal(0.0, 1.0, (int(rng.integers(20, 60)), MODEL.feat_dim)).astype(np.float32) for u in utts}
    spk = {u: f"s{i % 3}" for i, u in enumerate(utts)}
    write_mat_ark_scp(sorted(mats.items()), feats_dir / "feats.ark", feats_dir / "feats.scp")
    (feats_dir / "utt2spk").write_text("".join(f"{u} {spk[u]}\n" for u in utts))
    stats = {}
    for s in sorted(set(spk.values())):
        x = np.concatenate([mats[u] for u in utts if spk[u] == s]).astype(np.float64)
        count = x.shape[0]
        stats[s] = np.array([[*(np.zeros(MODEL.feat_dim) if cmvn_identity else x.sum(0)), count],
                             [*(np.full(MODEL.feat_dim, count) if cmvn_identity else (x * x).sum(0)), 0.0]])
    write_mat_ark_scp(sorted(stats.items()), feats_dir / "cmvn.ark", feats_dir / "cmvn.scp")
    alis = []
    for u in utts[1:]:  # the first has no alignment
        x = mats[u]
        prev = np.roll(x, 1, 0)
        y = (x[:, 0] > 0).astype(np.int32) + 2 * (x[:, 1] + prev[:, 2] > 0) + (x[:, 3] > 1.0)
        alis.append((u, np.minimum(y, CLASSES - 1).astype(np.int32)))
    write_vec_int_ark_scp(alis, ali_dir / "pdf.ark", ali_dir / "pdf.scp")
    (ali_dir / "failed.txt").write_text(f"{utts[0]}\n")
    return feats_dir, ali_dir


def streamed(root: Path, split: tuple[Path, Path], shard_frames: int = 300, **data) -> StreamedFrames:
    archive = write_frame_archive(*split, root / "archive", shard_frames=shard_frames, writer="stage baseline")
    return StreamedFrames(archive, DataConfig(**{"block_frames": 100, "buffer_frames": 400, **data}),
                          left=MODEL.left_context, right=MODEL.right_context)


@pytest.fixture()
def split(tmp_path: Path) -> tuple[Path, Path]:
    return write_split(tmp_path / "train", 60, seed=1, cmvn_identity=False)


def test_archive_holds_the_in_memory_frames_bitwise(tmp_path: Path, split: tuple[Path, Path]) -> None:
    """Features after per-speaker CMVN, targets, utterances and their order: what load_frameset gives."""
    fs = load_frameset(*split, left=MODEL.left_context, right=MODEL.right_context)
    frames = streamed(tmp_path, split)
    assert len(frames.archive.shards) > 3 and frames.utt_ids == fs.utt_ids
    assert torch.equal(frames.utt_lengths, fs.utt_lengths) and frames.target_range == fs.target_range
    chunks = list(frames.chunks())
    assert [offset for offset, _ in chunks] == [s.first_frame for s in frames.archive.shards]
    assert torch.equal(torch.cat([c.feats for _, c in chunks]), fs.feats)
    assert torch.equal(torch.cat([c.targets for _, c in chunks]), fs.targets)
    # in-order batches (what evaluation and soft targets read) are the in-memory batches, across chunk edges
    for (a, x, y), (b, x2, y2) in zip(iter_windows(frames, 128, 7, 900), iter_windows(fs, 128, 7, 900), strict=True):
        assert a == b and torch.equal(x, x2) and torch.equal(y, y2)
    sub = frames.subset([fs.utt_ids[5], fs.utt_ids[2]])
    assert torch.equal(sub.feats, fs.subset([fs.utt_ids[5], fs.utt_ids[2]]).feats)


def test_shuffle_is_deterministic_covers_every_frame_once_and_mixes_shards(tmp_path: Path,
                                                                           split: tuple[Path, Path]) -> None:
    fs = load_frameset(*split, left=MODEL.left_context, right=MODEL.right_context)
    frames = streamed(tmp_path, split)
    batches = frames.batches(torch.float32, members=1)
    assert len(frames.plan(1)) > 3  # the split takes several buffers

    def order(epoch: int) -> list[torch.Tensor]:
        return [step.idx[0] for step in batches.epoch([7], epoch, 50, torch.device("cpu"))]

    first = order(1)
    assert all(len(idx) == 50 for idx in first[:-1])
    every = torch.cat(first)
    assert torch.equal(every.sort().values, torch.arange(fs.num_frames))  # every frame exactly once
    assert torch.equal(every, torch.cat(order(1)))  # the same (seed, epoch), the same order
    assert not torch.equal(every, torch.cat(order(2)))
    shard_of = torch.cat([torch.full((s.frames,), i) for i, s in enumerate(frames.archive.shards)])
    shards_per_batch = [len(shard_of[idx].unique()) for idx in first[:-1]]  # a buffer holds blocks of all over
    assert min(shards_per_batch) >= 2 and np.mean(shards_per_batch) >= 3, shards_per_batch
    for step in batches.epoch([7], 1, 50, torch.device("cpu")):  # windows and targets are the frames' own
        assert torch.equal(step.x[0], fs.windows(step.idx[0])) and torch.equal(step.y[0], fs.targets[step.idx[0]])


def test_one_buffer_is_the_in_memory_order(tmp_path: Path, split: tuple[Path, Path]) -> None:
    """A split that fits in the buffer streams exactly as it trains in memory: the same steps, bit for bit."""
    fs = load_frameset(*split, left=MODEL.left_context, right=MODEL.right_context)
    frames = streamed(tmp_path, split, buffer_frames=fs.num_frames)
    cpu = torch.device("cpu")
    for a, b in zip(frames.batches(torch.bfloat16, 2).epoch([3, 4], 2, 64, cpu),
                    MemoryBatches(fs, torch.bfloat16).epoch([3, 4], 2, 64, cpu), strict=True):
        assert torch.equal(a.idx, b.idx) and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_stacked_members_and_ranks_share_buffers_and_keep_their_own_orders(tmp_path: Path,
                                                                           split: tuple[Path, Path]) -> None:
    """Stacked members draw their own order inside the shared buffers, the order each would draw alone; two ranks'
    shares of every global batch make up the one-process batch."""
    batches = streamed(tmp_path, split).batches(torch.float32, 2)
    cpu = torch.device("cpu")
    both = [s.idx for s in batches.epoch([3, 4], 1, 64, cpu)]
    for m, seed in enumerate((3, 4)):
        alone = [s.idx[0] for s in batches.epoch([seed], 1, 64, cpu)]
        assert all(torch.equal(a[m], b) for a, b in zip(both, alone, strict=True))
    ranks = [list(batches.epoch([3, 4], 1, 64, cpu, DistContext(r, 2))) for r in range(2)]
    for whole, r0, r1 in zip(both, *ranks, strict=True):
        assert torch.equal(torch.cat([r0.idx, r1.idx], 1), whole) and r0.global_b == whole.shape[1]


def test_streamed_training_converges_and_resumes_exactly(tmp_path: Path) -> None:
    train_split = write_split(tmp_path / "train", 80, seed=2)
    dev = load_frameset(*write_split(tmp_path / "dev", 15, seed=3), left=MODEL.left_context,
                        right=MODEL.right_context)
    frames = streamed(tmp_path, train_split)
    assert len(frames.plan(1)) > 2
    tc = TrainConfig(batch_size=32, epochs=6, lr=1e-2, lr_schedule="constant", early_stopping=False, seed=5,
                     progress=False, bf16=True)
    full = train(MODEL, tc, frames, dev, tmp_path / "full", CLASSES)
    dev_acc = [row["dev_acc"] for row in full.history]
    assert dev_acc[-1] > 0.8 and dev_acc[-1] > dev_acc[0]  # learns, far above chance (1/5)
    assert frame_accuracy(load_model(full.model_path), frames) == pytest.approx(full.history[-1]["train_acc"],
                                                                                abs=0.05)

    class Killed(Exception):
        pass

    def kill(epoch: int, rows: list[dict]) -> None:
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(MODEL, tc, frames, dev, tmp_path / "resumed", CLASSES, epoch_callback=kill)
    resumed = train(MODEL, tc, frames, dev, tmp_path / "resumed", CLASSES)
    a, b = (torch.load(r.model_path, weights_only=True)["state_dict"] for r in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_streamed_soft_targets_give_the_in_memory_loss(tmp_path: Path, split: tuple[Path, Path]) -> None:
    """Soft targets computed on a streamed split, in shares joined on disk, are those computed in memory; read
    beside the streamed frames they give the loss the in-memory lookup gives on the same frames."""
    fs = load_frameset(*split, left=MODEL.left_context, right=MODEL.right_context)
    frames = streamed(tmp_path, split)
    torch.manual_seed(0)
    teachers = [DNN(MODEL, CLASSES).eval() for _ in range(2)]
    cfg = SoftTargetConfig(temperature=2.0, top_k=3, batch_size=100)
    in_memory = compute_soft_targets(teachers, fs, cfg)
    half = len(fs.utt_ids) // 2
    parts = [tmp_path / "part0", tmp_path / "part1"]
    for part, share in zip(parts, (frames.utt_range(0, half), frames.utt_range(half, len(fs.utt_ids)))):
        compute_soft_targets_to(teachers, share, cfg, {2.0: part})
    meta = concat_saved(parts, tmp_path / "soft")
    stored = SoftTargets.load(tmp_path / "soft")
    for name, col in in_memory.columns().items():
        assert torch.equal(stored.columns()[name], col)
    assert meta["num_frames"] == fs.num_frames and meta["mean_mass_kept"] == pytest.approx(
        float(in_memory.mass_kept.float().mean()), rel=1e-4)

    dcfg = DistillConfig(temperature=2.0, top_k=2)
    with_soft, _ = with_soft_targets(frames, tmp_path / "soft", dcfg, CLASSES)
    loss = make_stored_loss(dcfg)
    z = torch.randn(50, CLASSES)
    for step in with_soft.batches(torch.float32, 1).epoch([1], 1, 50, torch.device("cpu")):
        idx = step.idx[0]
        looked_up = FrameBatch(idx, fs.targets[idx], {n: c[idx] for n, c in in_memory.columns().items()})
        carried = FrameBatch(idx, step.y[0], {n: c[0] for n, c in step.columns.items()})
        assert torch.equal(loss(z[:len(idx)], carried), loss(z[:len(idx)], looked_up))


def test_streamed_evaluation_writes_the_in_memory_predictions(tmp_path: Path, split: tuple[Path, Path]) -> None:
    fs = load_frameset(*split, left=MODEL.left_context, right=MODEL.right_context)
    frames = streamed(tmp_path, split)
    from asr_kd.nn.inference import save_model

    torch.manual_seed(0)
    paths = []
    for m in range(2):
        model = DNN(MODEL, CLASSES)
        save_model(tmp_path / f"m{m}.pt", MODEL, CLASSES, model.state_dict())
        paths.append(tmp_path / f"m{m}.pt")
    for system in (System("one", paths[:1]), System("two", paths)):
        got = list(system.iter_predictions(frames))
        want = system.log_posteriors(fs).argmax(1).to(torch.int32).numpy()
        assert [u for u, _, _ in got] == fs.utt_ids
        assert np.array_equal(np.concatenate([p for _, p, _ in got]), want)
        assert np.array_equal(np.concatenate([y for _, _, y in got]), fs.targets.numpy())


def test_a_missing_or_cut_shard_is_named_with_its_writer(tmp_path: Path, split: tuple[Path, Path]) -> None:
    frames = streamed(tmp_path, split)
    path = frames.archive.path
    kept = (path / "00001.pdf").read_bytes()
    (path / "00001.pdf").unlink()
    with pytest.raises(InputError, match=r"00001.pdf: shard 00001 is missing .* written by stage baseline"):
        FrameArchive.open(path)
    with pytest.raises(InputError, match="shard 00001 is missing"):  # an archive already open reads it no more
        list(frames.chunks())
    (path / "00001.pdf").write_bytes(kept)
    feats = path / "00002.feats"
    feats.write_bytes(feats.read_bytes()[:-8])
    with pytest.raises(InputError, match=r"00002.feats: shard 00002 has \d+ bytes, meta.json says \d+"):
        FrameArchive.open(path)


def test_the_archive_is_written_again_when_its_inputs_change(tmp_path: Path, split: tuple[Path, Path]) -> None:
    out = tmp_path / "exp" / "frames" / "train"
    first = ensure_frame_archive(*split, out, 300, "stage baseline")
    mtime = (out / "meta.json").stat().st_mtime_ns
    assert ensure_frame_archive(*split, out, 300, "stage baseline").num_frames == first.num_frames
    assert (out / "meta.json").stat().st_mtime_ns == mtime  # reused
    (split[1] / "failed.txt").write_text("")  # other alignments, the same utterances
    ensure_frame_archive(*split, out, 300, "stage baseline")
    assert (out / "meta.json").stat().st_mtime_ns != mtime


def test_buffers_beyond_the_memory_allowed_are_refused_with_the_numbers(tmp_path: Path,
                                                                        split: tuple[Path, Path]) -> None:
    frames = streamed(tmp_path, split, buffer_frames=400, memory_gb=1e-5)
    need = 2 * frames.buffer_bytes(torch.float32, 1)
    assert need > 1e4
    per_frame = need / 800
    with pytest.raises(InputError, match=rf"data.buffer_frames=400, two alive: .*, {per_frame:.0f} B per frame\) needs "
                                         rf"{need / 1e3:.3g} kB but data.memory_gb=1e-05 allows 10 kB: lower "
                                         rf"data.buffer_frames to {int(1e4 // (need / 400))} or less"):
        frames.batches(torch.float32, 1)


def test_a_split_smaller_than_the_buffer_needs_the_memory_of_its_own_frames(tmp_path: Path,
                                                                           split: tuple[Path, Path]) -> None:
    whole = streamed(tmp_path / "a", split, buffer_frames=10**12, memory_gb=1)
    exact = streamed(tmp_path / "b", split, buffer_frames=whole.num_frames, memory_gb=1)
    assert whole.buffer_frames == whole.num_frames
    assert whole.buffer_bytes(torch.float32, 1) == exact.buffer_bytes(torch.float32, 1) < 1e9
    whole.batches(torch.float32, 1)  # not refused for the buffer it would never fill


def test_the_reader_keeps_at_most_two_buffers_and_passes_errors_on() -> None:
    alive, peak, lock = [0], [0], threading.Lock()

    def load(i: int) -> int:
        with lock:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
        time.sleep(0.01)
        return i

    prefetch = Prefetcher([lambda i=i: load(i) for i in range(6)])
    got = []
    for item in prefetch:
        got.append(item)
        time.sleep(0.02)  # training on it while the next one is read
        with lock:
            alive[0] -= 1
        prefetch.release()
    assert got == list(range(6)) and peak[0] == 2

    def broken() -> int:
        raise InputError("shard 00003 is missing")

    failing = Prefetcher([lambda: 1, broken])
    assert next(failing) == 1
    failing.release()
    with pytest.raises(InputError, match="00003"):
        next(failing)
    failing.close()


def test_archive_meta_records_shards_and_targets(tmp_path: Path, split: tuple[Path, Path]) -> None:
    frames = streamed(tmp_path, split)
    meta = json.loads((frames.archive.path / "meta.json").read_text())
    assert sum(s["frames"] for s in meta["shards"]) == meta["num_frames"] == frames.num_frames
    assert all(s["feats_bytes"] == s["frames"] * MODEL.feat_dim * 4 for s in meta["shards"])
    assert meta["target_min"] >= 0 and meta["target_max"] < CLASSES and meta["num_utts"] == 59


def _workspace(work: Path) -> None:
    """The features and alignments of a work dir's three splits (what the DNN stages read), for the small model."""
    for i, split in enumerate(("train", "dev", "test")):
        feats_dir, ali_dir = write_split(work / "src" / split, 12, seed=10 + i)
        target = {"fbank": work / "data" / "fbank" / split, "ali": work / "exp" / "tri1_ali" / split}
        for kind, src in (("fbank", feats_dir), ("ali", ali_dir)):
            target[kind].parent.mkdir(parents=True, exist_ok=True)
            src.rename(target[kind])
        for scp in ("feats.scp", "cmvn.scp"):  # the arks moved with their dirs
            path = target["fbank"] / scp
            path.write_text(path.read_text().replace(str(feats_dir), str(target["fbank"])))
        path = target["ali"] / "pdf.scp"
        path.write_text(path.read_text().replace(str(ali_dir), str(target["ali"])))
        frames = {u: n for u, n in (line.split() for line in load_utt2num(target["fbank"]))}
        (target["fbank"] / "utt2num_frames").write_text("".join(f"{u} {n}\n" for u, n in sorted(frames.items())))
    (work / "exp" / "tri1_ali" / "train" / "num_pdfs").write_text(f"{CLASSES}\n")


def load_utt2num(feats_dir: Path) -> list[str]:
    from features.kaldi_io import read_mat_scp

    return [f"{u} {m.shape[0]}" for u, m in read_mat_scp(feats_dir / "feats.scp")]


def test_the_command_line_refuses_frames_beyond_the_memory_allowed_in_one_line(tmp_path: Path) -> None:
    """In memory or streamed, a stage whose frames would take more than data.memory_gb stops before any training:
    one line with the numbers and what to change, exit status 2."""
    import os
    import subprocess
    import sys

    work = tmp_path / "work"
    _workspace(work)
    repo = Path(__file__).resolve().parent.parent

    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "asr_kd.cli", "--config-dir", str(repo / "recipes" / "kaldi" / "conf"),
               "--config-name", "default", f"work_dir={work}", "stage=baseline", "device=cpu",
               "model.feat_dim=6", "model.left_context=3", "model.right_context=1", "data.memory_gb=0.00001", *args]
        path = os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])  # this checkout's code
        return subprocess.run(cmd, capture_output=True, text=True, cwd=work,
                              env=dict(os.environ, KALDI_ROOT="/tmp", PYTHONPATH=path))

    held = cli()
    assert held.returncode == 2, held.stderr[-2000:]
    assert held.stderr.strip().splitlines()[-1].startswith("error: split train in memory (") and \
        "data.memory_gb=1e-05 allows 10 kB: stream it" in held.stderr
    streamed_run = cli("data.stream=true", "data.buffer_frames=200", "data.block_frames=50")
    assert streamed_run.returncode == 2, streamed_run.stderr[-2000:]
    last = streamed_run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: streaming ") and "(data.buffer_frames=200, two alive" in last and \
        "lower data.buffer_frames" in last and "Traceback" not in streamed_run.stderr
    assert (work / "exp" / "frames" / "train" / "meta.json").exists()  # the archive was written, then refused
