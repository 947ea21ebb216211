"""Transfer sets with untranscribed audio: the corpus's unlabeled pool, data dirs without text, the transfer set's
frames, and the objective whose hard term sees labeled frames only."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr_kd.corpus.kaldi_dir import UNLABELED, import_unlabeled_dir, validate_data_dir
from asr_kd.corpus.sentences import Sentence
from asr_kd.corpus.synth import SynthConfig, estimated_seconds, plan_corpus
from asr_kd.corpus.text_sources import spoken_pool
from asr_kd.distillation.distill import DistillConfig, distillation_loss
from asr_kd.distillation.soft_targets import SoftTargetConfig, compute_soft_targets
from asr_kd.distillation.transfer import TransferConfig, distill_on_transfer_set, draw_pool, pool_frames
from asr_kd.nn.frames import NO_TARGET, FrameSet
from asr_kd.nn.inference import load_model
from asr_kd.nn.model import DNN, ModelConfig
from asr_kd.nn.train import TrainConfig, train
from features.errors import InputError


# ------------------------------------------------------------------------------------------------ the corpus's pool
def test_the_unlabeled_pool_is_new_sentences_by_the_train_voices_and_changes_no_other_split() -> None:
    sentences: list[Sentence] = spoken_pool(SynthConfig().spoken_sources)
    plain, _ = plan_corpus(SynthConfig(size="ci"), sentences)
    utts, unused = plan_corpus(SynthConfig(size="ci", unlabeled_hours=0.1), sentences)
    assert [u for u in utts if u.split != UNLABELED] == plain  # train, dev, test: the same plan
    by_split: dict[str, list] = defaultdict(list)
    for u in utts:
        by_split[u.split].append(u)
    pool = by_split[UNLABELED]
    text = {split: {u.sentence.transcript for u in us} for split, us in by_split.items()}
    assert not text[UNLABELED] & (text["train"] | text["dev"] | text["test"])
    babble = {s.transcript for s in unused[:SynthConfig().babble_bank_utts]}
    assert not text[UNLABELED] & babble  # the babble noise's sentences are never pool speech
    assert {u.speaker for u in pool} <= {u.speaker for u in by_split["train"]}
    assert len({u.speaker for u in pool}) > 1
    assert 0.1 <= sum(estimated_seconds(u.sentence) for u in pool) / 3600 < 0.11
    assert len({u.utt_id for u in utts}) == len(utts)


def test_a_pool_larger_than_the_free_sentences_is_an_error() -> None:
    sentences = spoken_pool(SynthConfig().spoken_sources)[:200]
    with pytest.raises(ValueError, match="unlabeled_hours"):
        plan_corpus(SynthConfig(size="ci", dev_utts=4, test_utts=4, unlabeled_hours=5.0), sentences)


# ---------------------------------------------------------------------------------------------- data dirs, no text
def _wav_dir(tmp_path: Path, n: int, text: bool, utt2spk: bool) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    ids = [f"spk{k // 2}-utt{k}" for k in range(n)]
    lines = []
    for k, utt in enumerate(ids):
        path = tmp_path / f"{utt}.wav"
        sf.write(path, 0.1 * np.sin(np.arange(8000) * (k + 1) / 50), 16000, subtype="PCM_16")
        lines.append(f"{utt} {path}\n")
    (src / "wav.scp").write_text("".join(lines))
    if utt2spk:
        (src / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in ids))
    if text:
        (src / "text").write_text("".join(f"{u} HELLO\n" for u in ids))
    return src


def test_a_dir_with_only_wav_scp_is_a_transfer_set_of_one_speaker_per_utterance(tmp_path: Path) -> None:
    src = _wav_dir(tmp_path, 3, text=False, utt2spk=False)
    with pytest.raises(InputError, match="text"):
        validate_data_dir(src)  # a training split must have transcripts
    report = import_unlabeled_dir(src, tmp_path / UNLABELED)
    dst = tmp_path / UNLABELED
    assert report.num_utts == 3 and report.num_speakers == 3 and report.num_words == 0
    assert not (dst / "text").exists()
    assert (dst / "utt2spk").read_text().splitlines() == [f"{u} {u}" for u in sorted(
        line.split()[0] for line in (src / "wav.scp").read_text().splitlines())]
    assert report.hours == pytest.approx(3 * 0.5 / 3600)


def test_transcripts_of_an_unlabeled_dir_are_dropped_and_its_speakers_kept(tmp_path: Path) -> None:
    src = _wav_dir(tmp_path, 4, text=True, utt2spk=True)
    report = import_unlabeled_dir(src, tmp_path / UNLABELED)
    assert not (tmp_path / UNLABELED / "text").exists() and report.num_words == 0 and report.num_speakers == 2


# ------------------------------------------------------------------------------------------------- transfer frames
def _frames(n_utts: int, length: int, prefix: str, labeled: bool, classes: int = 6, seed: int = 0) -> FrameSet:
    g = torch.Generator().manual_seed(seed)
    n = n_utts * length
    targets = torch.randint(0, classes, (n,), generator=g) if labeled else torch.full((n,), NO_TARGET)
    feats = torch.randn(n, 4, generator=g) + torch.nn.functional.one_hot(targets.clamp(min=0), 4 if classes <= 4
                                                                         else classes)[:, :4].float()
    return FrameSet.from_tensors(feats, targets, [f"{prefix}{k:03d}" for k in range(n_utts)], [length] * n_utts,
                                 left=2, right=1)


def test_a_transfer_set_holds_every_labeled_frame_once_then_the_pool() -> None:
    train, pool = _frames(5, 7, "a", True), _frames(9, 6, "p", False)
    joined = FrameSet.concat([train, pool])
    assert joined.num_frames == train.num_frames + pool.num_frames
    assert int(joined.labeled.sum()) == train.num_frames  # each labeled frame once, no pool frame labeled
    assert torch.equal(joined.targets[:train.num_frames], train.targets)
    assert torch.equal(joined.windows(torch.arange(train.num_frames, joined.num_frames)),
                       pool.windows(torch.arange(pool.num_frames)))  # windows never cross into the other part
    with pytest.raises(ValueError, match="more than one"):
        FrameSet.concat([train, train.subset(train.utt_ids[:1])])


def test_pool_draws_are_nested_seeded_and_sized_in_frames() -> None:
    pool = _frames(40, 5, "p", False)
    small, large = draw_pool(pool, 30), draw_pool(pool, 90)
    assert small.num_frames >= 30 and large.num_frames >= 90 and large.num_frames < 95
    assert set(small.utt_ids) <= set(large.utt_ids)
    assert draw_pool(pool, 30).utt_ids == small.utt_ids and draw_pool(pool, 30, seed=1).utt_ids != small.utt_ids
    assert draw_pool(pool, None) is pool and draw_pool(pool, 0).num_frames == 0
    assert pool_frames(1000, 4.0) == 3000 and pool_frames(1000, 1.0) == 0


def test_transfer_config_is_checked() -> None:
    with pytest.raises(ValueError, match="pool"):
        TransferConfig(pool=0.0)
    with pytest.raises(ValueError, match="sizes"):
        TransferConfig(sizes=[0.5])
    assert list(TransferConfig(sizes=[1, 4], widths=[1, 2]).curve()) == [
        "transfer_1x_w1", "transfer_1x_w2", "transfer_4x_w1", "transfer_4x_w2"]


# ------------------------------------------------------------------------------------------------------- the loss
def test_the_hard_term_reads_labeled_frames_only() -> None:
    torch.manual_seed(0)
    B, C, k = 8, 10, 4
    idx = torch.stack([torch.randperm(C)[:k] for _ in range(B)])
    probs = torch.softmax(torch.randn(B, k), 1)
    hard = torch.randint(0, C, (B,))
    labeled = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    targets = torch.where(labeled, hard, NO_TARGET)
    z = torch.randn(B, C, requires_grad=True)
    loss = distillation_loss(z, idx, probs, targets, 2.0, 0.5, labeled_only=True)
    loss.backward()
    soft_only = torch.randn(B, C).copy_(z.detach()).requires_grad_()
    distillation_loss(soft_only, idx, probs, targets, 2.0, 0.0, labeled_only=True).backward()
    assert torch.equal(z.grad[~labeled], soft_only.grad[~labeled])  # an unlabeled frame: soft term alone
    expected = distillation_loss(z.detach(), idx, probs, targets, 2.0, 0.0, labeled_only=True) + 0.5 * \
        torch.nn.functional.cross_entropy(z.detach()[labeled], hard[labeled])  # mean over the labeled frames
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    none = distillation_loss(z.detach(), idx, probs, torch.full((B,), NO_TARGET), 2.0, 0.5, labeled_only=True)
    assert torch.isfinite(none)  # a batch of the pool alone: no hard term, no NaN
    all_labeled = distillation_loss(z.detach(), idx, probs, hard, 2.0, 0.5)
    assert distillation_loss(z.detach(), idx, probs, hard, 2.0, 0.5, labeled_only=True).item() == \
        pytest.approx(all_labeled.item(), rel=1e-6)


def test_hard_targets_train_only_on_labeled_frames() -> None:
    pool = _frames(3, 5, "p", False)
    with pytest.raises(ValueError, match="train targets"):
        train(ModelConfig(hidden_layers=1, hidden_dim=8, feat_dim=4, left_context=2, right_context=1),
              TrainConfig(epochs=1, progress=False), pool, _frames(2, 5, "d", True), Path("/nonexistent"), 6)


# ------------------------------------------------------------------------------------------ a student on the pool
def test_a_student_learns_from_the_pool_reproducibly(tmp_path: Path) -> None:
    model_cfg = ModelConfig(hidden_layers=1, hidden_dim=16, feat_dim=4, left_context=2, right_context=1)
    labeled, pool, dev = _frames(6, 20, "a", True), _frames(24, 20, "p", False, seed=1), _frames(4, 20, "d", True,
                                                                                                    seed=2)
    torch.manual_seed(3)
    teacher = DNN(model_cfg, 6)
    cfg = SoftTargetConfig(temperature=2.0, top_k=4)
    soft = compute_soft_targets([teacher], labeled, cfg)
    pool_soft = compute_soft_targets([teacher], pool, cfg)
    train_cfg = TrainConfig(epochs=2, batch_size=32, progress=False, bf16=False)
    runs = [distill_on_transfer_set(model_cfg, train_cfg, DistillConfig(temperature=2.0, top_k=4), labeled, soft,
                                    pool, pool_soft, dev, tmp_path / f"run{r}", 6, "cpu") for r in (0, 1)]
    assert (tmp_path / "run0" / "model.pt").read_bytes() == (tmp_path / "run1" / "model.pt").read_bytes()
    metrics = json.loads((tmp_path / "run0" / "metrics.json").read_text())
    assert len(metrics["epochs"]) == runs[0].epochs_run == 2
    assert all(0.0 <= e["train_acc"] <= 1.0 for e in metrics["epochs"])
    with pytest.raises(ValueError, match="pool soft targets"):
        distill_on_transfer_set(model_cfg, train_cfg, DistillConfig(temperature=2.0, top_k=4), labeled, soft,
                                pool.subset(pool.utt_ids[:3]), pool_soft, dev, tmp_path / "bad", 6, "cpu")


def test_epochs_of_a_given_size_run_on_through_seeded_passes(tmp_path: Path) -> None:
    """An epoch of F frames of a larger set: epochs tile the passes (each pass a permutation of every frame), the
    order depends only on (seed, epoch), and training resumes from any epoch to the same bytes."""
    from asr_kd.nn.batches import MemoryBatches

    frames = _frames(10, 10, "a", True)  # 100 frames
    batches = MemoryBatches(frames, torch.float32, epoch_frames=30)
    assert batches.epoch_frames == 30 and batches.order["epoch_frames"] == 30
    seen = [torch.cat([s.idx[0] for s in batches.epoch([7], e, 8, torch.device("cpu"))]) for e in range(1, 8)]
    assert all(len(s) == 30 for s in seen)
    stream = torch.cat(seen)
    assert sorted(stream[:100].tolist()) == list(range(100)) and sorted(stream[100:200].tolist()) == list(range(100))
    again = torch.cat([s.idx[0] for s in batches.epoch([7], 4, 8, torch.device("cpu"))])
    assert torch.equal(again, seen[3])
    whole = MemoryBatches(frames, torch.float32)
    assert whole.epoch_frames == 100 and "epoch_frames" not in whole.order

    model_cfg = ModelConfig(hidden_layers=1, hidden_dim=8, feat_dim=4, left_context=2, right_context=1)
    cfg = TrainConfig(epochs=4, batch_size=16, progress=False, bf16=False, epoch_frames=30, lr_schedule="constant",
                      early_stopping=False)
    dev = _frames(2, 10, "d", True, seed=5)
    train(model_cfg, cfg, frames, dev, tmp_path / "straight", 6, device="cpu")

    def kill_after_second(epoch: int, rows: list[dict]) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(model_cfg, cfg, frames, dev, tmp_path / "resumed", 6, device="cpu", epoch_callback=kill_after_second)
    train(model_cfg, cfg, frames, dev, tmp_path / "resumed", 6, device="cpu")  # on from its epoch-2 checkpoint
    straight, resumed = (load_model(tmp_path / run / "model.pt") for run in ("straight", "resumed"))
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(),
                                                 strict=True))
    assert len(json.loads((tmp_path / "straight" / "metrics.json").read_text())["epochs"]) == 4


def test_your_corpus_takes_an_unlabeled_dir_beside_its_splits(tmp_path: Path) -> None:
    """corpus=kaldi with corpus.unlabeled_dir: the splits as always, plus data/unlabeled without text; a
    LibriSpeech part may not be both a split and unlabeled."""
    from asr_kd.corpus.kaldi_dir import KaldiDirConfig, prepare_kaldi
    from asr_kd.corpus.librispeech import LibriSpeechConfig, prepare_librispeech

    source = tmp_path / "source"
    source.mkdir()
    for split in ("train", "dev", "test"):
        (tmp_path / split).mkdir()
        _wav_dir(tmp_path / split, 2, text=True, utt2spk=True).rename(source / split)
    (tmp_path / "pool").mkdir()
    pool = _wav_dir(tmp_path / "pool", 3, text=False, utt2spk=False)
    out = tmp_path / "data"
    summary = prepare_kaldi(out, KaldiDirConfig(source_dir=str(source), unlabeled_dir=str(pool)))
    assert set(summary.splits) == {"train", "dev", "test", UNLABELED}
    assert summary.splits[UNLABELED].utts == 3 and summary.splits[UNLABELED].words == 0
    assert (out / "train" / "text").exists() and not (out / UNLABELED / "text").exists()
    with pytest.raises(InputError, match="both a split"):
        prepare_librispeech(tmp_path / "ls", LibriSpeechConfig(source_dir=str(tmp_path), unlabeled_parts=["dev-clean"]))
