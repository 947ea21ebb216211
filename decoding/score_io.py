"""Scoring any system's hypotheses: reading Kaldi ``text`` / sclite ``trn`` files, breakdowns, sclite alignments.

:mod:`decoding.score` aligns and counts; this module is what a user holding files needs around it. Ids are checked
where the file is read, so every problem names the file and line: a duplicated id, a hypothesis for an utterance
the reference lacks (it would otherwise silently drop out of the count), a ``trn`` line without its
``(utterance-id)``.

Missing-hypothesis policy: an utterance of the reference with no hypothesis line is scored as an empty
hypothesis, i.e. all its words are deletions (Kaldi's ``compute-wer --mode=all``), and is listed in
``WerResult.missing_hyps`` so reports say how many there were. ``require_all=True`` makes it an error instead
(``compute-wer --mode=strict``). Skipping them (``compute-wer --mode=present``, and what sclite does with ``trn``
files: its totals then leave those words out) is not offered, since it flatters a system that fails on hard
utterances; per-utterance counts agree with sclite's either way.
"""
from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Literal

from decoding.score import WerResult
from features.atomic import write_text_atomic
from features.errors import InputError
from features.tables import read_table

__all__ = ["FORMATS", "PRALIGN_WIDTH", "TranscriptFormat", "format_pralign", "format_score", "group_summaries",
           "read_transcripts", "read_utt_map", "write_pralign"]

TranscriptFormat = Literal["text", "trn"]
FORMATS: tuple[str, ...] = ("text", "trn")
PRALIGN_WIDTH = 1000  # sclite's line length for -o pralign before it continues a long utterance on a '>>' line
_TRN_LINE = re.compile(r"(?P<words>.*?)\s*\((?P<utt>[^()\s]+)\)")


def _text_rows(path: Path) -> list[tuple[int, str, list[str]]]:
    """Kaldi ``text`` lines as (line, utt, words); the table reader forbids blank lines, so row i is line i+1."""
    rows = read_table(path, require_sorted=False, allow_empty_value=True)
    return [(n, utt, words.split()) for n, (utt, words) in enumerate(rows, start=1)]


def _trn_rows(path: Path) -> list[tuple[int, str, list[str]]]:
    """sclite ``trn`` lines, ``word word ... (utterance-id)``, as (line, utt, words).

    The id is the last parenthesized token, so words may themselves contain parentheses (``(laughter)``); an
    empty transcript is a line holding only ``(utterance-id)``, possibly indented.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read transcripts: {e.strerror}", path) from e
    rows = []
    for n, line_bytes in enumerate(raw.splitlines(), start=1):  # lines as read_table counts them
        try:
            line = line_bytes.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise InputError(f"not valid UTF-8 ({e.reason})", path, n) from e
        m = _TRN_LINE.fullmatch(line)
        if m is None:
            what = f"malformed trn line {line[:60]!r}" if line else "empty line"
            raise InputError(f"{what} (expected 'word word ... (utterance-id)')", path, n)
        rows.append((n, m["utt"], m["words"].split()))
    return rows


def read_transcripts(path: Path, fmt: TranscriptFormat = "text", *, known_ids: Collection[str] | None = None,
                     require_all: bool = False) -> dict[str, list[str]]:
    """Transcripts (reference or hypotheses) of a Kaldi ``text`` or sclite ``trn`` file as utt -> words.

    With ``known_ids`` (the reference's ids) an id outside it is an error at its line; with ``require_all`` too,
    so is a known id without a line (the strict policy; see the module docstring). Words are returned as written:
    :func:`decoding.score.compute_wer` case-folds them as sclite does.
    """
    if fmt not in FORMATS:
        raise ValueError(f"transcript format must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    texts: dict[str, list[str]] = {}
    for n, utt, words in (_text_rows(path) if fmt == "text" else _trn_rows(path)):
        if utt in texts:
            raise InputError(f"duplicate utterance id {utt!r}", path, n)
        if known_ids is not None and utt not in known_ids:
            raise InputError(f"utterance {utt!r} is not in the reference", path, n)
        texts[utt] = words
    if require_all and known_ids is not None:
        missing = [u for u in sorted(known_ids) if u not in texts]
        if missing:
            raise InputError(f"no hypothesis for {len(missing)} of {len(known_ids)} reference utterances, e.g. "
                             f"{missing[0]!r} (the 'all' policy would score them as all deletions)", path)
    return texts


def read_utt_map(path: Path, utts: Iterable[str]) -> dict[str, str]:
    """An ``utt2spk``-like table (``utt2spk``, ``utt2subset``) restricted to ``utts``, each of which must have a line.

    Ids the table has beyond ``utts`` are ignored (a corpus-wide ``utt2spk`` serves any test subset).
    """
    table = dict(read_table(Path(path), require_sorted=False))
    utts = list(utts)
    missing = [u for u in utts if u not in table]
    if missing:
        raise InputError(f"no entry for utterance {missing[0]!r} ({len(missing)} of {len(utts)} utterances have "
                         "none)", path)
    return {u: table[u] for u in utts}


def group_summaries(result: WerResult, groups: Mapping[str, str]) -> dict[str, dict]:
    """:meth:`WerResult.summary` per group (speaker from ``utt2spk``, subset from ``utt2subset``), sorted by name.

    Every utterance of ``result`` must have a group.
    """
    members: dict[str, list[str]] = {}
    for utt in result.per_utt:
        members.setdefault(groups[utt], []).append(utt)
    missing = set(result.missing_hyps)
    return {g: WerResult.from_utts({u: result.per_utt[u] for u in utts},
                                   [u for u in utts if u in missing]).summary()
            for g, utts in sorted(members.items())}


def _pralign_block(utt: str, pairs: list[tuple[str | None, str | None]], width: int) -> list[str]:
    """One utterance in sclite's ``-o pralign`` layout (the ``id:``/``Scores:`` lines, then REF/HYP/Eval rows).

    As in sclite, correct words are lower case and errors upper case; a column is as wide as its longer word (an
    empty side shows that many ``*``); a row that would reach ``width`` characters continues after a blank line on
    ``>>``-prefixed rows, except that the last column of an utterance stays on its row. Widths count characters,
    where sclite counts bytes: the two differ only for non-ASCII words.
    """
    cols = []
    for r, h in pairs:
        w = max(len(r or "*"), len(h or "*"))
        if r == h:
            cols.append((r.lower(), h.lower(), "", w))
        else:
            cols.append((r or "*" * len(h), h or "*" * len(r), "I" if r is None else "D" if h is None else "S", w))
    c = sum(r == h for r, h in pairs)
    s = sum(r is not None and h is not None and r != h for r, h in pairs)
    d = sum(h is None for _, h in pairs)
    i = sum(r is None for r, _ in pairs)
    lines = [f"id: ({utt})", f"Scores: (#C #S #D #I) {c} {s} {d} {i}"]
    start = 0
    while start < len(cols):
        prefix = ">> " if start else ""
        length, end = len(prefix) + 6, start
        while end < len(cols) and length < width:
            length += cols[end][3] + 1
            end += 1
        if end < len(cols):  # the column that reached the width opens the next row
            end = max(end - 1, start + 1)
        if start:
            lines.append("")
        for label, k in (("REF:  ", 0), ("HYP:  ", 1), ("Eval: ", 2)):
            lines.append(prefix + label + "".join(col[k].ljust(col[3]) + " " for col in cols[start:end]))
        start = end
    return [*lines, ""]


def format_pralign(result: WerResult, system: str, width: int = PRALIGN_WIDTH) -> str:
    """Every utterance's alignment, sorted by id, in sclite's ``-o pralign`` text layout (see :func:`_pralign_block`).

    A tool that parses sclite's ``.pra`` files reads the ``id:``/``Scores:``/``REF:``/``HYP:``/``Eval:`` lines.
    """
    lines = ["\t\tDUMP OF SYSTEM ALIGNMENT STRUCTURE", "", f"System name:   {system}", ""]
    for utt, u in sorted(result.per_utt.items()):
        lines += _pralign_block(utt, u.alignment, width)
    return "\n".join(lines) + "\n"


def write_pralign(path: Path, result: WerResult, system: str) -> None:
    """Write :func:`format_pralign` to ``path`` atomically."""
    write_text_atomic(Path(path), format_pralign(result, system))


def format_score(result: WerResult, groups: Mapping[str, dict] | None = None, group_label: str = "speaker") -> str:
    """Kaldi ``compute-wer``'s summary lines (``%WER``, ``%SER``, ``Scored ...``), the utterances without a
    hypothesis, and optionally a Markdown table of :func:`group_summaries` (per speaker)."""
    s = result.summary()
    lines = [f"%WER {s['wer']:.2f} [ {s['errors']} / {s['ref_words']}, {s['ins']} ins, {s['dels']} del, "
             f"{s['subs']} sub ]",
             f"%SER {s['ser']:.2f} [ {s['sentence_errors']} / {s['sentences']} ]",
             f"Scored {s['sentences']} sentences, {s['missing_hyps']} without a hypothesis (counted as all "
             "deletions)"]
    if result.missing_hyps:
        shown = result.missing_hyps[:10]
        lines.append("No hypothesis: " + " ".join(shown) + (" ..." if len(result.missing_hyps) > 10 else ""))
    if groups:
        lines += ["", f"| {group_label} | #snt | #wrd | corr | sub | del | ins | err | %WER | %SER |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, g in groups.items():
            lines.append(f"| {name} | {g['sentences']} | {g['ref_words']} | {g['ref_words'] - g['subs'] - g['dels']} "
                         f"| {g['subs']} | {g['dels']} | {g['ins']} | {g['errors']} | {g['wer']:.2f} "
                         f"| {g['ser']:.2f} |")
    return "\n".join(lines) + "\n"
