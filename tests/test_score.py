"""WER counts: hand-made cases, jiwer where alignments are unambiguous, and NIST sclite on random pairs."""
from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import jiwer
import pytest

from decoding.score import align_words, compute_wer, normalize_transcript, write_scoring_files
from features.tables import read_text, write_text
from features.errors import InputError

SCLITE = "/usr/lib/sctk/bin/sclite"

HAND_CASES = [  # (ref, hyp, subs, dels, ins)
    ("A B C", "A B C", 0, 0, 0),
    ("A B C", "A C", 0, 1, 0),
    ("A B C", "A X B C", 0, 0, 1),
    ("A B C", "A X C", 1, 0, 0),
    ("A B C D", "X B Y", 2, 1, 0),
    ("A B", "", 0, 2, 0),
    ("THE CAT SAT", "THE THE CAT SAT ON", 0, 0, 2),
]


@pytest.mark.parametrize(("ref", "hyp", "subs", "dels", "ins"), HAND_CASES)
def test_hand_made_counts_agree_with_jiwer(ref: str, hyp: str, subs: int, dels: int, ins: int) -> None:
    result = compute_wer({"u": ref.split()}, {"u": hyp.split()})
    assert (result.subs, result.dels, result.ins) == (subs, dels, ins)
    assert result.wer == pytest.approx(100.0 * (subs + dels + ins) / len(ref.split()))
    if hyp:  # jiwer refuses empty hypotheses in its own API
        j = jiwer.process_words(ref, hyp)
        assert (j.substitutions, j.deletions, j.insertions) == (subs, dels, ins)


def test_sclite_costs_prefer_deletion_plus_insertion_over_two_substitutions() -> None:
    """Where Levenshtein (jiwer) sees two substitutions, sclite's 4/3/3 costs see a deletion and an insertion."""
    result = compute_wer({"u": "A B C".split()}, {"u": "A C D".split()})
    assert (result.subs, result.dels, result.ins) == (0, 1, 1)
    assert align_words("A B C".split(), "A C D".split()) == [("A", "A"), ("B", None), ("C", "C"), (None, "D")]
    assert jiwer.process_words("A B C", "A C D").substitutions == 2
    assert result.levenshtein_errors == 2 == result.errors


def test_missing_hypotheses_are_all_deletions_and_case_is_folded() -> None:
    refs = {"a": "THE CAT".split(), "b": "A DOG SAT".split()}
    result = compute_wer(refs, {"a": ["the", "cat"]})
    assert (result.subs, result.dels, result.ins, result.ref_words) == (0, 3, 0, 5)
    assert result.missing_hyps == ["b"] and result.sentence_errors == 1 and result.sentences == 2
    assert normalize_transcript(["Hello", "big world"]) == ["HELLO", "BIG", "WORLD"]
    with pytest.raises(ValueError, match="no reference"):
        compute_wer(refs, {"zzz": ["X"]})


def _random_pairs(seed: int, n: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    rng = random.Random(seed)
    vocab = "THE A CAT DOG SAT".split()  # few words: many equal-cost alignments, so tie-breaking is tested
    refs, hyps = {}, {}
    for k in range(n):
        utt = f"spk{k % 4}-utt{k:03d}"
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, 12))]
        kind = k % 5
        if kind == 0:
            hyp = []
        elif kind == 1:
            hyp = [rng.choice(vocab) for _ in range(rng.randint(1, 14))]
        else:  # a noisy copy: substitutions, deletions and insertions at random places
            hyp = []
            for w in ref:
                r = rng.random()
                if r < 0.15:
                    continue
                hyp.append(rng.choice(vocab) if r < 0.35 else w)
                if rng.random() < 0.15:
                    hyp.append(rng.choice(vocab))
        refs[utt], hyps[utt] = ref, hyp
    return refs, hyps


def _sclite_counts(refs: dict[str, list[str]], hyps: dict[str, list[str]], work: Path) -> dict[str, tuple]:
    """Per-utterance (C, S, D, I) from sclite's pralign report."""
    sclite = SCLITE if Path(SCLITE).is_file() else shutil.which("sclite")
    if sclite is None:
        pytest.fail("NIST sclite not found (needed to check WER counts): apt-get install sctk")
    (work / "ref.trn").write_text("".join(f"{' '.join(w)} ({u})\n" for u, w in refs.items()))
    (work / "hyp.trn").write_text("".join(f"{' '.join(w)} ({u})\n" for u, w in hyps.items()))
    out = subprocess.run([sclite, "-r", str(work / "ref.trn"), "trn", "-h", str(work / "hyp.trn"), "trn",
                          "-i", "wsj", "-o", "pralign", "stdout"], capture_output=True, text=True, check=True).stdout
    counts = {m.group(1).lower(): tuple(int(x) for x in m.groups()[1:]) for m in
              re.finditer(r"id: \((\S+)\)\s*\nScores: \(#C #S #D #I\) (\d+) (\d+) (\d+) (\d+)", out)}
    assert len(counts) == len(refs), out[-2000:]
    return counts


@pytest.mark.parametrize("seed", [2, 4, 5])  # these include ties where the back-trace order changes counts
def test_counts_agree_with_sclite_on_random_pairs(seed: int, tmp_path: Path) -> None:
    refs, hyps = _random_pairs(seed, 50)
    sclite = _sclite_counts(refs, hyps, tmp_path)
    result = compute_wer(refs, hyps)
    for utt, u in result.per_utt.items():
        mine = (u.ref_words - u.subs - u.dels, u.subs, u.dels, u.ins)
        assert mine == sclite[utt.lower()], (utt, refs[utt], hyps[utt])
    assert sum(not h for h in hyps.values()) >= 10
    assert result.levenshtein_errors <= result.errors


def test_scoring_files_and_text_round_trip(tmp_path: Path) -> None:
    refs = {"u1": "THE CAT SAT".split(), "u2": "A DOG".split()}
    hyps = {"u1": "THE BAT SAT ON".split(), "u2": []}
    write_text(tmp_path / "hyp.txt", hyps)
    assert read_text(tmp_path / "hyp.txt") == hyps
    result = compute_wer(refs, read_text(tmp_path / "hyp.txt"))
    write_scoring_files(tmp_path, "test", refs, hyps, result)
    errs = (tmp_path / "errs-test.txt").read_text()
    assert "%WER = 80.00" in errs
    assert "u1:\tTHE (CAT->BAT) SAT (*->ON)" in errs and "1   CAT -> BAT" in errs
    assert "u2:\t(A->*) (DOG->*)" in errs
    assert "u2:\thyp=[]" in (tmp_path / "recogs-test.txt").read_text()
    assert '"wer": 80.0' in (tmp_path / "wer.json").read_text()
    (tmp_path / "dup.txt").write_text("u1 A\nu1 B\n")
    with pytest.raises(InputError, match=r"dup.txt:2"):
        read_text(tmp_path / "dup.txt")
