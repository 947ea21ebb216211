"""LibriSpeech layout -> Kaldi data dirs, on a tiny generated fixture (flac, one chapter at 22.05 kHz)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_kd.corpus.kaldi_dir import validate_data_dir
from asr_kd.corpus.librispeech import import_librispeech_parts
from features.errors import InputError

# part -> speaker -> chapter -> (sample rate, [(seconds, transcript)])
FIXTURE = {
    "dev-clean": {
        "84": {"121123": (16000, [(0.6, "GO DO YOU HEAR"), (0.9, "BUT IN LESS THAN FIVE MINUTES")])},
        "174": {"50561": (22050, [(0.8, "FORGOTTEN TOO THE NAME OF GILLIAN")])},
    },
    "test-clean": {
        "1089": {"134686": (16000, [(0.5, "HE HOPED THERE WOULD BE STEW FOR DINNER")])},
    },
}


def _write_fixture(root: Path) -> None:
    rng = np.random.default_rng(0)
    for part, speakers in FIXTURE.items():
        for spk, chapters in speakers.items():
            for chapter, (sr, utts) in chapters.items():
                d = root / part / spk / chapter
                d.mkdir(parents=True)
                lines = []
                for k, (seconds, transcript) in enumerate(utts):
                    utt = f"{spk}-{chapter}-{k:04d}"
                    audio = (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32)
                    sf.write(d / f"{utt}.flac", audio, sr, format="FLAC", subtype="PCM_16")
                    lines.append(f"{utt} {transcript}\n")
                (d / f"{spk}-{chapter}.trans.txt").write_text("".join(lines))


def test_parts_become_valid_data_dirs(tmp_path: Path) -> None:
    src, dst = tmp_path / "LibriSpeech", tmp_path / "data"
    _write_fixture(src)
    reports = import_librispeech_parts(src, dst, ["dev-clean", "test-clean"])
    assert set(reports) == {"dev-clean", "test-clean"}
    dev = dst / "dev_clean"
    assert reports["dev-clean"].num_utts == 3 and reports["dev-clean"].num_speakers == 2
    assert reports["dev-clean"].converted == 1  # only the 22.05 kHz chapter is rewritten
    assert reports["test-clean"].converted == 0
    assert (dev / "utt2spk").read_text() == (
        "174-50561-0000 174-50561\n84-121123-0000 84-121123\n84-121123-0001 84-121123\n")
    assert (dev / "text").read_text().splitlines()[0] == "174-50561-0000 FORGOTTEN TOO THE NAME OF GILLIAN"
    wav = dict(line.split(maxsplit=1) for line in (dev / "wav.scp").read_text().splitlines())
    resampled = Path(wav["174-50561-0000"])
    assert resampled.parent == (dev / "wav").resolve() and resampled.suffix == ".wav"
    info = sf.info(resampled)
    assert info.samplerate == 16000 and info.frames == pytest.approx(0.8 * 16000, abs=2)
    assert wav["84-121123-0000"].endswith("84-121123-0000.flac")  # 16 kHz flac is referenced in place
    durs = dict(line.split() for line in (dev / "utt2dur").read_text().splitlines())
    assert float(durs["84-121123-0001"]) == pytest.approx(0.9, abs=1e-3)
    report = validate_data_dir(dev, lexicon_words={"GO", "DO", "YOU", "HEAR"})
    assert "GILLIAN" in report.oov_counts and "HEAR" not in report.oov_counts


def test_transcript_without_audio_names_the_line(tmp_path: Path) -> None:
    src = tmp_path / "LibriSpeech"
    _write_fixture(src)
    (src / "dev-clean" / "84" / "121123" / "84-121123-0001.flac").unlink()
    with pytest.raises(InputError, match=r"84-121123\.trans\.txt:2: no audio 84-121123-0001\.flac"):
        import_librispeech_parts(src, tmp_path / "data", ["dev-clean"])
    assert not (tmp_path / "data" / "dev_clean").exists()


def test_empty_transcript_and_corrupt_flac(tmp_path: Path) -> None:
    src = tmp_path / "LibriSpeech"
    _write_fixture(src)
    trans = src / "test-clean" / "1089" / "134686" / "1089-134686.trans.txt"
    trans.write_text("1089-134686-0000\n")
    with pytest.raises(InputError, match=r"1089-134686\.trans\.txt:1: empty transcript"):
        import_librispeech_parts(src, tmp_path / "data", ["test-clean"])
    trans.write_text("1089-134686-0000 HE HOPED\n")
    (trans.parent / "1089-134686-0000.flac").write_bytes(b"fLaC but not really")
    with pytest.raises(InputError, match=r"trans\.txt:1: cannot read audio"):
        import_librispeech_parts(src, tmp_path / "data", ["test-clean"])


def test_missing_part(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="part 'train-clean-100' not found"):
        import_librispeech_parts(tmp_path, tmp_path / "data", ["train-clean-100"])
