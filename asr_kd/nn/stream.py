"""Frames streamed from a :mod:`frame archive <asr_kd.nn.archive>`: training, evaluation and soft targets of a split
larger than memory, in memory set by a configured buffer and never by the corpus.

Training shuffles the way Kaldi's egs and lhotse's samplers do, at two levels:

* The archive is cut into *blocks* of whole utterances (about ``block_frames`` each, never across a shard). Each
  epoch draws a permutation of the blocks from a generator seeded by the epoch alone and packs them, in that order,
  into *buffers* of at most ``buffer_frames`` frames; a buffer's blocks are read in archive order (sequential reads)
  into memory, where their windows are ready to gather (:class:`asr_kd.nn.batches.Buffer`).
* Within a buffer every member permutes the frames with its own generator, seeded by (seed, epoch)
  (:func:`asr_kd.nn.batches.epoch_steps`), so a batch is a random draw from blocks of all over the corpus.

The order therefore depends only on (seed, epoch) and the data settings, which keeps resume exact. Members trained
stacked share the buffers (one read serves them all: M separate orders would take M times the memory and reads)
and each draws its own order inside them; since the block order does not depend on a member's seed, a stacked member
still follows its sequential twin. DDP ranks read the same buffers and each takes its share of every global batch.
A split that fits in one buffer is one buffer holding every block in archive order, permuted by ``randperm(N)`` of
the member's generator: the in-memory order, so streaming it trains bitwise like holding it in memory.

A background thread reads the next buffer while the current one trains (two buffers are alive at most; the one
trained on is dropped before a third is read). On a GPU the buffers live on the device, copied from pinned memory
without the host waiting, so a step gathers on the device. Evaluation, soft targets and predictions go through the
archive in order, a shard at a time, read one ahead the same way.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import queue
import resource
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np
import torch

from asr_kd.nn.archive import FrameArchive, Shard
from asr_kd.nn.batches import ONE_BUFFER, Buffer, MemoryBatches, Step, epoch_seed, epoch_steps
from asr_kd.nn.device import DistContext
from asr_kd.nn.frames import FrameSet
from features.context import PaddedWindows, padded_rows
from features.errors import InputError

logger = logging.getLogger(__name__)

T = TypeVar("T")

GB = 1e9
_BLOCK_ORDER_SEED = 0x5EED_B10C
"""Salt of the block order's generator, so that it never shares a seed with a member's frame order."""


@dataclass
class DataConfig:
    """Where the DNN stages keep a split's frames: in memory, or streamed from a frame archive on disk.

    ``stream``: true streams every split, false holds every split in memory, null (default) streams a split that
    does not fit in one buffer. A split that fits streams into one buffer in the in-memory order, so the choice never
    changes a result there. ``buffer_frames`` sets the shuffle buffer (and with it the memory streaming takes: two
    buffers are alive while the next one is read); ``block_frames`` the unit a buffer is drawn in; ``shard_frames``
    the archive's shards. The three are part of what a streamed result is a function of, as a batch size is.
    ``memory_gb`` is what the frames may take in memory (null: the memory free when a stage starts, within this
    process's address-space limit); a split in memory or a pair of buffers that would take more is refused before any
    work, with the numbers.
    """

    stream: bool | None = None
    buffer_frames: int = 40_000_000
    block_frames: int = 20_000
    shard_frames: int = 1_000_000
    memory_gb: float | None = None

    def __post_init__(self) -> None:
        if min(self.buffer_frames, self.block_frames, self.shard_frames) < 1:
            raise ValueError("buffer_frames, block_frames and shard_frames must be positive")
        if self.block_frames > self.buffer_frames:
            raise ValueError(f"block_frames ({self.block_frames}) must not exceed buffer_frames "
                             f"({self.buffer_frames}): a buffer holds whole blocks")
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise ValueError(f"memory_gb must be positive or null, got {self.memory_gb}")


# ------------------------------------------------------------------------------------------------------ memory
def memory_allowed(cfg: DataConfig) -> tuple[int, str]:
    """Bytes the frames may take and where that number comes from: ``memory_gb``, or what this process can still
    get (the system's available memory, and what is left of its address-space limit when one is set)."""
    if cfg.memory_gb is not None:
        return int(cfg.memory_gb * GB), f"data.memory_gb={cfg.memory_gb:g}"
    available, source = _meminfo_available(), "available memory"
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit != resource.RLIM_INFINITY:
        left = limit - vm_size()
        if left < available:
            available, source = left, "address-space limit (RLIMIT_AS) less this process's size"
    return max(0, available), source


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def vm_size() -> int:
    """This process's address space (VmSize), what RLIMIT_AS limits."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def size_text(num_bytes: float) -> str:
    """``3.2 GB``, ``41.5 MB``, ``12 kB``: a memory size in the unit that shows it."""
    for unit, scale in (("GB", GB), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.3g} {unit}"
    return f"{int(num_bytes)} B"


def check_memory(cfg: DataConfig, need: int, what: str, fix: Callable[[int], str]) -> None:
    """Refuse (InputError: one line, exit status 2) when ``need`` bytes exceed what the frames may take; ``fix``
    says, given the bytes allowed, what to change."""
    allowed, source = memory_allowed(cfg)
    if need > allowed:
        raise InputError(f"{what} needs {size_text(need)} but {source} allows {size_text(allowed)}: {fix(allowed)}")


def in_memory_bytes(num_frames: int, num_utts: int, feat_dim: int, left: int, right: int) -> int:
    """Memory of a split held in memory for training: float32 frames, window bounds and targets, and the padded
    training copy (float32, the larger case)."""
    padded = (num_frames + num_utts * (left + right)) * feat_dim * 4
    return num_frames * (feat_dim * 4 + 8 + 8) + padded + num_frames * 8


# ------------------------------------------------------------------------------------------------ .npy columns
class NpyColumn:
    """Rows of a C-order ``.npy`` file read by position (the stored soft targets, streamed beside the frames)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
                self.offset = f.tell()
        except FileNotFoundError:
            raise InputError("per-frame column missing", self.path) from None
        except ValueError as e:
            raise InputError(f"unreadable .npy header: {e}", self.path) from None
        if fortran:
            raise InputError("a per-frame column must be stored in C order", self.path)
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        size = self.path.stat().st_size
        if size < self.offset + self.shape[0] * self.row_bytes:
            raise InputError(f"{size} bytes, fewer than its header's {self.shape} {self.dtype} need", self.path)

    @property
    def num_rows(self) -> int:
        return self.shape[0]

    def torch_dtype(self) -> torch.dtype:
        return torch.from_numpy(np.empty(0, dtype=self.dtype)).dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` in one positional read."""
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        view = memoryview(out).cast("B")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            done = 0
            while done < len(view):
                n = os.preadv(fd, [view[done:]], self.offset + start * self.row_bytes + done)
                if n == 0:
                    raise InputError(f"ends before row {stop}", self.path)
                done += n
        finally:
            os.close(fd)
        return out


# ---------------------------------------------------------------------------------------------------- prefetch
class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class Prefetcher(Generic[T]):
    """Items made by ``loads`` in a background thread, in order, while the consumer works on the previous one.

    At most ``slots`` items exist at once: the producer waits for a free slot before it makes the next, and the
    consumer frees one with :meth:`release` when it has dropped an item. An error in a load is raised by ``next``.
    """

    def __init__(self, loads: Iterable[Callable[[], T]], slots: int = 2) -> None:
        self._slots = threading.Semaphore(slots)
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(iter(loads),), daemon=True)
        self._thread.start()

    def _produce(self, loads: Iterator[Callable[[], T]]) -> None:
        try:
            for load in loads:
                while not self._slots.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                self._queue.put(load())
        except BaseException as e:  # noqa: BLE001 (handed to the consumer, which raises it)
            self._queue.put(_Failed(e))
            return
        self._queue.put(_END)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        item = self._queue.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, _Failed):
            raise item.error
        return item

    def release(self) -> None:
        self._slots.release()

    def close(self) -> None:
        """Stop the producer (after an early exit of the consumer) and wait for it."""
        self._stop.set()
        self._slots.release()
        self._thread.join()


def _on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device``: through pinned memory without waiting for the copy, when that is a GPU. The
    reading thread queues its copies and kernels on the same stream as the steps, which keeps them in order (a step
    never reads a buffer before it is filled, a buffer's memory is never reused while a step still reads it) at the
    cost of a copy's few milliseconds per buffer in the stream."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


# --------------------------------------------------------------------------------------------------- the frames
@dataclass(frozen=True)
class Block:
    """Whole utterances ``[utt_start, utt_stop)`` of one shard: frames ``[start, stop)`` of the split."""

    shard: Shard
    utt_start: int
    utt_stop: int
    start: int
    stop: int

    @property
    def frames(self) -> int:
        return self.stop - self.start


@dataclass
class StreamedFrames:
    """A split (or a contiguous run of its utterances) read from a frame archive, with the model's context.

    Stands where a :class:`~asr_kd.nn.frames.FrameSet` stands: the trainer, evaluation and soft targets ask it for
    its frames in order (:meth:`chunks`: in-memory FrameSets of whole utterances, one shard at a time) or for a
    training epoch (:meth:`batches`). ``columns`` are per-frame ``.npy`` files (stored soft targets) read beside
    the frames. Chunks and buffers are made on ``device``.
    """

    archive: FrameArchive
    cfg: DataConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    left: int = 20
    right: int = 5
    utt_start: int = 0
    utt_stop: int | None = None
    columns: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.utt_stop = len(self.archive.utt_ids) if self.utt_stop is None else self.utt_stop
        self._first_frame = int(self.archive.utt_offsets[self.utt_start])
        self._columns = {name: NpyColumn(p) for name, p in self.columns.items()}
        for name, col in self._columns.items():
            if col.num_rows != self.archive.num_frames:
                raise ValueError(f"column {name} has {col.num_rows} rows, the archive {self.archive.num_frames} frames")

    # -------------------------------------------------------------------------------------------- like a FrameSet
    @property
    def num_frames(self) -> int:
        return int(self.archive.utt_offsets[self.utt_stop]) - self._first_frame

    @property
    def utt_ids(self) -> list[str]:
        return self.archive.utt_ids[self.utt_start:self.utt_stop]

    @property
    def utt_lengths(self) -> torch.Tensor:
        return torch.from_numpy(self.archive.utt_lengths[self.utt_start:self.utt_stop])

    @property
    def target_range(self) -> tuple[int, int]:
        return self.archive.target_range

    def to(self, device: str | torch.device) -> StreamedFrames:
        return dataclasses.replace(self, device=torch.device(device))

    def with_columns(self, columns: dict[str, Path]) -> StreamedFrames:
        """The same frames with per-frame ``.npy`` columns (``[N, ...]`` rows in frame order) read beside them."""
        return dataclasses.replace(self, columns=dict(columns))

    def utt_range(self, start: int, stop: int) -> StreamedFrames:
        """Utterances ``[start, stop)`` of these frames (a torchrun rank's share), still streamed."""
        return dataclasses.replace(self, utt_start=self.utt_start + start, utt_stop=self.utt_start + stop)

    def subset(self, utt_ids: Iterable[str]) -> FrameSet:
        """The frames of the given utterances, in the given order, in memory (the 3%-data experiment's subset);
        refused when they would not fit in one buffer."""
        wanted = list(utt_ids)
        position = {u: i for i, u in enumerate(self.archive.utt_ids[self.utt_start:self.utt_stop], self.utt_start)}
        missing = [u for u in wanted if u not in position]
        if missing:
            raise KeyError(f"{len(missing)} utterances not in this set, e.g. {missing[:3]}")
        rows = [position[u] for u in wanted]
        total = int(self.archive.utt_lengths[rows].sum()) if rows else 0
        if total > self.cfg.buffer_frames:
            raise InputError(f"a subset of {total} frames is held in memory, more than data.buffer_frames="
                             f"{self.cfg.buffer_frames}: raise data.buffer_frames or take a smaller subset")
        feats, targets = [], []
        for u in rows:
            start, stop = int(self.archive.utt_offsets[u]), int(self.archive.utt_offsets[u + 1])
            f, t = self.archive.read(self.archive.shard_of_utt(u), start, stop)
            feats.append(f)
            targets.append(t)
        x = torch.from_numpy(np.concatenate(feats)) if feats else torch.zeros(0, self.archive.feat_dim)
        y = torch.from_numpy(np.concatenate(targets).astype(np.int64)) if targets else torch.zeros(0, dtype=torch.int64)
        return FrameSet.from_tensors(x.to(self.device), y.to(self.device), wanted,
                                     self.archive.utt_lengths[rows].tolist(), left=self.left, right=self.right)

    # ------------------------------------------------------------------------------------------- frames in order
    def _shards(self, start: int, stop: int) -> list[tuple[Shard, int, int]]:
        """(shard, first utterance, stop utterance) of every shard with utterances in ``[start, stop)`` of these."""
        lo, hi = self.utt_start + start, self.utt_start + stop
        return [(s, max(lo, s.first_utt), min(hi, s.first_utt + s.num_utts)) for s in self.archive.shards
                if max(lo, s.first_utt) < min(hi, s.first_utt + s.num_utts)]

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, FrameSet]]:
        """(first frame, FrameSet) of the frames ``[start, stop)`` in order, a shard at a time, whole utterances:
        every chunk holds frames of ``[start, stop)`` and may hold frames of its utterances beyond it."""
        stop = self.num_frames if stop is None else stop
        offsets = self.archive.utt_offsets[self.utt_start:self.utt_stop + 1] - self._first_frame
        first_utt = int(np.searchsorted(offsets, start, side="right")) - 1
        stop_utt = int(np.searchsorted(offsets, stop, side="left"))
        if start >= stop:
            return
        parts = self._shards(first_utt, stop_utt)

        def load(shard: Shard, u0: int, u1: int) -> tuple[int, FrameSet]:
            a, b = int(self.archive.utt_offsets[u0]), int(self.archive.utt_offsets[u1])
            feats, targets = self.archive.read(shard, a, b)
            x = _on_device(torch.from_numpy(feats), self.device)
            y = _on_device(torch.from_numpy(targets).long(), self.device)
            return a - self._first_frame, FrameSet.from_tensors(
                x, y, self.archive.utt_ids[u0:u1], self.archive.utt_lengths[u0:u1].tolist(), self.left, self.right)

        prefetch = Prefetcher([lambda p=p: load(*p) for p in parts])
        try:
            for item in prefetch:
                yield item
                del item
                prefetch.release()
        finally:
            prefetch.close()

    def read_columns(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``[start, stop)`` of every column."""
        return {name: col.read(self._first_frame + start, self._first_frame + stop)
                for name, col in self._columns.items()}

    # ------------------------------------------------------------------------------------------- training epochs
    def blocks(self) -> list[Block]:
        """Whole utterances of one shard at a time, cut into runs of at least ``block_frames`` frames."""
        out = []
        lengths, offsets = self.archive.utt_lengths, self.archive.utt_offsets
        for shard, u0, u1 in self._shards(0, self.utt_stop - self.utt_start):
            start = u0
            count = 0
            for u in range(u0, u1):
                count += int(lengths[u])
                if count >= self.cfg.block_frames or u == u1 - 1:
                    out.append(Block(shard, start, u + 1, int(offsets[start]) - self._first_frame,
                                     int(offsets[u + 1]) - self._first_frame))
                    start, count = u + 1, 0
        return out

    def plan(self, epoch: int) -> list[list[Block]]:
        """The buffers of an epoch: its block permutation packed in order into runs of at most ``buffer_frames``
        frames, each buffer's blocks in archive order."""
        blocks = self.blocks()
        order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(
            epoch_seed(_BLOCK_ORDER_SEED, epoch))).tolist()
        buffers: list[list[Block]] = []
        current: list[Block] = []
        frames = 0
        for i in order:
            if current and frames + blocks[i].frames > self.cfg.buffer_frames:
                buffers.append(current)
                current, frames = [], 0
            current.append(blocks[i])
            frames += blocks[i].frames
        if current:
            buffers.append(current)
        return [sorted(b, key=lambda block: block.start) for b in buffers]

    @property
    def buffer_frames(self) -> int:
        """Frames in the largest buffer: ``data.buffer_frames``, or the whole split when it is smaller."""
        return min(self.cfg.buffer_frames, self.num_frames)

    def buffer_bytes(self, dtype: torch.dtype, members: int) -> int:
        """Memory of the largest buffer: padded frames in ``dtype``, row index, targets, global index, columns, and
        the members' permutations."""
        lengths = self.archive.utt_lengths[self.utt_start:self.utt_stop]
        pad = (self.left + self.right) * len(lengths) / max(1, int(lengths.sum()))
        per_frame = self.archive.feat_dim * torch.empty(0, dtype=dtype).element_size() * (1 + pad) + 8 * 3 + \
            sum(c.row_bytes for c in self._columns.values()) + 8 * members
        return int(self.buffer_frames * per_frame)

    def batches(self, dtype: torch.dtype, members: int) -> StreamBatches:
        """The training epochs of these frames, windows in ``dtype``; refused when two buffers would not fit."""
        need = 2 * self.buffer_bytes(dtype, members)
        per_frame = need / self.buffer_frames
        check_memory(self.cfg, need, f"streaming {self.num_frames} frames in buffers of up to {self.buffer_frames} "
                     f"frames (data.buffer_frames={self.cfg.buffer_frames}, two alive: one trained on, one being "
                     f"read, {per_frame / 2:.0f} B per frame)",
                     lambda allowed: f"lower data.buffer_frames to {int(allowed // per_frame)} or less")
        return StreamBatches(self, dtype)

    def load_buffer(self, blocks: Sequence[Block], dtype: torch.dtype) -> Buffer:
        """Read ``blocks`` (in order) into a :class:`Buffer` on this set's device: padded windows in ``dtype``,
        targets, global frame indices, and the columns' rows."""
        a, L, R = self.archive, self.left, self.right
        utts = [(b.utt_start, b.utt_stop) for b in blocks]
        num_frames = sum(b.frames for b in blocks)
        num_utts = sum(int((a.utt_lengths[u0:u1] > 0).sum()) for u0, u1 in utts)
        device = self.device
        padded = torch.empty(num_frames + num_utts * (L + R), a.feat_dim, dtype=dtype, device=device)
        rows = torch.empty(num_frames, dtype=torch.int64, device=device)
        targets = torch.empty(num_frames, dtype=torch.int64, device=device)
        index = torch.empty(num_frames, dtype=torch.int64, device=device)
        columns = {name: torch.empty((num_frames, *c.shape[1:]), dtype=c.torch_dtype(), device=device)
                   for name, c in self._columns.items()}
        frame, row = 0, 0
        for block in blocks:
            first = block.start + self._first_frame
            feats, tg = a.read(block.shard, first, block.stop + self._first_frame)
            source, block_rows = padded_rows(a.utt_lengths[block.utt_start:block.utt_stop], L, R)
            x = _on_device(torch.from_numpy(feats), device).to(dtype)
            n, m = block.frames, source.shape[0]
            padded[row:row + m] = x.index_select(0, source.to(device))
            rows[frame:frame + n] = block_rows.to(device) + row
            targets[frame:frame + n] = _on_device(torch.from_numpy(tg), device)
            index[frame:frame + n] = torch.arange(block.start, block.stop, device=device)
            for name, values in self.read_columns(block.start, block.stop).items():
                columns[name][frame:frame + n] = _on_device(torch.from_numpy(values), device)
            frame, row = frame + n, row + m
        return Buffer(PaddedWindows(padded, rows, L, R), targets, index, columns)


class Batches(Protocol):
    """A training set's epochs: :class:`asr_kd.nn.batches.MemoryBatches` or :class:`StreamBatches`."""

    @property
    def num_frames(self) -> int: ...

    @property
    def epoch_frames(self) -> int: ...

    @property
    def order(self) -> dict: ...

    def epoch(self, seeds: Sequence[int], epoch: int, batch_size: int, device: torch.device,
              dist_ctx: DistContext = DistContext()) -> Iterator[Step]: ...


def training_batches(frames: FrameSet | StreamedFrames, dtype: torch.dtype, members: int,
                     epoch_frames: int | None = None) -> Batches:
    """The epochs of ``frames`` for ``members`` members with windows in ``dtype``: in memory, or streamed. An epoch
    is one pass, or ``epoch_frames`` frames of passes that run on (a set in memory only)."""
    if isinstance(frames, StreamedFrames):
        if epoch_frames is not None and epoch_frames < frames.num_frames:
            raise ValueError("epochs shorter than a pass (train.epoch_frames) need the training set in memory")
        return frames.batches(dtype, members)
    return MemoryBatches(frames, dtype, frames.columns, epoch_frames)


class StreamBatches:
    """The training epochs of :class:`StreamedFrames` (what :class:`asr_kd.nn.batches.MemoryBatches` is for a set in
    memory): each epoch's buffers read one ahead by a background thread."""

    def __init__(self, frames: StreamedFrames, dtype: torch.dtype) -> None:
        self.frames = frames
        self.dtype = dtype

    @property
    def num_frames(self) -> int:
        return self.frames.num_frames

    @property
    def epoch_frames(self) -> int:
        """An epoch is one pass."""
        return self.frames.num_frames

    @property
    def order(self) -> dict:
        """What the batch order depends on besides seeds and epochs: the buffers the data settings make (one
        buffer of the whole split when it fits, the in-memory order)."""
        cfg = self.frames.cfg
        if self.frames.num_frames <= cfg.buffer_frames:
            return ONE_BUFFER
        return {"buffer_frames": cfg.buffer_frames, "block_frames": cfg.block_frames,
                "shard_frames": self.frames.archive.shard_frames}

    def epoch(self, seeds: Sequence[int], epoch: int, batch_size: int, device: torch.device,
              dist_ctx: DistContext = DistContext()) -> Iterator[Step]:
        frames = self.frames
        plan = frames.plan(epoch)
        logger.info("epoch %d: %d frames in %d buffers of up to %d frames", epoch, frames.num_frames, len(plan),
                    frames.cfg.buffer_frames)
        reading = [0.0]

        def load(blocks: list[Block]) -> Buffer:
            t0 = time.perf_counter()
            buffer = frames.load_buffer(blocks, self.dtype)
            reading[0] += time.perf_counter() - t0
            return buffer

        prefetch = Prefetcher([lambda b=b: load(b) for b in plan])
        waiting = [0.0]

        def buffers() -> Iterator[Buffer]:
            while True:
                t0 = time.perf_counter()
                buffer = next(prefetch, None)
                waiting[0] += time.perf_counter() - t0
                if buffer is None:
                    return
                buffer.on_release = prefetch.release
                yield buffer

        gens = [torch.Generator(device=frames.device).manual_seed(epoch_seed(s, epoch)) for s in seeds]
        try:
            yield from epoch_steps(buffers(), gens, batch_size, device, dist_ctx)
        finally:
            prefetch.close()
        logger.info("epoch %d: %d buffers read in %.1f s; training waited %.1f s for them (the first included)",
                    epoch, len(plan), reading[0], waiting[0])
