"""WER counts: hand-made cases, jiwer where alignments are unambiguous, NIST sclite on random and adversarial pairs;
sclite's pralign layout; trn/text readers and their errors; the asr-kd-score / asr-kd-compare command lines."""
from __future__ import annotations

import importlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jiwer
import numpy as np
import pytest

from decoding.score import align_words, compute_wer, normalize_transcript, write_scoring_files
from decoding.score_io import format_pralign, group_summaries, read_transcripts, read_utt_map
from features.errors import InputError
from features.tables import read_text, write_text

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


def _sclite_pralign(refs: dict[str, list[str]], hyps: dict[str, list[str]], work: Path) -> str:
    """sclite's ``-o pralign`` report of ``hyps`` against ``refs`` (written to work/ref.trn and work/hyp.trn)."""
    sclite = SCLITE if Path(SCLITE).is_file() else shutil.which("sclite")
    if sclite is None:
        pytest.fail("NIST sclite not found (needed to check WER counts): apt-get install sctk")
    (work / "ref.trn").write_text("".join(f"{' '.join(w)} ({u})\n" for u, w in refs.items()))
    (work / "hyp.trn").write_text("".join(f"{' '.join(w)} ({u})\n" for u, w in hyps.items()))
    return subprocess.run([sclite, "-r", str(work / "ref.trn"), "trn", "-h", str(work / "hyp.trn"), "trn",
                           "-i", "wsj", "-o", "pralign", "stdout"], capture_output=True, text=True, check=True).stdout


def _sclite_counts(refs: dict[str, list[str]], hyps: dict[str, list[str]], work: Path) -> dict[str, tuple]:
    """Per-utterance (C, S, D, I) from sclite's pralign report."""
    out = _sclite_pralign(refs, hyps, work)
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


def _adversarial_pairs() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Edge cases for the aligner and the pralign layout; the long utterance wraps onto '>>' rows in sclite."""
    rng = random.Random(7)
    vocab = "THE SCIENTISTS EXAMINED EXTRAORDINARILY COMPLICATED MEASUREMENTS A OF".split()
    long_ref = [rng.choice(vocab) for _ in range(300)]
    long_hyp = [w if rng.random() > 0.2 else rng.choice(vocab) for w in long_ref if rng.random() > 0.05]
    pairs = {
        "adv-empty-hyp": ("THE CAT SAT", ""),
        "adv-empty-ref": ("", "A DOG"),
        "adv-empty-both": ("", ""),
        "adv-mixed-case": ("The Cat SAT on", "the CAT sat ON"),
        "adv-all-insertions": ("A B", "X A Y B Z"),
        "adv-all-substitutions": ("A B C", "X Y Z"),
        "adv-long": (" ".join(long_ref), " ".join(long_hyp)),
    }
    return {u: r.split() for u, (r, _) in pairs.items()}, {u: h.split() for u, (_, h) in pairs.items()}


def test_counts_agree_with_sclite_on_adversarial_pairs(tmp_path: Path) -> None:
    refs, hyps = _adversarial_pairs()
    sclite = _sclite_counts(refs, hyps, tmp_path)
    result = compute_wer(refs, hyps)
    for utt, u in result.per_utt.items():
        assert (u.ref_words - u.subs - u.dels, u.subs, u.dels, u.ins) == sclite[utt.lower()], utt
    assert (result.per_utt["adv-mixed-case"].errors, result.per_utt["adv-empty-ref"].ins) == (0, 2)


def _pralign_blocks(report: str) -> dict[str, str]:
    """Utterance id -> its pralign block (sclite's per-speaker header lines left out)."""
    body = "\n".join(line for line in report[report.index("id: "):].splitlines()
                     if not line.startswith("Speaker sentences"))
    return {block.split("\n", 1)[0]: block.rstrip("\n") for block in re.split(r"\n(?=id: )", body)}


def test_pralign_is_sclites_layout_byte_for_byte(tmp_path: Path) -> None:
    refs, hyps = _random_pairs(4, 30)
    adv_refs, adv_hyps = _adversarial_pairs()
    refs, hyps = {**refs, **adv_refs}, {**hyps, **adv_hyps}
    refs, hyps = {u.lower(): w for u, w in refs.items()}, {u.lower(): w for u, w in hyps.items()}
    ours = _pralign_blocks(format_pralign(compute_wer(refs, hyps), "hyp"))
    theirs = _pralign_blocks(_sclite_pralign(refs, hyps, tmp_path))
    assert set(ours) == set(theirs) and len(ours) == len(refs)
    for utt, block in theirs.items():
        assert ours[utt] == block, utt
    assert "\n>> REF:  " in ours["id: (adv-long)"]


def test_missing_hypothesis_is_all_deletions_where_sclite_skips_it(tmp_path: Path) -> None:
    """The stated policy: sclite (trn) leaves an utterance without a hypothesis line out of its totals; we count
    its words as deletions and list it. Every other utterance's counts agree."""
    refs, hyps = _random_pairs(5, 20)
    del hyps["spk3-utt003"]
    theirs = _pralign_blocks(_sclite_pralign(refs, hyps, tmp_path))
    result = compute_wer(refs, hyps)
    ours = _pralign_blocks(format_pralign(result, "hyp"))
    assert set(ours) - set(theirs) == {"id: (spk3-utt003)"}
    assert all(ours[utt] == block for utt, block in theirs.items())
    missing = result.per_utt["spk3-utt003"]
    assert (missing.dels, missing.errors, result.missing_hyps) == (len(refs["spk3-utt003"]), missing.ref_words,
                                                                   ["spk3-utt003"])


def test_trn_reader_and_its_errors(tmp_path: Path) -> None:
    trn = tmp_path / "hyp.trn"
    trn.write_text("the (laughter) cat (spk1-u1)\n (spk1-u2)\nA\tB\t(spk2-u3)\n")
    assert read_transcripts(trn, "trn") == {"spk1-u1": ["the", "(laughter)", "cat"], "spk1-u2": [],
                                            "spk2-u3": ["A", "B"]}
    for content, line, message in [("a (u1)\nb (u1)\n", 2, "duplicate utterance id 'u1'"),
                                   ("a (u1)\nno id here\n", 2, "malformed trn line 'no id here'"),
                                   ("a (u1)\nb (two words)\n", 2, "malformed trn line"),
                                   ("a (u1)\n\nb (u2)\n", 2, "empty line"),
                                   ("a (u1)\nb ()\n", 2, "malformed trn line")]:
        trn.write_text(content)
        with pytest.raises(InputError, match=re.escape(f"hyp.trn:{line}: {message}")):
            read_transcripts(trn, "trn")
    trn.write_bytes(b"a (u1)\n\xff (u2)\n")
    with pytest.raises(InputError, match="hyp.trn:2: not valid UTF-8"):
        read_transcripts(trn, "trn")


def test_hypotheses_are_checked_against_the_reference_where_they_are_read(tmp_path: Path) -> None:
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("u2 A\nu1 B\nzz C\n")
    with pytest.raises(InputError, match=r"hyp.txt:3: utterance 'zz' is not in the reference"):
        read_transcripts(hyp, known_ids={"u1", "u2"})
    hyp.write_text("u2 A\n")
    assert read_transcripts(hyp, known_ids={"u1", "u2"}) == {"u2": ["A"]}  # the 'all' policy: scored as deletions
    with pytest.raises(InputError, match=r"hyp.txt: no hypothesis for 1 of 2 reference utterances, e.g. 'u1'"):
        read_transcripts(hyp, known_ids={"u1", "u2"}, require_all=True)


def test_per_speaker_breakdown_sums_to_the_total(tmp_path: Path) -> None:
    refs, hyps = _random_pairs(2, 40)
    del hyps["spk1-utt001"]
    (tmp_path / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in sorted(refs)) + "other-utt x\n")
    result = compute_wer(refs, hyps)
    speakers = group_summaries(result, read_utt_map(tmp_path / "utt2spk", refs))
    assert list(speakers) == ["spk0", "spk1", "spk2", "spk3"]
    for key in ("errors", "ref_words", "ins", "dels", "subs", "sentences", "sentence_errors", "missing_hyps"):
        assert sum(s[key] for s in speakers.values()) == result.summary()[key], key
    assert speakers["spk1"]["missing_hyps"] == 1
    assert speakers["spk0"] == compute_wer({u: w for u, w in refs.items() if u.startswith("spk0")},
                                           {u: w for u, w in hyps.items() if u.startswith("spk0")}).summary()
    (tmp_path / "utt2spk").write_text("spk0-utt000 spk0\n")
    with pytest.raises(InputError, match=r"utt2spk: no entry for utterance 'spk1-utt001' \(39 of 40"):
        read_utt_map(tmp_path / "utt2spk", refs)


# ------------------------------------------------------------------------------------------- command line tools

REPO = Path(__file__).resolve().parent.parent


def _cli(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m asr_kd.score_cli <tool> args`` (what asr-kd-score / asr-kd-compare run) with this checkout."""
    env = {**os.environ, "KALDI_ROOT": "/tmp", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "asr_kd.score_cli", tool, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _write_example(d: Path) -> None:
    (d / "text").write_text("u1 THE CAT SAT ON THE MAT\nu2 A DOG BARKED\nu3 HELLO WORLD\n")
    (d / "hyp.txt").write_text("u3 hello world\nu1 the bat sat on mat\n")  # unsorted, u2 missing
    (d / "utt2spk").write_text("u1 s1\nu2 s1\nu3 s2\n")


def test_score_cli_report_files_and_json(tmp_path: Path) -> None:
    _write_example(tmp_path)
    run = _cli("score", "--ref", "text", "--hyp", "hyp.txt", "--utt2spk", "utt2spk", "--out-dir", "out",
               cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[:4] == [
        "%WER 45.45 [ 5 / 11, 0 ins, 4 del, 1 sub ]",
        "%SER 66.67 [ 2 / 3 ]",
        "Scored 3 sentences, 1 without a hypothesis (counted as all deletions)",
        "No hypothesis: u2"]
    assert "| s1 | 2 | 9 | 4 | 1 | 4 | 0 | 5 | 55.56 | 100.00 |" in run.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "errs-hyp.txt", "pralign-hyp.txt", "recogs-hyp.txt", "wer.json"]
    assert "REF:  the CAT sat on THE mat \nHYP:  the BAT sat on *** mat \nEval:     S          D       \n" in (
        tmp_path / "out" / "pralign-hyp.txt").read_text()
    run = _cli("score", "--ref", "text", "--hyp", "hyp.txt", "--json", cwd=tmp_path)
    report = json.loads(run.stdout)
    assert (report["wer"], report["missing_utts"], report["speakers"]) == (pytest.approx(500 / 11), ["u2"], None)


@pytest.mark.parametrize(("files", "args", "expected"), [
    ({"hyp.txt": "u1 A\nu1 B\n"}, (), "error: hyp.txt:2: duplicate key 'u1'"),
    ({"hyp.txt": "u1 A\nu2 B\nzz C\n"}, (), "error: hyp.txt:3: utterance 'zz' is not in the reference"),
    ({"hyp.txt": "u1 A\n"}, ("--mode", "strict"), "error: hyp.txt: no hypothesis for 2 of 3 reference utterances"),
    ({"hyp.txt": "u1 A\n", "utt2spk": "u1 s1\n"}, ("--utt2spk", "utt2spk"),
     "error: utt2spk: no entry for utterance 'u2'"),
    ({"text": "A (u1)\nB (u2\n", "hyp.txt": "A (u1)\n"}, ("--format", "trn"), "error: text:2: malformed trn line"),
    ({"hyp.txt": None}, (), "error: hyp.txt: cannot read table: No such file or directory"),
])
def test_score_cli_input_errors_are_one_line_with_file_and_line(tmp_path: Path, files: dict, args: tuple,
                                                                 expected: str) -> None:
    _write_example(tmp_path)
    for name, content in files.items():
        (tmp_path / name).unlink()
        if content is not None:
            (tmp_path / name).write_text(content)
    run = _cli("score", "--ref", "text", "--hyp", "hyp.txt", *args, cwd=tmp_path)
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith(expected), run.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    _write_example(tmp_path)
    (tmp_path / "hyp.txt").write_text("u1 A\nu1 B\n")
    run = _cli("score", "--ref", "text", "--hyp", "hyp.txt", "--debug", cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" in run.stderr and "InputError: hyp.txt:2:" in run.stderr


def test_compare_cli_table_json_and_missing_hypothesis_warning(tmp_path: Path) -> None:
    _write_example(tmp_path)
    (tmp_path / "other.txt").write_text("u1 THE CAT SAT ON THE MAT\nu2 A DOG\nu3 HELLO WORLD\n")
    (tmp_path / "utt2subset").write_text("u1 seen\nu2 unseen\nu3 seen\n")
    args = ("--ref", "text", "--hyp", "base=hyp.txt", "--hyp", "new=other.txt", "--subsets", "utt2subset",
            "--samples", "200", "--seed", "3")
    run = _cli("compare", *args, "--json", "result.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "warning: hyp.txt: no hypothesis for 1 of 3 utterances, scored as all deletions\n"
    assert "### WER (%): all (3 utterances)" in run.stdout and "| new vs base | -36.36 |" in run.stdout
    assert "### WER (%): unseen (1 utterances)" in run.stdout
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["inputs"] == {"ref": "text", "hyp": {"base": "hyp.txt", "new": "other.txt"}}
    assert saved["bootstrap"]["seed"] == 3 and saved["groups"]["all"]["pairs"][0]["name_b"] == "new"
    run = _cli("compare", *args, "--json", "-", cwd=tmp_path)
    assert json.loads(run.stdout) == saved  # same seed, same numbers


def test_compare_cli_frame_accuracy(tmp_path: Path) -> None:
    from features.kaldi_io import write_vec_int_ark_scp

    ali = {f"u{k}": np.arange(10 + k, dtype=np.int32) % 7 for k in range(6)}
    write_vec_int_ark_scp(ali.items(), tmp_path / "pdf.ark", tmp_path / "pdf.scp")
    write_vec_int_ark_scp(((u, np.where(np.arange(a.size) % 2 == 0, a, 99)) for u, a in ali.items()),
                          tmp_path / "a.ark", tmp_path / "a.scp")
    write_vec_int_ark_scp(ali.items(), tmp_path / "b.ark", tmp_path / "b.scp")
    run = _cli("compare", "--ali", "pdf.scp", "--pred", "half=a.scp", "--pred", "all=b.scp", "--samples", "100",
               cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "| all | 100.00 | [100.00, 100.00] | 75 | 75 |" in run.stdout and "| all vs half | +" in run.stdout
    write_vec_int_ark_scp(((u, a[:-1]) for u, a in ali.items()), tmp_path / "b.ark", tmp_path / "b.scp")
    run = _cli("compare", "--ali", "pdf.scp", "--pred", "half=a.scp", "--pred", "all=b.scp", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr == (
        "error: system 'all': utterance 'u0' has 9 predicted frames but its alignment has 10\n")


@pytest.mark.parametrize(("args", "expected"), [
    (("--ref", "text", "--hyp", "a=hyp.txt"), "compare needs two systems or more"),
    (("--ref", "text", "--hyp", "hyp.txt", "--hyp", "b=hyp.txt"), "expected NAME=FILE"),
    (("--ref", "text", "--hyp", "a=hyp.txt", "--hyp", "b=hyp.txt", "--ali", "pdf.scp"), "not both"),
    (("--ref", "text", "--hyp", "a=hyp.txt", "--hyp", "a=text"), "error: system name 'a' is given twice"),
])
def test_compare_cli_usage_errors(tmp_path: Path, args: tuple, expected: str) -> None:
    _write_example(tmp_path)
    run = _cli("compare", *args, cwd=tmp_path)
    assert run.returncode == 2 and expected in run.stderr, run.stderr


def test_console_scripts_name_the_cli_functions() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["asr-kd-score"] == "asr_kd.score_cli:score_main"
    assert scripts["asr-kd-compare"] == "asr_kd.score_cli:compare_main"
    for target in (scripts["asr-kd-score"], scripts["asr-kd-compare"]):
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
