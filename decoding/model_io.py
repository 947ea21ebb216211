"""Kaldi's binary ``final.mdl`` layout (TransitionModel then AmDiagGmm), written and read in Python.

The kaldi-hmm-gmm bindings can pickle these objects but have no ``Write``/``Read`` in Kaldi's format, and a
model that only this code base can open is a dead end for anyone checking our alignments with real Kaldi
tools (``show-alignments``, ``gmm-info``, ``copy-transitions``). This module writes the exact byte layout of
Kaldi's ``TransitionModel::Write`` + ``AmDiagGmm::Write`` in binary mode (behind the ``\\0B`` header) and
reads it back into binding objects through their pickle hooks.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

import kaldi_hmm_gmm as khg
import numpy as np
from _kaldi_hmm_gmm import TransitionModelTuple  # the extension module: the package does not re-export it

from features.atomic import atomic_write
from features.errors import InputError

_BINARY_HEADER = b"\0B"


# ----------------------------------------------------------------------------------------------- writing
def _token(out: io.BytesIO, token: str) -> None:
    out.write(token.encode() + b" ")


def _int32(out: io.BytesIO, value: int) -> None:
    out.write(b"\x04" + struct.pack("<i", int(value)))


def _float32(out: io.BytesIO, value: float) -> None:
    out.write(b"\x04" + struct.pack("<f", float(value)))


def _int_vector(out: io.BytesIO, values: list[int]) -> None:
    out.write(b"\x04" + struct.pack("<i", len(values)) + np.asarray(values, dtype="<i4").tobytes())


def _float_vector(out: io.BytesIO, values: np.ndarray) -> None:
    values = np.asarray(values, dtype="<f4").reshape(-1)
    _token(out, "FV")
    _int32(out, values.size)
    out.write(values.tobytes())


def _float_matrix(out: io.BytesIO, values: np.ndarray) -> None:
    values = np.ascontiguousarray(values, dtype="<f4")
    _token(out, "FM")
    _int32(out, values.shape[0])
    _int32(out, values.shape[1])
    out.write(values.tobytes())


def _write_topology(out: io.BytesIO, topo: khg.HmmTopology) -> None:
    phones, phone2idx, entries = topo.__getstate__()
    _token(out, "<Topology>")
    _int_vector(out, phones)
    _int_vector(out, phone2idx)
    _int32(out, len(entries))
    for entry in entries:
        _int32(out, len(entry))
        for state in entry:
            if state.forward_pdf_class != state.self_loop_pdf_class:
                raise ValueError("only HMM topologies (one pdf class per state) have a binary writer here")
            _int32(out, state.forward_pdf_class)
            _int32(out, len(state.transitions))
            for dest, prob in state.transitions:
                _int32(out, dest)
                _float32(out, prob)
    _token(out, "</Topology>")


def transition_model_bytes(trans_model: khg.TransitionModel) -> bytes:
    """``TransitionModel::Write(binary=true)`` without the stream header."""
    tuples, topo, *_derived, log_probs, _non_self_loop = trans_model.__getstate__()
    out = io.BytesIO()
    _token(out, "<TransitionModel>")
    _write_topology(out, topo)
    _token(out, "<Triples>")
    _int32(out, len(tuples))
    for t in tuples:
        phone, hmm_state, forward_pdf, self_loop_pdf = t.__getstate__()
        if forward_pdf != self_loop_pdf:
            raise ValueError("only HMM transition models (forward pdf == self-loop pdf) are supported")
        _int32(out, phone)
        _int32(out, hmm_state)
        _int32(out, forward_pdf)
    _token(out, "</Triples>")
    _token(out, "<LogProbs>")
    _float_vector(out, np.asarray(log_probs))
    _token(out, "</LogProbs>")
    _token(out, "</TransitionModel>")
    return out.getvalue()


def am_diag_gmm_bytes(am: khg.AmDiagGmm) -> bytes:
    """``AmDiagGmm::Write(binary=true)`` without the stream header."""
    out = io.BytesIO()
    _token(out, "<DIMENSION>")
    _int32(out, am.dim)
    _token(out, "<NUMPDFS>")
    _int32(out, am.num_pdfs)
    for pdf in range(am.num_pdfs):
        gmm = am.get_pdf(pdf)
        inv_vars = np.asarray(gmm.inv_vars, dtype=np.float32)
        _token(out, "<DiagGMM>")
        _token(out, "<GCONSTS>")
        _float_vector(out, np.asarray(gmm.gconsts))
        _token(out, "<WEIGHTS>")
        _float_vector(out, np.asarray(gmm.weights))
        _token(out, "<MEANS_INVVARS>")
        _float_matrix(out, np.asarray(gmm.means, dtype=np.float32) * inv_vars)
        _token(out, "<INV_VARS>")
        _float_matrix(out, inv_vars)
        _token(out, "</DiagGMM>")
    return out.getvalue()


def write_model(path: Path, trans_model: khg.TransitionModel, am_gmm: khg.AmDiagGmm) -> None:
    """Write ``final.mdl`` exactly as Kaldi's ``gmm-est --binary=true`` does, atomically."""
    with atomic_write(path, "wb") as f:
        f.write(_BINARY_HEADER + transition_model_bytes(trans_model) + am_diag_gmm_bytes(am_gmm))


# ----------------------------------------------------------------------------------------------- reading
class _Reader:
    """Cursor over Kaldi binary data that reports the file and byte offset of any mismatch."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> InputError:
        return InputError(f"not a Kaldi binary GMM model: {what} at byte {self.pos}", self.path)

    def token(self) -> str:
        end = self.data.find(b" ", self.pos)
        if end < 0:
            raise self.fail("missing token")
        tok, self.pos = self.data[self.pos:end].decode(errors="replace"), end + 1
        return tok

    def expect(self, token: str) -> None:
        got = self.token()
        if got != token:
            raise self.fail(f"expected {token}, found {got!r}")

    def _basic(self, fmt: str) -> int | float:
        if self.data[self.pos:self.pos + 1] != b"\x04":
            raise self.fail("expected a 4-byte value")
        (value,) = struct.unpack_from(fmt, self.data, self.pos + 1)
        self.pos += 5
        return value

    def int32(self) -> int:
        return int(self._basic("<i"))

    def float32(self) -> float:
        return float(self._basic("<f"))

    def int_vector(self) -> list[int]:
        if self.data[self.pos:self.pos + 1] != b"\x04":
            raise self.fail("expected an int32 vector")
        (n,) = struct.unpack_from("<i", self.data, self.pos + 1)
        start = self.pos + 5
        self.pos = start + 4 * n
        return np.frombuffer(self.data, dtype="<i4", count=n, offset=start).tolist()

    def float_vector(self) -> np.ndarray:
        self.expect("FV")
        n = self.int32()
        values = np.frombuffer(self.data, dtype="<f4", count=n, offset=self.pos).copy()
        self.pos += 4 * n
        return values

    def float_matrix(self) -> np.ndarray:
        self.expect("FM")
        rows, cols = self.int32(), self.int32()
        values = np.frombuffer(self.data, dtype="<f4", count=rows * cols, offset=self.pos).copy()
        self.pos += 4 * rows * cols
        return values.reshape(rows, cols)


def _read_topology(r: _Reader) -> tuple[khg.HmmTopology, list[list[tuple[int, list[tuple[int, float]]]]]]:
    r.expect("<Topology>")
    phones, phone2idx = r.int_vector(), r.int_vector()
    entries: list[list[tuple[int, list[tuple[int, float]]]]] = []
    for _ in range(r.int32()):
        entry = []
        for _ in range(r.int32()):
            pdf_class = r.int32()
            entry.append((pdf_class, [(r.int32(), r.float32()) for _ in range(r.int32())]))
        entries.append(entry)
    r.expect("</Topology>")
    # Rebuild through Kaldi's own topology parser, which also runs HmmTopology::Check().
    lines = ["<Topology>"]
    for idx, entry in enumerate(entries):
        members = " ".join(str(p) for p in phones if phone2idx[p] == idx)
        lines += ["<TopologyEntry>", f"<ForPhones> {members} </ForPhones>"]
        for s, (pdf_class, transitions) in enumerate(entry):
            arcs = " ".join(f"<Transition> {d} {p!r}" for d, p in transitions)
            pdf = f"<PdfClass> {pdf_class} " if pdf_class >= 0 else ""
            lines.append(f"<State> {s} {pdf}{arcs} </State>")
        lines.append("</TopologyEntry>")
    lines.append("</Topology>")
    topo = khg.HmmTopology()
    try:
        topo.read("\n".join(lines))
    except RuntimeError as e:
        raise r.fail(f"invalid topology ({e})") from e
    return topo, entries


def _transition_model_from_parts(topo: khg.HmmTopology, entries: list, triples: list[tuple[int, int, int]],
                                 log_probs: np.ndarray, path: Path) -> khg.TransitionModel:
    """Kaldi's ComputeDerived()/ComputeDerivedOfProbs(), feeding the bindings' pickle state."""
    phone2idx = topo.__getstate__()[1]
    state2id = [0, 1]
    id2state, id2pdf = [0], [0]
    self_loop_tid = [0]
    for tstate, (phone, hmm_state, pdf) in enumerate(triples, start=1):
        transitions = entries[phone2idx[phone]][hmm_state][1]
        loop = 0
        for k, (dest, _prob) in enumerate(transitions):
            id2state.append(tstate)
            id2pdf.append(pdf)
            if dest == hmm_state:
                loop = state2id[-1] + k
        self_loop_tid.append(loop)
        state2id.append(state2id[-1] + len(transitions))
    if len(log_probs) != len(id2state):
        raise InputError(f"{len(log_probs)} transition log-probs, but the topology implies {len(id2state)}", path)
    non_self_loop = [0.0] + [float(np.log(max(1.0 - np.exp(log_probs[t]), 1e-10))) if t else 0.0
                             for t in self_loop_tid[1:]]
    tm_tuples = [TransitionModelTuple(phone, hmm_state, pdf, pdf) for phone, hmm_state, pdf in triples]
    num_pdfs = max(p for _, _, p in triples) + 1
    tm = khg.TransitionModel.__new__(khg.TransitionModel)
    tm.__setstate__((tm_tuples, topo, state2id, id2state, id2pdf, num_pdfs,
                     [float(x) for x in log_probs], non_self_loop))
    return tm


def _read_diag_gmm(r: _Reader, dim: int) -> khg.DiagGmm:
    r.expect("<DiagGMM>")
    r.expect("<GCONSTS>")
    r.float_vector()  # recomputed below from the parameters, as Kaldi's reader also tolerates
    r.expect("<WEIGHTS>")
    weights = r.float_vector()
    r.expect("<MEANS_INVVARS>")
    means_invvars = r.float_matrix()
    r.expect("<INV_VARS>")
    inv_vars = r.float_matrix()
    r.expect("</DiagGMM>")
    if means_invvars.shape != inv_vars.shape or inv_vars.shape != (len(weights), dim):
        raise r.fail("inconsistent DiagGMM shapes")
    gmm = khg.DiagGmm(len(weights), dim)
    gmm.set_weights(weights)
    gmm.set_invvars_and_means(inv_vars, means_invvars / inv_vars)
    gmm.compute_gconsts()
    return gmm


def _parse_model(r: _Reader) -> tuple[khg.TransitionModel, khg.AmDiagGmm]:
    if r.data[:2] != _BINARY_HEADER:
        raise InputError("not a binary Kaldi model (missing \\0B header)", r.path)
    r.pos = 2
    r.expect("<TransitionModel>")
    topo, entries = _read_topology(r)
    r.expect("<Triples>")
    triples = [(r.int32(), r.int32(), r.int32()) for _ in range(r.int32())]
    r.expect("</Triples>")
    r.expect("<LogProbs>")
    log_probs = r.float_vector()
    r.expect("</LogProbs>")
    r.expect("</TransitionModel>")
    trans_model = _transition_model_from_parts(topo, entries, triples, log_probs, r.path)
    r.expect("<DIMENSION>")
    dim = r.int32()
    r.expect("<NUMPDFS>")
    am = khg.AmDiagGmm()
    for _ in range(r.int32()):
        am.add_pdf(_read_diag_gmm(r, dim))
    if r.pos != len(r.data):
        raise r.fail("trailing bytes")
    return trans_model, am


def read_model(path: Path) -> tuple[khg.TransitionModel, khg.AmDiagGmm]:
    """Read a binary Kaldi GMM model (``final.mdl``) into binding objects; bad files raise InputError."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path)
    try:
        return _parse_model(r)
    except InputError:
        raise
    except (struct.error, ValueError, IndexError) as e:  # truncated data inside a vector or matrix
        raise r.fail(f"truncated or corrupt ({e})") from e
