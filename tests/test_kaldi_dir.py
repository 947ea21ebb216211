"""Validation and import of Kaldi data dirs: every error names the file and the line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_kd.corpus.kaldi_dir import (
    import_kaldi_dir,
    spk2utt_from_utt2spk,
    validate_data_dir,
    write_data_dir,
)
from features.errors import InputError


def _tone(seconds: float, sr: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _make_dir(root: Path, sr: int = 16000) -> Path:
    """A valid 3-utterance, 2-speaker data dir with real audio files."""
    d = root / "data"
    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True)
    utts = {
        "spkA-001": ("spkA", "HELLO WORLD"),
        "spkA-002": ("spkA", "THE CAT SAT"),
        "spkB-001": ("spkB", "HELLO ZYXWV"),
    }
    wav = {}
    for k, utt in enumerate(utts):
        path = audio_dir / f"{utt}.wav"
        sf.write(path, _tone(0.5 + 0.25 * k, sr), sr, subtype="PCM_16")
        wav[utt] = str(path)
    write_data_dir(d, wav, {u: t for u, (_, t) in utts.items()}, {u: s for u, (s, _) in utts.items()})
    return d


def _set_line(path: Path, lineno: int, new: str | None) -> None:
    lines = path.read_text().splitlines()
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new
    path.write_text("".join(line + "\n" for line in lines))


def _raises_at(d: Path, name: str, line: int | None, fragment: str, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        validate_data_dir(d, **kwargs)
    err = info.value
    assert err.path is not None and err.path.name == name, str(err)
    assert err.line == line, str(err)
    assert fragment in str(err)
    expected_where = f"{name}:{line}:" if line is not None else f"{name}:"
    assert expected_where in str(err)
    return err


def test_valid_dir_report_counts_hours_and_oov(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    report = validate_data_dir(d, lexicon_words={"HELLO", "WORLD", "THE", "CAT", "SAT"})
    assert (report.num_utts, report.num_speakers, report.num_words) == (3, 2, 7)
    assert report.hours == pytest.approx((0.5 + 0.75 + 1.0) / 3600)
    assert report.oov_counts == {"ZYXWV": 1}
    assert report.oov_rate == pytest.approx(1 / 7)
    assert "ZYXWV" in report.summary()
    assert (d / "spk2utt").read_text() == "spkA spkA-001 spkA-002\nspkB spkB-001\n"


def test_missing_required_file(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    (d / "utt2spk").unlink()
    with pytest.raises(InputError, match="required file utt2spk is missing"):
        validate_data_dir(d)


def test_missing_audio_names_wav_scp_line(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    (tmp_path / "audio" / "spkA-002.wav").unlink()
    _raises_at(d, "wav.scp", 2, "does not exist")


def test_corrupt_audio_names_wav_scp_line(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    (tmp_path / "audio" / "spkB-001.wav").write_bytes(b"RIFF\x00\x00garbage that is not a wave file")
    _raises_at(d, "wav.scp", 3, "cannot read audio")
    # Without the audio check the same dir passes (the check is what catches it).
    assert validate_data_dir(d, check_audio=False).num_utts == 3


def test_empty_transcript(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    _set_line(d / "text", 2, "spkA-002")
    _raises_at(d, "text", 2, "empty transcript for utterance 'spkA-002'")


def test_unsorted_ids(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    lines = (d / "wav.scp").read_text().splitlines()
    (d / "wav.scp").write_text("\n".join([lines[1], lines[0], lines[2]]) + "\n")
    _raises_at(d, "wav.scp", 2, "not sorted")


def test_duplicate_ids(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    _set_line(d / "utt2spk", 2, "spkA-001 spkA")
    _raises_at(d, "utt2spk", 2, "duplicate key 'spkA-001'")


def test_mismatched_ids_name_the_utterance(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    _set_line(d / "text", 3, "spkB-009 HELLO")
    _raises_at(d, "text", 3, "'spkB-009' is not in wav.scp")
    d2 = _make_dir(tmp_path / "two")
    _set_line(d2 / "utt2spk", 2, None)
    _raises_at(d2, "wav.scp", 2, "'spkA-002' is missing from utt2spk")


def test_malformed_line(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    _set_line(d / "utt2spk", 1, "spkA-001 spkA extra")
    _raises_at(d, "utt2spk", 1, "expected '<utt> <speaker>'")
    d2 = _make_dir(tmp_path / "two")
    _set_line(d2 / "wav.scp", 3, "spkB-001")
    _raises_at(d2, "wav.scp", 3, "has no value")


def test_speakers_must_sort_with_utterances(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    _set_line(d / "utt2spk", 2, "spkA-002 spkZ")
    (d / "spk2utt").unlink()
    _raises_at(d, "utt2spk", 3, "must start with their speaker id")


def test_stale_spk2utt_is_caught(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    _set_line(d / "spk2utt", 1, "spkA spkA-001")
    _raises_at(d, "spk2utt", 1, "does not match utt2spk")


def test_spk2utt_helper_groups_in_c_order() -> None:
    utt2spk = {"b-2": "b", "a_x-1": "a_x", "a-1": "a", "b-1": "b"}
    assert spk2utt_from_utt2spk(utt2spk) == {"a": ["a-1"], "a_x": ["a_x-1"], "b": ["b-1", "b-2"]}


def test_import_resamples_and_keeps_source(tmp_path: Path) -> None:
    d = _make_dir(tmp_path, sr=22050)
    _set_line(d / "text", 1, "spkA-001 hello world")
    before = {p: p.read_bytes() for p in d.iterdir()}
    dst = tmp_path / "clean"
    report = import_kaldi_dir(d, dst)
    assert report.converted == 3 and report.num_utts == 3
    assert {p: p.read_bytes() for p in d.iterdir()} == before  # the source is only read
    for line in (dst / "wav.scp").read_text().splitlines():
        _, path = line.split()
        info = sf.info(path)
        assert info.samplerate == 16000 and info.channels == 1
        assert Path(path).parent == (dst / "wav").resolve()
    assert (dst / "text").read_text().splitlines()[0] == "spkA-001 HELLO WORLD"
    durs = dict(line.split() for line in (dst / "utt2dur").read_text().splitlines())
    assert float(durs["spkB-001"]) == pytest.approx(1.0, abs=1e-3)
    validate_data_dir(dst)
    # A re-import replaces the earlier import; a foreign directory is never overwritten.
    assert import_kaldi_dir(d, dst).num_utts == 3
    with pytest.raises(InputError, match="was not written by an import"):
        import_kaldi_dir(d, tmp_path / "audio")


def test_import_keeps_16k_files_in_place(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    report = import_kaldi_dir(d, tmp_path / "clean")
    assert report.converted == 0
    assert (tmp_path / "clean" / "wav.scp").read_text() == (d / "wav.scp").read_text()


def test_import_rejects_bad_source_with_location(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    (tmp_path / "audio" / "spkA-001.wav").unlink()
    with pytest.raises(InputError, match=r"wav\.scp:1: audio file .* does not exist"):
        import_kaldi_dir(d, tmp_path / "clean")
    assert not (tmp_path / "clean").exists()
