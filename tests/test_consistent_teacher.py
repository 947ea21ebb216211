"""A consistent, patient teacher: the online ensemble run on the student's own augmented windows, its settings, the
research config's students that test it, and how the report names them."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from asr_kd.conf.schema import StudentConfig, register
from asr_kd.distillation.distill import DistillConfig, distill, make_online_loss
from asr_kd.nn.augment import FeatureAugment, FeatureAugmentConfig
from asr_kd.nn.batches import FrameBatch
from asr_kd.nn.frames import FrameSet
from asr_kd.nn.inference import load_model
from asr_kd.nn.model import DNN, ModelConfig
from asr_kd.nn.train import TrainConfig, train
from asr_kd.pipeline.report import markdown
from asr_kd.pipeline.students import student_configs

REPO = Path(__file__).resolve().parent.parent
MODEL = ModelConfig(hidden_layers=1, hidden_dim=32, left_context=2, right_context=1, feat_dim=8)
WINDOW = MODEL.left_context + 1 + MODEL.right_context
CLASSES = 6
AUGMENT = FeatureAugmentConfig(snr_db=[5.0, 20.0], time_mask_frames=1, freq_mask_bins=2)


def frames(num_utts: int, seed: int) -> FrameSet:
    """Utterances of class segments; a frame is its class's mean plus noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(CLASSES, MODEL.feat_dim, generator=torch.Generator().manual_seed(99)) * 1.2
    y = torch.randint(0, CLASSES, (num_utts * 8,), generator=g).repeat_interleave(5)
    x = means[y] + torch.randn(len(y), MODEL.feat_dim, generator=g)
    return FrameSet.from_tensors(x, y, [f"u{seed}_{i}" for i in range(num_utts)], [40] * num_utts,
                                 left=MODEL.left_context, right=MODEL.right_context)


def tc(epochs: int = 2) -> TrainConfig:
    return TrainConfig(lr=3e-3, lr_schedule="constant", batch_size=64, epochs=epochs, early_stopping=False,
                       bf16=False, progress=False)


def test_a_consistent_teacher_needs_online_mode() -> None:
    with pytest.raises(ValueError, match="mode='online'"):
        DistillConfig(consistent=True)
    assert DistillConfig(mode="online", consistent=True).consistent
    assert not DistillConfig().consistent and not DistillConfig().augment.enabled  # off by default


def test_the_consistent_teacher_runs_on_the_windows_the_student_got() -> None:
    """A teacher identical to the student, at T=1 with no hard term, leaves nothing to learn when it sees the
    student's (augmented) windows; the same teacher on the clean windows of the same frames does not."""
    torch.manual_seed(0)
    teacher = DNN(MODEL, CLASSES).eval()
    s = frames(4, 0)
    idx = torch.arange(10, 60)
    clean = s.windows(idx)
    noisy = FeatureAugment(FeatureAugmentConfig(snr_db=[0.0, 0.0], time_mask_frames=2), WINDOW, MODEL.feat_dim,
                           seed=0)(clean, 0)
    dcfg = DistillConfig(temperature=1.0, hard_weight=0.0, top_k=None, mode="online", consistent=True)
    grads = {}
    for name, cfg in (("consistent", dcfg), ("clean", dataclasses.replace(dcfg, consistent=False))):
        z = teacher(noisy).detach().requires_grad_()
        make_online_loss([teacher], s, cfg)(z, FrameBatch(idx, s.targets[idx], {}, noisy)).backward()
        grads[name] = z.grad.abs().max()
    assert grads["consistent"] < 1e-7 and grads["clean"] > 1e-3


def test_the_consistent_teacher_needs_the_students_windows_and_the_clean_one_the_set() -> None:
    teacher = DNN(MODEL, CLASSES)
    with pytest.raises(ValueError, match="training set"):
        make_online_loss([teacher], None, DistillConfig(mode="online"))
    loss = make_online_loss([teacher], None, DistillConfig(mode="online", consistent=True))
    with pytest.raises(ValueError, match="windows"):
        loss(torch.zeros(2, CLASSES), FrameBatch(torch.arange(2), torch.zeros(2, dtype=torch.long), {}))


def test_consistent_distillation_runs_and_is_reproducible(tmp_path: Path) -> None:
    train_set, dev_set = frames(30, 0), frames(8, 1)
    teacher = load_model(train(MODEL, tc(2), train_set, dev_set, tmp_path / "teacher", CLASSES).model_path)
    dcfg = DistillConfig(temperature=2.0, top_k=4, mode="online", consistent=True, augment=AUGMENT)

    def student(name: str, cfg: DistillConfig) -> bytes:
        distill(MODEL, tc(2), cfg, train_set, dev_set, None, [teacher], tmp_path / name, CLASSES)
        return (tmp_path / name / "model.pt").read_bytes()

    augmented = student("a", dcfg)
    assert augmented == student("b", dcfg)  # same config and seed: the same bytes
    objective = json.loads((tmp_path / "a" / "distill.json").read_text())
    assert objective["consistent"] and objective["augment"]["snr_db"] == [5.0, 20.0]
    clean = student("clean", dataclasses.replace(dcfg, augment=FeatureAugmentConfig()))
    assert clean != augmented
    # without augmentation the consistent teacher sees the clean windows: the online teacher's student, bit for bit
    assert clean == student("online", dataclasses.replace(dcfg, augment=FeatureAugmentConfig(), consistent=False))


def test_the_research_config_crosses_consistent_teaching_with_patience(tmp_path: Path) -> None:
    register()
    with initialize_config_dir(str(REPO / "recipes/synth/conf"), version_base="1.3"):
        cfg = compose("research", overrides=[f"work_dir={tmp_path}"])
    augment = FeatureAugmentConfig(snr_db=[10.0, 30.0], time_mask_frames=5, freq_mask_bins=8, num_masks=2)
    for name, consistent, patient in (("stored_augmented", False, False), ("stored_augmented_patient", False, True),
                                      ("consistent", True, False), ("consistent_patient", True, True)):
        _, train_cfg, dcfg = student_configs(cfg, name, temperature=2.0)
        assert (dcfg.consistent, dcfg.mode) == (consistent, "online" if consistent else "stored"), name
        assert dcfg.augment == augment and dcfg.temperature == 2.0, name
        assert (train_cfg.lr_schedule, train_cfg.min_epochs) == ("plateau", 80 if patient else 0), name
        if consistent:
            assert dcfg.combine == cfg.ensemble.combine  # the members combined as the stored targets are
    main_like = student_configs(cfg, "hard_weight_0")[2]
    assert not main_like.augment.enabled and not main_like.consistent


def test_the_students_table_names_each_students_teacher_input_and_floor() -> None:
    base = {"targets": "soft", "budget": "converge", "hidden_layers": 3, "hidden_dim": 192, "params": 1000,
            "epochs_run": 40, "temperature": 2.0, "hard_weight": 0.5, "top_k": 20, "kept_frame_acc": None,
            "dev_frame_acc": None, "test_frame_acc": None, "test_wer": None}
    noise = AUGMENT.describe()
    students = {
        "older_run": base,  # a row of a report written before students had a teacher or a floor
        "stored_augmented": {**base, "teacher": "stored", "augment": noise, "min_epochs": 0},
        "consistent_patient": {**base, "teacher": "consistent", "augment": noise, "min_epochs": 80,
                               "epochs_run": 95},
        "hard": {**base, "targets": "hard", "temperature": None, "hard_weight": None, "top_k": None},
    }
    md = "\n".join(markdown._students_md({"students": students, "distillation_gain": [], "cost": {},
                                        "gain_kept": {}}))
    assert "| older_run | soft | 3x192 | 1,000 | 0 | - | 2 / 0.5 / 20 | stored / clean | converge (40) |" in md
    assert "| stored_augmented | soft | 3x192 | 1,000 | 0 | - | 2 / 0.5 / 20 | stored / augmented | converge (40) |" \
        in md
    assert "| 2 / 0.5 / 20 | consistent / augmented | converge, >= 80 (95) |" in md
    assert "| hard | hard | 3x192 | 1,000 | 0 | - | - | - | converge (40) |" in md
    assert f"Augmented input (stored_augmented, consistent_patient): {noise}" in md
    assert "consistent = computed inside every step on the very input the student got" in md
    plain = "\n".join(markdown._students_md({"students": {"older_run": base}, "distillation_gain": [], "cost": {},
                                           "gain_kept": {}}))
    assert "Teacher:" not in plain and "Augmented input" not in plain and ">=" not in plain


def test_the_students_stage_teaches_a_consistent_student_with_the_members(tmp_path: Path, monkeypatch) -> None:
    """An online student of a research config is taught by the ensemble's members themselves, combined as the
    ensemble combines them (no stored targets are read), and its row tells the report its teacher, input and floor."""
    from asr_kd.pipeline import experiment as xp
    from asr_kd.pipeline.students import train_students
    from asr_kd.pipeline.workspace import Workspace

    register()
    shape = [f"model.{k}={v}" for k, v in dataclasses.asdict(MODEL).items()]
    with initialize_config_dir(str(REPO / "recipes/synth/conf"), version_base="1.3"):
        cfg = compose("ci", overrides=[f"work_dir={tmp_path}", "device=cpu", "train.bf16=false", "ensemble.combine=geo",
                                       *shape])
    cfg.students = {"cp": StudentConfig(distill={"mode": "online", "consistent": True,
                                                 "augment": dataclasses.asdict(AUGMENT)},
                                        train={"epochs": 3, "min_epochs": 2, "batch_size": 64})}
    ws = Workspace(tmp_path)
    sets = {"train": frames(20, 0), "dev": frames(5, 1)}
    for m in range(2):
        train(MODEL, dataclasses.replace(tc(1), seed=m), sets["train"], sets["dev"],
              ws.dnn("ensemble") / f"member{m:02d}", CLASSES)
    monkeypatch.setattr(xp, "frames", lambda cfg, ws, split, device: sets[split])
    monkeypatch.setattr(xp, "num_pdfs", lambda ws: CLASSES)
    monkeypatch.setattr(xp, "evaluate_system", lambda cfg, ws, system, splits=("dev", "test"): {})
    row = train_students(cfg, ws)["cp"]
    assert (row["teacher"], row["augment"], row["min_epochs"]) == ("consistent", AUGMENT.describe(), 2)
    assert row["epochs_run"] >= 2
    objective = json.loads((ws.student("cp") / "distill.json").read_text())
    assert objective["consistent"] and objective["combine"] == "geo"
    assert objective["teacher"].startswith("2-model")  # both members teach


def test_a_consistent_teacher_trains_on_a_streamed_set_as_in_memory(tmp_path: Path) -> None:
    """It runs on the student's own windows, so a training set streamed from disk serves it; in one buffer the
    streamed set trains the in-memory set's student, bit for bit. An online teacher on clean windows needs the set
    in memory."""
    from test_stream import CLASSES as SPLIT_CLASSES, MODEL as SPLIT_MODEL, streamed, write_split

    from asr_kd.nn.frames import load_frameset

    split = write_split(tmp_path / "train", 30, seed=1, cmvn_identity=False)
    in_memory = load_frameset(*split, left=SPLIT_MODEL.left_context, right=SPLIT_MODEL.right_context)
    on_disk = streamed(tmp_path, split, buffer_frames=10_000)
    torch.manual_seed(0)
    teachers = [DNN(SPLIT_MODEL, SPLIT_CLASSES).eval() for _ in range(2)]
    dcfg = DistillConfig(mode="online", consistent=True, augment=AUGMENT)
    students = {}
    for name, frame_set in (("memory", in_memory), ("streamed", on_disk)):
        distill(SPLIT_MODEL, tc(2), dcfg, frame_set, in_memory, None, teachers, tmp_path / name, SPLIT_CLASSES)
        students[name] = (tmp_path / name / "model.pt").read_bytes()
    assert students["memory"] == students["streamed"]
    with pytest.raises(ValueError, match="in memory"):
        distill(SPLIT_MODEL, tc(2), dataclasses.replace(dcfg, consistent=False), on_disk, in_memory, None, teachers,
                tmp_path / "clean", SPLIT_CLASSES)


def test_a_consistent_teacher_teaches_untranscribed_frames_too(tmp_path: Path) -> None:
    """On a transfer set (frames without a label among the labeled ones) the hard term reads the labeled frames only
    and the teacher covers every frame, as with stored targets."""
    from asr_kd.nn.frames import NO_TARGET

    labeled = frames(10, 0)
    targets = labeled.targets.clone()
    targets[200:] = NO_TARGET  # the last 5 utterances untranscribed
    transfer = FrameSet.from_tensors(labeled.feats, targets, labeled.utt_ids, [40] * 10, left=MODEL.left_context,
                                     right=MODEL.right_context)
    torch.manual_seed(0)
    teacher = DNN(MODEL, CLASSES).eval()
    dcfg = DistillConfig(mode="online", consistent=True, augment=AUGMENT, hard_weight=0.5)
    result = distill(MODEL, tc(2), dcfg, transfer, frames(4, 1), None, [teacher], tmp_path / "s", CLASSES)
    assert result.epochs_run == 2
    loss = make_online_loss([teacher], None, dcfg, labeled_only=True)
    idx = torch.arange(190, 210)
    z = torch.randn(20, CLASSES)
    windows = transfer.windows(idx)
    both = loss(z, FrameBatch(idx, targets[idx], {}, windows))
    soft_only = make_online_loss([teacher], None, dataclasses.replace(dcfg, hard_weight=0.0))(
        z, FrameBatch(idx, targets[idx], {}, windows))
    hard = torch.nn.functional.cross_entropy(z[:10], targets[190:200])  # the 10 labeled frames of the 20
    assert float(both) == pytest.approx(float(soft_only + 0.5 * hard), rel=1e-6)
