"""Decoding a user's Kaldi data dir with a trained experiment (asr_kd.pipeline.decode_data), on the shared CI
experiment.

New recordings must go through the very front-end the systems were trained on: the checks are that every
utterance gets a hypothesis from every system, that audio at another rate is resampled, that the same 16 kHz
audio decodes exactly as the experiment's own test set did, that untranscribed audio gets hypotheses only, and
that bad input fails with the file and line before the experiment is touched.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
import torchaudio.functional as taf
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from asr_kd.conf.schema import register
from asr_kd.pipeline.decode_data import decode_data_dir
from asr_kd.pipeline.workspace import Workspace
from features.errors import InputError

REPO = Path(__file__).resolve().parent.parent
NEW_OUTPUTS = ("data/new", "data/fbank/new", "data/mfcc/new", "exp/decode/new.json")


def _cfg(work: Path, *overrides: str) -> DictConfig:
    """The experiment's config as the CLI composes it (recipes/synth/conf/ci.yaml)."""
    register()
    with initialize_config_dir(str(REPO / "recipes" / "synth" / "conf"), version_base="1.3"):
        return compose("ci", overrides=[f"work_dir={work}", *overrides])


def _table(path: Path) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in path.read_text().splitlines())


def _test_utts(work: Path, count: int) -> list[str]:
    """The ``count`` shortest test utterances whose speaker has no other utterance (so CMVN stats of a new dir
    holding them equal the test set's)."""
    spk2utt = {spk: utts.split() for spk, utts in _table(work / "data" / "test" / "spk2utt").items()}
    durs = {u: float(d) for u, d in _table(work / "data" / "test" / "utt2dur").items()}
    alone = [utts[0] for utts in spk2utt.values() if len(utts) == 1]
    return sorted(sorted(alone, key=durs.get)[:count])


def _new_dir(work: Path, dst: Path, utts: list[str], rate: int = 16000, with_text: bool = True) -> Path:
    """A fresh Kaldi data dir outside the experiment holding ``utts`` of its test set, audio at ``rate``."""
    dst.mkdir(parents=True)
    wav, text, utt2spk = (_table(work / "data" / "test" / f) for f in ("wav.scp", "text", "utt2spk"))
    for utt in utts:
        audio, sr = sf.read(wav[utt], dtype="float32")
        if rate != sr:
            audio = taf.resample(torch.from_numpy(audio), sr, rate).numpy()
        sf.write(dst / f"{utt}.wav", audio, rate, subtype="PCM_16")
    (dst / "wav.scp").write_text("".join(f"{u} {dst / u}.wav\n" for u in utts))
    (dst / "utt2spk").write_text("".join(f"{u} {utt2spk[u]}\n" for u in utts))
    if with_text:
        (dst / "text").write_text("".join(f"{u} {text[u]}\n" for u in utts))
    return dst


def _hyp_utts(path: Path) -> list[str]:
    """Utterance ids of a hyp.txt (an empty hypothesis is a line holding only the id)."""
    return [line.split()[0] for line in path.read_text().splitlines()]


def _snapshot(work: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(work)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in work.rglob("*") if p.is_file()}


def _recog_hyps(path: Path) -> dict[str, list[str]]:
    """Hypotheses from an icefall-style recogs file (``utt:\\thyp=['A', 'B']``)."""
    hyps = {}
    for line in path.read_text().splitlines():
        utt, field = line.split(":\t", 1)
        if field.startswith("hyp="):
            hyps[utt] = ast.literal_eval(field[4:])
    return hyps


@pytest.mark.slow
def test_every_system_decodes_resampled_audio(ci_experiment_copy: Path, tmp_path: Path) -> None:
    work = ci_experiment_copy
    utts = _test_utts(work, 3)
    src = _new_dir(work, tmp_path / "mine", utts, rate=22050)
    before = _snapshot(work)

    summary = decode_data_dir(_cfg(work), Workspace(work), src, [], out_name="new")

    systems = ["gmm", "baseline", "ensemble", "distilled", "small_hard", "small_soft"]  # report order
    assert [s for s in summary if s in systems] == systems
    imported = _table(work / "data" / "new" / "wav.scp")
    assert sorted(imported) == utts
    assert all(sf.info(path).samplerate == 16000 for path in imported.values())  # resampled from 22.05 kHz
    ref_words = sum(len(_table(src / "text")[u].split()) for u in utts)
    for system in systems:
        out = work / "exp" / "decode" / system / "new"
        assert sorted(_recog_hyps(out / f"recogs-{system}-new.txt")) == utts
        assert summary[system]["failed"] == 0 and _hyp_utts(out / "hyp.txt") == utts
        wer = json.loads((out / "wer.json").read_text())
        assert wer["ref_words"] == ref_words == summary[system]["wer"]["words"]
        assert 0.0 <= summary[system]["wer"]["all"] == pytest.approx(wer["wer"])
        tuned = json.loads((work / "exp" / "decode" / system / "tuning.json").read_text())["acoustic_scale"]
        assert summary[system]["acoustic_scale"] == tuned
    assert json.loads((work / "exp" / "decode" / "new.json").read_text())["utts"] == len(utts)

    after = _snapshot(work)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing of the experiment changed
    added = [k for k in after if k not in before]
    assert added and all(k.startswith(NEW_OUTPUTS) or "/new/" in k for k in added), added


@pytest.mark.slow
def test_same_audio_decodes_as_the_test_set(ci_experiment_copy: Path, tmp_path: Path) -> None:
    """16 kHz copies of test utterances (one speaker each, so the same CMVN) give the test set's hypotheses."""
    work = ci_experiment_copy
    utts = _test_utts(work, 2)
    src = _new_dir(work, tmp_path / "copy", utts)
    decode_data_dir(_cfg(work), Workspace(work), src, ["gmm", "baseline"], out_name="new")
    for system in ("gmm", "baseline"):
        decode = work / "exp" / "decode" / system
        expected = _recog_hyps(decode / "test" / f"recogs-{system}-test.txt")
        got = _recog_hyps(decode / "new" / f"recogs-{system}-new.txt")
        assert any(got.values()) and got == {u: expected[u] for u in utts}, system


@pytest.mark.slow
def test_untranscribed_audio_gets_hypotheses_only(ci_experiment_copy: Path, tmp_path: Path) -> None:
    work = ci_experiment_copy
    utts = _test_utts(work, 2)
    src = _new_dir(work, tmp_path / "untranscribed", utts, with_text=False)
    summary = decode_data_dir(_cfg(work), Workspace(work), src, ["gmm"], out_name="new")
    out = work / "exp" / "decode" / "gmm" / "new"
    assert _hyp_utts(out / "hyp.txt") == utts
    assert "wer" not in summary["gmm"] and not (out / "wer.json").exists()
    assert not (work / "data" / "new" / "text").exists() and summary["labelled"] is False


@pytest.mark.slow
def test_bad_input_is_refused_before_anything_is_written(ci_experiment_copy: Path, tmp_path: Path) -> None:
    work = ci_experiment_copy
    utts = _test_utts(work, 3)
    src = _new_dir(work, tmp_path / "broken", utts)
    (src / f"{utts[1]}.wav").unlink()
    before = _snapshot(work)
    cfg = _cfg(work)
    with pytest.raises(InputError, match=rf"wav\.scp:2: audio file .*{utts[1]}\.wav' does not exist"):
        decode_data_dir(cfg, Workspace(work), src, ["gmm"], out_name="new")
    with pytest.raises(ValueError, match="not trained"):
        decode_data_dir(cfg, Workspace(work), src, ["gmm", "tdnn"], out_name="new")
    with pytest.raises(ValueError, match="choose another name"):
        decode_data_dir(cfg, Workspace(work), src, ["gmm"], out_name="test")
    with pytest.raises(ValueError, match="fbank.fbank differs"):
        decode_data_dir(_cfg(work, "fbank.fbank.num_mel_bins=23"), Workspace(work), src, ["baseline"], out_name="new")
    assert _snapshot(work) == before
