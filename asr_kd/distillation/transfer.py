"""Transfer sets with untranscribed audio (the paper's section 2): a student learns the ensemble's function on
more speech than anyone transcribed.

The paper's speech student is distilled on the training set itself, the only audio with alignments. Soft targets
need no transcript, though: the ensemble labels any audio. A transfer set here is the labeled training frames
followed by frames of untranscribed audio (targets :data:`~asr_kd.nn.frames.NO_TARGET`); the ensemble's stored
soft targets cover both parts, frame for frame, and the hard term of the objective is taken over the labeled frames
only (:func:`asr_kd.distillation.distill.distillation_loss`, ``labeled_only``). A labeled frame is in the set once:
the pool's utterances must be disjoint from the training set's (:meth:`FrameSet.concat` refuses a repeated id).

What it measures: on the built-in corpus a student distilled on the training set alone agrees with the ensemble far
more on that set than on dev; if the gap is "too little data" rather than "too little capacity", more audio labeled
by the teacher closes it, and a wider student does not need to (the research config crosses the two).
"""
from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asr_kd.distillation.distill import DistillConfig, distill
from asr_kd.distillation.soft_targets import SoftTargets
from asr_kd.nn.frames import FrameSet
from asr_kd.nn.model import ModelConfig
from asr_kd.nn.train import TrainConfig, TrainResult

logger = logging.getLogger(__name__)


@dataclass
class TransferConfig:
    """Which untranscribed audio joins the training set as the transfer set, and which students learn on it.

    ``pool``: the untranscribed frames used, as a multiple of the training frames (None: the whole pool); a smaller
    pool is a seeded draw of whole utterances. ``small_data``: also the 3% experiment's soft-target model with the
    pool (its labeled part the 3% subset). ``sizes`` x ``widths``: the research curve, one student per transfer-set
    size (a multiple of the training audio: 1 is the training set alone) and hidden width (a multiple of the
    members'), each at the sweep's temperature; none by default. ``train_sized_epochs``: a transfer-set student's
    epoch is as many frames as the training set holds (``TrainConfig.epoch_frames``), so that its dev checks and
    its plateau rule come as often per frame seen as the paper arm's student's; a whole pass over a transfer set
    several times larger would make each of the rule's patient epochs cost several of that student's.
    """

    pool: float | None = None
    small_data: bool = True
    sizes: list[float] = field(default_factory=list)
    widths: list[float] = field(default_factory=lambda: [1.0])
    seed: int = 0
    train_sized_epochs: bool = True

    def __post_init__(self) -> None:
        if self.pool is not None and self.pool <= 0:
            raise ValueError(f"transfer.pool must be > 0 (or null for the whole pool), got {self.pool}")
        if any(s < 1 for s in self.sizes):
            raise ValueError(f"transfer.sizes are multiples of the training audio, each >= 1, got {self.sizes}")
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ValueError(f"transfer.widths must be positive multiples of the members' width, got {self.widths}")

    def curve(self) -> dict[str, tuple[float, float]]:
        """Curve student name -> (transfer-set size, width multiple): ``transfer_<size>x_w<width>``."""
        return {f"transfer_{s:g}x_w{w:g}": (float(s), float(w)) for s in self.sizes for w in self.widths}


def draw_pool(pool: FrameSet, frames: int | None, seed: int = 0) -> FrameSet:
    """``frames`` or more untranscribed frames of ``pool`` in whole utterances (None: all of it), drawn in a seeded
    order that depends only on the utterance ids: a larger draw holds every utterance of a smaller one."""
    if frames is None or frames >= pool.num_frames:
        return pool
    order = sorted(pool.utt_ids)
    random.Random(f"draw_pool:{seed}").shuffle(order)
    length = dict(zip(pool.utt_ids, pool.utt_lengths.tolist(), strict=True))
    chosen, total = [], 0
    for utt in order:
        if total >= frames:
            break
        chosen.append(utt)
        total += length[utt]
    keep = set(chosen)
    return pool.subset([u for u in pool.utt_ids if u in keep])


def pool_frames(train_frames: int, size: float) -> int:
    """Untranscribed frames that make a transfer set ``size`` times the training frames."""
    return max(0, round((size - 1.0) * train_frames))


def distill_on_transfer_set(model_cfg: ModelConfig, train_cfg: TrainConfig, dcfg: DistillConfig,
                            labeled: FrameSet, labeled_soft: SoftTargets, pool: FrameSet, pool_soft: SoftTargets,
                            dev_set: FrameSet, out_dir: Path, num_classes: int,
                            device: str | torch.device = "auto") -> TrainResult:
    """A student distilled (stored targets at ``dcfg.temperature``) on ``labeled`` followed by ``pool``: the soft
    term on every frame, the hard term on the labeled ones. Each part's soft targets cover it frame for frame (at the
    same temperature and k: :meth:`SoftTargets.concat` checks)."""
    for name, frames, soft in (("labeled", labeled, labeled_soft), ("pool", pool, pool_soft)):
        if soft.num_frames != frames.num_frames:
            raise ValueError(f"{name} soft targets cover {soft.num_frames} frames, the {name} part has "
                             f"{frames.num_frames}")
    transfer = FrameSet.concat([labeled, pool])
    logger.info("transfer set: %d labeled + %d untranscribed frames (%.1fx the labeled)", labeled.num_frames,
                pool.num_frames, transfer.num_frames / max(1, labeled.num_frames))
    return distill(model_cfg, train_cfg, dataclasses.replace(dcfg, mode="stored"), transfer, dev_set,
                   SoftTargets.concat([labeled_soft, pool_soft]), None, out_dir, num_classes, device,
                   data_parallel=False)


def describe_pool(labeled_frames: int, pool: FrameSet) -> dict:
    """The transfer set's make-up, for the summary and the report: frames of each part, and its size as a multiple
    of the labeled frames."""
    return {"labeled_frames": labeled_frames, "unlabeled_frames": pool.num_frames, "unlabeled_utts": len(pool.utt_ids),
            "size": round((labeled_frames + pool.num_frames) / max(1, labeled_frames), 3)}
