"""The paper's section-6 experiment: soft targets as a regularizer when only 3% of the data is transcribed.

A model trained on the hard labels of a small subset overfits; the same model trained on the soft targets of a
full-data teacher over the same subset keeps most of the full-data accuracy. :func:`run_small_data` trains both
(the soft one at several temperatures, chosen on dev) and compares them with the full-data baseline.

The subset must be a fair miniature of the training set: a random 3% of utterances can by chance drop a voice
entirely, and the hard-vs-soft comparison would then measure speaker coverage rather than regularization. So
:func:`select_subset` stratifies the draw by speaker: every speaker gets its share of the total (largest-remainder
apportionment), at least one utterance whenever the total allows one per speaker, and which utterances is a seeded
draw that depends only on (utt2spk, fraction, seed).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asr_kd.distillation.distill import DistillConfig, choose_temperature, distill
from asr_kd.distillation.soft_targets import SoftTargetConfig, compute_soft_targets
from asr_kd.nn.device import dist_context, launch_env, select_device
from asr_kd.nn.frames import Frames
from asr_kd.nn.inference import frame_accuracy, load_model
from asr_kd.nn.model import DNN, ModelConfig
from asr_kd.nn.train import TrainConfig, train, trained
from features.atomic import atomic_write, write_text_atomic

logger = logging.getLogger(__name__)

TEACHERS = ("ensemble", "baseline")


def _apportion(sizes: dict[str, int], total: int, rng: random.Random) -> dict[str, int]:
    """Split ``total`` picks over speakers in proportion to ``sizes``, each speaker >= 1 when total allows."""
    n_all = sum(sizes.values())
    quota = {s: total * n / n_all for s, n in sizes.items()}
    floor_one = total >= len(sizes)
    count = {s: min(sizes[s], max(1 if floor_one else 0, math.floor(q))) for s, q in quota.items()}
    # Ties in the remainder are broken by a seeded shuffle, so that with fewer picks than speakers
    # it is a random (reproducible) set of speakers that gets one, not always the first in sort order.
    order = sorted(sizes)
    rng.shuffle(order)
    diff = total - sum(count.values())
    while diff > 0:
        open_spk = [s for s in order if count[s] < sizes[s]]
        for s in sorted(open_spk, key=lambda s: count[s] - quota[s])[:diff]:
            count[s] += 1
            diff -= 1
    while diff < 0:  # only when the minimum of one pushed the sum over the total
        lowest = 1 if floor_one else 0
        for s in sorted((s for s in order if count[s] > lowest), key=lambda s: quota[s] - count[s])[:-diff]:
            count[s] -= 1
            diff += 1
    return count


def select_subset(utt2spk: Mapping[str, str], fraction: float = 0.03, seed: int = 0) -> list[str]:
    """A speaker-stratified random ``fraction`` of the utterances, as sorted utterance ids.

    The total is round(fraction x #utterances) (at least one); each speaker contributes about ``fraction`` of
    its own utterances and at least one where the total allows. Deterministic in (utt2spk, fraction, seed).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not utt2spk:
        raise ValueError("empty utt2spk")
    by_spk: dict[str, list[str]] = defaultdict(list)
    for utt, spk in utt2spk.items():
        by_spk[spk].append(utt)
    total = max(1, round(fraction * len(utt2spk)))
    rng = random.Random(f"select_subset:{seed}")
    count = _apportion({s: len(u) for s, u in by_spk.items()}, total, rng)
    chosen: list[str] = []
    for spk in sorted(by_spk):
        chosen.extend(rng.sample(sorted(by_spk[spk]), count[spk]))
    return sorted(chosen)


@dataclass
class SmallDataConfig:
    """The 3% experiment: hard targets vs soft targets from a full-data teacher on the same small subset.

    ``teacher``: the full-data model whose soft targets train ``small_soft`` (the ensemble: on the synthetic corpus
    it gave the soft-target model a better dev accuracy than the baseline did); ``compare_teachers`` also trains
    ``small_soft_<other teacher>`` (an ablation).

    The soft-target model has its own objective, as in the paper's section 6: the teacher's whole posterior
    (``top_k`` None: the subset is small, storing every class costs nothing) and no hard term (``hard_weight`` 0),
    one model per temperature of ``temperatures``, the best on dev kept. On the built-in corpus, against the
    full-data student's objective (top-20 at T=2, hard weight 0.5), keeping all classes and dropping the hard term
    each gave a better dev accuracy, a higher temperature (5 or 10) a better one still, and adding the hard term
    back at T=5 lost part of that gain. A 3% subset holds a few dozen utterances: its hard labels are what the
    model overfits, and the teacher's posterior over all classes at a high T carries what the subset lacks.
    """

    fraction: float = 0.03
    seed: int = 0
    teacher: str = "ensemble"  # "baseline" | "ensemble"
    compare_teachers: bool = False
    hard_early_stopping: bool = True
    soft_early_stopping: bool = False
    epochs: int = 40
    # A 3% subset has few batches per epoch: newbob's "converged" test would end training after a handful of
    # updates, so both small models run a constant rate at a smaller batch for all their epochs (the hard model
    # keeps its best-dev weights when hard_early_stopping, with this patience).
    lr_schedule: str = "constant"
    batch_size: int = 256
    patience: int = 5
    temperatures: list[float] = field(default_factory=lambda: [2.0, 5.0, 10.0])
    hard_weight: float = 0.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}")
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError(f"temperatures must be a non-empty list of positive numbers, got {self.temperatures}")

    def teacher_names(self) -> list[str]:
        """``teacher`` first, then the other one when ``compare_teachers``."""
        return [self.teacher] + ([t for t in TEACHERS if t != self.teacher] if self.compare_teachers else [])

    def soft_systems(self) -> dict[str, str]:
        """Soft-target system name -> its teacher: ``small_soft`` (``teacher``), ``small_soft_<other>``."""
        return {("small_soft" if i == 0 else f"small_soft_{name}"): name for i, name in enumerate(self.teacher_names())}

    def soft_runs(self) -> dict[str, tuple[str, float]]:
        """Model dir name -> (soft system, temperature): ``<system>_T<T>`` for each soft system at each T."""
        return {f"{system}_T{t:g}": (system, float(t)) for system in self.soft_systems() for t in self.temperatures}

    def models(self) -> list[str]:
        """Every model the experiment trains: the hard one, then each soft system at each temperature."""
        return ["small_hard", *self.soft_runs()]


def _as_models(models: Sequence[Path | DNN], device: torch.device) -> list[DNN]:
    return [m if isinstance(m, DNN) else load_model(Path(m), device) for m in models]


def run_small_data(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    scfg: SmallDataConfig,
    dcfg: DistillConfig,
    sets: Mapping[str, Frames],
    utt2spk: Mapping[str, str],
    teachers: Mapping[str, Sequence[Path | DNN]],
    out_dir: Path,
    num_classes: int,
) -> dict:
    """Train the small-data hard-target and soft-target models and compare them with the full-data baseline.

    ``sets`` holds "train", "dev" and optionally "test". ``teachers`` maps "baseline" (required: it is also the
    full-data reference) and "ensemble" to models (or model.pt paths) trained on ALL the training data; the
    soft targets are theirs on the subset's frames. The hard model goes to ``out_dir/small_hard``; each soft system
    (``small_soft``, taught by ``scfg.teacher``; with ``compare_teachers`` also ``small_soft_<other teacher>``) is
    trained once per temperature into ``out_dir/<system>_T<T>``, and the one with the best dev accuracy (the lowest
    temperature of equal ones, :func:`~asr_kd.distillation.distill.choose_temperature`) is copied to
    ``out_dir/<system>/model.pt`` (test never chooses). Frame accuracy (%) on the data each model trained on
    ("train"), dev and test (``systems``; soft systems with their chosen ``temperature`` and the dev accuracy of
    every temperature) is written with the settings to ``out_dir/small_data.json`` and returned. A finished model is
    kept. Under torchrun the models are spread over the ranks (each trains its own alone); once all are trained every
    rank reads the same results and rank 0 writes them. A batch job (:mod:`asr_kd.nn.jobs`) trains its share and
    returns ``{}``; the process that submitted the jobs reads them.
    """
    out_dir = Path(out_dir)
    train_set, dev_set = sets["train"], sets["dev"]
    eval_sets = {name: sets[name] for name in ("dev", "test") if name in sets}
    train_utts = set(train_set.utt_ids)
    subset_ids = select_subset({u: s for u, s in utt2spk.items() if u in train_utts}, scfg.fraction, scfg.seed)
    small = train_set.subset(subset_ids)
    ranks = launch_env()
    if ranks.is_main:
        write_text_atomic(out_dir / "small_data_subset.txt", "".join(f"{u}\n" for u in subset_ids))
    logger.info("small-data subset: %d of %d utterances, %d of %d frames", len(subset_ids), len(train_set.utt_ids),
                small.num_frames, train_set.num_frames)
    if "baseline" not in teachers:
        raise ValueError("run_small_data needs the full-data baseline (teachers['baseline'])")
    missing = [name for name in scfg.teacher_names() if name not in teachers]
    if missing:
        raise ValueError(f"no {missing[0]!r} teacher given (have {sorted(teachers)})")
    device = train_set.device
    small_cfg = dataclasses.replace(train_cfg, epochs=scfg.epochs, lr_schedule=scfg.lr_schedule,
                                    batch_size=scfg.batch_size, patience=scfg.patience)
    soft_cfg = dataclasses.replace(small_cfg, early_stopping=scfg.soft_early_stopping)
    soft_systems = scfg.soft_systems()
    runs = scfg.soft_runs()
    for model in ranks.share(scfg.models()):
        if trained(out_dir / model):
            continue
        if model == "small_hard":
            train(model_cfg, dataclasses.replace(small_cfg, early_stopping=scfg.hard_early_stopping), small, dev_set,
                  out_dir / model, num_classes, device=device, data_parallel=False)
            continue
        system, t = runs[model]
        st_cfg = SoftTargetConfig(temperature=t, top_k=scfg.top_k, combine=dcfg.combine)
        soft = compute_soft_targets(_as_models(teachers[soft_systems[system]], device), small, st_cfg)
        objective = dataclasses.replace(dcfg, mode="stored", consistent=False, temperature=t, top_k=scfg.top_k,
                                        hard_weight=scfg.hard_weight)
        distill(model_cfg, soft_cfg, objective, small, dev_set, soft, None, out_dir / model, num_classes, device,
                data_parallel=False)
    dist_context(select_device(str(device))).barrier()
    if ranks.alone:
        return {}

    def accuracies(model: DNN, own_train: Frames) -> dict[str, float]:
        return {name: round(100.0 * frame_accuracy(model, fs), 2)
                for name, fs in {"train": own_train, **eval_sets}.items()}

    systems: dict[str, dict] = {"baseline_full": accuracies(_as_models(teachers["baseline"], device)[0], train_set)}
    systems["small_hard"] = accuracies(load_model(out_dir / "small_hard" / "model.pt", device), small)
    for system, teacher in soft_systems.items():
        dev_acc = {t: round(100.0 * frame_accuracy(load_model(out_dir / model / "model.pt", device), dev_set), 2)
                   for model, (of, t) in runs.items() if of == system}
        best = choose_temperature(dev_acc)
        chosen = next(out_dir / model / "model.pt" for model, run in runs.items() if run == (system, best))
        if ranks.is_main:
            with atomic_write(out_dir / system / "model.pt", "wb") as f:
                f.write(chosen.read_bytes())
        systems[system] = {"teacher": teacher, "temperature": best,
                           "dev_by_temperature": {f"{t:g}": acc for t, acc in dev_acc.items()},
                           **accuracies(load_model(chosen, device), small)}
    summary = {
        "fraction_percent": round(100 * scfg.fraction, 3), "seed": scfg.seed, "num_utts": len(subset_ids),
        "num_frames": small.num_frames, "teacher": scfg.teacher, "temperatures": list(map(float, scfg.temperatures)),
        "temperature": systems["small_soft"]["temperature"], "hard_weight": scfg.hard_weight, "top_k": scfg.top_k,
        "epochs": scfg.epochs, "hard_early_stopping": scfg.hard_early_stopping,
        "soft_early_stopping": scfg.soft_early_stopping, "systems": systems,
    }
    if ranks.is_main:
        write_text_atomic(out_dir / "small_data.json", json.dumps(summary, indent=2) + "\n")
    return summary
