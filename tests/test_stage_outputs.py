"""What the stages leave behind is what the report and the decoder rely on (on the shared CI experiment):
the priors are the alignments' pdf counts, and an utterance the GMM failed to align still counts in the WER."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from asr_kd.conf.schema import register
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
