"""Kaldi's ``EventMap`` / ``ContextDependency`` objects and their exact on-disk forms, in Python.

A Kaldi ``tree`` file is ``ContextDependency N P ToPdf <EventMap> EndContextDependency``, the event map being
a tree of three node kinds, each asking about one *key* of an event (key -1 = the pdf-class, keys 0..N-1 =
the phones of the context window):

* ``CE answer``                         a leaf: the pdf id;
* ``TE key size ( child|NULL ... )``     a table indexed by the key's value;
* ``SE key [ yes-set ] { yes no }``      a binary question "is the key's value in the yes-set?".

The kaldi-hmm-gmm bindings cannot construct these (no constructors are bound) but load the binary form through
``ContextDependency.__setstate__``, so this module writes the bytes Kaldi's ``Write`` methods write (binary
and text) and parses both back. Binary basic types are a size byte (4 for int32, -4 for uint32) then the
little-endian value; integer vectors are a size byte, an int32 length and the raw elements; tokens end with
a space. A binary file starts with the ``\\0B`` header, which the pickle state omits.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.errors import InputError

BINARY_HEADER = b"\0B"
PDF_CLASS_KEY = -1  # Kaldi kPdfClass


@dataclass(frozen=True)
class ConstantNode:
    """``ConstantEventMap``: a leaf answering ``answer`` (the pdf id)."""

    answer: int


@dataclass(frozen=True)
class TableNode:
    """``TableEventMap``: child ``table[v]`` for key value ``v``; ``None`` (Kaldi ``NULL``) maps nothing."""

    key: int
    table: tuple[EventMapNode | None, ...]


@dataclass(frozen=True)
class SplitNode:
    """``SplitEventMap``: ``yes`` if the key's value is in the sorted ``yes_set``, else ``no``."""

    key: int
    yes_set: tuple[int, ...]
    yes: EventMapNode
    no: EventMapNode


EventMapNode = ConstantNode | TableNode | SplitNode


# ------------------------------------------------------------------------------------------------ lookup
def map_events(node: EventMapNode, values_of_key: Callable[[int], np.ndarray]) -> np.ndarray:
    """Answers of ``node`` for a batch of events, vectorised; -1 where Kaldi's ``Map`` would fail.

    ``values_of_key(key)`` returns the ``[E]`` int array of that key's values (-1 = key absent). Each node
    routes the index set of the events reaching it, so the cost is one ``np.isin`` per node visited.
    """
    probe = np.asarray(values_of_key(PDF_CLASS_KEY))
    out = np.full(probe.shape[0], -1, dtype=np.int64)

    def visit(n: EventMapNode, idx: np.ndarray) -> None:
        if idx.size == 0:
            return
        if isinstance(n, ConstantNode):
            out[idx] = n.answer
        elif isinstance(n, SplitNode):
            vals = np.asarray(values_of_key(n.key))[idx]
            defined = vals >= 0
            yes = defined & np.isin(vals, np.asarray(n.yes_set, dtype=np.int64))
            visit(n.yes, idx[yes])
            visit(n.no, idx[defined & ~yes])
        else:
            vals = np.asarray(values_of_key(n.key))[idx]
            for v, child in enumerate(n.table):
                if child is not None:
                    visit(child, idx[vals == v])

    visit(node, np.arange(out.shape[0]))
    return out


def leaves_of(node: EventMapNode) -> list[int]:
    """All answers reachable in ``node`` (Kaldi ``MultiMap`` with an empty event), with repeats, in order."""
    if isinstance(node, ConstantNode):
        return [node.answer]
    if isinstance(node, SplitNode):
        return leaves_of(node.yes) + leaves_of(node.no)
    return [a for child in node.table if child is not None for a in leaves_of(child)]


def max_value_asked(node: EventMapNode) -> dict[int, int]:
    """For each key the tree asks about, the largest value any question or table mentions."""
    out: dict[int, int] = {}

    def visit(n: EventMapNode | None) -> None:
        if isinstance(n, SplitNode):
            out[n.key] = max(out.get(n.key, 0), max(n.yes_set, default=0))
            visit(n.yes)
            visit(n.no)
        elif isinstance(n, TableNode):
            out[n.key] = max(out.get(n.key, 0), len(n.table) - 1)
            for child in n.table:
                visit(child)

    visit(node)
    return out


def map_leaves(node: EventMapNode, mapping: Callable[[int], EventMapNode]) -> EventMapNode:
    """Copy of ``node`` with every leaf replaced by ``mapping(answer)`` (Kaldi ``EventMap::Copy``)."""
    if isinstance(node, ConstantNode):
        return mapping(node.answer)
    if isinstance(node, SplitNode):
        return SplitNode(node.key, node.yes_set, map_leaves(node.yes, mapping), map_leaves(node.no, mapping))
    return TableNode(node.key, tuple(None if c is None else map_leaves(c, mapping) for c in node.table))


# ------------------------------------------------------------------------------------------------ writing
class _Writer:
    """Kaldi's ``WriteToken`` / ``WriteBasicType`` / ``WriteIntegerVector`` in binary or text mode."""

    def __init__(self, binary: bool) -> None:
        self.binary = binary
        self.parts: list[bytes] = []

    def token(self, token: str) -> None:
        self.parts.append(token.encode() + b" ")

    def int32(self, value: int) -> None:
        self.parts.append(b"\x04" + struct.pack("<i", value) if self.binary else f"{value} ".encode())

    def uint32(self, value: int) -> None:
        self.parts.append(b"\xfc" + struct.pack("<I", value) if self.binary else f"{value} ".encode())

    def int_vector(self, values: tuple[int, ...]) -> None:
        if self.binary:
            self.parts.append(b"\x04" + struct.pack("<i", len(values)) + np.asarray(values, "<i4").tobytes())
        else:
            self.parts.append(("[ " + "".join(f"{v} " for v in values) + "]\n").encode())

    def newline(self) -> None:
        if not self.binary:
            self.parts.append(b"\n")

    def event_map(self, node: EventMapNode | None) -> None:
        if node is None:
            self.token("NULL")
        elif isinstance(node, ConstantNode):
            self.token("CE")
            self.int32(node.answer)
        elif isinstance(node, TableNode):
            self.token("TE")
            self.int32(node.key)
            self.uint32(len(node.table))
            self.token("(")
            for child in node.table:
                self.event_map(child)
            self.token(")")
            self.newline()
        else:
            self.token("SE")
            self.int32(node.key)
            self.int_vector(node.yes_set)
            self.token("{")
            self.event_map(node.yes)
            self.event_map(node.no)
            self.token("}")
            self.newline()


def context_dependency_bytes(context_width: int, central_position: int, root: EventMapNode, binary: bool) -> bytes:
    """The bytes of Kaldi ``ContextDependency::Write`` (binary ones without the ``\\0B`` file header)."""
    w = _Writer(binary)
    w.token("ContextDependency")
    w.int32(context_width)
    w.int32(central_position)
    w.token("ToPdf")
    w.event_map(root)
    w.token("EndContextDependency")
    return b"".join(w.parts)


# ------------------------------------------------------------------------------------------------ reading
class _Reader:
    """Kaldi's ``ReadToken`` / ``ReadBasicType`` / ``ReadIntegerVector`` / ``Peek`` over an in-memory file."""

    def __init__(self, data: bytes, binary: bool) -> None:
        self.data = data
        self.binary = binary
        self.pos = 0

    def _skip_space(self) -> None:
        while self.pos < len(self.data) and self.data[self.pos : self.pos + 1].isspace():
            self.pos += 1

    def _word(self) -> bytes:
        self._skip_space()
        start = self.pos
        while self.pos < len(self.data) and not self.data[self.pos : self.pos + 1].isspace():
            self.pos += 1
        if start == self.pos:
            raise ValueError(f"unexpected end of tree data at byte {start}")
        return self.data[start : self.pos]

    def token(self) -> str:
        word = self._word()
        if self.binary:
            self.pos += 1  # the single space Kaldi writes after a binary token
        return word.decode("latin-1")

    def expect(self, token: str) -> None:
        got = self.token()
        if got != token:
            raise ValueError(f"expected token {token!r}, got {got!r} before byte {self.pos}")

    def peek(self) -> str:
        if not self.binary:
            self._skip_space()
        if self.pos >= len(self.data):
            raise ValueError("unexpected end of tree data")
        return chr(self.data[self.pos])

    def _basic(self, size_byte: int, fmt: str) -> int:
        if not self.binary:
            return int(self._word())
        if self.data[self.pos] != size_byte:
            raise ValueError(f"expected a basic type with size byte {size_byte:#x} at byte {self.pos}")
        (value,) = struct.unpack_from(fmt, self.data, self.pos + 1)
        self.pos += 5
        return int(value)

    def int32(self) -> int:
        return self._basic(0x04, "<i")

    def uint32(self) -> int:
        return self._basic(0xFC, "<I")

    def int_vector(self) -> tuple[int, ...]:
        if not self.binary:
            if self._word() != b"[":
                raise ValueError(f"expected '[' of an integer vector before byte {self.pos}")
            values = []
            while (word := self._word()) != b"]":
                values.append(int(word))
            return tuple(values)
        if self.data[self.pos] != 4:
            raise ValueError(f"expected an int32 vector at byte {self.pos}")
        (n,) = struct.unpack_from("<i", self.data, self.pos + 1)
        values = np.frombuffer(self.data, dtype="<i4", count=n, offset=self.pos + 5)
        self.pos += 5 + 4 * n
        return tuple(int(v) for v in values)

    def event_map(self) -> EventMapNode | None:
        kind = self.peek()
        if kind == "N":
            self.expect("NULL")
            return None
        if kind == "C":
            self.expect("CE")
            return ConstantNode(self.int32())
        if kind == "T":
            self.expect("TE")
            key = self.int32()
            size = self.uint32()
            self.expect("(")
            table = tuple(self.event_map() for _ in range(size))
            self.expect(")")
            return TableNode(key, table)
        if kind == "S":
            self.expect("SE")
            key = self.int32()
            yes_set = self.int_vector()
            self.expect("{")
            yes, no = self.event_map(), self.event_map()
            self.expect("}")
            if yes is None or no is None:
                raise ValueError("SE node with a NULL branch")
            return SplitNode(key, yes_set, yes, no)
        raise ValueError(f"unexpected character {kind!r} at byte {self.pos} where an EventMap starts")


def parse_context_dependency(data: bytes) -> tuple[int, int, EventMapNode]:
    """``(context_width, central_position, root)`` from a Kaldi tree file's bytes, binary or text."""
    binary = data.startswith(BINARY_HEADER)
    reader = _Reader(data[len(BINARY_HEADER) :] if binary else data, binary)
    try:
        reader.expect("ContextDependency")
        width = reader.int32()
        central = reader.int32()
        reader.expect("ToPdf")
        root = reader.event_map()
        reader.expect("EndContextDependency")
    except (struct.error, IndexError, UnicodeDecodeError) as e:  # truncated or garbled binary data
        raise ValueError(f"truncated or corrupt tree data near byte {reader.pos}: {e}") from e
    if root is None:
        raise ValueError("tree has a NULL root")
    return width, central, root


def read_roots(path: Path) -> tuple[list[list[int]], list[bool], list[bool]]:
    """Kaldi ``roots.int`` (``ReadRootsFile``): lines ``shared|not-shared split|not-split <phone ids>``.

    Returns the phone sets and, per set, whether its pdf-classes share one tree root and whether it may be
    split: the ``roots``, ``shared_roots`` and ``split_roots`` arguments of ``build_tree``.
    """
    roots: list[list[int]] = []
    shared: list[bool] = []
    split: list[bool] = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 3 or fields[0] not in ("shared", "not-shared") or fields[1] not in ("split", "not-split"):
            raise InputError("expected 'shared|not-shared split|not-split <phone ids>'", path, line_no)
        try:
            phones = sorted(int(f) for f in fields[2:])
        except ValueError:
            raise InputError("phone ids must be integers (roots.int, not roots.txt)", path, line_no) from None
        if len(set(phones)) != len(phones) or phones[0] <= 0:
            raise InputError("repeated or non-positive phone id", path, line_no)
        roots.append(phones)
        shared.append(fields[0] == "shared")
        split.append(fields[1] == "split")
    if not roots:
        raise InputError("no roots", path)
    return roots, shared, split
