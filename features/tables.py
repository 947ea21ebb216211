"""Kaldi line tables (``wav.scp text utt2spk spk2utt utt2subset ...``): the one reader and writer of the format.

A table is ``<key> <rest of line>`` per line, sorted bytewise by key. Most Kaldi tools silently misbehave on
unsorted or duplicated keys, so :func:`read_table` refuses them up front with the file and line; every module
that reads a table (audio, features, alignments, scoring, the pipeline) goes through it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from features.atomic import write_text_atomic
from features.errors import InputError


def c_sorted(keys: Iterable[str]) -> list[str]:
    """Sort as ``LC_ALL=C sort`` does: by UTF-8 bytes (for Python ``str``, code-point order)."""
    return sorted(keys)


def read_table(path: Path, *, require_sorted: bool = True, allow_empty_value: bool = False) -> list[tuple[str, str]]:
    """Read a Kaldi ``key rest-of-line`` table as (key, value) rows in file order.

    Keys must be unique and, unless ``require_sorted`` is False (scp files written in arbitrary order,
    hypotheses from other toolkits), sorted in C-locale order. ``allow_empty_value`` admits key-only lines
    (an empty transcript in ``text``).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read table: {e.strerror}", path) from e
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    for lineno, line_bytes in enumerate(raw.splitlines(), start=1):
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"not valid UTF-8 ({e.reason})", path, lineno) from e
        line = line.rstrip()
        if not line or line[0].isspace():
            raise InputError("empty line or line starting with whitespace (expected '<key> <value>')", path, lineno)
        parts = line.split(maxsplit=1)
        key = parts[0]
        value = parts[1] if len(parts) == 2 else ""
        if not value and not allow_empty_value:
            raise InputError(f"key {key!r} has no value", path, lineno)
        if key in seen:
            raise InputError(f"duplicate key {key!r}", path, lineno)
        if require_sorted and rows and key < rows[-1][0]:  # code-point order is UTF-8 byte order
            raise InputError(f"keys not sorted: {key!r} after {rows[-1][0]!r} (sort with LC_ALL=C sort)", path, lineno)
        seen.add(key)
        rows.append((key, value))
    return rows


def read_dict(path: Path, *, require_sorted: bool = True) -> dict[str, str]:
    """A table as a dict (``utt2spk``, ``utt2subset``...)."""
    return dict(read_table(path, require_sorted=require_sorted))


def read_text(path: Path, *, require_sorted: bool = False) -> dict[str, list[str]]:
    """A ``text`` file (transcripts or hypotheses) as utt -> words; an id alone is an empty transcript.

    Not required to be sorted by default: hypotheses written by other toolkits often are not.
    """
    return {k: v.split() for k, v in read_table(path, require_sorted=require_sorted, allow_empty_value=True)}


def write_table(path: Path, table: Mapping[str, str]) -> None:
    """Write ``key value`` lines in C order, atomically."""
    write_text_atomic(path, "".join(f"{k} {table[k]}\n" for k in c_sorted(table)))


def write_text(path: Path, texts: Mapping[str, Sequence[str]]) -> None:
    """Write utt -> words as a ``text`` file in C order (``hyp.txt``); an empty hypothesis is the id alone."""
    write_text_atomic(path, "".join(f"{utt} {' '.join(texts[utt])}".rstrip() + "\n" for utt in c_sorted(texts)))
