"""The teacher: N members with the baseline's architecture and recipe, differing only in their random seed.

Member m (directory ``member{m:02d}``) uses seed ``base_seed + m`` for its initialisation and its batch order,
as in the paper (different initialisations; data subsets "did not significantly change" results).

Two ways to train them, chosen by :class:`EnsembleConfig` ``mode``:

* ``sequential``: one :func:`asr_kd.nn.train.train_one` per member; every member dir has its own checkpoint.pt.
* ``stacked``: up to ``max_stack`` members as one :class:`asr_kd.nn.model.StackedDNN` (one ``baddbmm`` per layer,
  each member its own shuffled batch, learning rate and early stopping). With dropout 0 a stacked member follows
  the same trajectory as its sequential twin (same init, same batches, per-member newbob rates; only float
  rounding of bmm vs mm differs, tested in tests/test_ensemble.py). It pays on a GPU when one member's batch is
  too small to fill it (on an H100 it about doubles member-frames/s at 1024 frames per member and gains nothing
  at 4096; measure yours with ``python -m asr_kd.bench ensemble``).
  The group checkpoint is out_dir/stacked_<members>.pt, removed once the members' model.pt are written.
* ``auto``: stacked on CUDA when the per-member batch is at most 2048 frames, sequential otherwise. On a 2-core
  CPU stacking does not pay: stacked and sequential members train at about the same member-frames/s
  (``python -m asr_kd.bench ensemble --threads 1`` measures both).
  ``frames_per_s`` in a stacked member's metrics.json counts that member's frames only, in the time all
  stacked members shared.

A finished member (its model.pt and metrics.json written: :func:`asr_kd.nn.train.trained`) is skipped, so an
interrupted ensemble resumes member by member.

Several GPUs: launch the same script on every GPU; each rank trains the members ``m`` with ``m % world == rank``
(:func:`members_for_rank`) on ``cuda:LOCAL_RANK``, with no communication between ranks::

    torchrun --standalone --nproc-per-node=4 <script or `-m module` that calls train_ensemble(...)>

and evaluate (``evaluate_ensemble``) after all ranks have returned.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from asr_kd.nn.device import launch_env, select_device
from asr_kd.nn.frames import Frames, iter_windows
from asr_kd.nn.inference import load_model
from asr_kd.nn.model import DNN, ModelConfig, StackedDNN
from asr_kd.nn.train import (
    TrainConfig,
    Trainee,
    build_members,
    check_targets,
    fit,
    on_device,
    train_one,
    trained,
    with_numerics,
    write_member_outputs,
)

logger = logging.getLogger(__name__)

MODES = ("sequential", "stacked", "auto")
COMBINES = ("arith", "geo")


@dataclass
class EnsembleConfig:
    """How many members, their seeds, how to train them, and how to average their predictions."""

    num_members: int = 10
    base_seed: int = 1
    mode: str = "auto"
    combine: str = "arith"
    max_stack: int = 10

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        if self.num_members < 1 or self.max_stack < 1:
            raise ValueError("num_members and max_stack must be positive")


def member_dir(out_dir: Path, m: int) -> Path:
    return Path(out_dir) / f"member{m:02d}"


def members_for_rank(num_members: int, rank: int, world: int) -> list[int]:
    """Members trained by ``rank`` of ``world``: round robin, so shares differ by at most one member."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world of {world}")
    return list(range(rank, num_members, world))


def _resolve_mode(ens_cfg: EnsembleConfig, train_cfg: TrainConfig, device: torch.device) -> str:
    if ens_cfg.mode != "auto":
        return ens_cfg.mode
    return "stacked" if device.type == "cuda" and train_cfg.batch_size <= 2048 else "sequential"


def train_ensemble(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    ens_cfg: EnsembleConfig,
    train_set: Frames,
    dev_set: Frames,
    out_dir: Path,
    num_classes: int,
    device: str | torch.device = "auto",
) -> list[Path]:
    """Train this rank's unfinished members into out_dir/memberNN/ (model.pt, metrics.json); return all member dirs.

    ``train_cfg.seed`` is ignored: member m uses ``ens_cfg.base_seed + m``. Under torchrun each rank trains its
    share of the members on its own device, without communication (:func:`members_for_rank`).
    """
    out_dir = Path(out_dir)
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    env = launch_env()
    rank, world = env.rank, env.world
    device = select_device(str(device))
    mine = [m for m in members_for_rank(ens_cfg.num_members, rank, world) if not trained(member_dir(out_dir, m))]
    mode = _resolve_mode(ens_cfg, train_cfg, device)
    logger.info("ensemble: rank %d/%d trains members %s (%s) on %s", rank, world, mine, mode, device)
    train_set, dev_set = on_device(train_set, device), on_device(dev_set, device)
    check_targets(train_set, dev_set, num_classes)
    train_cfg = with_numerics(train_cfg, model_cfg, num_classes, device, "ensemble")  # one choice for all members
    if mode == "sequential":
        for m in mine:
            cfg = dataclasses.replace(train_cfg, seed=ens_cfg.base_seed + m)
            train_one(model_cfg, cfg, train_set, dev_set, member_dir(out_dir, m), num_classes, device)
    else:
        for first in range(0, len(mine), ens_cfg.max_stack):
            group = mine[first:first + ens_cfg.max_stack]
            _train_stacked(model_cfg, train_cfg, ens_cfg, group, train_set, dev_set, out_dir, num_classes, device)
    return [member_dir(out_dir, m) for m in range(ens_cfg.num_members)]


def _train_stacked(model_cfg: ModelConfig, train_cfg: TrainConfig, ens_cfg: EnsembleConfig, group: list[int],
                   train_set: Frames, dev_set: Frames, out_dir: Path, num_classes: int,
                   device: torch.device) -> None:
    seeds = [ens_cfg.base_seed + m for m in group]
    stacked = StackedDNN.from_members(build_members(model_cfg, num_classes, seeds)).to(device)
    checkpoint = out_dir / f"stacked_{'_'.join(f'{m:02d}' for m in group)}.pt"
    states, weights = fit(Trainee(stacked), train_cfg, train_set, dev_set, seeds, checkpoint, device,
                          desc=f"members {group[0]}-{group[-1]}")
    for m, seed, state, w in zip(group, seeds, states, weights):
        write_member_outputs(member_dir(out_dir, m), model_cfg, num_classes, state, w,
                             dataclasses.replace(train_cfg, seed=seed), seed)
    checkpoint.unlink()


# ------------------------------------------------------------------------------------------------ combining members
def combine_log_probs(member_log_probs: torch.Tensor, combine: str = "arith") -> torch.Tensor:
    """[M, B, C] member log-probabilities -> [B, C] ensemble log-probabilities.

    ``arith``: log of the mean of the probabilities (the paper's average). ``geo``: the normalised geometric mean,
    i.e. log-softmax of the mean log-probability (equal to softmax of the mean logit / T).
    """
    if combine == "arith":
        return torch.logsumexp(member_log_probs, dim=0) - math.log(member_log_probs.shape[0])
    if combine == "geo":
        return torch.log_softmax(member_log_probs.mean(0), dim=-1)
    raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")


def _prefix_correct(member_log_probs: torch.Tensor, combine: str, targets: torch.Tensor) -> torch.Tensor:
    """[M] counts of frames whose target is the arg-max of the first n members combined, n = 1..M.

    The arg-max of :func:`combine_log_probs` of ``member_log_probs[:n]`` is that of the running sum of the members'
    probabilities (arithmetic mean) or log-probabilities (geometric mean); a loop over members, because torch's
    cumsum and logcumsumexp over the member dimension take 5-8x as long as the whole combination.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    scores = member_log_probs.exp() if combine == "arith" else member_log_probs
    running = torch.zeros_like(scores[0])
    correct = []
    for member_scores in scores:
        running += member_scores
        correct.append(int((running.argmax(-1) == targets).sum()))
    return torch.tensor(correct, dtype=torch.int64)


@torch.no_grad()
def iter_member_logits(models: Sequence[DNN], frame_set: Frames,
                       batch_size: int = 4096) -> Iterator[tuple[int, torch.Tensor]]:
    """(first frame, logits [M, b, C] float32) of every member, in frame order.

    The members run as one :class:`StackedDNN` (one batched matmul per layer instead of M launches).
    """
    for start, logits, _ in iter_member_logits_and_targets(models, frame_set, batch_size):
        yield start, logits


@torch.no_grad()
def iter_member_logits_and_targets(models: Sequence[DNN], frame_set: Frames, batch_size: int = 4096
                                   ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """:func:`iter_member_logits` with each batch's targets (on the members' device)."""
    stacked = StackedDNN.from_members(list(models)).eval()
    device = next(stacked.parameters()).device
    M = len(models)
    for start, windows, targets in iter_windows(frame_set, batch_size):
        x = windows.to(device, torch.float32)
        yield start, stacked(x.expand(M, *x.shape)).float(), targets.to(device)


def iter_member_log_probs(models: Sequence[DNN], frame_set: Frames, temperature: float = 1.0,
                          batch_size: int = 4096) -> Iterator[tuple[int, torch.Tensor]]:
    """(first frame, log-softmax(z_m / T) [M, b, C] float32) for every member, in frame order."""
    for start, logits in iter_member_logits(models, frame_set, batch_size):
        yield start, torch.log_softmax(logits / temperature, dim=-1)


def ensemble_log_posteriors(models: Sequence[DNN], frame_set: Frames, temperature: float = 1.0,
                            combine: str = "arith", batch_size: int = 4096) -> torch.Tensor:
    """Ensemble log-probabilities at temperature T for every frame, in frame order: [N, C] float32 on the CPU."""
    out = torch.empty(frame_set.num_frames, models[0].num_classes)
    for start, member_lp in iter_member_log_probs(models, frame_set, temperature, batch_size):
        out[start:start + member_lp.shape[1]] = combine_log_probs(member_lp, combine).cpu()
    return out


@torch.no_grad()
def evaluate_ensemble(member_dirs: Sequence[Path], sets: Mapping[str, Frames], combine: str = "arith",
                      batch_size: int = 4096) -> dict:
    """Frame accuracy (%) of every member, their mean and (sample) std, and of the ensemble, for each named set.

    Returns ``{split: {"members": [...], "member_mean", "member_std", "ensemble", "by_size", "combine", "frames"}}``,
    every accuracy in percent like every other frame accuracy the pipeline reports. ``by_size[n - 1]`` is the
    accuracy of the first n members combined: the ensemble-size curve, which says how many members the gain needs
    and how many members a distilled model is worth.
    """
    results = {}
    device = next(iter(sets.values())).device if sets else torch.device("cpu")
    models = [load_model(Path(d) / "model.pt", device) for d in member_dirs]
    for split, frame_set in sets.items():
        member_correct = torch.zeros(len(models), dtype=torch.int64)
        prefix_correct = torch.zeros(len(models), dtype=torch.int64)  # the last: all members, the ensemble
        for _, logits, y in iter_member_logits_and_targets(models, frame_set, batch_size):
            member_lp = torch.log_softmax(logits, dim=-1)
            member_correct += (member_lp.argmax(-1) == y).sum(1).cpu()
            prefix_correct += _prefix_correct(member_lp, combine, y)
        n = max(1, frame_set.num_frames)
        accs = 100.0 * member_correct.double() / n
        by_size = (100.0 * prefix_correct.double() / n).tolist()
        results[split] = {
            "members": accs.tolist(),
            "member_mean": float(accs.mean()),
            "member_std": float(accs.std()) if len(models) > 1 else 0.0,
            "ensemble": by_size[-1],
            "by_size": by_size,
            "combine": combine,
            "frames": frame_set.num_frames,
        }
    return results
