"""Atomic file and directory writes.

A stage killed half way must never leave a file that looks finished: everything is written under a temporary
name in the same directory and moved into place with ``os.replace`` (atomic on POSIX).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open ``path`` for writing; the file appears under its name only if the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _replace_dir(tmp: Path, path: Path) -> None:
    """Put the finished directory ``tmp`` in the place of ``path`` (an older one there is removed first)."""
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def resumable_dir(path: str | Path, keep: bool) -> Iterator[Path]:
    """Like :func:`atomic_dir`, under the fixed name ``.<name>.partial``: with ``keep``, a failed block leaves it
    for the next attempt to go on from (the caller decides what in it may be reused); else it is removed."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _replace_dir(tmp, path)
    except BaseException:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a whole text file atomically."""
    with atomic_write(path) as f:
        f.write(text)
