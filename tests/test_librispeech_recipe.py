"""The LibriSpeech recipe's data preparation (stages 0-2: corpus, features, lang) through its run.sh, on a tiny
corpus in the OpenSLR layout: espeak-ng speech as flac, two speakers per part, one chapter recorded at 22.05 kHz."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
import torch
import torchaudio.functional as taf

from features.extract import load_feats

# part -> (speaker, chapter, espeak-ng voice, sample rate, transcripts): real LibriSpeech-style sentences
FIXTURE = {
    "train-clean-100": [
        ("103", "1240", "en-us", 16000, ["CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED",
                                         "THAT HAD ITS SOURCE AWAY BACK IN THE WOODS OF THE OLD PLACE"]),
        ("1034", "121119", "en-gb", 22050, ["THE GIRL WHO CAME INTO THE WORLD ON THAT NIGHT",
                                            "SHE WAS BORN IN A SMALL HOUSE NEAR THE RIVER"]),
    ],
    "dev-clean": [
        ("84", "121123", "en-us", 16000, ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED"]),
        ("174", "50561", "en-gb", 16000, ["FORGOTTEN TOO THE NAME OF GILLIAN THE LOVELY CAPTIVE"]),
    ],
    "test-clean": [
        ("1089", "134686", "en-us", 16000, ["HE HOPED THERE WOULD BE STEW FOR DINNER"]),
        ("121", "121726", "en-gb", 16000, ["ALSO A POPULAR CONTRIVANCE WHEREBY LOVE MAKING MAY BE SUSPENDED"]),
    ],
}
REPO = Path(__file__).resolve().parent.parent


def _synthesize(text: str, voice: str, rate: int, out: Path, tmp: Path) -> None:
    """espeak-ng speech (22.05 kHz) written as flac at ``rate``."""
    wav = tmp / "espeak.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text.lower()], check=True, capture_output=True)
    audio, sr = sf.read(wav, dtype="float32")
    if rate != sr:
        audio = taf.resample(torch.from_numpy(audio), sr, rate).numpy()
    sf.write(out, audio, rate, format="FLAC", subtype="PCM_16")


def _librispeech(root: Path) -> Path:
    for part, chapters in FIXTURE.items():
        for speaker, chapter, voice, rate, texts in chapters:
            d = root / part / speaker / chapter
            d.mkdir(parents=True)
            lines = []
            for k, text in enumerate(texts):
                utt = f"{speaker}-{chapter}-{k:04d}"
                _synthesize(text, voice, rate, d / f"{utt}.flac", root)
                lines.append(f"{utt} {text}\n")
            (d / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return root


def _table(path: Path) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in path.read_text().splitlines())


@pytest.mark.slow
def test_data_preparation_stages(tmp_path: Path, run_recipe) -> None:
    src = _librispeech(tmp_path / "LibriSpeech")
    work = tmp_path / "work"
    result = run_recipe("librispeech", work, "--stop-stage", "2", f"corpus.source_dir={src}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    splits = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
    for split, part in splits.items():
        expected = {f"{spk}-{ch}-{k:04d}": (f"{spk}-{ch}", text)
                    for spk, ch, _, _, texts in FIXTURE[part] for k, text in enumerate(texts)}
        data = work / "data" / split
        assert _table(data / "text") == {u: text for u, (_, text) in expected.items()}
        assert _table(data / "utt2spk") == {u: spk for u, (spk, _) in expected.items()}  # Kaldi speaker = chapter
        for utt, path in _table(data / "wav.scp").items():
            info = sf.info(path)
            assert info.samplerate == 16000, (utt, path)
            if utt.startswith("1034-"):  # the 22.05 kHz chapter: resampled into the work dir, kept there
                assert Path(path).is_relative_to(data.resolve()), path
            else:  # 16 kHz flac: read where it lies
                assert Path(path) == (src / part / utt.split("-")[0] / utt.split("-")[1] / f"{utt}.flac").resolve()
        for kind, dim in (("fbank", 40), ("mfcc", 13)):
            feats = load_feats(work / "data" / kind / split)
            frames = {u: int(n) for u, n in _table(work / "data" / kind / split / "utt2num_frames").items()}
            assert sorted(feats) == sorted(expected)
            assert all(m.shape == (frames[u], dim) and frames[u] > 50 for u, m in feats.items())
    assert not (work / "data" / ".import").exists()

    words = _table(work / "data" / "lang" / "words.txt")
    assert {"GILLIAN", "STAIRCASE", "CONTRIVANCE", "<UNK>"} <= set(words)
    for name in ("L.fst", "L_disambig.fst", "phones.txt", "topo"):
        assert (work / "data" / "lang" / name).stat().st_size > 0, name
    assert (work / "data" / "lang_test" / "G.fst").stat().st_size > 0
    perplexity = json.loads((work / "data" / "lang_test" / "perplexity.json").read_text())
    assert set(perplexity) == {"dev", "test"}
    done = sorted(p.parent.name for p in (work / "exp" / "stages").glob("*/.done"))
    assert done == ["corpus", "features", "lang"]


def test_source_dir_is_mandatory(tmp_path: Path, run_recipe) -> None:
    result = run_recipe("librispeech", tmp_path / "work", "--stop-stage", "0")
    assert result.returncode != 0
    assert "corpus.source_dir" in result.stderr + result.stdout
    assert not (tmp_path / "work" / "data").exists()
