"""HMM topology, transition model and training graphs (Kaldi's gmm-init-mono / compile-train-graphs).

The lang dir is read with :func:`decoding.lang.load_lang` (ours or Kaldi's ``prepare_lang.sh`` output); the
tree-building inputs that only GMM training needs (``phones/roots.int``, ``phones/extra_questions.int``) are
read here, with Kaldi's defaults when a lang dir lacks them.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np

from decoding.lang import Lang, load_lang
from decoding.model_io import read_model, write_model
from features.errors import InputError

__all__ = [
    "GraphCompiler",
    "TransitionTables",
    "TreeRoot",
    "make_topology",
    "monophone_tree",
    "read_model",
    "transition_model",
    "transition_tables",
    "tree_extra_questions",
    "tree_roots",
    "write_model",
]

logger = logging.getLogger(__name__)


def _as_lang(lang: Lang | Path) -> Lang:
    return lang if isinstance(lang, Lang) else load_lang(Path(lang))


def _int_lines(path: Path) -> list[list[int]]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not all(t.isdigit() for t in line.split()):
            raise InputError(f"expected integer ids, got {line!r}", path, n)
        if line.split():
            out.append([int(t) for t in line.split()])
    return out


@dataclass(frozen=True)
class TreeRoot:
    """One line of Kaldi's ``roots.int``: phones sharing a tree root, and how the tree may treat them."""

    phones: list[int]
    shared: bool = True  # the pdf-classes share one tree (pdf-class is just another question)
    split: bool = True   # the root may be split at all


def tree_roots(lang: Lang) -> list[TreeRoot]:
    """``phones/roots.int`` (``shared|not-shared split|not-split <phone ids>`` per line); without it every
    phone is its own shared, split root."""
    path = lang.lang_dir / "phones" / "roots.int"
    if not path.is_file():
        return [TreeRoot([p]) for p in lang.real_phones]
    roots = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if (len(parts) < 3 or parts[0] not in ("shared", "not-shared") or parts[1] not in ("split", "not-split")
                or not all(t.isdigit() for t in parts[2:])):
            raise InputError(f"expected 'shared|not-shared split|not-split <phone ids>', got {line!r}", path, n)
        roots.append(TreeRoot([int(t) for t in parts[2:]], parts[0] == "shared", parts[1] == "split"))
    return roots


def tree_extra_questions(lang: Lang) -> list[list[int]]:
    """``phones/extra_questions.int``, or Kaldi's default extra question (silence vs the rest) without it."""
    path = lang.lang_dir / "phones" / "extra_questions.int"
    if not path.is_file():
        return [lang.silence_phones, lang.nonsilence_phones]
    return _int_lines(path)


def make_topology(lang: Lang | Path) -> khg.HmmTopology:
    """The HMM topology of ``lang/topo`` (Kaldi: 3-state phones, 5-state silence), checked by Kaldi."""
    lang = _as_lang(lang)
    topo = khg.HmmTopology()
    try:
        topo.read(lang.topo_text)
    except RuntimeError as e:
        raise InputError(f"invalid HMM topology: {e}", lang.lang_dir / "topo") from e
    missing = set(lang.real_phones) - set(topo.phones)
    if missing:
        raise InputError(f"phones {sorted(missing)} have no topology entry", lang.lang_dir / "topo")
    return topo


def monophone_tree(topo: khg.HmmTopology) -> khg.ContextDependency:
    """One pdf per (phone, pdf-class): the tree of gmm-init-mono with every phone its own set."""
    return khg.monophone_context_dependency(list(topo.phones), topo.get_phone_to_num_pdf_classes())


def transition_model(ctx_dep: khg.ContextDependency, topo: khg.HmmTopology) -> khg.TransitionModel:
    """Kaldi TransitionModel for this tree and topology (initial probabilities from the topology)."""
    return khg.TransitionModel(ctx_dep, topo)


class GraphCompiler:
    """Per-utterance training graphs, as ``compile-train-graphs`` builds them, compiled when asked for.

    Built once per model (the lexicon FST is read here); GMM training and alignment compile each shard's graphs
    when they process the shard, so no more than a shard's graphs are ever held. Transition and self-loop scales
    are 0 at compile time (Kaldi's defaults): the current transition probabilities are added at alignment time
    with :func:`kaldi_hmm_gmm.add_transition_probs`, so a graph stays valid while the model is re-estimated.
    Words missing from words.txt map to the OOV word (like ``sym2int.pl --map-oov``).
    """

    def __init__(self, trans_model: khg.TransitionModel, ctx_dep: khg.ContextDependency, lang: Lang | Path) -> None:
        self.lang = _as_lang(lang)
        if not self.lang.lexicon_fst_path.is_file():
            raise InputError("missing lexicon FST", self.lang.lexicon_fst_path)
        lexicon = kaldifst.StdVectorFst.read(str(self.lang.lexicon_fst_path))
        opts = khg.TrainingGraphCompilerOptions(transition_scale=0.0, self_loop_scale=0.0)
        # The compiler keeps references to these: they must live as long as it does.
        self._keep = (trans_model, ctx_dep, lexicon)
        self._compiler = khg.TrainingGraphCompiler(trans_model, ctx_dep, lexicon, self.lang.phone_disambig, opts)

    def count_oov(self, texts: Mapping[str, list[str]]) -> int:
        """Word tokens of ``texts`` that words.txt lacks (each becomes the OOV word), logged when there are any."""
        num_oov = sum(w not in self.lang.words for words in texts.values() for w in words)
        if num_oov:
            logger.warning("%d word tokens not in %s mapped to %s", num_oov, self.lang.lang_dir / "words.txt",
                           self.lang.oov_word)
        return num_oov

    def compile(self, texts: Mapping[str, list[str]]) -> dict[str, kaldifst.StdVectorFst]:
        """The training graph of each utterance of ``texts`` (utterance -> its words)."""
        words, oov = self.lang.words, self.lang.oov_id
        return {utt: self._compiler.compile_graph_from_text([words.get(w, oov) for w in text])
                for utt, text in texts.items()}


@dataclass(frozen=True)
class TransitionTables:
    """Per-transition-id lookup arrays (index 0 unused), so whole alignments convert with numpy indexing."""

    pdf: np.ndarray          # transition-id -> pdf id
    phone: np.ndarray        # transition-id -> phone
    hmm_state: np.ndarray    # transition-id -> HMM state of its source
    pdf_class: np.ndarray    # transition-id -> pdf class of its source state
    ends_phone: np.ndarray   # transition-id enters the final (non-emitting) state: last frame of a phone
    trans_index: np.ndarray  # transition-id -> index of the transition within its source state
    is_self_loop: np.ndarray
    transition_state: np.ndarray  # transition-id -> transition state (1-based)


def transition_tables(trans_model: khg.TransitionModel) -> TransitionTables:
    """Numpy views of the transition model, one entry per transition-id."""
    tuples, topo, state2id, id2state, id2pdf, *_ = trans_model.__getstate__()
    _, phone2idx, entries = topo.__getstate__()
    n = len(id2state)
    phone = np.zeros(n, np.int32)
    hmm_state = np.zeros(n, np.int32)
    pdf_class = np.zeros(n, np.int32)
    ends = np.zeros(n, bool)
    index = np.zeros(n, np.int32)
    loop = np.zeros(n, bool)
    for tid in range(1, n):
        tstate = id2state[tid]
        ph, hs, _fwd, _sl = tuples[tstate - 1].__getstate__()
        entry = entries[phone2idx[ph]]
        k = tid - state2id[tstate]
        dest = entry[hs].transitions[k][0]
        phone[tid], hmm_state[tid], pdf_class[tid], index[tid] = ph, hs, entry[hs].forward_pdf_class, k
        ends[tid] = dest == len(entry) - 1
        loop[tid] = dest == hs
    return TransitionTables(np.asarray(id2pdf, np.int32), phone, hmm_state, pdf_class, ends, index, loop,
                            np.asarray(id2state, np.int32))
