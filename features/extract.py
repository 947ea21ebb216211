"""Feature extraction over a Kaldi data dir: ``make_fbank.sh`` + ``compute_cmvn_stats.sh`` in one function.

The output directory is itself a Kaldi data dir (metadata copied, ``feats.scp``, ``utt2num_frames``,
``cmvn.scp``), so every later stage, and Kaldi's own tools, can read it. Work is split into ``nj`` contiguous
shards of the sorted utterance list (like ``split_data.sh``), each a unit of :mod:`features.executor` (a local
process, or a Dask worker) that writes ``data/raw_<kind>_<name>.<job>.ark``; the whole directory is built under a
temporary name (``.<name>.partial``) and renamed into place, so a killed run never leaves a directory that looks
finished. Where the executor keeps finished units (a pipeline run), the temporary directory stays after a failure
and a rerun extracts only the shards that had not finished.
"""
from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from features.atomic import resumable_dir, write_text_atomic
from features.audio import load_audio
from features.cmvn import apply_cmvn, compute_cmvn_stats
from features.errors import InputError
from features.executor import Unit, executor_for, units_kept
from features.fbank import FbankConfig, MfccConfig, compute_fbank_batch, compute_mfcc_batch, num_frames
from features.kaldi_io import load_mat_scp, read_mat_scp, write_mat_ark_scp
from features.tables import read_table

logger = logging.getLogger(__name__)

#: Files of the source data dir that describe features and are therefore written here, never copied.
PRODUCED_FILES = frozenset({"feats.scp", "cmvn.scp", "utt2num_frames"})


@dataclass
class FeatureConfig:
    """What to extract, and on what device in batches of how many utterances.

    ``batch_size`` utterances go through one feature call: large batches keep a GPU busy, while on a CPU
    small ones are as fast (see ``python -m features.bench``). How many processes share the work is not part of
    the config (it never changes the numbers): :func:`make_feats` takes ``nj``.
    """

    kind: str = "fbank"
    fbank: FbankConfig = field(default_factory=FbankConfig)
    mfcc: MfccConfig = field(default_factory=MfccConfig)
    sample_rate: int = 16000
    device: str = "cpu"
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.kind not in ("fbank", "mfcc"):
            raise ValueError(f"FeatureConfig.kind must be 'fbank' or 'mfcc', got {self.kind!r}")
        if self.batch_size < 1:
            raise ValueError("FeatureConfig.batch_size must be >= 1")


@dataclass
class _UttInfo:
    utt: str
    frames: int
    samples: int
    stats: np.ndarray


@dataclass(frozen=True)
class _Shard(Unit[list[_UttInfo]]):
    """Job ``job``'s utterances ``(utt, wav.scp value, wav.scp line)`` and where to write them: one unit of the
    executor, which writes its own ark/scp and returns per-utterance frame counts and CMVN statistics."""

    job: int
    entries: tuple[tuple[str, str, int], ...]
    wav_scp: Path
    ark: Path
    scp: Path
    ark_path_in_scp: Path
    cfg: FeatureConfig

    def describe(self) -> str:
        return f"job {self.job}: lines {self.entries[0][2]}-{self.entries[-1][2]} of {self.wav_scp}"

    def run(self) -> list[_UttInfo]:
        return _extract_shard(self)


def _one_thread() -> None:
    """Worker set-up: one intra-op thread each (nj processes share the cores)."""
    torch.set_num_threads(1)


def _extract_shard(shard: _Shard) -> list[_UttInfo]:
    """Compute features for one shard, write its ark/scp and return per-utterance counts and CMVN stats."""
    cfg = shard.cfg
    sub = cfg.fbank if cfg.kind == "fbank" else cfg.mfcc
    batch_fn = compute_fbank_batch if cfg.kind == "fbank" else compute_mfcc_batch
    infos: list[_UttInfo] = []

    def feats_iter() -> Iterator[tuple[str, np.ndarray]]:
        for i in range(0, len(shard.entries), cfg.batch_size):
            batch = shard.entries[i:i + cfg.batch_size]
            waves = []
            for utt, spec, line in batch:
                wave = load_audio(spec, cfg.sample_rate, where=(shard.wav_scp, line))
                if num_frames(len(wave), cfg.sample_rate, sub.frame_length_ms, sub.frame_shift_ms) == 0:
                    raise InputError(f"utterance {utt!r} is shorter than one {sub.frame_length_ms:g} ms frame "
                                     f"({len(wave)} samples)", shard.wav_scp, line)
                waves.append(wave)
            for (utt, _, _), wave, feats in zip(batch, waves, batch_fn(waves, cfg.sample_rate, sub, cfg.device)):
                mat = feats.float().cpu().numpy()
                infos.append(_UttInfo(utt, mat.shape[0], len(wave), compute_cmvn_stats([mat])))
                yield utt, mat

    write_mat_ark_scp(feats_iter(), shard.ark, shard.scp, ark_path_in_scp=shard.ark_path_in_scp)
    return infos


def _speakers(data_dir: Path, utts: list[str]) -> list[tuple[str, list[str]]]:
    """Speaker -> utterances from spk2utt (derived from utt2spk if absent), checked against utt2spk."""
    utt2spk_path = data_dir / "utt2spk"
    utt2spk_rows = read_table(utt2spk_path)
    utt2spk = dict(utt2spk_rows)
    wav_set = set(utts)
    for lineno, (utt, spk) in enumerate(utt2spk_rows, start=1):
        if utt not in wav_set:
            raise InputError(f"utterance {utt!r} is not in wav.scp", utt2spk_path, lineno)
        if len(spk.split()) != 1:
            raise InputError(f"speaker of {utt!r} must be one token, got {spk!r}", utt2spk_path, lineno)
    missing = [u for u in utts if u not in utt2spk]
    if missing:
        raise InputError(f"{len(missing)} utterances of wav.scp have no speaker, e.g. {missing[0]!r}", utt2spk_path)
    spk2utt_path = data_dir / "spk2utt"
    if not spk2utt_path.exists():
        groups: dict[str, list[str]] = {}
        for utt, spk in utt2spk_rows:
            groups.setdefault(spk, []).append(utt)
        return sorted(groups.items())
    out = []
    listed = 0
    for lineno, (spk, rest) in enumerate(read_table(spk2utt_path), start=1):
        members = rest.split()
        for utt in members:
            if utt2spk.get(utt) != spk:
                raise InputError(f"utterance {utt!r} is listed under speaker {spk!r} but utt2spk says "
                                 f"{utt2spk.get(utt)!r}", spk2utt_path, lineno)
        listed += len(members)
        out.append((spk, members))
    if listed != len(utt2spk):
        raise InputError(f"spk2utt lists {listed} utterances, utt2spk has {len(utt2spk)}", spk2utt_path)
    return out


def _run_shards(shards: list[_Shard], nj: int) -> list[_UttInfo]:
    """The shards as units of the executor (``nj`` local processes, in this one when nj == 1, or a Dask
    cluster's workers), their per-utterance results in shard order."""
    # fork is cheap (torch is already imported) and safe for CPU work, as in torch's DataLoader; CUDA cannot be used
    # in a forked child, so GPU extraction spawns fresh interpreters.
    spawn = torch.device(shards[0].cfg.device).type == "cuda"
    infos: list[_UttInfo] = []
    for part in executor_for(nj).map(shards, "features", setup=_one_thread, start_method="spawn" if spawn else "fork"):
        infos.extend(part)
    return infos


def make_feats(data_dir: Path, out_dir: Path, cfg: FeatureConfig | None = None, nj: int = 1) -> dict:
    """Extract features for every utterance of ``data_dir`` into the Kaldi data dir ``out_dir`` with ``nj``
    worker processes.

    Writes ``feats.scp`` (+ ``data/raw_<kind>_<name>.<job>.ark``), ``utt2num_frames``, ``cmvn.scp``
    (per-speaker stats, ``data/cmvn_<name>.ark``), copies every other file of the source dir (``wav.scp text
    utt2spk spk2utt utt2dur utt2subset *.ctm`` ..., not hidden files such as ``.done``), and writes
    ``spk2utt``/``utt2dur`` when the source lacks them. Returns a
    summary: utts, speakers, frames, audio_seconds, seconds (wall clock), frames_per_s, kind, dim.
    """
    cfg = cfg or FeatureConfig()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    start = time.perf_counter()
    wav_scp = data_dir / "wav.scp"
    if (data_dir / "segments").exists():
        raise InputError("segments files are not supported: cut the recordings into utterances first",
                         data_dir / "segments")
    wav_rows = read_table(wav_scp)
    if not wav_rows:
        raise InputError("no utterances", wav_scp)
    utts = [utt for utt, _ in wav_rows]
    speakers = _speakers(data_dir, utts)
    entries = [(utt, spec, lineno) for lineno, (utt, spec) in enumerate(wav_rows, start=1)]
    if nj < 1:
        raise ValueError(f"nj must be >= 1, got {nj}")
    nj = min(nj, len(entries))
    final = out_dir.resolve()
    name = final.name
    with resumable_dir(final, keep=units_kept(nj)) as tmp:
        (tmp / "data").mkdir(exist_ok=True)
        for stale in tmp.iterdir():  # an interrupted run's; its finished shards' arks in data/ are reused
            if stale.is_file():
                stale.unlink()
        shards = []
        for job, part in enumerate(np.array_split(np.arange(len(entries)), nj), start=1):
            ark_name = f"data/raw_{cfg.kind}_{name}.{job}.ark"
            shards.append(_Shard(job, tuple(entries[i] for i in part), wav_scp, tmp / ark_name,
                                 tmp / f"data/{cfg.kind}.{job}.scp",
                                 final / ark_name, cfg))
        infos = _run_shards(shards, nj)
        by_utt = {info.utt: info for info in infos}
        (tmp / "feats.scp").write_text("".join(s.scp.read_text() for s in shards))
        for s in shards:
            s.scp.unlink()
        write_text_atomic(tmp / "utt2num_frames", "".join(f"{u} {by_utt[u].frames}\n" for u in utts))
        spk_stats = [(spk, sum(by_utt[u].stats for u in members)) for spk, members in speakers]
        write_mat_ark_scp(spk_stats, tmp / f"data/cmvn_{name}.ark", tmp / "cmvn.scp",
                          ark_path_in_scp=final / f"data/cmvn_{name}.ark")
        written = {s.ark.name for s in shards} | {f"cmvn_{name}.ark"}
        for stale in (tmp / "data").iterdir():  # an interrupted run's, with other settings
            if stale.name not in written:
                stale.unlink()
        for src in sorted(data_dir.iterdir()):
            if src.is_file() and not src.name.startswith(".") and src.name not in PRODUCED_FILES:
                shutil.copyfile(src, tmp / src.name)
        if not (tmp / "spk2utt").exists():
            write_text_atomic(tmp / "spk2utt", "".join(f"{s} {' '.join(m)}\n" for s, m in speakers))
        if not (tmp / "utt2dur").exists():
            write_text_atomic(tmp / "utt2dur", "".join(
                f"{u} {by_utt[u].samples / cfg.sample_rate:.3f}\n" for u in utts))
    frames = sum(info.frames for info in infos)
    seconds = time.perf_counter() - start
    summary = {
        "kind": cfg.kind, "dim": int(spk_stats[0][1].shape[1] - 1), "utts": len(utts),
        "speakers": len(speakers), "frames": frames,
        "audio_seconds": sum(info.samples for info in infos) / cfg.sample_rate,
        "seconds": seconds, "frames_per_s": frames / seconds,
    }
    logger.info("%s: %d utts, %d frames of %s in %.1f s (%.0f frames/s, nj=%d, %s)", out_dir, len(utts), frames,
                cfg.kind, seconds, summary["frames_per_s"], nj, cfg.device)
    return summary


def load_feats(feats_dir: Path, cmvn: str = "speaker", norm_vars: bool = True) -> dict[str, np.ndarray]:
    """Read ``feats.scp`` of a feature dir with CMVN applied: ``speaker`` (from ``cmvn.scp`` and ``utt2spk``),
    ``utterance`` (each utterance's own stats) or ``none``. Returns float32 matrices by utterance."""
    return dict(iter_feats(feats_dir, cmvn, norm_vars))


def iter_feats(feats_dir: Path, cmvn: str = "speaker", norm_vars: bool = True) -> Iterator[tuple[str, np.ndarray]]:
    """:func:`load_feats` one utterance at a time, in ``feats.scp`` order: what a reader that must not hold a whole
    split (the frame archive's writer) goes through."""
    feats_dir = Path(feats_dir)
    if cmvn not in ("speaker", "utterance", "none"):
        raise ValueError(f"cmvn must be 'speaker', 'utterance' or 'none', got {cmvn!r}")
    stats: dict[str, np.ndarray] = {}
    utt2spk: dict[str, str] = {}
    if cmvn == "speaker":
        stats = load_mat_scp(feats_dir / "cmvn.scp")
        utt2spk = dict(read_table(feats_dir / "utt2spk"))
    for utt, mat in read_mat_scp(feats_dir / "feats.scp"):
        mat = mat.astype(np.float32, copy=False)
        if cmvn == "speaker":
            spk = utt2spk.get(utt)
            if spk is None or spk not in stats:
                raise InputError(f"no CMVN stats for utterance {utt!r} (speaker {spk!r})", feats_dir / "cmvn.scp")
            mat = apply_cmvn(mat, stats[spk], norm_vars)
        elif cmvn == "utterance":
            mat = apply_cmvn(mat, compute_cmvn_stats([mat]), norm_vars)
        yield utt, mat
