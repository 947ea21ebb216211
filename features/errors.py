"""Errors about user input that say where the problem is.

A researcher with a broken data dir needs the file and the line, not a stack trace from deep inside numpy,
so every reader in the pipeline raises :class:`InputError` for bad input.
"""
from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input, located by file and (1-based) line number when known."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = None if path is None else Path(path)
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")

    def __reduce__(self):
        """Keep file and line when the error crosses a process boundary (nj worker processes)."""
        return (type(self), (self.message, self.path, self.line))
