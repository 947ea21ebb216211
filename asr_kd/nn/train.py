"""Frame-level training of the hybrid DNN: shuffled frames, dev frame accuracy, checkpoints, exact resume, DDP.

One loop serves three callers: :func:`train` (one model; the distillation engineer passes a ``loss_fn`` over soft
targets), :mod:`asr_kd.distillation.ensemble` (M members stacked into one module, each with its own seed, batch
order, learning rate and early stopping) and torchrun (the same :func:`train` under DistributedDataParallel).

Design decisions:

* The loop is split the way icefall's ``train.py`` is: :func:`compute_loss` (one step's per-member losses),
  :func:`train_one_epoch`, :func:`compute_validation_loss` (dev cross-entropy and frame accuracy),
  :func:`save_checkpoint` / :func:`load_checkpoint`, and :func:`fit`, which only strings them together and
  applies the stopping rules of :class:`MemberState`. Inference and ``model.pt`` I/O live in
  :mod:`asr_kd.nn.inference`, device and rank decisions in :mod:`asr_kd.nn.device`.
* Frames are shuffled across utterances by a permutation drawn per epoch from a ``torch.Generator`` seeded with
  (seed, epoch), generated on the training device (of the whole split when it is in memory, of each shuffle buffer
  in turn when it is streamed from disk: :mod:`asr_kd.nn.batches`, :mod:`asr_kd.nn.stream`); nothing in a training
  step waits for the host (no ``.item()``, metrics accumulate in device tensors and are read once per epoch). The
  forward pass runs under bf16 autocast or in float32 as ``TrainConfig.bf16`` says; its default measures which is
  faster on this device (:mod:`asr_kd.nn.numerics`, decided once per call of :func:`train` or
  :func:`asr_kd.distillation.ensemble.train_ensemble`; the pipeline decides once per run). The loss is computed in
  float32 either way.
* A checkpoint is written atomically after every epoch (model, optimizer, learning-rate state, early-stopping
  state, best weights, history, RNG states). Because batch order depends only on (seed, epoch), a run killed at
  any point and resumed ends with the same weights as an uninterrupted run.
* ``newbob`` (ICSI QuickNet, Kaldi nnet1): constant rate until an epoch improves dev by less than
  ``newbob_start_impr``, then halve every epoch, and finish once an epoch improves less than ``newbob_end_impr``
  while halving. The improvement is the absolute dev frame-accuracy gain (``newbob_metric="acc"``, QuickNet) or
  the relative dev cross-entropy decrease (``"loss"``, nnet1); on small corpora dev cross-entropy rises from
  over-confidence while accuracy still climbs, so ``acc`` is the default. Unlike nnet1 an epoch that makes dev
  worse is not undone; ``early_stopping`` keeps the best-dev-accuracy weights instead.
* ``plateau`` (ReduceLROnPlateau): constant rate until ``plateau_patience`` epochs in a row fail to raise the best
  dev frame accuracy, then multiply the rate by ``newbob_factor`` and go on; finish at the first such stall after
  ``plateau_reductions`` reductions. Newbob halves every epoch once it starts, which suits hard targets: they
  overfit, and a longer schedule does not raise dev accuracy (on the tiny config's baseline, neither plateau nor
  a 30-epoch cosine schedule beat newbob on dev; cosine only raised train accuracy). Soft targets do not overfit
  that way, and halving every epoch ends a student while it still learns from the teacher (the tiny config's
  T=2 student reached a clearly higher dev accuracy under plateau or a 30-epoch cosine schedule than under
  newbob, which stopped it after about 10 epochs). The plateau rule lowers the rate only when dev accuracy
  stalls, so a dev criterion, not an epoch count, still ends training.
* ``min_epochs`` makes training patient: no dev criterion (newbob or plateau converged, early stopping) may end it
  before that epoch, while the rate schedule goes on as it would (plateau keeps its rate at the last reduction
  once all are spent; newbob keeps halving, so the option suits plateau or cosine). It is a floor rather than a
  fixed epoch count because the dev criterion stays the judge of when to stop afterwards, and the best-dev weights
  are still the ones kept. It is meant for a student on freshly augmented input taught by a teacher that sees the
  same input (a "consistent" teacher, :mod:`asr_kd.distillation.distill`): Beyer et al. 2022 ("Knowledge
  distillation: a good teacher is patient and consistent") found such students still improving after schedules
  many times longer than usual, where students of fixed targets overfit them.
* Optimizer updates are linear in the learning rate (SGD with momentum, Adam, AdamW), so per-member rates of
  stacked members are applied by running the optimizer at the largest member rate and scaling each member's
  parameter change by its share (exactly a per-member rate; a stopped member gets share 0 and stays frozen).
* Under DDP every rank draws the same global permutation and takes a contiguous 1/world share of each global
  batch; the loss is scaled by world x share / batch so that DDP's gradient average equals the gradient of the
  mean loss over the whole global batch, even when the shares are unequal. ``batch_size`` therefore means the same
  in one process and in many, and without dropout N ranks reproduce one process (tests/test_ddp.py). Dev
  accuracy is computed on 1/world of the dev frames per rank and all-reduced; rank 0 writes the outputs. Launch::

      torchrun --standalone --nproc-per-node=<gpus> <script or -m module that calls train(...)>

  (gloo on CPU, nccl on GPU, device ``cuda:LOCAL_RANK`` chosen by :func:`asr_kd.nn.device.select_device`; every rank
  loads the FrameSet onto its own GPU).

Why the defaults (Adam 1e-3, batch 256, newbob on dev accuracy): on the built-in corpus a decaying rate gives a
clearly better dev frame accuracy than a constant one, and Adam and SGD with momentum 0.9 tie. Newbob on dev loss
stops early, because dev cross-entropy rises (over-confidence) while accuracy still climbs; newbob on dev accuracy
stops by itself, i.e. trains to convergence, as ensemble members must (a cosine schedule over a fixed, longer run
can end slightly higher, but only by choosing the epoch count). A larger batch trains more frames per second on a
CPU but reaches a lower dev accuracy in the same number of epochs; recipes/synth/conf/tiny.yaml takes batch 1024
at rate 2e-3 for the speed on 2 CPU cores.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from asr_kd.nn.batches import ONE_BUFFER, FrameBatch, Step, window_dtype
from asr_kd.nn.device import DistContext, autocast, dist_context, select_device, synchronize
from asr_kd.nn.frames import NO_TARGET, Frames, iter_windows
from asr_kd.nn.inference import save_model
from asr_kd.nn.model import DNN, ModelConfig, StackedDNN
from asr_kd.nn.numerics import resolve
from asr_kd.nn.stream import Batches, training_batches
from features.atomic import atomic_write, write_text_atomic

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, FrameBatch], torch.Tensor]
"""(logits [B, C], the batch: global frame indices, hard targets, rows of the training frames' columns, the windows
the model saw) -> loss.

The loss must be the MEAN over the B frames of a per-frame loss: data-parallel training rescales it by the share of
the global batch each rank holds. Logits may be bf16 under autocast; cast to float32 before a softmax. Per-frame data
a loss needs (stored soft targets) travels as columns of the training frames (``with_columns``), so that a streamed
split brings each batch's rows with its frames instead of the loss looking them up in a corpus-sized table.
"""

InputFn = Callable[[torch.Tensor, int], torch.Tensor]
"""(a step's windows [M, b, D] in the training dtype, the global step number from 0) -> the windows the model
trains on, same shape and dtype: input augmentation (:class:`asr_kd.nn.augment.FeatureAugment`). The loss sees what it
returns (``FrameBatch.windows``), so that a teacher run inside the loss sees the student's input. It must depend on
nothing but its arguments (a generator seeded by the step), for a resumed run to repeat it.
"""

EpochCallback = Callable[[int, list[dict]], None]
"""Called after each epoch's checkpoint with (epoch, the epoch's metrics row of every member)."""

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "newbob", "cosine", "plateau")


@dataclass
class TrainConfig:
    """How to train one model (and every ensemble member). Where it runs is not part of it: the device is chosen
    once per process (:func:`asr_kd.nn.device.select_device`) and passed to :func:`train`."""

    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "newbob"
    batch_size: int = 256
    epochs: int = 20  # an upper bound: newbob and early stopping end training at convergence
    early_stopping: bool = True
    patience: int = 2
    weight_decay: float = 0.0
    momentum: float = 0.9
    warmup_steps: int = 0
    newbob_start_impr: float = 0.01
    newbob_end_impr: float = 0.001
    newbob_factor: float = 0.5
    newbob_metric: str = "acc"
    plateau_patience: int = 1
    plateau_reductions: int = 4
    min_epochs: int = 0  # no dev criterion (newbob, plateau, early stopping) ends training before this epoch
    seed: int = 0
    bf16: bool | None = None  # bf16 autocast: true where native, false never, None where measured faster
                              # (asr_kd.nn.numerics)
    num_threads: int | None = None
    eval_batch_size: int = 4096
    progress: bool = True
    # Frames per epoch (None: one pass). Fewer than the training set's: the dev check, the schedule and the
    # checkpoint come every that many frames, passes running on in their own shuffled orders (a transfer set many
    # times the size of the training set is validated as often per frame as the training set alone).
    epoch_frames: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if self.newbob_metric not in ("loss", "acc"):
            raise ValueError(f"newbob_metric must be 'loss' or 'acc', got {self.newbob_metric!r}")
        if self.epoch_frames is not None and self.epoch_frames < 1:
            raise ValueError(f"epoch_frames must be >= 1 or None, got {self.epoch_frames}")
        if self.batch_size < 1 or self.epochs < 1 or self.patience < 1 or self.plateau_patience < 1:
            raise ValueError("batch_size, epochs, patience and plateau_patience must be positive")
        if self.plateau_reductions < 0:
            raise ValueError(f"plateau_reductions must be >= 0, got {self.plateau_reductions}")
        if not 0 <= self.min_epochs <= self.epochs:
            raise ValueError(f"min_epochs must be in [0, epochs={self.epochs}], got {self.min_epochs}")


_RUNTIME_FIELDS = {"num_threads", "progress", "eval_batch_size"}
"""TrainConfig fields that may change between a run and its resumption without changing the result."""


@dataclass
class TrainResult:
    """Where the model went and how training went (``history`` holds the per-epoch rows of metrics.json)."""

    model_path: Path
    metrics_path: Path
    best_epoch: int
    best_dev_acc: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- members being trained
class Trainee:
    """M members behind one interface: ``forward`` maps [M, B, D] windows to [M, B, C] logits.

    A plain :class:`DNN` (optionally wrapped in DDP) is the M = 1 case; a :class:`StackedDNN` trains M at once.
    """

    def __init__(self, module: nn.Module, dist_ctx: DistContext = DistContext()) -> None:
        self.module = module
        self.stacked = isinstance(module, StackedDNN)
        self.num_members = module.num_members if self.stacked else 1
        self.forward_module: nn.Module = module
        if dist_ctx.world > 1:
            if self.stacked:
                raise ValueError("stacked members are spread over ranks member by member, not with DDP")
            device_ids = [module.linears()[0].weight.device.index] if next(module.parameters()).is_cuda else None
            self.forward_module = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.stacked:
            return self.forward_module(x)
        return self.forward_module(x[0]).unsqueeze(0)

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member ``m``'s weights as a :class:`DNN` state dict on the CPU."""
        if self.stacked:
            return {k: v.cpu() for k, v in self.module.member_state_dict(m).items()}
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}


def build_members(model_cfg: ModelConfig, num_classes: int, seeds: Sequence[int]) -> list[DNN]:
    """One freshly initialised :class:`DNN` per seed (the seed fixes the initialisation, nothing else)."""
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        members.append(DNN(model_cfg, num_classes))
    return members


# ------------------------------------------------------------------------------------------------------- schedules
def base_lr(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate at a global step before any per-member newbob factor (warmup, then constant or cosine)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr


@dataclass
class MemberState:
    """Per-member bookkeeping that decides learning rate and stopping; saved in every checkpoint."""

    lr_factor: float = 1.0
    halving: bool = False
    prev_dev_loss: float | None = None
    prev_dev_acc: float | None = None
    best_dev_acc: float = -1.0
    best_epoch: int = 0
    epochs_since_best: int = 0
    reductions: int = 0
    stopped: str | None = None
    history: list[dict] = field(default_factory=list)

    def end_epoch(self, cfg: TrainConfig, epoch: int, dev_loss: float, dev_acc: float) -> None:
        """Update newbob, best-so-far and the stop reason after epoch ``epoch`` (1-based)."""
        if dev_acc > self.best_dev_acc:
            self.best_dev_acc, self.best_epoch, self.epochs_since_best = dev_acc, epoch, 0
        else:
            self.epochs_since_best += 1
        if cfg.lr_schedule == "newbob":
            impr = self._newbob_improvement(cfg, dev_loss, dev_acc)
            if self.halving and impr < cfg.newbob_end_impr:
                self.stopped = f"newbob converged (dev {cfg.newbob_metric} improvement {impr:.4f})"
            elif impr < cfg.newbob_start_impr:
                self.halving = True
            if self.halving and self.stopped is None:
                self.lr_factor *= cfg.newbob_factor
            self.prev_dev_loss, self.prev_dev_acc = dev_loss, dev_acc
        elif cfg.lr_schedule == "plateau" and self.epochs_since_best and \
                self.epochs_since_best % cfg.plateau_patience == 0:
            if self.reductions >= cfg.plateau_reductions:
                self.stopped = f"plateau converged (no dev accuracy gain after {self.reductions} rate reductions)"
            else:
                self.reductions += 1
                self.lr_factor *= cfg.newbob_factor
        if self.stopped is None and cfg.early_stopping and self.epochs_since_best >= cfg.patience:
            self.stopped = f"early stopping (no dev accuracy gain for {cfg.patience} epochs)"
        if epoch < cfg.min_epochs:
            self.stopped = None  # patient: a stop a dev criterion calls for waits until min_epochs
        if self.stopped is None and epoch >= cfg.epochs:
            self.stopped = "max epochs"

    def _newbob_improvement(self, cfg: TrainConfig, dev_loss: float, dev_acc: float) -> float:
        """Relative dev cross-entropy decrease (``loss``) or absolute dev frame-accuracy gain (``acc``)."""
        if self.prev_dev_loss is None or self.prev_dev_acc is None:
            return math.inf
        if cfg.newbob_metric == "loss":
            return (self.prev_dev_loss - dev_loss) / abs(self.prev_dev_loss)
        return dev_acc - self.prev_dev_acc


# --------------------------------------------------------------------------------------------------------- losses
def compute_loss(trainee: Trainee, step: Step, device: torch.device, loss_fn: LossFn | None, bf16: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's forward pass: (mean loss of each member over its batch [M], float32 logits [M, b, C]).

    The loss is cross-entropy on the hard targets unless ``loss_fn`` (the distillation objective) is given; it is
    computed in float32 whatever autocast did.
    """
    M, b = step.y.shape
    with autocast(device, bf16):
        logits = trainee(step.x)
    z = logits.float()
    if b == 0:  # a rank with no share of a tiny last batch still joins DDP's gradient all-reduce
        return z.sum((1, 2)) * 0.0, z
    if loss_fn is None:
        ce = F.cross_entropy(z.flatten(0, 1), step.y.flatten(), reduction="none")
        return ce.view(M, b).mean(1), z
    return torch.stack([loss_fn(logits[m], FrameBatch(step.idx[m], step.y[m],
                                                      {k: v[m] for k, v in step.columns.items()}, step.x[m]))
                        for m in range(M)]), z


@torch.no_grad()
def compute_validation_loss(trainee: Trainee, frame_set: Frames, batch_size: int, device: torch.device,
                            dist_ctx: DistContext = DistContext()) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member dev cross-entropy and frame accuracy ([M] each, CPU, float32 forward); ranks share the frames
    and all-reduce."""
    was_training = trainee.module.training
    trainee.module.eval()
    n = frame_set.num_frames
    lo, hi = n * dist_ctx.rank // dist_ctx.world, n * (dist_ctx.rank + 1) // dist_ctx.world
    sums = torch.zeros(2, trainee.num_members, dtype=torch.float64, device=device)
    for _, windows, targets in iter_windows(frame_set, batch_size, lo, hi):
        x = windows.to(device, torch.float32)
        y = targets.to(device)
        logits = trainee.module(x.expand(trainee.num_members, *x.shape)) if trainee.stacked \
            else trainee.module(x).unsqueeze(0)
        logits = logits.float()
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(trainee.num_members), reduction="none")
        sums[0] += ce.view(trainee.num_members, -1).sum(1).double()
        sums[1] += (logits.argmax(-1) == y).sum(1).double()
    dist_ctx.all_reduce_sum(sums)
    trainee.module.train(was_training)
    sums = sums.cpu() / max(1, n)
    return sums[0].float(), sums[1].float()


# ------------------------------------------------------------------------------------------------------ one epoch
@dataclass
class EpochStats:
    """What one epoch of training measured, per member: mean train loss and accuracy, and the time it took."""

    train_loss: torch.Tensor  # [M]
    train_acc: torch.Tensor  # [M]
    frames: torch.Tensor  # [M] frames this process (all ranks together) trained on
    seconds: float


def train_one_epoch(trainee: Trainee, optimizer: torch.optim.Optimizer, train_cfg: TrainConfig,
                    batches: Batches, seeds: Sequence[int], lr_factors: Sequence[float], epoch: int,
                    device: torch.device, loss_fn: LossFn | None = None, dist_ctx: DistContext = DistContext(),
                    desc: str = "train", input_fn: InputFn | None = None, partly_labeled: bool = False
                    ) -> EpochStats:
    """One pass over the training frames for every member, each in its own shuffled order, at its own rate.

    ``lr_factors[m]`` is member m's newbob factor (0 freezes a stopped member). Optimizer updates are linear in the
    rate, so the optimizer runs at the largest member rate and each member's parameter change is scaled by its
    share. Under DDP each rank takes a contiguous 1/world share of every global batch and scales its loss so that
    the all-reduced gradient is the gradient of the mean loss over the global batch. ``input_fn`` (augmentation)
    replaces each step's windows, given the global step number (which does not depend on where a run resumed).
    ``partly_labeled``: some frames have no hard target (:data:`NO_TARGET`); train accuracy is over the others.
    """
    M = trainee.num_members
    params = list(trainee.module.parameters())
    bsz = train_cfg.batch_size
    steps_per_epoch = math.ceil(batches.epoch_frames / bsz)
    total_steps = steps_per_epoch * train_cfg.epochs
    factors = torch.tensor([float(f) for f in lr_factors])
    ref = float(factors.max())
    share = (factors / ref).to(device).view(M, 1, 1)
    scale_members = bool((factors / ref != 1.0).any())
    loss_sum = torch.zeros(M, dtype=torch.float64, device=device)
    correct = torch.zeros(M, dtype=torch.int64, device=device)
    labeled = torch.zeros(M, dtype=torch.int64, device=device)  # frames with a hard target, counted only when
    frames = 0                                                    # some have none (a transfer set's pool frames)
    trainee.module.train()
    synchronize(device)
    t0 = time.perf_counter()
    steps = batches.epoch(seeds, epoch, bsz, device, dist_ctx)
    bar = tqdm(steps, total=steps_per_epoch, desc=f"{desc} epoch {epoch}", unit="batch", leave=False,
               disable=not (train_cfg.progress and dist_ctx.is_main))
    for k, step in enumerate(bar):
        global_step = (epoch - 1) * steps_per_epoch + k
        lr = base_lr(train_cfg, global_step, total_steps) * ref
        for group in optimizer.param_groups:
            group["lr"] = lr
        if input_fn is not None:
            step = dataclasses.replace(step, x=input_fn(step.x, global_step))
        b = step.y.shape[1]
        loss_terms, z = compute_loss(trainee, step, device, loss_fn, train_cfg.bf16)
        optimizer.zero_grad(set_to_none=True)
        if dist_ctx.world > 1:
            (loss_terms.sum() * (dist_ctx.world * b / step.global_b)).backward()
        else:
            loss_terms.sum().backward()
        if scale_members:
            before = [p.detach().clone() for p in params]
            optimizer.step()
            with torch.no_grad():
                for p, old in zip(params, before):
                    p.copy_(torch.lerp(old, p, share))
        else:
            optimizer.step()
        with torch.no_grad():
            loss_sum += loss_terms.detach().double() * b
            # max's indices are argmax's (the first maximal class), in a third of argmax's time on a CPU
            correct += (z.detach().max(-1).indices == step.y).sum(1)
            if partly_labeled:
                labeled += (step.y != NO_TARGET).sum(1)
            frames += b
    bar.close()
    if not partly_labeled:
        labeled += frames
    sums = torch.stack([loss_sum, correct.double(), torch.full_like(loss_sum, frames), labeled.double()])
    dist_ctx.all_reduce_sum(sums)
    synchronize(device)
    sums = sums.cpu()
    return EpochStats(sums[0] / sums[2], sums[1] / sums[3].clamp(min=1), sums[2], time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------- checkpoints
def _make_optimizer(cfg: TrainConfig, params: list[nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


@dataclass
class Progress:
    """Everything :func:`fit` carries from one epoch to the next (what a checkpoint restores)."""

    epoch: int
    states: list[MemberState]
    best: list[dict[str, torch.Tensor] | None]


def save_checkpoint(path: Path, trainee: Trainee, optimizer: torch.optim.Optimizer, progress: Progress,
                    seeds: Sequence[int], train_cfg: TrainConfig, device: torch.device, order: dict | None = None
                    ) -> None:
    """Write model, optimizer, member states, best weights, RNG states and settings (with ``order``, what the batch
    order depends on beyond the seeds) atomically (rank 0 only)."""
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    ckpt = {
        "epoch": progress.epoch,
        "model": trainee.module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "members": [dataclasses.asdict(s) for s in progress.states],
        "best": progress.best,
        "rng": rng,
        "seeds": list(seeds),
        "train_cfg": dataclasses.asdict(train_cfg),
        "data_order": order or ONE_BUFFER,
    }
    with atomic_write(path, "wb") as f:
        torch.save(ckpt, f)


def load_checkpoint(path: Path, trainee: Trainee, optimizer: torch.optim.Optimizer, seeds: Sequence[int],
                    train_cfg: TrainConfig, device: torch.device, desc: str = "train", order: dict | None = None
                    ) -> Progress:
    """Restore what :func:`save_checkpoint` wrote into ``trainee`` and ``optimizer``; warn if settings changed."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    trainee.module.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if device.type == "cuda" and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    saved = {**dataclasses.asdict(TrainConfig()), **ckpt["train_cfg"]}  # a field newer than the checkpoint: default
    changed = {k for k, v in dataclasses.asdict(train_cfg).items() if k not in _RUNTIME_FIELDS and saved[k] != v}
    if ckpt.get("data_order", ONE_BUFFER) != (order or ONE_BUFFER):
        changed.add("data buffers")
    if changed or list(ckpt["seeds"]) != list(seeds):
        logger.warning("%s: resuming a run started with other settings (%s): the result will not match an "
                       "uninterrupted run", desc, ", ".join(sorted(changed)) or "seeds")
    logger.info("%s: resumed from %s after epoch %d", desc, path, ckpt["epoch"])
    best = [None if b is None else {k: v.cpu() for k, v in b.items()} for b in ckpt["best"]]
    return Progress(ckpt["epoch"], [MemberState(**s) for s in ckpt["members"]], best)


# ------------------------------------------------------------------------------------------------------- the loop
def fit(
    trainee: Trainee,
    train_cfg: TrainConfig,
    train_set: Frames,
    dev_set: Frames,
    seeds: Sequence[int],
    checkpoint_path: Path,
    device: torch.device,
    loss_fn: LossFn | None = None,
    dist_ctx: DistContext = DistContext(),
    epoch_callback: EpochCallback | None = None,
    desc: str = "train",
    input_fn: InputFn | None = None,
) -> tuple[list[MemberState], list[dict[str, torch.Tensor]]]:
    """Train every member of ``trainee`` until each has stopped; return their states and best (or final) weights.

    Resumes from ``checkpoint_path`` when it exists. Member m draws its batch order from ``seeds[m]``; ``input_fn``
    augments the training windows (dev is evaluated on clean windows).
    """
    M = trainee.num_members
    if len(seeds) != M:
        raise ValueError(f"{M} members but {len(seeds)} seeds")
    if train_cfg.bf16 is None:
        raise ValueError("train_cfg.bf16 is undecided: pass the config through asr_kd.nn.train.with_numerics first")
    optimizer = _make_optimizer(train_cfg, list(trainee.module.parameters()), device)
    batches = training_batches(train_set, window_dtype(device, train_cfg.bf16), M, train_cfg.epoch_frames)
    partly_labeled = train_set.target_range[0] == NO_TARGET  # decided once: no per-step count on a labeled set
    if checkpoint_path.exists():
        progress = load_checkpoint(checkpoint_path, trainee, optimizer, seeds, train_cfg, device, desc, batches.order)
    else:
        progress = Progress(0, [MemberState() for _ in range(M)], [None] * M)
    states, best = progress.states, progress.best
    steps_per_epoch = math.ceil(batches.epoch_frames / train_cfg.batch_size)
    while not all(s.stopped for s in states):
        epoch = progress.epoch + 1
        active = [s.stopped is None for s in states]
        factors = [s.lr_factor if s.stopped is None else 0.0 for s in states]
        stats = train_one_epoch(trainee, optimizer, train_cfg, batches, seeds, factors, epoch, device, loss_fn,
                                dist_ctx, desc, input_fn, partly_labeled)
        dev_loss, dev_acc = compute_validation_loss(trainee, dev_set, train_cfg.eval_batch_size, device, dist_ctx)
        rows = []
        for m in range(M):
            if not active[m]:
                rows.append({})
                continue
            row = {
                "epoch": epoch,
                "train_loss": float(stats.train_loss[m]),
                "train_acc": float(stats.train_acc[m]),
                "dev_loss": float(dev_loss[m]),
                "dev_acc": float(dev_acc[m]),
                "lr": base_lr(train_cfg, epoch * steps_per_epoch - 1, steps_per_epoch * train_cfg.epochs)
                * states[m].lr_factor,
                "seconds": stats.seconds,
                "frames_per_s": float(stats.frames[m]) / stats.seconds,
            }
            states[m].history.append(row)
            improved = row["dev_acc"] > states[m].best_dev_acc
            states[m].end_epoch(train_cfg, epoch, row["dev_loss"], row["dev_acc"])
            if improved or not train_cfg.early_stopping:
                best[m] = trainee.member_state(m)
            rows.append(row)
            logger.info("%s%s epoch %d: train loss %.4f acc %.4f | dev loss %.4f acc %.4f | lr %.3g | %.0f frames/s%s",
                        desc, f" member {m}" if M > 1 else "", epoch, row["train_loss"], row["train_acc"],
                        row["dev_loss"], row["dev_acc"], row["lr"], row["frames_per_s"],
                        f" | stop: {states[m].stopped}" if states[m].stopped else "")
        progress.epoch = epoch
        if dist_ctx.is_main:
            save_checkpoint(checkpoint_path, trainee, optimizer, progress, seeds, train_cfg, device, batches.order)
        dist_ctx.barrier()
        if epoch_callback is not None:
            epoch_callback(epoch, rows)
    return states, [b if b is not None else trainee.member_state(m) for m, b in enumerate(best)]


# ---------------------------------------------------------------------------------------------------- public API
def write_member_outputs(out_dir: Path, model_cfg: ModelConfig, num_classes: int, state: MemberState,
                         weights: dict[str, torch.Tensor], train_cfg: TrainConfig, seed: int) -> TrainResult:
    """model.pt + metrics.json of one trained model (a baseline, or one ensemble member)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kept_epoch = state.best_epoch if train_cfg.early_stopping else len(state.history)
    model_path, metrics_path = out_dir / "model.pt", out_dir / "metrics.json"
    save_model(model_path, model_cfg, num_classes, weights, {"epoch": kept_epoch, "seed": seed})
    metrics = {
        "epochs": state.history,
        "best_epoch": state.best_epoch,
        "best_dev_acc": state.best_dev_acc,
        "kept_epoch": kept_epoch,
        "stopped": state.stopped,
        "seed": seed,
        "train_cfg": dataclasses.asdict(train_cfg),
        "model_cfg": model_cfg.to_dict(),
        "num_classes": num_classes,
    }
    write_text_atomic(metrics_path, json.dumps(metrics, indent=2) + "\n")
    return TrainResult(model_path, metrics_path, state.best_epoch, state.best_dev_acc, len(state.history),
                       state.history)


def trained(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a finished model: :func:`write_member_outputs` writes its model.pt, then its
    metrics.json, once training has ended. Whoever deals out independent models keeps a finished one rather than
    training it again (a stage run again after an interruption or a failed job, a batch job's share)."""
    return (Path(out_dir) / "model.pt").exists() and (Path(out_dir) / "metrics.json").exists()


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_set: Frames,
    dev_set: Frames,
    out_dir: Path,
    num_classes: int,
    loss_fn: LossFn | None = None,
    epoch_callback: EpochCallback | None = None,
    device: str | torch.device = "auto",
    data_parallel: bool = True,
    input_fn: InputFn | None = None,
) -> TrainResult:
    """Train one DNN on ``train_set`` frames, choosing epochs on ``dev_set``; resumes from out_dir/checkpoint.pt.

    Writes out_dir/checkpoint.pt (every epoch), out_dir/model.pt (best-dev weights with early stopping, final
    weights otherwise) and out_dir/metrics.json. Launched by torchrun it trains with DDP and rank 0 writes;
    ``data_parallel=False`` trains this rank's model alone instead (ranks that each train other models).
    ``input_fn`` augments every training step's windows (:data:`InputFn`).
    """
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    device = select_device(str(device))
    ranks = dist_context(device) if data_parallel else DistContext()
    return train_one(model_cfg, train_cfg, train_set, dev_set, Path(out_dir), num_classes, device, ranks, loss_fn,
                     epoch_callback, input_fn)


def train_one(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_set: Frames,
    dev_set: Frames,
    out_dir: Path,
    num_classes: int,
    device: torch.device,
    dist_ctx: DistContext = DistContext(),
    loss_fn: LossFn | None = None,
    epoch_callback: EpochCallback | None = None,
    input_fn: InputFn | None = None,
) -> TrainResult:
    """:func:`train` with the device and process group given (ensembles train members rank-locally)."""
    train_set, dev_set = on_device(train_set, device), on_device(dev_set, device)
    check_targets(train_set, dev_set, num_classes, unlabeled_ok=loss_fn is not None)
    train_cfg = with_numerics(train_cfg, model_cfg, num_classes, device, out_dir.name, dist_ctx)
    model = build_members(model_cfg, num_classes, [train_cfg.seed])[0].to(device)
    trainee = Trainee(model, dist_ctx)
    states, weights = fit(trainee, train_cfg, train_set, dev_set, [train_cfg.seed], out_dir / "checkpoint.pt",
                          device, loss_fn, dist_ctx, epoch_callback, desc=out_dir.name, input_fn=input_fn)
    result = None
    if dist_ctx.is_main:
        result = write_member_outputs(out_dir, model_cfg, num_classes, states[0], weights[0], train_cfg,
                                      train_cfg.seed)
    dist_ctx.barrier()
    if result is None:
        s = states[0]
        result = TrainResult(out_dir / "model.pt", out_dir / "metrics.json", s.best_epoch, s.best_dev_acc,
                             len(s.history), s.history)
    return result


def with_numerics(train_cfg: TrainConfig, model_cfg: ModelConfig, num_classes: int, device: torch.device,
                  desc: str = "train", dist_ctx: DistContext = DistContext()) -> TrainConfig:
    """``train_cfg`` with ``bf16`` decided for ``device`` (measured on this model's step when the config leaves it
    open): what every model of one call trains in, written to its metrics.json and checkpoint. Under DDP rank 0
    measures and every rank takes its choice (ranks of one model must compute alike)."""
    if train_cfg.bf16 is not None:
        return train_cfg
    bf16 = torch.zeros(1, device=device)
    if dist_ctx.is_main:
        numerics = resolve(None, model_cfg, num_classes, train_cfg.batch_size, device)
        logger.info("%s: training numerics %s", desc, numerics.describe())
        bf16 += numerics.bf16
    return dataclasses.replace(train_cfg, bf16=bool(dist_ctx.all_reduce_sum(bf16).item() > 0))


def on_device(frames: Frames, device: torch.device) -> Frames:
    """Keep a set where it is when the device matches (a GPU set stays there); move it otherwise (a streamed set
    then reads its chunks and buffers onto ``device``)."""
    if frames.device.type == device.type and (device.index is None or frames.device == device):
        return frames
    return frames.to(device)


def check_targets(train_set: Frames, dev_set: Frames, num_classes: int, unlabeled_ok: bool = False) -> None:
    """Every target is a class of the model. ``unlabeled_ok``: training frames may also be :data:`NO_TARGET` (a
    transfer set's untranscribed frames, which only a distillation loss can learn from); dev frames never."""
    for name, s in (("train", train_set), ("dev", dev_set)):
        low, high = s.target_range
        lowest = NO_TARGET if unlabeled_ok and name == "train" else 0
        if s.num_frames and (low < lowest or high >= num_classes):
            raise ValueError(f"{name} targets outside [0, {num_classes})")
