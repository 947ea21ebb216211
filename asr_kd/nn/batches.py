"""How an epoch's training batches are made: shuffled frames, context windows, targets, for every member and rank.

The frames of an epoch pass through one or more *buffers*, each a set of whole utterances held in memory with its
windows ready to gather (:class:`Buffer`). Every member draws a permutation of each buffer's frames from its own
generator, seeded by (seed, epoch) alone, and the epoch is those permutations one after another, cut into batches
of ``batch_size`` frames (a batch may straddle two buffers, so every epoch has ``ceil(N / batch_size)`` steps
whatever the buffers are). A split held in memory is one buffer: the permutation is then ``randperm(N)`` of the
member's generator, exactly the order the loop has always drawn. Under DDP every rank draws the same permutations
and takes a contiguous ``1/world`` share of each global batch.

Windows are gathered from a padded copy of the buffer's frames (:class:`features.context.PaddedWindows`) in the
dtype the first layer computes in: bf16 under autocast, where the copy to bf16 that autocast would make of every
batch is then already done (bitwise the same input), and half the bytes are moved.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from asr_kd.nn.device import DistContext, uses_bf16
from asr_kd.nn.frames import FrameSet
from features.context import PaddedWindows


ONE_BUFFER = {"buffers": "one"}
"""The batch order of a split held in memory, or streamed in one buffer: a permutation of all its frames."""


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the batch order of one member in one epoch: depends on nothing else, which makes resume exact."""
    return (seed * 1_000_003 + epoch) % (2**63)


def window_dtype(device: torch.device, bf16: bool) -> torch.dtype:
    """The dtype a training step's first layer computes in: bf16 under autocast (:func:`uses_bf16`), else float32."""
    return torch.bfloat16 if uses_bf16(device, bf16) else torch.float32


@dataclass
class Buffer:
    """Frames held in memory for training: windows, targets, and (streamed) their global frame indices.

    ``index`` maps a buffer row to its frame of the whole split (None: the buffer is the whole split, in order);
    ``columns`` are per-frame side data (stored soft targets) in buffer row order.
    """

    windows: PaddedWindows
    targets: torch.Tensor
    index: torch.Tensor | None = None
    columns: dict[str, torch.Tensor] = field(default_factory=dict)
    on_release: Callable[[], None] | None = None

    def release(self) -> None:
        """Training is done with this buffer: a streamed one frees its memory now (whoever still refers to the
        object) and lets the reader make the next; a buffer in memory for good stays as it is."""
        if self.on_release is None:
            return
        self.windows = self.targets = self.index = None  # type: ignore[assignment]
        self.columns = {}
        self.on_release()

    @property
    def num_frames(self) -> int:
        return int(self.targets.shape[0])

    @property
    def device(self) -> torch.device:
        return self.targets.device

    def global_index(self, local: torch.Tensor) -> torch.Tensor:
        return local if self.index is None else self.index[local]


@dataclass
class Step:
    """This rank's share of one global batch for every member M: what a training step computes on."""

    x: torch.Tensor  # [M, b, D] windows on the training device, in the training dtype
    y: torch.Tensor  # [M, b] targets on the training device
    idx: torch.Tensor  # [M, b] global frame indices (on the buffer's device)
    columns: dict[str, torch.Tensor]  # [M, b, ...] rows of the per-frame columns, on the training device
    global_b: int  # frames of the global batch (all ranks together)


@dataclass(frozen=True)
class FrameBatch:
    """One member's batch as a loss sees it (:data:`asr_kd.nn.train.LossFn`)."""

    idx: torch.Tensor  # [b] global frame indices into the training frames
    targets: torch.Tensor  # [b] hard targets, on the training device
    columns: dict[str, torch.Tensor]  # the batch's rows of the training frames' columns, on the training device
    windows: torch.Tensor | None = None  # [b, D] the windows the model trained on (augmented where the loop augments)


def _share(length: int, world: int, rank: int) -> tuple[int, int]:
    """[lo, hi) of rank ``rank`` in ``tensor_split(world)`` of ``length`` items."""
    q, r = divmod(length, world)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def _gather(buffer: Buffer, local: torch.Tensor, device: torch.device) -> tuple:
    """(windows [M, b, D], targets [M, b], global idx [M, b], columns) of buffer rows ``local`` [M, b]."""
    M, b = local.shape
    x = buffer.windows(local.reshape(-1)).to(device, non_blocking=True).view(M, b, -1)
    y = buffer.targets[local].to(device, non_blocking=True)
    cols = {name: col[local.to(col.device)].to(device, non_blocking=True) for name, col in buffer.columns.items()}
    return x, y, buffer.global_index(local), cols


class _Segment:
    """Consecutive frames of a global batch from one buffer: its rows there ([M, k]), or, once the buffer has been
    released, the data gathered from them."""

    def __init__(self, buffer: Buffer, rows: torch.Tensor) -> None:
        self.buffer: Buffer | None = buffer
        self.rows = rows
        self.gathered: tuple | None = None

    @property
    def length(self) -> int:
        return int(self.rows.shape[1])

    def gather_now(self, device: torch.device) -> None:
        """Gather every row before the buffer goes (the head of a batch that straddles into the next buffer)."""
        assert self.buffer is not None
        self.gathered, self.buffer = _gather(self.buffer, self.rows, device), None

    def take(self, a: int, z: int, device: torch.device) -> tuple:
        if self.buffer is not None:
            return _gather(self.buffer, self.rows[:, a:z], device)
        x, y, idx, cols = self.gathered
        return x[:, a:z], y[:, a:z], idx[:, a:z], {name: c[:, a:z] for name, c in cols.items()}


def epoch_steps(buffers: Iterable[Buffer], generators: Sequence[torch.Generator], batch_size: int,
                device: torch.device, dist_ctx: DistContext = DistContext()) -> Iterator[Step]:
    """The steps of one epoch over ``buffers`` (in order), each member's frames permuted by its own generator.

    A buffer's permutations are drawn when training reaches it, so the order depends only on the generators'
    seeds and the buffers' sizes. The last batch of a buffer is completed from the next one (its frames from the
    first buffer gathered before that buffer is released, so that two buffers at most are alive); the last batch
    of the epoch may be short.
    """
    pending: list[_Segment] = []  # the next global batch so far
    queued = 0
    for buffer in buffers:
        perms = torch.stack([torch.randperm(buffer.num_frames, generator=g, device=buffer.device)
                             for g in generators])
        pos = 0
        while pos < buffer.num_frames:
            take = min(batch_size - queued, buffer.num_frames - pos)
            pending.append(_Segment(buffer, perms[:, pos:pos + take]))
            pos += take
            queued += take
            if queued == batch_size:
                yield _step(pending, queued, device, dist_ctx)
                pending, queued = [], 0
        del perms
        if buffer.on_release is not None:
            for segment in pending:
                if segment.buffer is buffer:
                    segment.gather_now(device)
            buffer.release()
    if queued:
        yield _step(pending, queued, device, dist_ctx)


def _step(pending: list[_Segment], global_b: int, device: torch.device, dist_ctx: DistContext) -> Step:
    if len(pending) == 1 and pending[0].buffer is not None:  # the usual case: the rank's share a slice of a buffer
        segment = pending[0]
        rows = segment.rows.tensor_split(dist_ctx.world, dim=1)[dist_ctx.rank]
        x, y, idx, cols = _gather(segment.buffer, rows, device)
        return Step(x, y, idx, cols, global_b)
    lo, hi = _share(global_b, dist_ctx.world, dist_ctx.rank)
    parts, start = [], 0
    for segment in pending:
        a, z = max(lo, start), min(hi, start + segment.length)
        if a < z:
            parts.append(segment.take(a - start, z - start, device))
        start += segment.length
    if not parts:  # a rank with no share of a tiny last batch still takes part in the step
        parts.append(pending[0].take(0, 0, device))
    if len(parts) == 1:
        return Step(*parts[0], global_b)
    x, y, idx, cols = zip(*parts)
    columns = {name: torch.cat([c[name] for c in cols], dim=1) for name in cols[0]}
    return Step(torch.cat(x, 1), torch.cat(y, 1), torch.cat([i.to(device) for i in idx], 1), columns, global_b)


class MemoryBatches:
    """A training set held in memory as one buffer: the epoch order of the in-memory loop.

    The padded windows are built once, in the training dtype, on the set's device; with ``columns`` (e.g. stored
    soft targets, [N, ...] in frame order, on any device) every step carries the batch's rows of each.

    ``epoch_frames`` (fewer than the set's frames) makes an epoch that many frames instead of one pass: the passes
    run on, each shuffled by (seed, pass), and epoch e takes frames ``[(e-1) F, e F)`` of them. A transfer set
    several times the training set's size is then checked on dev, and scheduled, as often per frame seen as the
    training set alone, and the order still depends only on (seed, epoch).
    """

    def __init__(self, frame_set: FrameSet, dtype: torch.dtype, columns: dict[str, torch.Tensor] | None = None,
                 epoch_frames: int | None = None) -> None:
        self.frame_set = frame_set
        windows = PaddedWindows.build(frame_set.feats, frame_set.utt_lengths, frame_set.left, frame_set.right,
                                      dtype=dtype)
        self.buffer = Buffer(windows, frame_set.targets, None, dict(columns or {}))
        self.passes = epoch_frames is None or epoch_frames >= frame_set.num_frames
        self.epoch_frames = frame_set.num_frames if self.passes else int(epoch_frames)

    @property
    def num_frames(self) -> int:
        return self.frame_set.num_frames

    @property
    def order(self) -> dict:
        """What the batch order depends on besides seeds and epochs: one buffer of the whole split (and the epoch's
        frames, when an epoch is not one pass)."""
        return ONE_BUFFER if self.passes else {**ONE_BUFFER, "epoch_frames": self.epoch_frames}

    def epoch(self, seeds: Sequence[int], epoch: int, batch_size: int, device: torch.device,
              dist_ctx: DistContext = DistContext()) -> Iterator[Step]:
        dev = self.frame_set.device
        if self.passes:
            gens = [torch.Generator(device=dev).manual_seed(epoch_seed(s, epoch)) for s in seeds]
            return epoch_steps([self.buffer], gens, batch_size, device, dist_ctx)
        n, start, stop = self.num_frames, (epoch - 1) * self.epoch_frames, epoch * self.epoch_frames
        rows = []
        for p in range(start // n, (stop - 1) // n + 1):  # the passes this epoch's frames lie in
            perms = torch.stack([torch.randperm(n, generator=torch.Generator(device=dev).manual_seed(
                epoch_seed(s, p + 1)), device=dev) for s in seeds])
            rows.append(perms[:, max(start - p * n, 0):min(stop - p * n, n)])
        return ordered_steps(self.buffer, torch.cat(rows, 1), batch_size, device, dist_ctx)


def ordered_steps(buffer: Buffer, rows: torch.Tensor, batch_size: int, device: torch.device,
                  dist_ctx: DistContext = DistContext()) -> Iterator[Step]:
    """The steps over ``buffer``'s rows in the order ``rows`` [M, n] gives each member (the last may be short)."""
    for pos in range(0, rows.shape[1], batch_size):
        part = rows[:, pos:pos + batch_size]
        yield _step([_Segment(buffer, part)], part.shape[1], device, dist_ctx)
