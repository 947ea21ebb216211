"""What the stages leave behind is what the report and the decoder rely on (on the shared CI experiment):
the priors are the alignments' pdf counts, an utterance the GMM failed to align still counts in the WER, the
distilled model is the file of the student dev chose, and decoding in small shards changes no decode output."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from asr_kd.conf.schema import register
from asr_kd.distillation import distill as distill_module
from asr_kd.nn.inference import save_model
from asr_kd.nn.model import DNN
from asr_kd.pipeline import experiment as xp
from asr_kd.pipeline.stages import STAGES
from asr_kd.pipeline.workspace import Workspace
from features.kaldi_io import load_vec_int_scp, read_vector, write_vec_int_ark_scp
from features.tables import read_dict, read_text, write_table

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_priors_are_the_training_alignments_pdf_counts(ci_experiment: Path) -> None:
    ws = Workspace(ci_experiment)
    alignments = load_vec_int_scp(ws.ali("train") / "pdf.scp")
    counts = read_vector(ws.pdf_counts)
    expected = np.bincount(np.concatenate(list(alignments.values())), minlength=xp.num_pdfs(ws))
    assert np.array_equal(counts, expected)
    seen = counts > 0
    np.testing.assert_allclose(np.exp(xp.decode_prior(ws)[seen]), counts[seen] / counts.sum(), rtol=1e-5)


@pytest.mark.slow
def test_an_utterance_that_failed_to_align_is_still_decoded_and_scored(ci_experiment_copy: Path) -> None:
    ws = Workspace(ci_experiment_copy)
    alignments = load_vec_int_scp(ws.ali("dev") / "pdf.scp")
    victim = sorted(alignments)[0]
    write_vec_int_ark_scp(((u, a) for u, a in sorted(alignments.items()) if u != victim),
                          ws.ali("dev") / "pdf.ark", ws.ali("dev") / "pdf.scp")
    write_table(ws.ali("dev") / "failed.txt", {**read_dict(ws.ali("dev") / "failed.txt"), victim: "test"})
    register()
    with initialize_config_dir(str(REPO / "recipes" / "synth" / "conf"), version_base="1.3"):
        cfg = compose("ci", overrides=[f"work_dir={ws.root}", "decode.systems=[baseline]"])
    summary = STAGES["decode"](cfg, ws)
    assert victim in read_text(ws.decode("baseline", "dev") / "hyp.txt")  # decoded ...
    refs = read_text(ws.data("dev") / "text")
    assert summary["baseline"]["dev"]["words"] == sum(len(w) for w in refs.values())  # ... and scored
    assert f"{victim}:\tref=" in (ws.decode("baseline", "dev") / "recogs-baseline-dev.txt").read_text()
    assert victim not in xp.frames(cfg, ws, "dev", "cpu").utt_ids  # while frame accuracy leaves it out


def _relabel(ws: Workspace, split: str, shares: dict[int, float], rest: int) -> None:
    """Replace a split's alignment by pdf labels in exact proportions: ``shares`` of all its frames get each pdf
    (counted over the split's frames in utterance order), the remaining frames get ``rest``."""
    alignments = load_vec_int_scp(ws.ali(split) / "pdf.scp")
    total = sum(len(a) for a in alignments.values())
    labels = np.concatenate([np.full(round(share * total), pdf, dtype=np.int32) for pdf, share in shares.items()])
    labels = np.concatenate([labels, np.full(total - len(labels), rest, dtype=np.int32)])
    bounds = np.cumsum([0, *(len(alignments[u]) for u in sorted(alignments))])
    write_vec_int_ark_scp(((u, labels[bounds[i]:bounds[i + 1]]) for i, u in enumerate(sorted(alignments))),
                          ws.ali(split) / "pdf.ark", ws.ali(split) / "pdf.scp")


@pytest.mark.slow
def test_the_distilled_model_is_the_file_of_the_student_dev_chose(ci_experiment_copy: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Students that always predict one pdf each (pdf 0 at T=1, 1 at T=2, 2 at T=5) on alignments relabelled so
    that dev ties T=2 with T=5 (30% of frames each, T=1 20%) while test prefers T=5 (50%, T=2 10%): dev's
    arg-max with the tie going to the lowest temperature is T=2, although T=5 is listed first and test would
    choose T=5, and ``dnn/distilled/model.pt`` is T=2's file byte for byte."""
    ws = Workspace(ci_experiment_copy)
    pdf_of = {1.0: 0, 2.0: 1, 5.0: 2}
    _relabel(ws, "dev", {0: 0.2, 1: 0.3, 2: 0.3}, rest=3)
    _relabel(ws, "test", {0: 0.1, 1: 0.1, 2: 0.5}, rest=3)
    shutil.copytree(ws.soft_targets("ensemble", 2.0), ws.soft_targets("ensemble", 5.0))  # only read for its mass
    shutil.rmtree(ws.distill_sweep)  # the stage keeps finished students: these three are all to be trained
    trained = []

    def one_pdf_student(model_cfg, train_cfg, dcfg, train_set, dev_set, soft, teachers, out_dir, num_classes,
                        *args, **kwargs) -> None:
        model = DNN(model_cfg, num_classes)
        with torch.no_grad():
            for layer in model.linears():
                layer.weight.zero_()
                layer.bias.zero_()
            model.linears()[-1].bias[pdf_of[dcfg.temperature]] = 1.0
        out_dir.mkdir(parents=True, exist_ok=True)
        save_model(out_dir / "model.pt", model_cfg, num_classes, model.state_dict())
        (out_dir / "metrics.json").write_text(json.dumps({"epochs": [{}]}))
        trained.append(dcfg.temperature)

    monkeypatch.setattr(distill_module, "distill", one_pdf_student)
    register()
    with initialize_config_dir(str(REPO / "recipes" / "synth" / "conf"), version_base="1.3"):
        cfg = compose("ci", overrides=[f"work_dir={ws.root}", "distill.temperatures_sweep=[5.0,1.0,2.0]"])
    summary = STAGES["distill"](cfg, ws)
    assert sorted(trained) == [1.0, 2.0, 5.0]
    dev = {t: row["dev"]["all"] for t, row in summary["sweep"].items()}
    test = {t: row["test"]["all"] for t, row in summary["sweep"].items()}
    assert dev == pytest.approx({1.0: 20.0, 2.0: 30.0, 5.0: 30.0}, abs=0.01) and dev[2.0] == dev[5.0]
    assert test == pytest.approx({1.0: 10.0, 2.0: 10.0, 5.0: 50.0}, abs=0.01)
    assert summary["best_temperature"] == 2.0 and max(test, key=test.get) == 5.0
    assert json.loads((ws.distill_sweep / "sweep.json").read_text())["best_temperature"] == 2.0
    distilled = (ws.dnn("distilled") / "model.pt").read_bytes()
    assert distilled == (ws.distill_sweep / "T2" / "model.pt").read_bytes()
    assert distilled not in {(ws.distill_sweep / f"T{t}" / "model.pt").read_bytes() for t in (1, 5)}
    assert summary["distilled"]["dev"]["all"] == dev[2.0] and summary["distilled"]["test"]["all"] == test[2.0]


def _decode_outputs(ws: Workspace, system: str) -> dict:
    """What decoding a system leaves that must not depend on how its splits were sharded (timings aside)."""
    tuning = json.loads(ws.decode_tuning(system).read_text())
    tuning.pop("rtf")
    hyps = {split: (ws.decode(system, split) / "hyp.txt").read_text() for split in ("dev", "test")}
    return {"tuning": tuning, **hyps}


@pytest.mark.slow
def test_decoding_in_small_shards_gives_the_whole_splits_results(ci_experiment_copy: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The CI splits fit one decoding shard; cut into shards of ~300 frames, the GMM (graph stage) and a DNN system
    (decode stage) give the same hypotheses, WERs, chosen scale and tuning.json, and a DNN's log-likelihoods of a
    shard are those of the whole split loaded at once."""
    ws = Workspace(ci_experiment_copy)
    before = {system: _decode_outputs(ws, system) for system in ("gmm", "baseline")}
    register()
    with initialize_config_dir(str(REPO / "recipes" / "synth" / "conf"), version_base="1.3"):
        cfg = compose("ci", overrides=[f"work_dir={ws.root}", "decode.systems=[baseline]"])
    prior = xp.decode_prior(ws)
    system = xp.dnn_systems(cfg, ws)["baseline"]
    (whole,) = xp.hybrid_loglike_shards(cfg, ws, system, "dev", prior, torch.device("cpu"))  # dev fits one shard
    monkeypatch.setattr("decoding.decode.DECODE_SHARD_BYTES", 4 * len(prior) * 300)
    shards = list(xp.hybrid_loglike_shards(cfg, ws, system, "dev", prior, torch.device("cpu")))
    assert len(shards) > 5 and [u for shard in shards for u in shard] == list(whole)
    for shard in shards:
        for utt, loglikes in shard.items():
            np.testing.assert_allclose(loglikes, whole[utt], rtol=0, atol=1e-4)
    STAGES["graph"](cfg, ws)
    STAGES["decode"](cfg, ws)
    assert {system: _decode_outputs(ws, system) for system in ("gmm", "baseline")} == before
