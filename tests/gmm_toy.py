"""A toy lang dir and HMM-generated features for the GMM/HMM tests.

Features are sampled from known per-(phone, state) Gaussians with known durations, so tests can check that
training raises the likelihood and that alignment recovers the true phone boundaries, in seconds, without
audio or a feature extractor.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from decoding.lang import prepare_lang

PHONES = ["SIL", "SPN", "AA", "B", "D", "IY", "K", "S"]
LEXICON = {"BAD": ["B", "AA", "D"], "BEE": ["B", "IY"], "SKID": ["S", "K", "IY", "D"], "KISS": ["K", "IY", "S"],
           "DAB": ["D", "AA", "B"], "<UNK>": ["SPN"]}


def make_lang(lang_dir: Path) -> None:
    """A dict dir for the toy lexicon, turned into a lang dir by :func:`decoding.lang.prepare_lang`."""
    dict_dir = lang_dir.parent / f"{lang_dir.name}_dict"
    dict_dir.mkdir(parents=True, exist_ok=True)
    (dict_dir / "lexicon.txt").write_text("".join(f"{w} {' '.join(p)}\n" for w, p in LEXICON.items()))
    (dict_dir / "silence_phones.txt").write_text("SIL\nSPN\n")
    (dict_dir / "optional_silence.txt").write_text("SIL\n")
    (dict_dir / "nonsilence_phones.txt").write_text("".join(f"{p}\n" for p in PHONES if p not in ("SIL", "SPN")))
    prepare_lang(dict_dir, lang_dir)


def make_corpus(num_utts: int, dim: int = 5, seed: int = 0, spread: float = 3.0
                ) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict[str, list[tuple[str, int, int]]]]:
    """Features sampled per HMM state, transcripts, and true phone segments (phone, start, end frame)."""
    rng = np.random.default_rng(seed)
    means = {(p, s): rng.normal(0.0, spread, dim) for p in PHONES for s in range(5)}
    words = [w for w in LEXICON if w != "<UNK>"]
    feats, texts, segments = {}, {}, {}
    for u in range(num_utts):
        utt = f"utt{u:03d}"
        text = list(rng.choice(words, size=rng.integers(2, 5)))
        phones = ["SIL"] + [p for w in text for p in LEXICON[w]] + ["SIL"]
        frames, segs, t = [], [], 0
        for p in phones:
            start = t
            for s in range(5 if p == "SIL" else 3):
                n = int(rng.integers(2, 7))
                frames.append(means[(p, s)] + rng.normal(0.0, 1.0, (n, dim)))
                t += n
            segs.append((p, start, t))
        feats[utt] = np.concatenate(frames).astype(np.float32)
        texts[utt] = text
        segments[utt] = segs
    return feats, texts, segments
