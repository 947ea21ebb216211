"""Decode any Kaldi data dir with an experiment's trained systems: try a model on new recordings, no retraining.

The new recordings go through exactly the front-end the systems were trained on: the dir is validated and
imported (resampled to the experiment's rate) as ``data/<name>``, fbank (DNNs) and MFCC (GMM) features are
computed with the experiment's settings into ``data/fbank/<name>`` and ``data/mfcc/<name>`` with per-speaker
CMVN taken from the new dir's own speakers, and each system decodes with the experiment's HCLG at the acoustic
scale it chose on dev (``exp/decode/<system>/tuning.json``). Hypotheses go to
``exp/decode/<system>/<name>/hyp.txt``; a dir with transcripts is also scored, exactly as dev and test are.

No alignment exists for new audio, so DNN inputs are a :class:`~asr_kd.nn.frames.FrameSet` without targets: decoding
only asks a system for log-posteriors, never for frame accuracy. Log-likelihoods are computed and decoded one shard
of utterances at a time, so a dir of any size decodes in the memory of a shard.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from asr_kd.corpus.kaldi_dir import import_kaldi_dir
from asr_kd.pipeline import experiment as xp
from asr_kd.pipeline.workspace import SPLITS, Workspace
from decoding.decode import DecodeResult, LoglikeShards, decode_loglikes
from decoding.gmm import gmm_loglike_shards
from features.errors import InputError
from features.extract import make_feats
from features.tables import write_text

log = logging.getLogger(__name__)


RESERVED_NAMES = frozenset({*SPLITS, "local", "lang", "lang_test", "fbank", "mfcc", "wav"})
"""Names under data/ (and exp/decode/<system>/) that belong to the experiment itself and must never be replaced."""

FRONT_END_KEYS = ("fbank", "mfcc", "sample_rate")
"""The parts of a feature config that change the numbers (nj, device, batch_size only change the speed)."""


def decode_data_dir(cfg: DictConfig, ws: Workspace, data_dir: Path, systems: Sequence[str],
                    out_name: str | None = None) -> dict:
    """Decode the Kaldi data dir ``data_dir`` (wav.scp, utt2spk, optional text) with trained ``systems``.

    ``systems`` names any of gmm, baseline, ensemble, distilled, small_hard, small_soft (empty: all trained
    ones). Returns, per system, the acoustic scale used, how many utterances were decoded / failed / ended
    off a final state, the real-time factor, and, when ``data_dir`` has ``text``, the WER summary of
    :func:`asr_kd.pipeline.experiment.score_split` (also written to ``exp/decode/<system>/<name>/wer.json``).

    Bad input (missing audio, unsorted tables...) raises :class:`InputError` naming the file and line before
    anything is written; the experiment's own data and results (train/dev/test) are never touched.
    """
    data_dir = Path(data_dir)
    name = out_name or data_dir.resolve().name
    _check_name(name)
    _check_trained(ws)
    _check_front_end(cfg, ws)
    dnns = xp.dnn_systems(cfg, ws)  # the DNN systems the experiment trained and decoded; the GMM always exists
    available = ["gmm", *dnns]
    wanted = list(systems) or available
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise ValueError(f"systems {unknown} are not trained in {ws.root} (trained: {', '.join(available)})")

    sample_rate = int(cfg.fbank.sample_rate)
    report = import_kaldi_dir(data_dir, ws.data(name), sample_rate=sample_rate, require_text=False)
    log.info("decoding %s as %s: %s", data_dir, name, report.summary())
    labelled = (ws.data(name) / "text").exists()
    needs = {"fbank": any(s != "gmm" for s in wanted), "mfcc": "gmm" in wanted}  # DNNs read fbank, the GMM MFCC
    for kind, out in (("fbank", ws.fbank), ("mfcc", ws.mfcc)):
        if needs[kind]:
            make_feats(ws.data(name), out(name), xp.to_object(cfg[kind]), cfg.nj)

    device = xp.device_of(cfg)
    prior = xp.decode_prior(ws)
    summary = {"data_dir": str(data_dir), "name": name, "utts": report.num_utts, "labelled": labelled}
    for system in wanted:
        if system == "gmm":
            loglikes = gmm_loglike_shards(ws.tri, ws.mfcc(name))
        else:
            loglikes = xp.hybrid_loglike_shards(cfg, ws, dnns[system], name, prior, device)
        summary[system] = _decode_system(cfg, ws, system, name, loglikes, labelled)
    xp.write_json(ws.decode_data_summary(name), summary)
    return summary


def _decode_system(cfg: DictConfig, ws: Workspace, system: str, name: str, loglikes: LoglikeShards,
                   labelled: bool) -> dict:
    """Decode one system's log-likelihoods at its tuned scale; write hyp.txt, and the WER files if labelled."""
    decoder = xp.to_object(cfg.decode.decoder)
    decoder.acoustic_scale = tuned_acoustic_scale(ws, system, decoder.acoustic_scale)
    result: DecodeResult = decode_loglikes(ws.graph, ws.model, loglikes, decoder, cfg.nj)
    out = ws.decode(system, name)
    write_text(out / "hyp.txt", result.hyps)
    summary = {"acoustic_scale": decoder.acoustic_scale, "decoded": len(result.hyps), "failed": len(result.failed),
               "partial": len(result.partial), "rtf": result.real_time_factor}
    if labelled:
        summary["wer"], _ = xp.score_split(ws, system, name, result.hyps)
        log.info("%s on %s: WER %.2f%% (acoustic scale %g)", system, name, summary["wer"]["all"],
                 decoder.acoustic_scale)
    return summary


def tuned_acoustic_scale(ws: Workspace, system: str, default: float) -> float:
    """The acoustic scale ``system`` chose on dev (exp/decode/<system>/tuning.json), else ``default``."""
    path = ws.decode_tuning(system)
    if not path.exists():
        log.warning("%s: no tuned acoustic scale (%s missing); using %g", system, path, default)
        return default
    try:
        return float(json.loads(path.read_text())["acoustic_scale"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"no acoustic_scale in decode results ({e})", path) from e


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or name in RESERVED_NAMES:
        raise ValueError(f"cannot decode into data/{name}: choose another name (not one of "
                         f"{', '.join(sorted(RESERVED_NAMES))}, no '/' or leading '.')")


def _check_trained(ws: Workspace) -> None:
    """The graph, the transition model and the priors must exist: decoding needs the trained experiment."""
    for path in (ws.graph / "HCLG.fst", ws.model, ws.pdf_counts):
        if not path.exists():
            raise InputError("the experiment is not trained this far (run the recipe through the decode stage)",
                             path)


def _check_front_end(cfg: DictConfig, ws: Workspace) -> None:
    """Refuse features other than those the systems were trained on (settings saved by the features stage)."""
    saved = ws.stage("features") / "config.yaml"
    if not saved.exists():
        raise InputError("no saved config of the features stage", saved)
    trained = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
    current = OmegaConf.to_container(cfg, resolve=True)
    for kind in ("fbank", "mfcc"):
        for key in FRONT_END_KEYS:
            then, now = trained[kind][key], current[kind][key]
            if now != then:
                raise ValueError(f"{kind}.{key} differs from the setting the experiment was trained with "
                                 f"({saved}): {then} -> {now}")
