"""Kaldi ark/scp tables of float matrices, int vectors and posteriors, over the ``kaldi-io`` package.

Files written here are binary Kaldi archives that Kaldi tools (``copy-feats``, ``ali-to-pdf``, ``copy-post``)
read, with scp lines ``<key> <ark path>:<byte offset>``. Matrices go through ``kaldi_io.write_mat`` /
``read_mat``. Int vectors and posteriors are packed with numpy record arrays in the same binary layout instead:
``kaldi_io`` writes them one ``struct.pack`` per element (seconds per million frames of alignments or soft
targets) and cannot read a posterior frame with no entries. Every scp reader reports a bad entry as an
:class:`InputError` naming the scp file and line (``kaldi_io.read_mat_scp`` would print and skip it).
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TypeVar

import numpy as np

os.environ.setdefault("KALDI_ROOT", "/tmp")  # kaldi_io prints a banner at import when KALDI_ROOT is unset
import kaldi_io as _kio

from features.atomic import atomic_write, write_text_atomic
from features.errors import InputError
from features.tables import read_table

T = TypeVar("T")

#: A Kaldi posterior: per frame, a list of (index, weight) pairs.
Posterior = list[list[tuple[int, float]]]

_RXSPEC = re.compile(r"^(?P<path>.+?)(?::(?P<offset>\d+))?(?:\[(?P<range>[^\]]*)\])?$")
_INT_ITEM = np.dtype([("size", "i1"), ("value", "<i4")])
_POST_PAIR = np.dtype([("isize", "i1"), ("index", "<i4"), ("fsize", "i1"), ("weight", "<f4")])
_COUNT = np.dtype([("size", "i1"), ("count", "<i4")])
READ_ERRORS = (OSError, ValueError, AssertionError, IndexError, _kio.UnknownMatrixHeader, _kio.BadSampleSize,
                _kio.SubprocessFailed, EOFError)
"""What reading a damaged or missing archive raises (callers turn it into an :class:`InputError` with context)."""


def _check_key(key: str) -> str:
    if not key or any(c.isspace() for c in key):
        raise ValueError(f"invalid Kaldi table key {key!r}: must be non-empty without whitespace")
    return key


def _parse_range(text: str) -> tuple[slice, ...]:
    """Kaldi matrix ranges ``[r1:r2]`` or ``[r1:r2,c1:c2]`` are inclusive at both ends."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        out.append(slice(int(lo) if lo else None, int(hi) + 1 if hi else None))
    return tuple(out)


class _ArkReader:
    """Reads objects at ``path:offset`` entries, keeping the current ark open across consecutive entries."""

    def __init__(self) -> None:
        self._path: str | None = None
        self._fd: IO[bytes] | None = None

    def read(self, rxspec: str, reader: Callable[[IO[bytes]], T]) -> tuple[T, tuple[slice, ...] | None]:
        if rxspec.endswith("|"):
            return reader(_kio.open_or_fd(rxspec)), None
        m = _RXSPEC.match(rxspec)
        if m is None:
            raise ValueError(f"cannot parse rxspecifier {rxspec!r}")
        path = m["path"]
        if path != self._path:
            self.close()
            self._fd, self._path = open(path, "rb"), path  # noqa: SIM115 (kept open across entries; see close)
        assert self._fd is not None
        self._fd.seek(int(m["offset"] or 0))
        return reader(self._fd), (_parse_range(m["range"]) if m["range"] else None)

    def close(self) -> None:
        if self._fd is not None:
            self._fd.close()
        self._fd = self._path = None


def _read_scp(scp: Path, reader: Callable[[IO[bytes]], T]) -> Iterator[tuple[str, T, tuple[slice, ...] | None]]:
    ark = _ArkReader()
    try:
        for lineno, (key, rxspec) in enumerate(read_table(Path(scp), require_sorted=False), start=1):
            try:
                obj, rng = ark.read(rxspec, reader)
            except READ_ERRORS as e:
                raise InputError(f"cannot read entry {key!r} from {rxspec!r}: {e or type(e).__name__}", scp,
                                 lineno) from e
            yield key, obj, rng
    finally:
        ark.close()


def read_mat_scp(scp: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(key, matrix)`` in scp order; float32 or float64 as stored, writable, Kaldi ranges applied."""
    for key, mat, rng in _read_scp(scp, _kio.read_mat):
        if rng is not None:
            mat = mat[rng]
        yield key, np.array(mat)


def read_mat(rxspec: str) -> np.ndarray:
    """One matrix at an scp entry's rxspecifier (``ark:offset``, with a Kaldi range if any), for readers that hold
    a few utterances at a time. A damaged or missing archive raises one of :data:`READ_ERRORS`."""
    ark = _ArkReader()
    try:
        mat, rng = ark.read(rxspec, _kio.read_mat)
    finally:
        ark.close()
    return np.array(mat[rng] if rng is not None else mat)


def load_mat_scp(scp: Path) -> dict[str, np.ndarray]:
    """All matrices of an scp in a dict."""
    return dict(read_mat_scp(scp))


def _write_ark_scp(items: Iterable[tuple[str, T]], ark: Path, scp: Path, encode: Callable[[T], bytes],
                   ark_path_in_scp: str | Path | None) -> None:
    """Write an ark, then its scp, each atomically.

    The old scp is removed first: a run killed between the two renames leaves no scp (clearly unfinished)
    rather than an old scp whose offsets point into the new ark.
    """
    ark, scp = Path(ark), Path(scp)
    name = str(ark_path_in_scp) if ark_path_in_scp is not None else str(ark.resolve())
    with contextlib.suppress(FileNotFoundError):
        scp.unlink()
    lines = []
    with atomic_write(ark, "wb") as f:
        for key, obj in items:
            f.write(_check_key(key).encode() + b" ")
            lines.append(f"{key} {name}:{f.tell()}\n")
            f.write(encode(obj))
    write_text_atomic(scp, "".join(lines))


def _encode_mat(mat: np.ndarray) -> bytes:
    m = np.asarray(mat)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-d matrix, got shape {m.shape}")
    if m.dtype not in (np.float32, np.float64):
        m = m.astype(np.float32)
    buf = _BytesSink()
    _kio.write_mat(buf, np.ascontiguousarray(m))
    return buf.getvalue()


class _BytesSink:
    """A write-only binary buffer that passes ``kaldi_io``'s ``fd.mode == 'wb'`` check."""

    mode = "wb"

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(data)
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def write_mat_ark_scp(items: Iterable[tuple[str, np.ndarray]], ark: Path, scp: Path, *,
                      ark_path_in_scp: str | Path | None = None) -> None:
    """Write matrices to a binary Kaldi ark plus scp, atomically.

    float32 and float64 matrices are stored as such (``FM``/``DM``: Kaldi keeps CMVN stats in double); any
    other dtype becomes float32. The scp names the ark by its absolute path unless ``ark_path_in_scp`` is
    given (a directory built under a temporary name records the final path).
    """
    _write_ark_scp(items, ark, scp, _encode_mat, ark_path_in_scp)


def _encode_vec_int(vec: np.ndarray) -> bytes:
    v = np.asarray(vec)
    if v.ndim != 1 or not np.issubdtype(v.dtype, np.integer):
        raise ValueError(f"expected a 1-d integer vector, got {v.dtype} of shape {v.shape}")
    if v.size and (v.min() < np.iinfo(np.int32).min or v.max() > np.iinfo(np.int32).max):
        raise ValueError("integer vector does not fit in int32")
    body = np.empty(v.size, dtype=_INT_ITEM)
    body["size"], body["value"] = 4, v
    header = np.array([(4, v.size)], dtype=_COUNT)
    return b"\0B" + header.tobytes() + body.tobytes()


def _read_vec_int(fd: IO[bytes]) -> np.ndarray:
    return np.array(_kio.read_vec_int(fd), dtype=np.int32)


def write_vec_int_ark_scp(items: Iterable[tuple[str, np.ndarray]], ark: Path, scp: Path, *,
                          ark_path_in_scp: str | Path | None = None) -> None:
    """Write int32 vectors (alignments, pdf ids) to a binary Kaldi ark plus scp, atomically."""
    _write_ark_scp(items, ark, scp, _encode_vec_int, ark_path_in_scp)


def read_vec_int_scp(scp: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(key, int32 vector)`` in scp order."""
    for key, vec, rng in _read_scp(scp, _read_vec_int):
        yield key, (vec[rng[0]] if rng is not None else vec)


def load_vec_int_scp(scp: Path) -> dict[str, np.ndarray]:
    """All int vectors of an scp in a dict."""
    return dict(read_vec_int_scp(scp))


def scp_files(scp: Path) -> list[Path]:
    """The files an scp's entries point into, in order of first use (pipes excluded): what a copy of its data
    depends on besides the scp itself."""
    files: dict[str, None] = {}
    for _, rxspec in read_table(Path(scp), require_sorted=False):
        m = _RXSPEC.match(rxspec)
        if m is not None and not rxspec.endswith("|"):
            files.setdefault(m["path"])
    return [Path(f) for f in files]


class VecIntTable:
    """Random access to the int vectors of an scp by key, read when asked for: what a reader that must not hold a
    whole split's alignments uses (the index of keys and locations is held, the vectors are not)."""

    def __init__(self, scp: Path) -> None:
        self.scp = Path(scp)
        self._entries = {key: (rxspec, n)
                         for n, (key, rxspec) in enumerate(read_table(self.scp, require_sorted=False), start=1)}
        self._ark = _ArkReader()

    def line(self, key: str) -> int:
        """1-based line of ``key`` in the scp (for error messages)."""
        return self._entries[key][1]

    def get(self, key: str) -> np.ndarray | None:
        """The int32 vector of ``key``, or None when the scp has no such key."""
        if key not in self._entries:
            return None
        rxspec, line = self._entries[key]
        try:
            vec, rng = self._ark.read(rxspec, _read_vec_int)
        except READ_ERRORS as e:
            raise InputError(f"cannot read entry {key!r} from {rxspec!r}: {e or type(e).__name__}", self.scp,
                             line) from e
        return vec[rng[0]] if rng is not None else vec

    def close(self) -> None:
        self._ark.close()


def _encode_post(post: Posterior | tuple[np.ndarray, np.ndarray]) -> bytes:
    """Kaldi binary Posterior: frame count, then per frame a pair count and (int32 index, float32 weight) pairs."""
    if isinstance(post, tuple):
        index, weight = np.asarray(post[0]), np.asarray(post[1])
        if index.ndim != 2 or index.shape != weight.shape:
            raise ValueError(f"posterior arrays must both be [T, K], got {index.shape} and {weight.shape}")
        num_frames, k = index.shape
        frame = np.dtype([("size", "i1"), ("count", "<i4"), ("pairs", _POST_PAIR, (k,))])
        body = np.empty(num_frames, dtype=frame)
        body["size"], body["count"] = 4, k
        pairs = body["pairs"]
        pairs["isize"], pairs["index"], pairs["fsize"], pairs["weight"] = 4, index, 4, weight
        parts = [body.tobytes()]
    else:
        num_frames = len(post)
        parts = []
        for entries in post:
            pairs = np.empty(len(entries), dtype=_POST_PAIR)
            pairs["isize"], pairs["fsize"] = 4, 4
            if entries:
                pairs["index"], pairs["weight"] = zip(*entries)
            parts.append(np.array([(4, len(entries))], dtype=_COUNT).tobytes() + pairs.tobytes())
    return b"\0B" + np.array([(4, num_frames)], dtype=_COUNT).tobytes() + b"".join(parts)


def write_post_ark(items: Iterable[tuple[str, Posterior | tuple[np.ndarray, np.ndarray]]], ark: Path,
                   scp: Path | None = None) -> None:
    """Write Kaldi posteriors (soft targets) to a binary ark, atomically; also an scp when ``scp`` is given.

    Each item is ``(key, posterior)`` with the posterior either a list of frames of ``(index, weight)`` pairs
    (frames may differ in length, as in Kaldi) or, for top-k soft targets, a pair of ``[T, K]`` arrays
    ``(indices, weights)``, which is packed without a Python loop over frames.
    """
    if scp is not None:
        _write_ark_scp(items, ark, scp, _encode_post, None)
        return
    with atomic_write(ark, "wb") as f:
        for key, post in items:
            f.write(_check_key(key).encode() + b" " + _encode_post(post))


def _read_exact(fd: IO[bytes], n: int) -> bytes:
    data = fd.read(n)
    if len(data) != n:
        raise ValueError("unexpected end of file")
    return data


def _read_post(fd: IO[bytes]) -> Posterior:
    if _read_exact(fd, 2) != b"\0B":
        raise ValueError("not a binary Kaldi posterior")
    num_frames = int(np.frombuffer(_read_exact(fd, 5), dtype=_COUNT)["count"][0])
    post: Posterior = []
    for _ in range(num_frames):
        count = int(np.frombuffer(_read_exact(fd, 5), dtype=_COUNT)["count"][0])
        pairs = np.frombuffer(_read_exact(fd, count * _POST_PAIR.itemsize), dtype=_POST_PAIR)
        post.append(list(zip(pairs["index"].tolist(), pairs["weight"].tolist())))
    return post


def read_post_ark(ark: Path) -> Iterator[tuple[str, Posterior]]:
    """Yield ``(key, posterior)`` from a binary Kaldi posterior ark (e.g. written by Kaldi's ``copy-post``)."""
    ark = Path(ark)
    with open(ark, "rb") as fd:
        while True:
            key = _kio.read_key(fd)
            if key is None:
                return
            try:
                yield key, _read_post(fd)
            except ValueError as e:
                raise InputError(f"bad posterior for key {key!r}: {e}", ark) from e


def read_vector(path: Path) -> np.ndarray:
    """A single Kaldi vector file, text (``[ 1 2 3 ]``) or binary, e.g. ``pdf_counts`` (float64 values)."""
    try:
        return np.asarray(_kio.read_vec_flt(str(path)), dtype=np.float64)
    except READ_ERRORS as err:
        raise InputError(f"not a Kaldi vector: {err}", path) from err


def write_vector(path: Path, values: np.ndarray) -> None:
    """A single Kaldi vector file in text form (``[ 1 2 3 ]``), atomically: what ``read_vector`` reads back."""
    write_text_atomic(path, "[ " + " ".join(map(str, np.asarray(values).tolist())) + " ]\n")
