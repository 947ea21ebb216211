"""A split's aligned frames on disk in shards, for training and evaluation that must not hold the whole split.

Written once from the same inputs as :func:`asr_kd.nn.frames.load_frameset` (``feats.scp`` with per-speaker CMVN
applied, ``pdf.scp`` targets, the same utterances kept in the same order), so frame i of the archive is frame i of
the in-memory set, bit for bit, and stored soft targets computed on either line up with both. Like Kaldi's egs
archives, the features are stored once already normalised, in fixed-size shards of whole utterances::

    <dir>/meta.json        format, feature dim, frame and utterance counts, the targets' range, every shard's size
                           in frames and bytes,
                           the inputs it was written from (content hashes of the scp files, size and mtime of the
                           arks they point into), and who writes it
    <dir>/utts.txt         "<utt> <frames>" in frame order (a Kaldi table)
    <dir>/NNNNN.feats      float32 [frames, dim], little-endian, row after row
    <dir>/NNNNN.pdf        int32 [frames], the pdf target of every frame

Whole utterances per shard make every context window computable from its own shard (windows never cross an
utterance), and raw row-major arrays make any run of utterances one positional read (``os.preadv`` into the
destination array). Reads are not memory-mapped on purpose: mapped pages count in a process's resident memory,
which would make the memory a pass over the archive takes grow with the corpus instead of the reader's buffers.

The pipeline writes it with the first DNN stage that streams the split (``exp/frames/<split>``, reused while the
inputs it was written from stay the same) rather than in a stage of its own: a run that holds its splits in memory,
as every run whose corpus fits does, never writes it, and the recipe's stage numbers stay what they are.

The directory is written under a temporary name and renamed into place, so a directory with ``meta.json`` is whole;
a shard missing or shorter than ``meta.json`` says (a damaged disk, a partial copy) is an :class:`InputError` that
names it and who writes it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.atomic import atomic_dir
from features.errors import InputError
from features.extract import iter_feats
from features.kaldi_io import VecIntTable, scp_files
from features.tables import read_table

logger = logging.getLogger(__name__)

FORMAT = "asr-kd-frames/1"
FEATS_DTYPE = np.dtype("<f4")
TARGETS_DTYPE = np.dtype("<i4")


@dataclass(frozen=True)
class Shard:
    """One shard: utterances ``[first_utt, first_utt + num_utts)``, frames ``[first_frame, first_frame + frames)``
    of the split."""

    name: str
    first_utt: int
    num_utts: int
    first_frame: int
    frames: int

    @property
    def stop_frame(self) -> int:
        return self.first_frame + self.frames


def source_fingerprint(feats_dir: Path, ali_dir: Path) -> dict[str, str]:
    """What an archive of ``feats_dir`` + ``ali_dir`` depends on: the content of the tables, and size and mtime of
    the arks the scp files point into (an ark rewritten in place, with the same offsets, changes its mtime)."""
    feats_dir, ali_dir = Path(feats_dir), Path(ali_dir)
    out: dict[str, str] = {}
    for table in (feats_dir / "feats.scp", feats_dir / "cmvn.scp", feats_dir / "utt2spk", ali_dir / "pdf.scp",
                  ali_dir / "failed.txt"):
        if table.exists():
            out[str(table)] = hashlib.sha256(table.read_bytes()).hexdigest()
    for scp in (feats_dir / "feats.scp", feats_dir / "cmvn.scp", ali_dir / "pdf.scp"):
        for ark in scp_files(scp):
            st = ark.stat() if ark.exists() else None
            out[str(ark)] = f"{st.st_size} bytes, mtime {st.st_mtime_ns}" if st else "missing"
    return out


class ArchiveWriter:
    """Writes the shards of an archive into ``directory`` (a temporary one, renamed into place by the caller) one
    utterance at a time, holding nothing but that utterance."""

    def __init__(self, directory: Path, shard_frames: int) -> None:
        if shard_frames < 1:
            raise ValueError(f"shard_frames must be positive, got {shard_frames}")
        self.directory, self.shard_frames = Path(directory), shard_frames
        self.shards: list[dict] = []
        self.utt_lines: list[str] = []
        self.frames = 0
        self.feat_dim: int | None = None
        self.target_min, self.target_max = np.iinfo(np.int32).max, np.iinfo(np.int32).min
        self._files: tuple | None = None
        self._shard = {"utts": 0, "frames": 0}

    def add(self, utt: str, feats: np.ndarray, targets: np.ndarray) -> None:
        """Append one utterance: features [T, dim] and its T targets."""
        if len(targets) != feats.shape[0]:
            raise ValueError(f"utterance {utt}: {len(targets)} targets for {feats.shape[0]} frames")
        self.feat_dim = feats.shape[1] if self.feat_dim is None else self.feat_dim
        if feats.shape[1] != self.feat_dim:
            raise ValueError(f"utterance {utt}: features of dimension {feats.shape[1]}, not {self.feat_dim}")
        if self._files is None:
            name = self.directory / f"{len(self.shards):05d}"
            self._files = (open(f"{name}.feats", "wb"), open(f"{name}.pdf", "wb"))  # noqa: SIM115 (see _close)
            self._shard = {"utts": 0, "frames": 0}
        self._files[0].write(np.ascontiguousarray(feats, dtype=FEATS_DTYPE).tobytes())
        self._files[1].write(np.asarray(targets, dtype=TARGETS_DTYPE).tobytes())
        if len(targets):
            self.target_min = min(self.target_min, int(targets.min()))
            self.target_max = max(self.target_max, int(targets.max()))
        self.utt_lines.append(f"{utt} {feats.shape[0]}\n")
        self._shard["utts"] += 1
        self._shard["frames"] += feats.shape[0]
        self.frames += feats.shape[0]
        if self._shard["frames"] >= self.shard_frames:
            self._close()

    def _close(self) -> None:
        if self._files is None:
            return
        for f in self._files:
            f.close()
        self._files = None
        name = f"{len(self.shards):05d}"
        self.shards.append({"name": name, **self._shard,
                            "feats_bytes": (self.directory / f"{name}.feats").stat().st_size,
                            "targets_bytes": (self.directory / f"{name}.pdf").stat().st_size})

    def abort(self) -> None:
        """Close what is open (the caller's temporary directory goes away)."""
        if self._files is not None:
            for f in self._files:
                f.close()
            self._files = None

    def finish(self, writer: str, sources: dict[str, str]) -> None:
        """Close the last shard; write ``utts.txt`` and ``meta.json`` (``writer``: who writes this archive, named
        when a shard is found damaged; ``sources``: what it was written from)."""
        self._close()
        (self.directory / "utts.txt").write_text("".join(self.utt_lines), encoding="utf-8")
        meta = {"format": FORMAT, "feat_dim": self.feat_dim, "num_utts": len(self.utt_lines),
                "num_frames": self.frames, "shard_frames": self.shard_frames, "target_min": self.target_min,
                "target_max": self.target_max, "shards": self.shards, "written_by": writer, "sources": sources}
        (self.directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def write_frame_archive(feats_dir: Path, ali_dir: Path, out_dir: Path, shard_frames: int = 1_000_000,
                        writer: str = "") -> FrameArchive:
    """Write the archive of one split (see the module docstring); shards close at ``shard_frames`` or more.

    Utterances without an alignment are left out and counted, and an alignment whose length differs from the
    features is an InputError naming the utterance, as :func:`asr_kd.nn.frames.load_frameset` does. Holds one
    utterance at a time.
    """
    feats_dir, ali_dir, out_dir = Path(feats_dir), Path(ali_dir), Path(out_dir)
    pdf_scp = ali_dir / "pdf.scp"
    if not pdf_scp.exists():
        raise InputError("no pdf alignments", pdf_scp)
    sources = source_fingerprint(feats_dir, ali_dir)
    failed_txt = ali_dir / "failed.txt"
    failed = {k for k, _ in read_table(failed_txt, allow_empty_value=True)} if failed_txt.exists() else set()
    alis = VecIntTable(pdf_scp)
    unaligned = listed_failed = 0
    with atomic_dir(out_dir) as tmp:
        out = ArchiveWriter(tmp, shard_frames)
        try:
            for utt, mat in iter_feats(feats_dir, cmvn="speaker", norm_vars=True):
                ali = alis.get(utt)
                if ali is None:
                    unaligned += 1
                    listed_failed += utt in failed
                    continue
                if len(ali) != mat.shape[0]:
                    raise InputError(f"utterance {utt}: {len(ali)} alignment frames but {mat.shape[0]} feature "
                                     f"frames (features in {feats_dir})", pdf_scp, alis.line(utt))
                out.add(utt, mat, ali)
        except BaseException:
            out.abort()
            raise
        finally:
            alis.close()
        if not out.utt_lines:
            raise InputError(f"no utterance of {feats_dir} has an alignment", pdf_scp)
        out.finish(writer, sources)
    logger.info("%s: %d utterances with alignments in %d shards (%d frames), %d excluded without one (%d listed in "
                "failed.txt) -> %s", feats_dir, len(out.utt_lines), len(out.shards), out.frames, unaligned,
                listed_failed, out_dir)
    return FrameArchive.open(out_dir)


def ensure_frame_archive(feats_dir: Path, ali_dir: Path, out_dir: Path, shard_frames: int, writer: str
                         ) -> FrameArchive:
    """The archive at ``out_dir``, written first when it is missing or was written from other inputs or with another
    shard size. Processes that ask at once (torchrun ranks) are serialised by a lock file beside it: one writes,
    the others then open what it wrote."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.with_name(out_dir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        meta_path = out_dir / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("sources") == source_fingerprint(feats_dir, ali_dir) and \
                    meta.get("shard_frames") == shard_frames and meta.get("format") == FORMAT:
                return FrameArchive.open(out_dir)
            logger.info("%s: written from other inputs or with another shard size; writing it again", out_dir)
        return write_frame_archive(feats_dir, ali_dir, out_dir, shard_frames, writer)


class FrameArchive:
    """An archive opened for reading: the utterance table, the shards, and positional reads of frame ranges."""

    def __init__(self, path: Path, meta: dict, utt_ids: list[str], utt_lengths: np.ndarray) -> None:
        self.path = path
        self.feat_dim = int(meta["feat_dim"])
        self.written_by = str(meta.get("written_by") or "")
        self.target_range = (int(meta["target_min"]), int(meta["target_max"]))
        self.shard_frames = int(meta["shard_frames"])
        self.utt_ids = utt_ids
        self.utt_lengths = utt_lengths
        self.utt_offsets = np.concatenate([[0], np.cumsum(utt_lengths)]).astype(np.int64)
        self.shards: list[Shard] = []
        first_utt = 0
        for s in meta["shards"]:
            self.shards.append(Shard(s["name"], first_utt, int(s["utts"]), int(self.utt_offsets[first_utt]),
                                     int(s["frames"])))
            first_utt += int(s["utts"])
        self._bytes = {s["name"]: (int(s["feats_bytes"]), int(s["targets_bytes"])) for s in meta["shards"]}

    @property
    def num_frames(self) -> int:
        return int(self.utt_offsets[-1])

    @classmethod
    def open(cls, path: Path) -> FrameArchive:
        """Open ``path``; checks that the shards add up and that every shard file is there at its full size."""
        path = Path(path)
        meta_path = path / "meta.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError("no frame archive here (meta.json missing)", path) from None
        except json.JSONDecodeError as e:
            raise InputError(f"unreadable meta.json: {e.msg}", meta_path, e.lineno) from None
        if meta.get("format") != FORMAT:
            raise InputError(f"unknown frame archive format {meta.get('format')!r}", meta_path)
        rows = read_table(path / "utts.txt", require_sorted=False)
        lengths = np.array([int(n) for _, n in rows], dtype=np.int64)
        if len(rows) != meta["num_utts"] or int(lengths.sum()) != meta["num_frames"] or \
                sum(s["utts"] for s in meta["shards"]) != len(rows) or \
                sum(s["frames"] for s in meta["shards"]) != meta["num_frames"]:
            raise InputError("utts.txt and the shards do not add up to the counts of meta.json", meta_path)
        archive = cls(path, meta, [u for u, _ in rows], lengths)
        for shard in archive.shards:
            for suffix in ("feats", "pdf"):
                archive._check_file(shard, suffix)
        return archive

    def _file(self, shard: Shard, suffix: str) -> Path:
        return self.path / f"{shard.name}.{suffix}"

    def _check_file(self, shard: Shard, suffix: str) -> None:
        f = self._file(shard, suffix)
        want = self._bytes[shard.name][0 if suffix == "feats" else 1]
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            raise InputError(f"shard {shard.name} is missing ({want} bytes expected); {self._remedy()}", f) from None
        if size != want:
            raise InputError(f"shard {shard.name} has {size} bytes, meta.json says {want}: it was cut short or "
                             f"overwritten; {self._remedy()}", f)

    def _remedy(self) -> str:
        writer = self.written_by or "the stage that first streams this split"
        return f"the archive is written by {writer}: delete {self.path} and run it again to rewrite it"

    def shard_of_utt(self, utt: int) -> Shard:
        """The shard holding utterance ``utt`` (index into :attr:`utt_ids`)."""
        starts = [s.first_utt for s in self.shards]
        return self.shards[int(np.searchsorted(starts, utt, side="right")) - 1]

    def read(self, shard: Shard, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Features [n, dim] float32 and targets [n] int32 of frames ``[start, stop)`` of the split, all in
        ``shard``: two positional reads, straight into the arrays returned."""
        if not shard.first_frame <= start <= stop <= shard.stop_frame:
            raise ValueError(f"frames [{start}, {stop}) are not all in shard {shard.name}")
        feats = np.empty((stop - start, self.feat_dim), dtype=FEATS_DTYPE)
        targets = np.empty(stop - start, dtype=TARGETS_DTYPE)
        row = start - shard.first_frame
        self._read_into(shard, "feats", feats, row * self.feat_dim * FEATS_DTYPE.itemsize)
        self._read_into(shard, "pdf", targets, row * TARGETS_DTYPE.itemsize)
        return feats, targets

    def _read_into(self, shard: Shard, suffix: str, out: np.ndarray, offset: int) -> None:
        view = memoryview(out).cast("B")
        f = self._file(shard, suffix)
        try:
            fd = os.open(f, os.O_RDONLY)
        except FileNotFoundError:
            raise InputError(f"shard {shard.name} is missing; {self._remedy()}", f) from None
        try:
            done = 0
            while done < len(view):
                n = os.preadv(fd, [view[done:]], offset + done)
                if n == 0:
                    raise InputError(f"shard {shard.name} ends after {offset + done} bytes, before the frames "
                                     f"meta.json lists; {self._remedy()}", f)
                done += n
        finally:
            os.close(fd)
