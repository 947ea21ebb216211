"""Soft targets: a teacher's tempered posteriors, kept sparse (top-k per frame) and stored once.

Why stored and sparse: running a 10-model teacher inside every student step costs several times the student's own
step (``python -m asr_kd.bench distill`` measures it), while its posteriors at a given temperature never change.
Computing them once and keeping the k most probable classes per frame makes distillation run at baseline speed;
with 14k classes a dense fp32 row is 56 KB per frame, the top-20 (int16 index + fp16 probability) 80 B, plus 2 B
for ``mass_kept``.

The top-k probabilities are renormalized to sum to one (so the soft cross-entropy is a proper cross-entropy);
``mass_kept`` records how much of the teacher's mass the k classes held before that, which tells whether k is
large enough at a given temperature (higher T spreads mass over more classes).

On disk a :class:`SoftTargets` is a directory of ``.npy`` files (memory-mappable, so a training run touches only
the frames it reads) plus ``meta.json``; Kaldi interop goes through a ``Posterior`` archive. The three arrays are the
per-frame *columns* a student's training frames carry (:meth:`SoftTargets.columns`), so each batch brings its rows
with it: looked up in memory for a set in memory, read beside the frames from the same ``.npy`` files for a streamed
one (:func:`compute_soft_targets_to` writes them frame range by frame range for a split that does not fit).
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from asr_kd.distillation.ensemble import COMBINES, combine_log_probs, iter_member_logits
from asr_kd.nn.frames import Frames
from asr_kd.nn.stream import NpyColumn
from asr_kd.nn.model import DNN, StackedDNN
from features.atomic import atomic_dir
from features.errors import InputError
from features.kaldi_io import read_post_ark, write_post_ark

logger = logging.getLogger(__name__)

_FORMAT = "asr-kd-soft-targets/1"
COLUMNS = ("indices", "probs", "mass_kept")
"""The arrays of soft targets, as ``.npy`` files on disk and as columns of a student's training frames."""


@dataclass
class SoftTargetConfig:
    """How to turn a teacher into stored soft targets.

    ``top_k=None`` (or any k >= the number of classes) keeps every class: the dense reference the sparse
    storage is measured against.
    """

    temperature: float = 2.0
    top_k: int | None = 20
    combine: str = "arith"
    batch_size: int = 4096

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")


def index_dtype(num_classes: int) -> torch.dtype:
    """Smallest integer dtype that holds class ids ``0..num_classes-1`` and every torch backend can index with."""
    if num_classes <= 1 << 15:
        return torch.int16
    if num_classes <= 1 << 16:
        return torch.uint16
    return torch.int32


@dataclass
class SoftTargets:
    """Top-k teacher posteriors per frame, frame order = the frames they were computed on.

    indices: [N, k] class ids (int16/uint16/int32, see :func:`index_dtype`).
    probs: [N, k] float16, renormalized so each row sums to 1, sorted by decreasing probability.
    mass_kept: [N] float16, the teacher probability the k classes held before renormalizing.
    """

    indices: torch.Tensor
    probs: torch.Tensor
    mass_kept: torch.Tensor
    temperature: float
    num_classes: int
    teacher: str = ""

    def __post_init__(self) -> None:
        n = self.indices.shape[0]
        if self.indices.dim() != 2 or self.probs.shape != self.indices.shape or self.mass_kept.shape != (n,):
            raise ValueError(
                f"inconsistent soft-target shapes: indices {tuple(self.indices.shape)}, "
                f"probs {tuple(self.probs.shape)}, mass_kept {tuple(self.mass_kept.shape)}"
            )

    @property
    def num_frames(self) -> int:
        return self.indices.shape[0]

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    @property
    def bytes_per_frame(self) -> float:
        """Storage per frame: k indices + k fp16 probabilities + the fp16 mass_kept."""
        return float(self.k * (self.indices.element_size() + self.probs.element_size()) + self.mass_kept.element_size())

    def to(self, device: torch.device | str) -> SoftTargets:
        """A copy on ``device`` (e.g. the GPU, where gathering a batch is free next to the student's step)."""
        return SoftTargets(
            self.indices.to(device), self.probs.to(device), self.mass_kept.to(device),
            self.temperature, self.num_classes, self.teacher,
        )

    def batch(self, idx: torch.Tensor, device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(int64 indices [B, k], float32 probs [B, k], float32 mass_kept [B]) of frames ``idx`` on ``device``."""
        idx = idx.to(self.indices.device)
        out = (self.indices[idx].long(), self.probs[idx].float(), self.mass_kept[idx].float())
        if device is not None:
            out = tuple(t.to(device, non_blocking=True) for t in out)
        return out

    def take(self, rows: torch.Tensor) -> SoftTargets:
        """The soft targets of frames ``rows`` (a subset of the frames they were computed on, in that order)."""
        return SoftTargets(self.indices[rows], self.probs[rows], self.mass_kept[rows], self.temperature,
                           self.num_classes, self.teacher)

    @classmethod
    def concat(cls, parts: Sequence[SoftTargets]) -> SoftTargets:
        """The targets of consecutive frame ranges joined in order (ranks that each computed a share)."""
        first = parts[0]
        if any((p.temperature, p.num_classes, p.k) != (first.temperature, first.num_classes, first.k) for p in parts):
            raise ValueError("soft-target parts differ in temperature, classes or k")
        return cls(torch.cat([p.indices for p in parts]), torch.cat([p.probs for p in parts]),
                   torch.cat([p.mass_kept for p in parts]), first.temperature, first.num_classes, first.teacher)

    def columns(self) -> dict[str, torch.Tensor]:
        """The arrays by :data:`COLUMNS` name: what a student's training frames carry (``with_columns``)."""
        return {"indices": self.indices, "probs": self.probs, "mass_kept": self.mass_kept}

    @staticmethod
    def column_files(path: Path) -> dict[str, Path]:
        """The ``.npy`` file of every column of the soft targets saved at ``path``."""
        return {name: Path(path) / f"{name}.npy" for name in COLUMNS}

    @staticmethod
    def read_meta(path: Path) -> dict:
        """``meta.json`` of soft targets saved at ``path`` (temperature, classes, frames, k, teacher, mass kept)."""
        meta_path = Path(path) / "meta.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError("no soft targets here (meta.json missing)", path) from None
        except json.JSONDecodeError as e:
            raise InputError(f"unreadable meta.json: {e.msg}", meta_path, e.lineno) from None
        if meta.get("format") != _FORMAT:
            raise InputError(f"unknown soft-target format {meta.get('format')!r}", meta_path)
        return meta

    def dense(self, idx: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
        """Dense float32 target rows [B, C] for frames ``idx`` (zeros outside the top-k)."""
        c = self.num_classes if num_classes is None else num_classes
        ind, prob, _ = self.batch(idx)
        out = torch.zeros(ind.shape[0], c, dtype=torch.float32, device=ind.device)
        return out.scatter_(1, ind, prob)

    def save(self, path: Path) -> None:
        """Write ``path/`` (indices.npy, probs.npy, mass_kept.npy, meta.json) atomically."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            np.save(tmp / "indices.npy", self.indices.cpu().numpy())
            np.save(tmp / "probs.npy", self.probs.cpu().numpy())
            np.save(tmp / "mass_kept.npy", self.mass_kept.cpu().numpy())
            _write_meta(tmp, self.temperature, self.num_classes, self.num_frames, self.k, self.teacher,
                        self.bytes_per_frame, float(self.mass_kept.float().mean()) if self.num_frames else 1.0)

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu", mmap: bool = True) -> SoftTargets:
        """Read a directory written by :meth:`save`.

        With ``mmap`` (and a CPU device) the arrays stay memory-mapped copy-on-write: opening 700M frames of
        targets costs nothing until a batch reads its rows.
        """
        path = Path(path)
        meta_path = path / "meta.json"
        meta = cls.read_meta(path)
        mode = "c" if mmap else None
        arrays = {}
        for name in ("indices", "probs", "mass_kept"):
            f = path / f"{name}.npy"
            try:
                arrays[name] = np.load(f, mmap_mode=mode)
            except (FileNotFoundError, ValueError) as e:
                raise InputError(f"cannot read soft-target array: {e}", f) from None
        soft = cls(*(torch.from_numpy(arrays[name]) for name in ("indices", "probs", "mass_kept")),
                   float(meta["temperature"]), int(meta["num_classes"]), str(meta.get("teacher", "")))
        if soft.num_frames != meta["num_frames"] or soft.k != meta["k"]:
            raise InputError(f"arrays ({soft.num_frames} x {soft.k}) disagree with meta.json", meta_path)
        return soft if torch.device(device).type == "cpu" else soft.to(device)

    def write_kaldi_posteriors(self, ark: Path, utt_ids: Sequence[str], utt_lengths: Sequence[int]) -> None:
        """Write a Kaldi ``Posterior`` archive, one entry per utterance (frames in FrameSet order).

        The values written are the teacher's own top-k probabilities (renormalized prob x mass_kept), so a
        Kaldi tool sees true posteriors and :meth:`read_kaldi_posteriors` recovers both probs and mass_kept.
        """
        lengths = [int(n) for n in utt_lengths]
        if len(utt_ids) != len(lengths) or sum(lengths) != self.num_frames:
            raise ValueError(
                f"{len(utt_ids)} utterances totalling {sum(lengths)} frames do not match {self.num_frames} frames"
            )
        ind = self.indices.cpu().to(torch.int32).numpy()
        val = (self.probs.cpu().float() * self.mass_kept.cpu().float()[:, None]).numpy()
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
        write_post_ark(((u, (ind[s:s + n], val[s:s + n])) for u, s, n in zip(utt_ids, starts, lengths)), Path(ark))

    @classmethod
    def read_kaldi_posteriors(
        cls, ark: Path, utt_ids: Sequence[str], num_classes: int, temperature: float, teacher: str = ""
    ) -> SoftTargets:
        """Read a Kaldi ``Posterior`` archive into SoftTargets with frames in ``utt_ids`` order.

        Frames with fewer entries than the widest frame are padded with probability 0 (class 0), which leaves
        the cross-entropy unchanged. mass_kept is the sum of a frame's values (the archive holds raw posteriors).
        """
        ark = Path(ark)
        if not ark.exists():
            raise InputError("posterior archive not found", ark)
        posts = dict(read_post_ark(ark))
        missing = [u for u in utt_ids if u not in posts]
        if missing:
            raise InputError(f"{len(missing)} utterances missing from the archive, e.g. {missing[0]}", ark)
        frames = [frame for u in utt_ids for frame in posts[u]]
        k = max((len(f) for f in frames), default=0)
        ind = np.zeros((len(frames), k), dtype=np.int64)
        val = np.zeros((len(frames), k), dtype=np.float32)
        for t, frame in enumerate(frames):
            if frame:
                i, v = zip(*frame)
                ind[t, :len(i)], val[t, :len(v)] = i, v
        if ind.size and (ind.min() < 0 or ind.max() >= num_classes):
            raise InputError(f"class ids outside [0, {num_classes})", ark)
        if (val < 0).any():
            raise InputError("negative posterior values", ark)
        mass = val.sum(axis=1)
        probs = val / np.maximum(mass, np.finfo(np.float32).tiny)[:, None]
        order = np.argsort(-probs, axis=1, kind="stable")
        ind, probs = np.take_along_axis(ind, order, 1), np.take_along_axis(probs, order, 1)
        return cls(torch.from_numpy(ind).to(index_dtype(num_classes)), torch.from_numpy(probs).half(),
                   torch.from_numpy(mass).half(), float(temperature), int(num_classes), teacher)


def soft_rows(columns: dict[str, torch.Tensor], device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int64 indices [B, k], float32 probs [B, k], float32 mass_kept [B]) from a batch's soft-target columns."""
    out = (columns["indices"].long(), columns["probs"].float(), columns["mass_kept"].float())
    if device is not None:
        out = tuple(t.to(device, non_blocking=True) for t in out)
    return out


def mean_mass_kept(soft: SoftTargets | Path) -> float:
    """The teacher probability the stored k classes held, averaged over the frames (in memory or as saved)."""
    if isinstance(soft, SoftTargets):
        return float(soft.mass_kept.float().mean())
    return float(SoftTargets.read_meta(soft)["mean_mass_kept"])


def top_k_targets(log_probs: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices [B, k] int64, renormalized probs [B, k] float32, mass_kept [B]) of a batch of log-posteriors."""
    c = log_probs.shape[-1]
    k = c if k is None or k >= c else k
    if k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {k}")
    top_lp, top_i = torch.topk(log_probs, k, dim=-1)
    p = top_lp.exp()
    mass = p.sum(dim=-1)
    return top_i, p / mass[:, None], mass


@torch.no_grad()
def teacher_log_probs(teacher: StackedDNN, windows: torch.Tensor, temperature: float, combine: str) -> torch.Tensor:
    """Log ensemble posterior at temperature T [B, C] of input windows [B, D]; the members stacked in one module.

    Softmax in float32: at high T the soft targets live in small logit differences that bf16 rounds away.
    """
    logits = teacher(windows.expand(teacher.num_members, *windows.shape)).float()
    return combine_log_probs(torch.log_softmax(logits / temperature, dim=-1), combine)


@torch.no_grad()
def compute_soft_targets(teacher_models: Sequence[DNN], frame_set: Frames, cfg: SoftTargetConfig) -> SoftTargets:
    """Run the teacher (one model or an ensemble) over every frame of ``frame_set`` and keep its top-k.

    Members' softmax(z/T) are averaged (``cfg.combine``: arith, or the normalized geometric mean), then the k most
    probable classes are kept and renormalized. Frame order is the set's, so frame i of the targets goes with
    frame i of the set. Only one batch of [M, B, C] posteriors exists at a time.
    """
    return compute_soft_targets_at(teacher_models, frame_set, cfg, [cfg.temperature])[float(cfg.temperature)]


@torch.no_grad()
def compute_soft_targets_at(teacher_models: Sequence[DNN], frame_set: Frames, cfg: SoftTargetConfig,
                            temperatures: Sequence[float]) -> dict[float, SoftTargets]:
    """:func:`compute_soft_targets` at several temperatures (``cfg.temperature`` ignored) from ONE teacher pass:
    the members' logits do not depend on T, so a temperature sweep costs one forward pass, not one per T."""
    if not teacher_models:
        raise ValueError("need at least one teacher model")
    num_classes = teacher_models[0].num_classes
    n = frame_set.num_frames
    if n == 0:
        raise ValueError("empty frame set")
    k = num_classes if cfg.top_k is None else min(cfg.top_k, num_classes)
    # Filled in place: concatenating per-batch pieces would briefly need twice the final size (57 GB for
    # 700M frames at k=20).
    out = {float(t): SoftTargets(torch.empty(n, k, dtype=index_dtype(num_classes)),
                                 torch.empty(n, k, dtype=torch.float16), torch.empty(n, dtype=torch.float16),
                                 float(t), int(num_classes), teacher=describe_teacher(len(teacher_models), cfg.combine))
           for t in temperatures}
    batches = iter_member_logits(teacher_models, frame_set, cfg.batch_size)
    desc = f"soft targets T={','.join(f'{t:g}' for t in out)}"
    for start, logits in tqdm(batches, total=-(-n // cfg.batch_size), desc=desc, unit="batch", leave=False,
                              disable=n <= cfg.batch_size):
        for t, soft in out.items():
            ind, p, mass = top_k_targets(combine_log_probs(torch.log_softmax(logits / t, dim=-1), cfg.combine), k)
            end = start + ind.shape[0]
            soft.indices[start:end] = ind.to(soft.indices.dtype).cpu()
            soft.probs[start:end] = p.half().cpu()
            soft.mass_kept[start:end] = mass.half().cpu()
    for soft in out.values():
        logger.info("soft targets: %d frames, T=%g, k=%d, mean mass kept %.4f, %.0f B/frame", soft.num_frames,
                    soft.temperature, soft.k, float(soft.mass_kept.float().mean()), soft.bytes_per_frame)
    return out


class _NpyWriter:
    """A ``.npy`` file of a known shape written row block by row block (nothing held but the block at hand)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype, self.rows = path, shape, np.dtype(dtype), 0
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close())
        np.lib.format.write_array_header_1_0(self.file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                         "fortran_order": False, "shape": shape})

    def write(self, rows: np.ndarray) -> None:
        if rows.dtype != self.dtype or rows.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path}: rows {rows.dtype} {rows.shape} do not fit {self.dtype} {self.shape}")
        self.file.write(np.ascontiguousarray(rows).tobytes())
        self.rows += rows.shape[0]

    def close(self) -> None:
        self.file.close()
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path}: {self.rows} rows written, {self.shape[0]} declared")


def _write_meta(path: Path, temperature: float, num_classes: int, num_frames: int, k: int, teacher: str,
                bytes_per_frame: float, mean_mass: float) -> None:
    meta = {"format": _FORMAT, "temperature": temperature, "num_classes": num_classes, "num_frames": num_frames,
            "k": k, "teacher": teacher, "bytes_per_frame": bytes_per_frame, "mean_mass_kept": mean_mass}
    (path / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


@torch.no_grad()
def compute_soft_targets_to(teacher_models: Sequence[DNN], frames: Frames, cfg: SoftTargetConfig,
                            out_dirs: Mapping[float, Path]) -> dict[float, dict]:
    """:func:`compute_soft_targets_at` written straight to disk, one directory per temperature (the keys of
    ``out_dirs``), batch by batch: for a training set that is streamed, whose targets would not fit in memory either.
    Each directory is what :meth:`SoftTargets.save` writes; returns each one's ``meta.json``."""
    if not teacher_models:
        raise ValueError("need at least one teacher model")
    num_classes = teacher_models[0].num_classes
    n = frames.num_frames
    if n == 0:
        raise ValueError("empty frame set")
    k = num_classes if cfg.top_k is None else min(cfg.top_k, num_classes)
    ind_dtype = index_dtype(num_classes)
    teacher = describe_teacher(len(teacher_models), cfg.combine)
    mass_sum = dict.fromkeys(out_dirs, 0.0)
    with contextlib.ExitStack() as stack:
        tmp = {float(t): stack.enter_context(atomic_dir(p)) for t, p in out_dirs.items()}
        writers = {t: {"indices": _NpyWriter(d / "indices.npy", (n, k), _numpy_dtype(ind_dtype)),
                       "probs": _NpyWriter(d / "probs.npy", (n, k), np.dtype(np.float16)),
                       "mass_kept": _NpyWriter(d / "mass_kept.npy", (n,), np.dtype(np.float16))}
                   for t, d in tmp.items()}
        for _, logits in iter_member_logits(teacher_models, frames, cfg.batch_size):
            for t, w in writers.items():
                ind, p, mass = top_k_targets(combine_log_probs(torch.log_softmax(logits / t, dim=-1), cfg.combine),
                                             k)
                w["indices"].write(ind.to(ind_dtype).cpu().numpy())
                w["probs"].write(p.half().cpu().numpy())
                mass = mass.half().cpu()
                w["mass_kept"].write(mass.numpy())
                mass_sum[t] += float(mass.double().sum())
        metas = {}
        for t, w in writers.items():
            for writer in w.values():
                writer.close()
            bytes_per_frame = float(k * (torch.empty(0, dtype=ind_dtype).element_size() + 2) + 2)
            _write_meta(tmp[t], t, int(num_classes), n, k, teacher, bytes_per_frame, mass_sum[t] / n)
            metas[t] = json.loads((tmp[t] / "meta.json").read_text(encoding="utf-8"))
            logger.info("soft targets: %d frames, T=%g, k=%d, mean mass kept %.4f, %.0f B/frame -> %s", n, t, k,
                        metas[t]["mean_mass_kept"], bytes_per_frame, out_dirs[t])
    return metas


def concat_saved(parts: Sequence[Path], out: Path, chunk_rows: int = 1 << 20) -> dict:
    """Join soft targets saved by consecutive frame ranges (torchrun ranks' shares) into ``out`` on disk, a chunk of
    rows at a time; returns the joined ``meta.json``."""
    metas = [SoftTargets.read_meta(p) for p in parts]
    first = metas[0]
    if any((m["temperature"], m["num_classes"], m["k"]) != (first["temperature"], first["num_classes"], first["k"])
           for m in metas):
        raise ValueError("soft-target parts differ in temperature, classes or k")
    n = sum(m["num_frames"] for m in metas)
    with atomic_dir(out) as tmp:
        for name in COLUMNS:
            sources = [NpyColumn(SoftTargets.column_files(p)[name]) for p in parts]
            writer = _NpyWriter(tmp / f"{name}.npy", (n, *sources[0].shape[1:]), sources[0].dtype)
            for col in sources:
                for start in range(0, col.num_rows, chunk_rows):
                    writer.write(col.read(start, min(col.num_rows, start + chunk_rows)))
            writer.close()
        mass = sum(m["mean_mass_kept"] * m["num_frames"] for m in metas) / n
        _write_meta(tmp, first["temperature"], first["num_classes"], n, first["k"], first["teacher"],
                    first["bytes_per_frame"], mass)
        return json.loads((tmp / "meta.json").read_text(encoding="utf-8"))


def describe_teacher(num_members: int, combine: str) -> str:
    """What the soft targets came from, for meta.json and the report."""
    return f"{num_members}-model {combine} ensemble" if num_members > 1 else "single model"
