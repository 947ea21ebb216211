"""Kaldi tables and ``wav.scp`` audio: the only place the pipeline touches raw audio files.

Kaldi data dirs are line tables ``<key> <rest of line>`` sorted bytewise by key; most Kaldi tools silently
misbehave on unsorted or duplicated keys, so :func:`read_table` refuses them up front with the file and line.
A ``wav.scp`` value is either a path (anything libsndfile reads: wav, flac, ...) or a shell command ending in
``|`` whose stdout is a wav stream (``sox in.flac -t wav - |``), exactly as in Kaldi.
"""
from __future__ import annotations

import io
import logging
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as taf

from features.errors import InputError
from features.table import read_table  # noqa: F401 (re-exported: its callers import it from here)

logger = logging.getLogger(__name__)


def _read_bytes(spec: str) -> bytes | str:
    """Return the wav bytes a command spec produces, or the path for a file spec."""
    if not spec.endswith("|"):
        return spec
    proc = subprocess.run(spec[:-1], shell=True, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(f"command exited with status {proc.returncode}: {err[-1] if err else ''}")
    if not proc.stdout:
        raise RuntimeError("command wrote no audio to stdout")
    return proc.stdout


def load_audio(spec: str, target_sr: int = 16000, *, where: tuple[Path, int] | None = None) -> np.ndarray:
    """Load one ``wav.scp`` value as float32 mono samples in [-1, 1] at ``target_sr``.

    Multi-channel audio uses channel 0 with a warning, as Kaldi's feature extractors do by default. Audio at
    another rate is resampled with :func:`torchaudio.functional.resample` (windowed sinc), so a corpus mixing
    22.05 kHz TTS voices with 16 kHz speech is usable as is. Any failure (missing file, corrupt data, failing
    command) is an :class:`InputError` naming the ``wav.scp`` file and line given by ``where``.
    """
    path, line = where if where is not None else (None, None)
    if not spec.endswith("|") and not Path(spec).is_file():
        raise InputError(f"audio file {spec!r} does not exist", path, line)
    try:
        source = _read_bytes(spec)
        with sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source) as f:
            sr = f.samplerate
            data = f.read(dtype="float32", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as e:
        raise InputError(f"cannot read audio {spec!r}: {e}", path, line) from e
    if data.shape[1] > 1:
        logger.warning("%s has %d channels; using channel 0", spec, data.shape[1])
    wave = np.ascontiguousarray(data[:, 0])
    if sr != target_sr:
        wave = taf.resample(torch.from_numpy(wave), sr, target_sr).numpy()
    if not np.all(np.isfinite(wave)):
        raise InputError(f"audio {spec!r} contains NaN or infinite samples", path, line)
    return wave.astype(np.float32, copy=False)
