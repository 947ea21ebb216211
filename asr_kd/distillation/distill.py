"""Distillation (paper sections 2 and 4): one student trained on a teacher's temperature-softened posteriors.

The student is trained on  T^2 * CE(teacher soft targets at T, softmax(z/T)) + w_hard * CE(labels, softmax(z)).
The T^2 keeps the soft term's gradient on the same scale whatever T is (its gradient shrinks as 1/T^2), so the
relative weight of the two terms means the same thing at T=1 and T=10. After training the student runs at T=1.

Soft targets come either from storage (:mod:`asr_kd.distillation.soft_targets`, top-k per frame, computed once:
the student trains at baseline speed) or from the teacher running inside every student step ("online": no
storage, but the teacher's forward pass costs several student steps). Both feed :func:`asr_kd.nn.train.train`
through its ``loss_fn`` hook, so checkpoints, resume, early stopping and metrics are the baseline's.

Top-k targets leave out the teacher's tail; by default that tail mass is kept as one extra "any other class"
outcome (``DistillConfig.tail``), so a small k does not make the targets sharper than the teacher at high T.

The student's input may be augmented afresh at every step (``DistillConfig.augment``: noise and masks,
:mod:`asr_kd.nn.augment`). Stored targets then describe the clean frame, not what the student saw; a *consistent*
teacher (``consistent``, online only) runs on the very windows the student got, augmentation included, so every
step teaches the teacher's function at a new point near the data (Beyer et al. 2022, "Knowledge distillation: a good
teacher is patient and consistent"). Such a student pairs with a patient schedule (``TrainConfig.min_epochs``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asr_kd.distillation.soft_targets import (
    SoftTargets,
    describe_teacher,
    mean_mass_kept,
    soft_rows,
    teacher_log_probs,
    top_k_targets,
)
from asr_kd.nn.augment import FeatureAugment, FeatureAugmentConfig
from asr_kd.nn.device import dist_context, launch_env, select_device
from asr_kd.nn.batches import FrameBatch
from asr_kd.nn.frames import NO_TARGET, Frames, FrameSet
from asr_kd.nn.inference import frame_accuracy, load_model
from asr_kd.nn.model import DNN, ModelConfig, StackedDNN
from asr_kd.nn.stream import StreamedFrames
from asr_kd.nn.train import LossFn, TrainConfig, TrainResult, train, trained
from features.atomic import write_text_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "DistillConfig",
    "choose_temperature",
    "distill",
    "distillation_loss",
    "make_online_loss",
    "make_stored_loss",
    "temperature_sweep",
    "with_soft_targets",
]

SOFT_WEIGHT_SCALES = ("T^2", "1")
MODES = ("stored", "online")
TAILS = ("bucket", "renormalize")


@dataclass
class DistillConfig:
    """The distillation objective and where its soft targets come from.

    top_k: classes of the teacher posterior the student sees per frame (None = all); with stored targets it
    caps the stored k (the stored top classes are then cut).
    tail: what happens to the teacher probability outside the top-k. "bucket" (default) keeps it as one extra
    "any other class" target, matched by the student's total probability outside the top-k; "renormalize"
    drops it and rescales the top-k to sum to 1. At high T the tail can hold a large share of the mass (a top-20
    can miss a quarter of it at T=5); renormalizing it away makes the targets sharper than the teacher and gives
    a lower dev accuracy than the bucket, which comes close to using all classes. At T=2 the two agree.
    combine: how an ensemble teacher's members are averaged in online mode (stored targets carry their own).
    augment: how the student's input windows are perturbed at every step (off by default), in either mode.
    consistent: the online teacher runs on the student's own (augmented) windows instead of the clean windows of the
    batch's frames; it needs ``mode="online"``, and then works on a streamed training set too.
    """

    temperature: float = 2.0
    hard_weight: float = 0.5
    soft_weight_scale: str = "T^2"
    top_k: int | None = 20
    tail: str = "bucket"
    mode: str = "stored"
    combine: str = "arith"
    temperatures_sweep: list[float] = field(default_factory=lambda: [1.0, 2.0, 5.0, 10.0])
    augment: FeatureAugmentConfig = field(default_factory=FeatureAugmentConfig)
    consistent: bool = False

    def __post_init__(self) -> None:
        if self.soft_weight_scale not in SOFT_WEIGHT_SCALES:
            raise ValueError(f"soft_weight_scale must be one of {SOFT_WEIGHT_SCALES}, got {self.soft_weight_scale!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.tail not in TAILS:
            raise ValueError(f"tail must be one of {TAILS}, got {self.tail!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.hard_weight < 0:
            raise ValueError(f"hard_weight must be >= 0, got {self.hard_weight}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.consistent and self.mode != "online":
            raise ValueError("a consistent teacher runs on the student's input inside every step: it needs "
                             f"mode='online', got mode={self.mode!r}")

    @property
    def soft_weight(self) -> float:
        """Weight of the soft cross-entropy: T^2 (the paper) or 1 (for ablations)."""
        return self.temperature ** 2 if self.soft_weight_scale == "T^2" else 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CONFIDENT_REST = 1e-2
"""A row whose student puts more than 1 - this of its probability on the k target classes has R summed over the
other classes: the full sum minus the k classes' would keep too few of its digits (R's error is about float32's
epsilon times the full sum, 1e-5 of R at this bound)."""
REST_FLOOR = 1e-30
"""A row whose exp(z/T - max) sums below this off the k classes (a student sure of them to 30 digits and more) has
log R taken as a log-sum-exp over the other classes: its exps there are subnormal or zero in float32."""


class _DistillationLoss(torch.autograd.Function):
    """The whole distillation loss of a batch and its gradient with respect to the logits, in closed form:

        w_soft * mean_b CE(targets_b, softmax(z_b / T)) + w_hard * mean over labeled b of CE(label_b, softmax(z_b)).

    Row b's soft targets are the weights ``w_k`` [B, k] on the classes ``idx`` [B, k] plus, with ``w_rest`` [B],
    the weight of "every other class" (the student's probability R outside the k: the bucket tail). With
    q = softmax(z / T) the soft term's gradient with respect to z / T is ``q * sum(w) - t``, where t puts w_k on the
    k classes and w_rest * q / R on the others; the hard term's with respect to z is ``softmax(z) - onehot``.

    Why one function: the loss is what a student's step spends beyond a member's (``python -m asr_kd.bench
    distill``). Here everything comes from one exp(z/T - max) per logit (and, for T != 1, one exp(z - max) for the
    hard term): a handful of passes over the [B, C] logits, where autograd over log_softmax, scatter, logsumexp and
    cross_entropy makes about three times as many. R is that exp's full sum minus the k classes', or, for a student
    nearly sure of the k (:data:`CONFIDENT_REST`), its sum over the other classes; rows where even that underflows
    (:data:`REST_FLOOR`) take log R as a log-sum-exp instead.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, idx: torch.Tensor, w_k: torch.Tensor,  # type: ignore[override]
                w_rest: torch.Tensor | None, labels: torch.Tensor, labeled: torch.Tensor | None, temperature: float,
                w_soft: float, w_hard: float) -> torch.Tensor:
        B = z.shape[0]
        zt = z if temperature == 1.0 else z / temperature
        m = zt.amax(dim=1, keepdim=True)
        e = torch.sub(zt, m).exp_()  # q, times s
        s = e.sum(dim=1)
        log_s = s.log()
        per_row = (w_k * zt.gather(1, idx).sub_(m).sub_(log_s[:, None])).sum(dim=1)  # sum_k w_k log q_k
        g = w_soft / (temperature * B)  # through z_t = z / T and the batch mean
        total = w_k.sum(dim=1)
        exact_rows, exact_grad, per_rest = None, None, None
        if w_rest is not None:
            total = total + w_rest
            classes = idx.sort(dim=1).values  # each class once (a padded row repeats one with weight 0)
            once = torch.ones_like(classes, dtype=torch.bool)
            once[:, 1:] = classes[:, 1:] != classes[:, :-1]
            rest = s - (e.gather(1, classes) * once).sum(dim=1)
            close = (rest <= CONFIDENT_REST * s).nonzero()[:, 0]
            if close.numel():
                rest[close] = e[close].scatter_(1, idx[close], 0.0).sum(dim=1)
            exact_rows = (rest < REST_FLOOR).nonzero()[:, 0]
            per_rest = g * w_rest / rest  # off the k classes the target is w_rest * q / R = w_rest * e / rest
            log_rest = rest.log()
            if exact_rows.numel():
                r = torch.sub(zt[exact_rows], m[exact_rows]).scatter_(1, idx[exact_rows], float("-inf"))
                lse = torch.logsumexp(r, dim=1)
                log_rest[exact_rows], per_rest[exact_rows] = lse, 0.0
                exact_grad = r.sub_(lse[:, None]).exp_().mul_((g * w_rest[exact_rows])[:, None])
            per_row = per_row + w_rest * (log_rest - log_s)
        per_e = g * total / s  # q * sum(w), per unit of e
        loss = -w_soft * per_row.mean()
        hard_e, per_hard_e, hard_idx, hard_w = None, None, None, None
        if w_hard > 0:
            if labeled is None:
                hard_idx, hard_w = labels, torch.full_like(s, w_hard / B)
            else:
                hard_idx = torch.where(labeled, labels, 0)
                hard_w = labeled.to(z.dtype) * (w_hard / labeled.sum().clamp(min=1))
            if temperature == 1.0:  # the soft term's exp serves the hard term too
                m1, log_s1 = m, log_s
                per_e = per_e + hard_w / s
            else:
                m1 = z.amax(dim=1, keepdim=True)
                hard_e = torch.sub(z, m1).exp_()
                s1 = hard_e.sum(dim=1)
                log_s1 = s1.log()
                per_hard_e = hard_w / s1
            loss = loss + (hard_w * (log_s1 + m1[:, 0] - z.gather(1, hard_idx[:, None])[:, 0])).sum()
        # The k classes are not "rest": their entries are written afresh (e_k * per_e), not corrected, because
        # per_rest is huge for a confident student and adding then subtracting it would cancel every digit.
        at_idx = e.gather(1, idx).mul_(per_e[:, None])
        per_off = per_e if per_rest is None else per_e - per_rest
        ctx.save_for_backward(e, per_off, idx, at_idx, -g * w_k, exact_rows, exact_grad, hard_e, per_hard_e,
                              hard_idx, hard_w)
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (e, per_off, idx, at_idx, target_grad, exact_rows, exact_grad, hard_e, per_hard_e, hard_idx,
         hard_w) = ctx.saved_tensors
        grad = e * per_off[:, None]
        grad.scatter_(1, idx, at_idx).scatter_add_(1, idx, target_grad)
        if exact_grad is not None:
            grad.index_add_(0, exact_rows, exact_grad, alpha=-1.0)
        if hard_e is not None:
            grad.addcmul_(hard_e, per_hard_e[:, None])
        if hard_idx is not None:
            grad.scatter_add_(1, hard_idx[:, None], -hard_w[:, None])
        return grad.mul_(grad_out), None, None, None, None, None, None, None, None


def distillation_loss(
    student_logits: torch.Tensor,
    soft_idx: torch.Tensor,
    soft_probs: torch.Tensor,
    hard_targets: torch.Tensor,
    temperature: float,
    hard_weight: float,
    soft_weight: float | None = None,
    mass_kept: torch.Tensor | None = None,
    labeled_only: bool = False,
) -> torch.Tensor:
    """Batch-mean distillation loss from sparse soft targets.

    student_logits [B, C]; soft_idx [B, k] int64 class ids; soft_probs [B, k] teacher probabilities at T,
    renormalized over the k; hard_targets [B] aligned states. The soft term uses log softmax(z/T) at the k
    target classes only, so no dense [B, C] target is built. soft_weight defaults to T^2; the hard term is
    always at T=1.

    With ``mass_kept`` [B] (the teacher mass the k classes held) the soft term is the cross-entropy over k+1
    outcomes, the k classes (weights mass_kept x soft_probs) and "the rest" (weight 1 - mass_kept, student
    probability 1 - sum of its top-k probabilities): the "bucket" tail of :class:`DistillConfig`.

    ``labeled_only``: the batch may hold frames without a label (:data:`~asr_kd.nn.frames.NO_TARGET`, a transfer
    set's untranscribed audio). The hard term is then the mean over the batch's labeled frames (none: 0), so that
    ``hard_weight`` weighs a labeled frame as it does on a set with labels only, and an unlabeled frame's target is
    never used: its hard-term gradient is exactly zero. The soft term covers every frame.
    """
    z = student_logits.float()
    probs = soft_probs.float()
    if mass_kept is None or soft_idx.shape[1] >= z.shape[1]:
        w_k, w_rest = probs, None
    else:
        m = mass_kept.float().clamp(0.0, 1.0)
        w_k, w_rest = m[:, None] * probs, 1.0 - m
    w_soft = temperature ** 2 if soft_weight is None else soft_weight
    labeled = hard_targets != NO_TARGET if labeled_only and hard_weight > 0 else None
    return _DistillationLoss.apply(z, soft_idx, w_k, w_rest, hard_targets, labeled, float(temperature),
                                   float(w_soft), float(hard_weight))


def _truncate(ind: torch.Tensor, prob: torch.Tensor, mass: torch.Tensor, k: int | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the k most probable of sorted stored targets: renormalized probs and the mass they hold."""
    if k is None or k >= ind.shape[1]:
        return ind, prob, mass
    prob = prob[:, :k]
    total = prob.sum(dim=1, keepdim=True)
    return ind[:, :k], prob / total, mass * total[:, 0]


def make_stored_loss(cfg: DistillConfig, labeled_only: bool = False) -> LossFn:
    """Loss over stored soft targets, which every batch carries as columns of the training frames (the rows of
    :meth:`SoftTargets.columns`, in memory or streamed from disk beside the frames).

    ``cfg.top_k`` caps the stored k (a smaller k cuts and renormalizes the stored rows; None uses all stored).
    On a GPU attach ``soft.to(device)``'s columns to a set in memory: a CPU-side gather would make every step wait
    for the host (streamed columns come in the device's buffers anyway). ``labeled_only``: the frames include
    unlabeled ones, which the hard term leaves out (:func:`distillation_loss`).
    """

    def loss_fn(logits: torch.Tensor, batch: FrameBatch) -> torch.Tensor:
        ind, prob, mass = _truncate(*soft_rows(batch.columns, logits.device), cfg.top_k)
        return distillation_loss(logits, ind, prob, batch.targets, cfg.temperature, cfg.hard_weight, cfg.soft_weight,
                                 mass if cfg.tail == "bucket" else None, labeled_only)

    return loss_fn


def make_online_loss(teachers: Sequence[DNN], train_set: FrameSet | None, cfg: DistillConfig,
                     labeled_only: bool = False) -> LossFn:
    """Loss whose soft targets come from running ``teachers`` on the batch's windows inside the step: the clean
    windows of the batch's frames, taken from ``train_set`` by index, or with ``cfg.consistent`` the windows the
    student trained on (``FrameBatch.windows``, augmented or not; no ``train_set`` needed). ``labeled_only``: the
    frames include unlabeled ones, which the hard term leaves out (:func:`distillation_loss`)."""
    if not teachers:
        raise ValueError("online distillation needs at least one teacher model")
    if train_set is None and not cfg.consistent:
        raise ValueError("an online teacher on clean windows takes them from the training set: pass it")
    teacher = StackedDNN.from_members(list(teachers)).eval().requires_grad_(False)
    device = next(teacher.parameters()).device

    def loss_fn(logits: torch.Tensor, batch: FrameBatch) -> torch.Tensor:
        if cfg.consistent:
            if batch.windows is None:
                raise ValueError("a consistent teacher needs the student's windows: the batch carries none")
            windows = batch.windows.to(device, torch.float32)
        else:
            windows = train_set.windows(batch.idx.to(train_set.device)).to(device, torch.float32)
        lp = teacher_log_probs(teacher, windows, cfg.temperature, cfg.combine)
        ind, prob, mass = (t.to(logits.device) for t in top_k_targets(lp, cfg.top_k))
        return distillation_loss(logits, ind, prob, batch.targets, cfg.temperature, cfg.hard_weight, cfg.soft_weight,
                                 mass if cfg.tail == "bucket" else None, labeled_only)

    return loss_fn


def with_soft_targets(train_set: Frames, soft: SoftTargets | Path, cfg: DistillConfig, num_classes: int
                      ) -> tuple[Frames, str]:
    """``train_set`` carrying the stored soft targets as columns, and a description of them; checks that they
    cover the set frame for frame at the student's temperature. Targets on disk are streamed beside a streamed set
    and loaded (memory-mapped) for a set in memory."""
    if isinstance(soft, Path) and not isinstance(train_set, StreamedFrames):
        soft = SoftTargets.load(soft)
    if isinstance(soft, Path):
        meta = SoftTargets.read_meta(soft)
        frames, k = meta["num_frames"], meta["k"]
        temperature, classes, teacher = float(meta["temperature"]), int(meta["num_classes"]), meta["teacher"]
    else:
        frames, k, temperature, classes, teacher = (soft.num_frames, soft.k, soft.temperature, soft.num_classes,
                                                    soft.teacher)
    if abs(temperature - cfg.temperature) > 1e-6:
        raise ValueError(
            f"soft targets were computed at T={temperature:g} but the student would train at "
            f"T={cfg.temperature:g}: the student must match the teacher's temperature")
    if frames != train_set.num_frames:
        raise ValueError(f"soft targets cover {frames} frames, the training set has {train_set.num_frames}")
    if classes != num_classes:
        raise ValueError(f"soft targets have {classes} classes, the student {num_classes}")
    if isinstance(soft, Path):
        frames_with = train_set.with_columns(SoftTargets.column_files(soft))
    elif isinstance(train_set, StreamedFrames):
        raise ValueError("a streamed training set reads its soft targets from disk: pass their directory")
    else:
        frames_with = train_set.with_columns(soft.columns())
    return frames_with, f"{teacher} (stored at T={temperature:g}, k={k})"


def distill(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    dcfg: DistillConfig,
    train_set: Frames,
    dev_set: Frames,
    soft: SoftTargets | Path | None,
    teachers: Sequence[DNN] | None,
    out_dir: Path,
    num_classes: int,
    device: str | torch.device = "auto",
    data_parallel: bool = True,
) -> TrainResult:
    """Train a student (same shape as a member) on the distillation loss; it is evaluated at T=1 (argmax).

    ``soft`` (stored mode: in memory, or the directory they were saved to) must cover ``train_set`` frame for frame;
    ``teachers`` are used in online mode. With ``dcfg.augment`` every training step's windows are augmented (drawn
    from the training seed and the step; each DDP rank draws its own).
    Writes ``distill.json`` (the objective) next to the baseline trainer's outputs.
    """
    out_dir = Path(out_dir)
    if dcfg.mode == "stored":
        if soft is None:
            raise ValueError("stored-mode distillation needs soft targets")
        train_set, teacher_desc = with_soft_targets(train_set, soft, dcfg, num_classes)
        loss_fn = make_stored_loss(dcfg, labeled_only=train_set.target_range[0] == NO_TARGET)
    else:
        if not teachers:
            raise ValueError("online-mode distillation needs teacher models")
        if not dcfg.consistent and not isinstance(train_set, FrameSet):
            raise ValueError("online distillation runs the teacher on windows taken from the training set by frame "
                             "index, which needs the set in memory (data.stream=false; a consistent teacher, which "
                             "runs on the student's own windows, does not)")
        loss_fn = make_online_loss(teachers, train_set if isinstance(train_set, FrameSet) else None, dcfg,
                                   labeled_only=train_set.target_range[0] == NO_TARGET)
        teacher_desc = describe_teacher(len(teachers), dcfg.combine)
    augment = None
    if dcfg.augment.enabled:
        stream = launch_env().rank if data_parallel else 0
        augment = FeatureAugment(dcfg.augment, model_cfg.left_context + 1 + model_cfg.right_context,
                                 model_cfg.feat_dim, train_cfg.seed, stream)
    out_dir.mkdir(parents=True, exist_ok=True)
    objective = {**dcfg.to_dict(), "teacher": teacher_desc}
    write_text_atomic(out_dir / "distill.json", json.dumps(objective, indent=2) + "\n")
    logger.info("distilling (%s, T=%g, hard weight %g, k=%s) into %s", dcfg.mode, dcfg.temperature,
                dcfg.hard_weight, dcfg.top_k, out_dir)
    return train(model_cfg, train_cfg, train_set, dev_set, out_dir, num_classes, loss_fn=loss_fn, device=device,
                 data_parallel=data_parallel, input_fn=augment)


def choose_temperature(dev_accuracy: Mapping[float, float]) -> float:
    """The temperature whose student has the best dev frame accuracy; among equally good ones, the lowest.

    Only dev accuracies come in, so the test set cannot take part in the choice. The tie rule is the lowest
    temperature, whatever order the temperatures were listed in: the least softened targets that did as well, and a
    rule that a config's ordering cannot change. Both the temperature sweep and the 3% experiment choose here.
    """
    if not dev_accuracy:
        raise ValueError("no dev accuracies to choose a temperature from")
    best = max(dev_accuracy.values())
    return min(float(t) for t, acc in dev_accuracy.items() if acc == best)


def temperature_sweep(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    dcfg: DistillConfig,
    train_set: Frames,
    dev_set: Frames,
    soft_targets: Mapping[float, SoftTargets | Path],
    out_dir: Path,
    num_classes: int,
    device: str | torch.device = "auto",
) -> dict:
    """Distil one student per temperature of ``soft_targets`` (stored targets at that T); choose T on dev.

    Students go to ``out_dir/T<T>`` and resume from their checkpoints, so an interrupted sweep continues where it
    stopped (a finished student is kept). Under torchrun the temperatures are spread over the ranks (each trains its
    own students alone, one after another), and once all are trained every rank reads the same results; a batch job
    (:mod:`asr_kd.nn.jobs`) trains its share and returns ``{}``, and the process that submitted the jobs reads them.
    ``best_temperature`` is :func:`choose_temperature` of the dev frame accuracies (the test set never chooses).
    Rank 0 writes ``out_dir/sweep.json``: per temperature the dev frame accuracy (%), epochs run, the student dir and
    the teacher mass the top-k held.
    """
    out_dir = Path(out_dir)
    if not soft_targets:
        raise ValueError("a temperature sweep needs soft targets for at least one temperature")
    temperatures = sorted(soft_targets)
    ranks = launch_env()
    for t in ranks.share(temperatures):
        if trained(out_dir / f"T{t:g}"):
            continue
        stored = dataclasses.replace(dcfg, temperature=float(t), mode="stored", consistent=False)
        distill(model_cfg, train_cfg, stored, train_set, dev_set, soft_targets[t], None, out_dir / f"T{t:g}",
                num_classes, device, data_parallel=False)
    dist_context(select_device(str(device))).barrier()
    if ranks.alone:
        return {}
    results: dict[str, dict] = {}
    for t in temperatures:
        student = out_dir / f"T{t:g}"
        acc = 100.0 * frame_accuracy(load_model(student / "model.pt", dev_set.device), dev_set)
        epochs = len(json.loads((student / "metrics.json").read_text())["epochs"])
        results[f"{t:g}"] = {"dev_frame_accuracy": round(acc, 2), "epochs_run": epochs, "student_dir": str(student),
                             "mean_mass_kept": round(mean_mass_kept(soft_targets[t]), 4)}
        logger.info("T=%g: dev frame accuracy %.2f%%", t, acc)
    best = choose_temperature({float(t): row["dev_frame_accuracy"] for t, row in results.items()})
    summary = {"hard_weight": dcfg.hard_weight, "top_k": dcfg.top_k, "tail": dcfg.tail, "per_temperature": results,
               "best_temperature": best}
    if ranks.is_main:
        write_text_atomic(out_dir / "sweep.json", json.dumps(summary, indent=2) + "\n")
    return summary
