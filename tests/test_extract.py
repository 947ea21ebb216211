"""make_feats over a small Kaldi data dir: outputs, frame counts, per-speaker CMVN, error locations;
plus the table and audio readers it relies on."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from features.audio import load_audio
from features.tables import read_table
from features.cmvn import compute_cmvn_stats
from features.errors import InputError
from features.executor import ExecutorConfig, use_executor
from features.extract import FeatureConfig, load_feats, make_feats
from features.fbank import compute_fbank, compute_mfcc
from features.kaldi_io import load_mat_scp


def _sine(path: Path, seconds: float, freq: float, sr: int = 16000) -> None:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, subtype="PCM_16")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three speakers: espeak-ng speech (22.05 kHz, one entry through a sox pipe) and 16 kHz sines."""
    d = tmp_path_factory.mktemp("data")
    wav = d / "wav"
    wav.mkdir()
    for i, text in enumerate(["one small test", "another short sentence here", "the third one"]):
        subprocess.run(["espeak-ng", "-w", str(wav / f"e{i}.wav"), text], check=True)
    _sine(wav / "s0.wav", 0.8, 300.0)
    _sine(wav / "s1.wav", 1.23, 500.0)
    (d / "wav.scp").write_text(
        f"a-0 {wav / 'e0.wav'}\n"
        f"a-1 sox {wav / 'e1.wav'} -t wav - |\n"
        f"b-0 {wav / 'e2.wav'}\n"
        f"c-0 {wav / 's0.wav'}\n"
        f"c-1 {wav / 's1.wav'}\n")
    (d / "utt2spk").write_text("a-0 a\na-1 a\nb-0 b\nc-0 c\nc-1 c\n")
    (d / "spk2utt").write_text("a a-0 a-1\nb b-0\nc c-0 c-1\n")
    (d / "text").write_text("a-0 ONE SMALL TEST\na-1 ANOTHER SHORT SENTENCE HERE\nb-0 THE THIRD ONE\nc-0 A\nc-1 B\n")
    (d / "utt2subset").write_text("a-0 seen\na-1 seen\nb-0 unseen\nc-0 seen\nc-1 seen\n")
    (d / "phones.ctm").write_text("a-0 1 0.00 0.10 SIL\n")
    return d


@pytest.mark.slow
def test_make_feats_fbank_nj2(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "fbank" / "train"
    summary = make_feats(data_dir, out, FeatureConfig(batch_size=2), nj=2)
    utts = [u for u, _ in read_table(data_dir / "wav.scp")]
    waves = {u: load_audio(spec) for u, spec in read_table(data_dir / "wav.scp")}
    assert summary["utts"] == 5 and summary["speakers"] == 3 and summary["dim"] == 40
    for name in ("text", "utt2spk", "spk2utt", "utt2subset", "phones.ctm", "wav.scp"):
        assert (out / name).read_text() == (data_dir / name).read_text()
    feats = load_mat_scp(out / "feats.scp")
    assert list(feats) == utts
    num_frames = dict(read_table(out / "utt2num_frames"))
    for utt, wave in waves.items():
        expected = 1 + (len(wave) - 400) // 160
        assert feats[utt].shape == (expected, 40) and feats[utt].dtype == np.float32
        assert int(num_frames[utt]) == expected
        np.testing.assert_allclose(feats[utt], compute_fbank(wave).numpy(), atol=2e-4)
    assert summary["frames"] == sum(f.shape[0] for f in feats.values())
    assert {p.name for p in (out / "data").iterdir()} == {"raw_fbank_train.1.ark", "raw_fbank_train.2.ark",
                                                          "cmvn_train.ark"}
    durations = dict(read_table(out / "utt2dur"))  # written because the source has none
    assert float(durations["c-1"]) == pytest.approx(1.23, abs=1e-3)
    # cmvn.scp: one Kaldi stats matrix per speaker, from that speaker's utterances only.
    cmvn = load_mat_scp(out / "cmvn.scp")
    assert list(cmvn) == ["a", "b", "c"]
    for spk, members in [("a", ["a-0", "a-1"]), ("b", ["b-0"]), ("c", ["c-0", "c-1"])]:
        assert cmvn[spk].dtype == np.float64
        np.testing.assert_allclose(cmvn[spk], compute_cmvn_stats([feats[u] for u in members]), rtol=1e-9)
    # load_feats applies them: each speaker's frames have zero mean and unit variance.
    normed = load_feats(out)
    for members in (["a-0", "a-1"], ["c-0", "c-1"]):
        x = np.concatenate([normed[u] for u in members]).astype(np.float64)
        np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(x.std(0)[x.std(0) > 0.5], 1, atol=1e-3)
    np.testing.assert_array_equal(load_feats(out, cmvn="none")["b-0"], feats["b-0"])


def test_make_feats_mfcc_in_process(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mfcc"
    summary = make_feats(data_dir, out, FeatureConfig(kind="mfcc"), nj=1)
    feats = load_mat_scp(out / "feats.scp")
    wave = load_audio(str(data_dir / "wav" / "s0.wav"))
    assert summary["dim"] == 13 and feats["c-0"].shape == (1 + (len(wave) - 400) // 160, 13)
    np.testing.assert_allclose(feats["c-0"], compute_mfcc(wave).numpy(), atol=1e-3)
    assert (out / "data" / "raw_mfcc_mfcc.1.ark").exists()


@pytest.mark.slow
def test_missing_wav_names_wav_scp_line_nj2(data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("utt2spk", "text"):
        (bad / name).write_text((data_dir / name).read_text())
    lines = (data_dir / "wav.scp").read_text().splitlines()
    lines[3] = "c-0 /nonexistent/c0.wav"
    (bad / "wav.scp").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        make_feats(bad, out, FeatureConfig(), nj=2)
    assert e.value.path == bad / "wav.scp" and e.value.line == 4
    assert f"{bad / 'wav.scp'}:4:" in str(e.value) and "/nonexistent/c0.wav' does not exist" in str(e.value)
    assert not out.exists() and list(tmp_path.glob(".out.*")) == []  # nothing half-written left behind


def test_inconsistent_speaker_files(data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "wav.scp").write_text((data_dir / "wav.scp").read_text())
    (bad / "utt2spk").write_text("a-0 a\na-1 a\nb-0 b\nc-0 c\n")
    with pytest.raises(InputError, match="no speaker"):
        make_feats(bad, tmp_path / "out", FeatureConfig(), nj=1)
    (bad / "utt2spk").write_text((data_dir / "utt2spk").read_text())
    (bad / "spk2utt").write_text("a a-0\nb a-1 b-0\nc c-0 c-1\n")
    with pytest.raises(InputError) as e:
        make_feats(bad, tmp_path / "out", FeatureConfig(), nj=1)
    assert e.value.path == bad / "spk2utt" and e.value.line == 2


def test_too_short_audio_is_an_input_error(tmp_path: Path) -> None:
    sf.write(tmp_path / "x.wav", np.zeros(300, dtype=np.float32), 16000)
    (tmp_path / "wav.scp").write_text(f"u {tmp_path / 'x.wav'}\n")
    (tmp_path / "utt2spk").write_text("u s\n")
    with pytest.raises(InputError, match="shorter than one") as e:
        make_feats(tmp_path, tmp_path / "out", FeatureConfig(), nj=1)
    assert e.value.line == 1


@pytest.mark.parametrize("content, line, message", [
    ("a x\nc y\nb z\n", 3, "not sorted"),
    ("a x\nb y\nb z\n", 3, "duplicate"),
    ("a x\n\nb y\n", 2, "empty line"),
    ("a x\nb\n", 2, "no value"),
    (" a x\n", 1, "whitespace"),
])
def test_read_table_errors(tmp_path: Path, content: str, line: int, message: str) -> None:
    path = tmp_path / "wav.scp"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as e:
        read_table(path)
    assert e.value.path == path and e.value.line == line


def test_read_table_values_and_options(tmp_path: Path) -> None:
    path = tmp_path / "text"
    path.write_text("b HELLO  WORLD \na\n")
    assert read_table(path, require_sorted=False, allow_empty_value=True) == [("b", "HELLO  WORLD"), ("a", "")]
    path.write_bytes(b"a \xff\n")
    with pytest.raises(InputError, match="UTF-8"):
        read_table(path)


def test_load_audio_resamples_and_reads_pipes(tmp_path: Path) -> None:
    sr = 22050
    t = np.arange(sr) / sr
    sf.write(tmp_path / "x.wav", np.stack([0.5 * np.sin(2 * np.pi * 440 * t), np.zeros(sr)], 1), sr,
             subtype="PCM_16")
    wave = load_audio(str(tmp_path / "x.wav"))  # stereo: channel 0, like Kaldi
    assert wave.dtype == np.float32 and len(wave) == 16000
    assert np.abs(wave).max() == pytest.approx(0.5, abs=0.01)
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) == 440  # 1 s at 16 kHz: bin k is k Hz
    piped = load_audio(f"sox {tmp_path / 'x.wav'} -t wav - remix 1 |")
    np.testing.assert_allclose(piped, wave, atol=1e-4)
    with pytest.raises(InputError) as e:
        load_audio("false |", where=(tmp_path / "wav.scp", 7))
    assert e.value.line == 7 and "status 1" in str(e.value)
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wav")
    with pytest.raises(InputError, match="junk.wav"):
        load_audio(str(tmp_path / "junk.wav"), where=(tmp_path / "wav.scp", 2))


def test_an_interrupted_extraction_redoes_only_its_unfinished_jobs(data_dir: Path, tmp_path: Path) -> None:
    """Inside a pipeline run (finished units kept), job 2's missing audio fails the split; once the audio is there,
    the rerun extracts job 2 only, reusing job 1's archive, and the split is the one a single run writes."""
    src = tmp_path / "src"
    shutil.copytree(data_dir, src)
    late = tmp_path / "late.wav"
    (src / "wav.scp").write_text((src / "wav.scp").read_text().replace(str(data_dir / "wav" / "s0.wav"), str(late)))
    out = tmp_path / "work" / "data" / "fbank" / "train"
    partial = out.parent / ".train.partial"
    with use_executor(ExecutorConfig(), tmp_path / "work"):
        with pytest.raises(InputError, match="late.wav"):
            make_feats(src, out, FeatureConfig(), nj=2)
        job1 = partial / "data" / "raw_fbank_train.1.ark"
        stamp = job1.stat().st_mtime_ns
        assert not out.exists()
        shutil.copyfile(data_dir / "wav" / "s0.wav", late)
        make_feats(src, out, FeatureConfig(), nj=2)
    assert (out / "data" / "raw_fbank_train.1.ark").stat().st_mtime_ns == stamp  # job 1 was not extracted again
    assert not partial.exists()
    whole = make_feats(src, tmp_path / "again" / "train", FeatureConfig(), nj=1)
    assert whole["frames"] == sum(int(n) for _, n in read_table(out / "utt2num_frames"))
    once, resumed = load_mat_scp(tmp_path / "again" / "train" / "feats.scp"), load_mat_scp(out / "feats.scp")
    assert list(once) == list(resumed) and all(np.array_equal(once[u], resumed[u]) for u in once)
