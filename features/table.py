"""Kaldi ``key rest-of-line`` tables (text, utt2spk, wav.scp, scp files): the one table reader of the pipeline.

Kept free of torch and audio libraries so that light tools (WER scoring, system comparison) read tables without
importing them; :mod:`features.audio` re-exports :func:`read_table` for its older callers.
"""
from __future__ import annotations

from pathlib import Path

from features.errors import InputError

__all__ = ["read_table"]


def read_table(path: Path, *, require_sorted: bool = True, allow_empty_value: bool = False) -> list[tuple[str, str]]:
    """Read a Kaldi ``key rest-of-line`` table.

    Keys must be unique and, unless ``require_sorted`` is False (scp files written in arbitrary order), sorted
    in C-locale (bytewise) order, which for Python ``str`` is code-point order. ``allow_empty_value`` admits
    key-only lines (an empty transcript in ``text``).
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
        if require_sorted and rows and key < rows[-1][0]:
            raise InputError(f"keys not sorted: {key!r} after {rows[-1][0]!r} (sort with LC_ALL=C sort)", path, lineno)
        seen.add(key)
        rows.append((key, value))
    return rows
