"""N-gram language model: ARPA training (kaldingram, Kneser-Ney), G.fst (kaldilm) and perplexity.

The LM sees only the texts it is given: the recipe passes training transcripts and extra LM text that never
contains a dev/test sentence, so dev/test perplexity and WER are honest.
"""
from __future__ import annotations

import logging
import math
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kaldingram.prune import ArpaParser
from kaldingram.prune import prune as entropy_prune
from kaldingram.train import NgramCounts

from decoding.lang import read_sentences, read_symbol_table
from features.atomic import atomic_dir, atomic_write
from features.errors import InputError

__all__ = ["LmConfig", "lm_vocabulary", "make_lang_test", "perplexity", "train_lm"]

logger = logging.getLogger(__name__)


@dataclass
class LmConfig:
    """``order``: n-gram order. ``prune_threshold``: relative perplexity increase below which kaldingram's
    Stolcke entropy pruning drops an n-gram (SRILM's ``-prune``; 0 keeps every n-gram). ``text_format``:
    how the training files are read (``auto``/``kaldi``/``plain``, see :func:`decoding.lang.read_sentences`).
    """

    order: int = 3
    # On the synth recipe's ~0.8M words of LM text, 1e-7 keeps hundreds of thousands of bigrams and trigrams (an
    # HCLG of several million states); 3e-6 keeps ~70k n-grams: an HCLG of about a million states that builds in
    # well under a minute (recipes/synth/results/tiny/RESULTS.md has its size and build time).
    prune_threshold: float = 3e-6
    text_format: str = "auto"


def train_lm(train_texts: Sequence[Path], out_dir: Path, cfg: LmConfig | None = None) -> Path:
    """Train a Kneser-Ney ARPA LM on exactly ``train_texts``, entropy-prune it; return ``out_dir/lm.arpa``.

    Writes ``lm_train.txt`` (the sentences it was trained on, one per line: what the LM saw, for audit),
    ``lm_unpruned.arpa`` and ``lm.arpa``.
    """
    cfg = cfg or LmConfig()
    if not 1 <= cfg.order <= 5:
        raise ValueError(f"kaldingram trains orders 1..5, got {cfg.order}")
    out_dir = Path(out_dir)
    sentences = [s for path in train_texts for s in read_sentences(Path(path), cfg.text_format) if s]
    if not sentences:
        raise InputError("no sentences to train a language model on", Path(train_texts[0]) if train_texts else None)
    counts = NgramCounts(cfg.order)
    for words in sentences:
        counts.add_raw_counts_from_line(" ".join(words))
    counts.cal_discounting_constants()
    counts.cal_f()
    counts.cal_bow()

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "lm_train.txt") as f:
        f.writelines(" ".join(words) + "\n" for words in sentences)
    with atomic_write(out_dir / "lm_unpruned.arpa") as f:
        counts.print_as_arpa(fout=f)
    arpa = out_dir / "lm.arpa"
    if cfg.prune_threshold > 0:
        model = ArpaParser().loadf(out_dir / "lm_unpruned.arpa", encoding="utf-8")[0]
        before = dict(model.counts())
        entropy_prune(model, cfg.prune_threshold, minorder=1)
        with atomic_write(arpa) as f:
            model.write(f)
        logger.info("LM %s: %d sentences, n-grams %s -> %s after pruning at %g", arpa, len(sentences), before,
                    dict(model.counts()), cfg.prune_threshold)
    else:
        with atomic_write(arpa) as f:
            f.write((out_dir / "lm_unpruned.arpa").read_text(encoding="utf-8"))
        logger.info("LM %s: %d sentences, unpruned", arpa, len(sentences))
    return arpa


def lm_vocabulary(arpa: Path) -> set[str]:
    """Words of the ARPA unigram section (read directly: cheaper than parsing the whole model)."""
    vocab, in_unigrams = set(), False
    with open(arpa, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if in_unigrams:
                    break
                in_unigrams = line == "\\1-grams:"
            elif in_unigrams and line:
                parts = line.split()
                if len(parts) < 2:
                    raise InputError(f"bad unigram line {line!r}", arpa)
                vocab.add(parts[1])
    return vocab


def make_lang_test(lang_dir: Path, arpa: Path, out_dir: Path) -> None:
    """``out_dir`` = a copy of ``lang_dir`` + ``lm.arpa`` + ``G.fst`` (Kaldi's ``format_lm.sh``).

    G is compiled by kaldilm's arpa2fst with ``#0`` on the back-off arcs and ``<s>``/``</s>`` as epsilons, over
    the lang dir's words.txt. It runs in a child process because kaldilm's extension deadlocks a process that
    later imports kaldifst / kaldi_hmm_gmm / kaldi_decoder (a static-initialisation clash of their OpenFst
    copies), and because it writes its log to the C-level stderr; the log is kept in ``arpa2fst.log``.
    ARPA words missing from words.txt are dropped with their n-grams by arpa2fst; we count them in the log.
    """
    lang_dir, arpa, out_dir = Path(lang_dir), Path(arpa), Path(out_dir)
    words = read_symbol_table(lang_dir / "words.txt")
    if not arpa.is_file():
        raise InputError("missing ARPA LM", arpa)
    missing = lm_vocabulary(arpa) - set(words) - {"<s>", "</s>"}
    if missing:
        logger.warning("%d LM words are not in %s and are dropped from G (e.g. %s)", len(missing),
                       lang_dir / "words.txt", sorted(missing)[:5])
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(lang_dir, tmp, dirs_exist_ok=True)
        shutil.copyfile(arpa, tmp / "lm.arpa")
        cmd = [sys.executable, "-m", "kaldilm", "--disambig-symbol=#0", f"--read-symbol-table={tmp / 'words.txt'}",
               "--max-arpa-warnings=5", str(tmp / "lm.arpa"), str(tmp / "G.fst")]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        (tmp / "arpa2fst.log").write_text(proc.stderr)
        if proc.returncode != 0 or not (tmp / "G.fst").is_file():
            raise InputError(f"arpa2fst failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}", arpa)
    logger.info("lang_test %s: G.fst from %s", out_dir, arpa)


def perplexity(arpa: Path, text: Path, text_format: str = "auto") -> dict:
    """Perplexity of the ARPA LM on ``text`` with SRILM's ``ngram -ppl`` conventions.

    OOV words (not in the LM's unigrams) get no probability: they are counted in ``oovs`` and left out of the
    denominator, and the next word backs off past them. ``ppl`` counts one ``</s>`` per sentence in the
    denominator, ``ppl1`` does not. Returns ppl, ppl1, logprob (log10), sentences, words, oovs, oov_rate.
    """
    model = ArpaParser().loadf(Path(arpa), encoding="utf-8")[0]
    sentences = [s for s in read_sentences(Path(text), text_format) if s]
    logprob, words, oovs = 0.0, 0, 0
    for sentence in sentences:
        seq = ("<s>",) + tuple(w if model.contains_word(w) else model.UNK for w in sentence) + ("</s>",)
        order = model.order()
        for i in range(1, len(seq)):
            if seq[i] == model.UNK:
                oovs += 1
                continue
            logprob += model.log_p_raw(seq[max(0, i - order + 1):i + 1])
        words += len(sentence)
    scored = words - oovs
    result = {
        "sentences": len(sentences),
        "words": words,
        "oovs": oovs,
        "oov_rate": oovs / words if words else 0.0,
        "logprob": logprob,
        "ppl": 10 ** (-logprob / (scored + len(sentences))) if sentences else math.inf,
        "ppl1": 10 ** (-logprob / scored) if scored else math.inf,
    }
    logger.info("perplexity of %s on %s: %.1f (%d sentences, %d words, %d OOV)", arpa, text, result["ppl"],
                result["sentences"], words, oovs)
    return result
