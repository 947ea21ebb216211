"""Deployment export: a trained network and the priors it needs, as one ``torch.export`` program (a ``.pt2`` file)
that runs without asr-kd.

A hybrid decoder wants scaled log-likelihoods ``log p(s|x) - log p(s)`` per frame (Kaldi's ``nnet-forward
--class-frame-counts``). The exported module does everything between features and decoder: it splices each
frame with its context (edges replicated, as in training), runs the network, takes the log-softmax and divides by
the priors; multiply by the acoustic scale the system chose on dev and hand the matrix to any WFST decoder (pdf
columns; map transition-ids through the transition model). Its input is one utterance's 40-d log-mel fbank after
per-speaker CMVN (mean and variance), exactly what :func:`features.extract.load_feats` gives.

``torch.export`` (with a dynamic number of frames), because it ships with torch and is its successor of
TorchScript; ONNX export would need packages this project does not install. Load it with
``torch.export.load(path).module()(feats)`` in Python, or compile it for C++ with AOTInductor.

    python -m asr_kd.nn.export --model exp/dnn/distilled/model.pt --pdf-counts exp/tri1_ali/train/pdf_counts \\
        --out distilled.pt2            # also writes distilled.json (context, dims, how to feed it)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asr_kd.nn.inference import load_model
from asr_kd.nn.model import DNN
from asr_kd.nn.priors import log_priors
from features.atomic import atomic_write, write_text_atomic
from features.kaldi_io import read_vector


class HybridAcousticModel(nn.Module):
    """[T, feat_dim] normalized features of one utterance -> [T, num_pdfs] scaled log-likelihoods."""

    def __init__(self, dnn: DNN, log_prior: np.ndarray) -> None:
        super().__init__()
        self.dnn = dnn.eval()
        self.register_buffer("log_prior", torch.as_tensor(log_prior, dtype=torch.float32))
        self.register_buffer("offsets", torch.arange(-dnn.cfg.left_context, dnn.cfg.right_context + 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        frames = feats.shape[0]
        positions = torch.arange(frames, device=feats.device)[:, None] + self.offsets[None, :]
        windows = feats[positions.clamp(0, frames - 1)].reshape(frames, -1)
        return torch.log_softmax(self.dnn(windows), dim=-1) - self.log_prior


def export_model(model_path: Path, pdf_counts: Path, out: Path) -> dict:
    """Write the exported program (``.pt2``) for ``model_path`` with the priors of ``pdf_counts``, and its
    description (``.json``)."""
    dnn = load_model(model_path, "cpu")
    prior = log_priors(read_vector(pdf_counts))
    if prior.shape[0] != dnn.num_classes:
        raise ValueError(f"{pdf_counts} has {prior.shape[0]} pdfs but {model_path} predicts {dnn.num_classes}")
    example = torch.zeros(dnn.cfg.left_context + dnn.cfg.right_context + 2, dnn.cfg.feat_dim)
    program = torch.export.export(HybridAcousticModel(dnn, prior).eval(), (example,),
                                  dynamic_shapes={"feats": {0: torch.export.Dim("frames", min=1)}})
    out = Path(out)
    with atomic_write(out, "wb") as f:
        torch.export.save(program, f)
    meta = {"format": "torch.export (load with torch.export.load(path).module())", "source": str(model_path),
            "input": "[frames, feat_dim] log-mel fbank with "
            "per-speaker CMVN (means and variances)", "output": "[frames, num_pdfs] log p(s|x) - log p(s); "
            "multiply by the acoustic scale before decoding", "feat_dim": dnn.cfg.feat_dim,
            "left_context": dnn.cfg.left_context, "right_context": dnn.cfg.right_context,
            "num_pdfs": dnn.num_classes, "hidden_layers": dnn.cfg.hidden_layers, "hidden_dim": dnn.cfg.hidden_dim,
            "bytes": out.stat().st_size}
    write_text_atomic(out.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="asr-kd-export", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model.pt written by training")
    parser.add_argument("--pdf-counts", type=Path, required=True, help="exp/tri1_ali/train/pdf_counts (priors)")
    parser.add_argument("--out", type=Path, required=True, help="the .pt2 file to write")
    args = parser.parse_args(argv)
    print(json.dumps(export_model(args.model, args.pdf_counts, args.out), indent=2))


if __name__ == "__main__":
    main()
