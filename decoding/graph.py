"""The decoding graph HCLG = H o C o L o G (Kaldi's ``utils/mkgraph.sh``) from the Python bindings.

Steps, as mkgraph.sh runs them: LG = det(L_disambig o G) minimized; CLG = C o LG with the tree's context
width; H from the tree and transition model (no self-loops); HCLGa = det(H o CLG) with the disambiguation
transition-ids removed, minimized; self-loops added last with ``self_loop_scale`` (reordered, as Kaldi does).
Determinization is in the log semiring so that each graph stays stochastic. Kaldi's ``fstpushspecial`` after
LG has no binding; it only changes where weights sit, not path weights, so the best path is unaffected.
The graph works with any ``ContextDependency`` (monophone or a tree from :mod:`decoding.tree`).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import kaldi_hmm_gmm as khg
import kaldifst

from decoding.lang import load_lang
from features.atomic import atomic_write, write_text_atomic
from features.errors import InputError

__all__ = ["GraphConfig", "make_hclg", "remove_input_symbols"]

logger = logging.getLogger(__name__)


@dataclass
class GraphConfig:
    """Kaldi's mkgraph.sh scales: transition log-probs enter the graph times ``transition_scale``, self-loop
    log-probs times ``self_loop_scale`` (0.1 with acoustic scale 0.1, Kaldi's default for GMM and DNN graphs)."""

    self_loop_scale: float = 0.1
    transition_scale: float = 1.0


def remove_input_symbols(fst: kaldifst.StdVectorFst, symbols: set[int], num_symbols: int) -> kaldifst.StdVectorFst:
    """``fstrmsymbols``: replace the given input labels by epsilon.

    kaldifst has no rmsymbols or relabel, so this composes a one-state transducer in front: it maps every
    label in 1..``num_symbols`` to itself, except ``symbols``, which it reads as epsilon. That is one linear
    pass over ``fst``.
    """
    mapper = kaldifst.StdVectorFst()
    state = mapper.add_state()
    mapper.start = state
    mapper.set_final(state, 0.0)
    for label in range(1, num_symbols + 1):
        mapper.add_arc(state, kaldifst.StdArc(0 if label in symbols else label, label, 0.0, state))
    kaldifst.arcsort(mapper, sort_type="olabel")
    return kaldifst.compose(mapper, fst)


def _load_tree(tree: Path | khg.ContextDependency) -> khg.ContextDependency:
    if isinstance(tree, khg.ContextDependency):
        return tree
    from decoding.tree import read_tree  # a sibling module; imported where needed

    return read_tree(Path(tree))


def _load_transition_model(model: Path | khg.TransitionModel) -> khg.TransitionModel:
    if isinstance(model, khg.TransitionModel):
        return model
    from decoding.model_io import read_model

    return read_model(Path(model))[0]


def _read_fst(path: Path) -> kaldifst.StdVectorFst:
    if not path.is_file():
        raise InputError("missing FST", path)
    return kaldifst.StdVectorFst.read(str(path))


def make_hclg(lang_test_dir: Path, tree: Path | khg.ContextDependency, model: Path | khg.TransitionModel,
              out_dir: Path, cfg: GraphConfig | None = None) -> dict:
    """Build ``out_dir/HCLG.fst`` (+ words.txt, phones.txt, disambig_tid.int, graph_info.json); return the info.

    ``lang_test_dir`` needs L_disambig.fst, G.fst, phones.txt, words.txt, phones/disambig.int. ``tree`` and
    ``model`` are objects or Kaldi files (``tree``; ``final.mdl``, whose transition model is used). The info
    dict holds seconds per step and the state/arc counts of LG, CLG and HCLG.
    """
    cfg = cfg or GraphConfig()
    lang_test_dir, out_dir = Path(lang_test_dir), Path(out_dir)
    lang = load_lang(lang_test_dir)
    ctx_dep, trans_model = _load_tree(tree), _load_transition_model(model)
    info: dict = {"context_width": ctx_dep.context_width, "central_position": ctx_dep.central_position,
                  "num_pdfs": trans_model.num_pdfs, "self_loop_scale": cfg.self_loop_scale,
                  "transition_scale": cfg.transition_scale, "seconds": {}}
    t_start = t = time.perf_counter()

    def step(name: str, fst: kaldifst.StdVectorFst | None = None) -> None:
        nonlocal t
        now = time.perf_counter()
        info["seconds"][name] = round(now - t, 3)
        if fst is not None:
            info[f"{name}_states"], info[f"{name}_arcs"] = _count(fst)
            logger.info("%s: %d states, %d arcs (%.1f s)", name, info[f"{name}_states"], info[f"{name}_arcs"],
                        now - t)
        t = now

    lex = _read_fst(lang_test_dir / "L_disambig.fst")
    grammar = _read_fst(lang_test_dir / "G.fst")
    kaldifst.arcsort(lex, sort_type="olabel")
    kaldifst.arcsort(grammar, sort_type="ilabel")
    lg = kaldifst.compose(lex, grammar)
    if kaldifst.determinize_star(lg, use_log=True):
        raise RuntimeError("determinization of LG stopped early (max_states); is L_disambig missing #n symbols?")
    kaldifst.minimize_encoded(lg)
    step("LG", lg)

    clg, ilabels = kaldifst.compose_context(lang.phone_disambig, ctx_dep.context_width, ctx_dep.central_position,
                                            lg)
    kaldifst.arcsort(clg, sort_type="ilabel")
    step("CLG", clg)

    ha, disambig_tids = khg.get_h_transducer(ilabel_info=ilabels, ctx_dep=ctx_dep, trans_model=trans_model,
                                             config=khg.HTransducerConfig(transition_scale=cfg.transition_scale))
    kaldifst.arcsort(ha, sort_type="olabel")
    step("Ha", ha)

    hclga = kaldifst.compose(ha, clg)
    if kaldifst.determinize_star(hclga, use_log=True):
        raise RuntimeError("determinization of HCLG stopped early (max_states)")
    if disambig_tids:
        # H's input labels are transition-ids 1..num_transition_ids, then the disambiguation ones after them
        hclga = remove_input_symbols(hclga, set(disambig_tids),
                                     max(trans_model.num_transition_ids, max(disambig_tids)))
    kaldifst.minimize_encoded(hclga)
    step("HCLGa", hclga)

    hclg = khg.add_self_loops(self_loop_scale=cfg.self_loop_scale, disambig_syms=[], reorder=True,
                              trans_model=trans_model, ifst=hclga)
    kaldifst.arcsort(hclg, sort_type="ilabel")
    step("HCLG", hclg)
    info["total_seconds"] = round(time.perf_counter() - t_start, 3)
    info["num_disambig_tids"] = len(disambig_tids)

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".HCLG.fst.tmp"
    hclg.write(str(tmp))
    tmp.replace(out_dir / "HCLG.fst")
    for name in ("words.txt", "phones.txt"):
        write_text_atomic(out_dir / name, (lang_test_dir / name).read_text(encoding="utf-8"))
    with atomic_write(out_dir / "disambig_tid.int") as f:
        f.writelines(f"{tid}\n" for tid in disambig_tids)
    with atomic_write(out_dir / "graph_info.json") as f:
        json.dump(info, f, indent=1)
    logger.info("HCLG %s: %d states, %d arcs in %.1f s", out_dir / "HCLG.fst", info["HCLG_states"],
                info["HCLG_arcs"], info["total_seconds"])
    return info


def _count(fst: kaldifst.StdVectorFst) -> tuple[int, int]:
    """(states, arcs) of a vector FST."""
    states = fst.num_states
    return states, sum(fst.num_arcs(s) for s in range(states))
