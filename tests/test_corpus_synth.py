"""The built-in TTS corpus: text normalization, planning, timings, augmentation, determinism, end-to-end build."""
from __future__ import annotations

import json
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_kd.corpus.augment import (
    Augmentation,
    AugmentConfig,
    add_noise,
    apply_augmentation,
    draw_augmentation,
    utterance_rng,
)
from asr_kd.corpus.kaldi_dir import validate_data_dir
from asr_kd.corpus.sentences import normalize_sentence
from asr_kd.corpus.summary import CorpusSummary
from asr_kd.corpus.text_sources import spoken_pool
from asr_kd.corpus.synth import (
    SynthConfig,
    estimated_seconds,
    plan_corpus,
    prepare_synth,
)
from asr_kd.corpus.sentences import Sentence
from asr_kd.corpus.voices import (
    SAMPLE_RATE,
    UNSEEN_VOICE,
    _espeak_closures,
    align_words_to_phones,
    synthesize,
    tile_phones,
    voice_by_speaker,
)
from decoding.lexicon import cmu_lexicon


def _table(path: Path) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in path.read_text().splitlines())


def _ctm(path: Path) -> dict[str, list[tuple[float, float, str]]]:
    out: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        utt, channel, start, dur, label = line.split()
        assert channel == "1"
        out[utt].append((float(start), float(start) + float(dur), label))
    return out


# ---------------------------------------------------------------------------------------------------------
def test_normalization_keeps_only_unambiguous_sentences() -> None:
    lex = cmu_lexicon()
    s = normalize_sentence("Mr. Smith bought a well-known book", lex)
    assert s is not None
    assert s.words == ("MISTER", "SMITH", "BOUGHT", "A", "WELL", "KNOWN", "BOOK")
    assert s.spoken == "Mister Smith bought a well known book."
    assert normalize_sentence("He didn't go, did he?", lex).transcript == "HE DIDN'T GO DID HE"
    assert normalize_sentence("He paid 5 dollars", lex) is None  # digits
    assert normalize_sentence("The NATO summit", lex) is None  # acronym may be spelled
    assert normalize_sentence('He said "no"', lex) is None  # quotes
    assert normalize_sentence("Born in St. Louis", lex) is None  # ambiguous abbreviation
    assert normalize_sentence("The zqxwv barked", lex) is None  # not in the dictionary


def test_tile_phones_fills_gaps_clips_and_merges_silence() -> None:
    phones = [(0.1, 0.2, "AH"), (0.25, 0.3, "SIL"), (0.3, 0.4, "SIL"), (0.4, 0.9, "T")]
    assert tile_phones(phones, 0.8) == [(0.0, 0.1, "SIL"), (0.1, 0.2, "AH"), (0.2, 0.4, "SIL"), (0.4, 0.8, "T")]


def test_espeak_stop_closure_is_given_back_to_the_stop() -> None:
    """A vowel, 40 ms of closure silence, a burst: espeak's event at the burst moves back to the closure onset;
    a stop after a pause, a voiced stop and a stop without a silent closure keep their times."""
    t = np.arange(int(0.4 * SAMPLE_RATE)) / SAMPLE_RATE
    audio = 0.3 * np.sin(2 * np.pi * 150 * t)
    audio[int(0.20 * SAMPLE_RATE):int(0.24 * SAMPLE_RATE)] = 0.0
    owned = [(0.0, 0.24, "AH", 0), (0.24, 0.29, "T", 0), (0.29, 0.4, "AH", 1)]
    assert _espeak_closures(owned, audio) == [(0.0, 0.2, "AH", 0), (0.2, 0.29, "T", 0), (0.29, 0.4, "AH", 1)]
    for kept in ([(0.0, 0.24, "SIL", -1), (0.24, 0.29, "T", 0), (0.29, 0.4, "AH", 0)],
                 [(0.0, 0.24, "AH", 0), (0.24, 0.29, "D", 0), (0.29, 0.4, "AH", 1)],
                 [(0.0, 0.29, "AH", 0), (0.29, 0.35, "K", 0), (0.35, 0.4, "AH", 1)]):
        assert _espeak_closures(kept, audio) == kept


def test_espeak_voiceless_stops_start_with_their_closure() -> None:
    """Real espeak-ng speech: no P/T/K that follows a sound leaves closure silence to the phone before it, and
    most of them begin with that silence (espeak's own event sits at the burst; a flapped T has none)."""
    text = "she took a cup of tea and kept the pretty cat"
    said = synthesize(voice_by_speaker("espeak_enus_m3"), [Sentence(text, tuple(text.upper().split()))])[0]
    hop = SAMPLE_RATE // 200
    frames = said.audio[: len(said.audio) // hop * hop].reshape(-1, hop).astype(np.float64)
    peak = 10 * np.log10(np.max(np.mean(frames ** 2, axis=1)))

    def silent(t0: float, t1: float) -> bool:
        x = said.audio[round(t0 * SAMPLE_RATE):round(t1 * SAMPLE_RATE)].astype(np.float64)
        return bool(10 * np.log10(np.mean(x ** 2) + 1e-12) < peak - 40)

    stops = [s for (s, _, p), (_, _, prev) in zip(said.phones[1:], said.phones) if p in "PTK" and prev != "SIL"]
    assert len(stops) >= 8
    assert not any(silent(s - 0.005, s) for s in stops)
    assert sum(silent(s, s + 0.015) for s in stops) >= 0.7 * len(stops)


def test_espeak_output_is_kept_only_once_two_runs_agree(monkeypatch, caplog) -> None:
    """An espeak run that differs from its repeat never reaches the corpus: the first agreeing pair wins, a
    disagreement is logged, no agreement at all is an error; flite (not repeated) runs once."""
    from asr_kd.corpus import voices

    outputs = iter([0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6])
    calls: list[str] = []

    def fake(voice, sentences, tmp):
        calls.append(voice.engine)
        return [voices.Synthesized(np.full(4, next(outputs), dtype=np.float32), [(0.0, 0.1, "AH")])]

    for engine in ("espeak", "flite"):
        monkeypatch.setitem(voices._ENGINES, engine, fake)
    sentence = [Sentence("a cat", ("A", "CAT"))]
    with caplog.at_level("WARNING", logger="asr_kd.corpus.voices"):
        said = synthesize(voice_by_speaker("espeak_enus_m3"), sentence)
    assert calls == ["espeak"] * 3 and float(said[0].audio[0]) == pytest.approx(0.2)
    assert "run 2 differs from run 1" in caplog.text
    with pytest.raises(RuntimeError, match="no two consecutive of 3 runs"):
        synthesize(voice_by_speaker("espeak_enus_m3"), sentence, tries=3)  # 0.3, 0.4, 0.5
    calls.clear()
    assert float(synthesize(voice_by_speaker("flite_awb"), sentence)[0].audio[0]) == pytest.approx(0.6)
    assert calls == ["flite"]


def test_word_spans_from_phones_tolerate_pronunciation_differences() -> None:
    # CAT is said "K AE T", THE as "DH IY" (dictionary's first form is DH AH): one substitution.
    phones = [(0.0, 0.1, "SIL"), (0.1, 0.2, "DH"), (0.2, 0.3, "IY"), (0.3, 0.4, "K"), (0.4, 0.5, "AE"),
              (0.5, 0.6, "T"), (0.6, 0.7, "SIL")]
    assert align_words_to_phones(phones, ("THE", "CAT")) == [(0.1, 0.3, "THE"), (0.3, 0.6, "CAT")]
    assert align_words_to_phones(phones[:2], ("THE", "CAT")) is None  # CAT got no phone: no invented times


def test_augmentation_is_seeded_by_utterance_and_exact_in_snr() -> None:
    cfg = AugmentConfig()
    draws = [draw_augmentation(utterance_rng(0, "spk-00001"), cfg) for _ in range(2)]
    assert draws[0] == draws[1]
    others = {draw_augmentation(utterance_rng(0, f"spk-{k:05d}"), cfg).describe() for k in range(40)}
    assert len(others) > 20
    rng = np.random.default_rng(0)
    clean = np.sin(np.linspace(0, 800, 16000)).astype(np.float32)
    noise = rng.standard_normal(16000).astype(np.float32)
    noisy = add_noise(clean, noise, 10.0)
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean).astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=1e-3)
    fast = Augmentation(speed=1.1, pitch_cents=None, reverberance=30.0, telephone=True, noise="babble", snr_db=15.0)
    out = apply_augmentation(clean, fast, rng, cfg, [noise[:4000]])
    assert len(out) == pytest.approx(16000 / 1.1, abs=2)
    assert np.max(np.abs(out)) <= 0.95 + 1e-6


def test_tiny_plan_has_disjoint_splits_and_test_only_unseen_voice() -> None:
    sentences = spoken_pool(SynthConfig().spoken_sources)
    utts, unused = plan_corpus(SynthConfig(size="tiny"), sentences)
    by_split: dict[str, list] = defaultdict(list)
    for u in utts:
        by_split[u.split].append(u)
    assert len(by_split["dev"]) == 120 and len(by_split["test"]) == 300
    assert sum(u.subset == "unseen" for u in by_split["test"]) == 150
    assert {u.speaker for u in utts if u.speaker == UNSEEN_VOICE.speaker} == {UNSEEN_VOICE.speaker}
    assert all(u.split == "test" and u.subset == "unseen" for u in utts if u.speaker == UNSEEN_VOICE.speaker)
    text = {split: {u.sentence.transcript for u in us} for split, us in by_split.items()}
    assert not text["train"] & text["dev"] and not text["train"] & text["test"] and not text["dev"] & text["test"]
    extra = {s.transcript for s in unused}  # the babble bank's sentences
    assert not extra & (text["dev"] | text["test"] | text["train"])
    hours = sum(estimated_seconds(u.sentence) for u in by_split["train"]) / 3600
    assert 1.0 <= hours < 1.01
    assert len({u.utt_id for u in utts}) == len(utts)
    assert all(u.utt_id.startswith(u.speaker + "-") for u in utts)


# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ci_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CorpusSummary]:
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, prepare_synth(out, SynthConfig(size="ci"), nj=2)


@pytest.mark.slow
def test_ci_build_gives_valid_dirs_with_sane_timings(ci_corpus: tuple[Path, CorpusSummary]) -> None:
    out, summary = ci_corpus
    lexicon = set(cmu_lexicon())
    for split in ("train", "dev", "test"):
        d = out / split
        report = validate_data_dir(d, lexicon_words=lexicon)
        assert report.oov_counts == {}
        assert report.num_utts == summary.splits[split].utts > 0
        durs = {u: float(v) for u, v in _table(d / "utt2dur").items()}
        text = _table(d / "text")
        for utt, path in _table(d / "wav.scp").items():
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert Path(path).is_absolute() and durs[utt] == pytest.approx(info.frames / 16000, abs=1e-3)
        phones, words = _ctm(d / "phones.ctm"), _ctm(d / "words.ctm")
        assert set(phones) == set(words) == set(text)  # every utterance has timings
        for utt, segs in phones.items():
            assert segs[0][0] == 0.0 and segs[-1][1] == pytest.approx(durs[utt], abs=2e-3)  # phones tile the audio
            assert all(a[1] == pytest.approx(b[0], abs=1.5e-3) for a, b in pairwise(segs))
            assert all(s[2].isupper() and s[2].isalpha() for s in segs)
        for utt, segs in words.items():
            assert [w for *_, w in segs] == text[utt].split()
            assert all(0 <= s < e <= durs[utt] + 1e-3 for s, e, _ in segs)
            assert all(a[1] <= b[0] + 1e-3 for a, b in pairwise(segs))  # ordered, not overlapping


@pytest.mark.slow
def test_ci_build_splits_and_voices(ci_corpus: tuple[Path, CorpusSummary]) -> None:
    out, _ = ci_corpus
    text = {split: _table(out / split / "text") for split in ("train", "dev", "test")}
    sentences = {split: set(t.values()) for split, t in text.items()}
    assert not sentences["train"] & sentences["dev"] and not sentences["train"] & sentences["test"]
    assert not sentences["dev"] & sentences["test"]
    extra = set((out / "local" / "lm_extra.txt").read_text().splitlines())
    assert extra and not extra & (sentences["dev"] | sentences["test"])
    speakers = {split: set(_table(out / split / "utt2spk").values()) for split in text}
    assert UNSEEN_VOICE.speaker in speakers["test"]
    assert UNSEEN_VOICE.speaker not in speakers["train"] | speakers["dev"]
    subset = _table(out / "test" / "utt2subset")
    assert set(subset) == set(text["test"])
    assert all((v == "unseen") == u.startswith(UNSEEN_VOICE.speaker + "-") for u, v in subset.items())
    assert {v for v in subset.values()} == {"seen", "unseen"}
    assert len(speakers["train"]) >= 10  # the voice inventory is really used


@pytest.mark.slow
def test_manifest_checksums_and_reuse(ci_corpus: tuple[Path, CorpusSummary]) -> None:
    out, summary = ci_corpus
    manifest = json.loads((out / "manifest.json").read_text())
    wavs = list((out / "wav").rglob("*.wav"))
    assert len(wavs) == sum(s.utts for s in summary.splits.values())
    assert all(str(p.relative_to(out)) in manifest["sha256"] for p in wavs)
    assert "train/phones.ctm" in manifest["sha256"] and "local/lm_extra.txt" in manifest["sha256"]
    mtime = (out / "train" / "text").stat().st_mtime_ns
    assert prepare_synth(out, SynthConfig(size="ci"), nj=1) == summary  # same config: reused, not rebuilt
    assert (out / "train" / "text").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_same_corpus_whatever_directory_and_nj(tmp_path: Path) -> None:
    # Babble on every utterance: its bank goes to the workers pickled next to the output path, so a path of
    # another length puts the bank's arrays elsewhere in memory; the audio must not notice, nor nj.
    augment_cfg = AugmentConfig(noise_prob=1.0, noise_kinds=("babble",))
    dirs = (tmp_path / "a", tmp_path / "a_much_longer_directory_name")
    summaries = [prepare_synth(d, SynthConfig(size="ci", augment_cfg=augment_cfg), nj=nj)
                 for d, nj in zip(dirs, (2, 1))]
    assert summaries[0] == summaries[1]
    assert (dirs[0] / "manifest.json").read_text() == (dirs[1] / "manifest.json").read_text()
    wavs = [sorted(p.relative_to(d) for p in (d / "wav").rglob("*.wav")) for d in dirs]
    assert wavs[0] == wavs[1] and len(wavs[0]) == sum(s.utts for s in summaries[0].splits.values())
    assert all((dirs[0] / w).read_bytes() == (dirs[1] / w).read_bytes() for w in wavs[0])
    augs = [a for split in ("train", "dev", "test") for a in _table(dirs[0] / split / "utt2aug").values()]
    assert all("babble@" in a for a in augs) and any(not a.startswith("speed=1,") for a in augs)
