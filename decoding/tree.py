"""Decision-tree state tying for triphones: Kaldi's ``cluster-phones`` + ``build-tree`` in numpy.

The kaldi-hmm-gmm bindings can *use* a context-dependency tree (``TransitionModel``, ``get_h_transducer``,
training-graph compilation) but cannot *build* one, so this module re-implements Kaldi's algorithm:

1. ``cluster_phones_into_questions`` (``cluster-phones``): the phones' pooled Gaussian stats (central
   pdf-class) are clustered top-down by repeated 2-means; every cluster at every level is a question
   ("is this context phone in the set?"), to which the caller adds hand-made ones (silence vs speech).
2. ``build_tree`` (``build-tree`` = ``BuildTree``): a stub map gives each root (a phone set) one leaf, or
   one per pdf-class when the root is not shared; then leaves are split greedily, always the split with the
   largest log-likelihood gain over all leaves (questions about any context position, the central phone
   within a multi-phone root, and the pdf-class), until ``num_leaves`` or no split gains more than
   ``split_thresh``; then, within each root, leaves whose merge costs less than ``cluster_thresh`` (by default
   the smallest gain of any split made) are merged bottom-up, and the leaves renumbered 0..N-1.
3. ``gaussian_init_from_stats`` (``gmm-init-model``): one Gaussian per tied state from the same stats.

On top of Kaldi, a split must leave at least ``min_count`` frames on both sides (HTK's minimum occupancy):
Kaldi relies on its likelihood threshold alone, which on a small corpus still creates leaves too sparse
to train a Gaussian or a DNN output on.

The tree is written in Kaldi's binary format, so the result is a genuine Kaldi ``tree`` file that Kaldi's
own tools (and the bindings, through the pickle hook) read.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import kaldifst  # noqa: F401  (load kaldifst before kaldi_hmm_gmm: shared OpenFst registration order)
import kaldi_hmm_gmm as khg
import numpy as np
from tqdm import tqdm

from decoding.tree_io import (
    BINARY_HEADER,
    PDF_CLASS_KEY,
    ConstantNode,
    EventMapNode,
    SplitNode,
    TableNode,
    context_dependency_bytes,
    leaves_of,
    map_events,
    map_leaves,
    max_value_asked,
    parse_context_dependency,
    read_roots,
)
from decoding.tree_stats import (
    TreeStats,
    accumulate_tree_stats,
    gauss_objf,
    segment_sum,
    sum_stats,
)
from features.atomic import atomic_write
from features.errors import InputError

__all__ = [
    "Tree",
    "TreeConfig",
    "TreeStats",
    "accumulate_tree_stats",
    "build_tree",
    "cluster_phones_into_questions",
    "gaussian_init_from_stats",
    "load_tree",
    "read_roots",
    "read_tree",
    "sum_stats",
    "write_tree",
]

logger = logging.getLogger(__name__)

# Largest dense (pdf-class x context window) answer table Tree.leaf_ids precomputes (int32 entries, 32 MB).
_MAX_LOOKUP_TABLE = 8_000_000


@dataclass
class TreeConfig:
    """Options of tree building; names follow Kaldi's ``build-tree`` / ``cluster-phones`` where they exist."""

    num_leaves: int = 500  # --max-leaves: target number of tied states
    min_count: float = 100.0  # minimum frames on each side of a split (HTK-style occupancy floor)
    cluster_thresh: float = -1.0  # merge leaves of one root while merging costs less; -1: smallest split gain; 0: off
    context_width: int = 3  # N
    central_position: int = 1  # P
    num_phone_questions: int | None = None  # keep only the first (coarsest) automatic questions; None: all
    split_thresh: float = 300.0  # --thresh: a split must gain more log-likelihood than this
    var_floor: float = 0.01  # acc-tree-stats --var-floor, used in every Gaussian objective
    cluster_pdf_classes: tuple[int, ...] = (1,)  # cluster-phones --pdf-class-list: stats used to cluster phones
    kmeans_tries: int = 10  # random restarts of each 2-means split in cluster-phones
    seed: int = 0


# ------------------------------------------------------------------------------------------------ the tree
@dataclass(frozen=True)
class Tree:
    """A Kaldi context-dependency tree: ``root`` maps (phone window, pdf-class) events to pdf ids."""

    root: EventMapNode
    num_pdfs: int
    context_width: int = 3
    central_position: int = 1

    def leaf_ids(self, contexts: np.ndarray, pdf_classes: np.ndarray) -> np.ndarray:
        """int32 pdf id of each frame (``[T, N]`` phone windows, ``[T]`` pdf-classes), vectorised over frames.

        Raises ``ValueError`` when an event reaches no leaf (a phone or pdf-class the tree does not know).
        """
        contexts = np.asarray(contexts, dtype=np.int64)
        pdf_classes = np.asarray(pdf_classes, dtype=np.int64)
        if contexts.ndim != 2 or contexts.shape[1] != self.context_width or pdf_classes.shape != contexts.shape[:1]:
            raise ValueError(
                f"contexts {contexts.shape} / pdf_classes {pdf_classes.shape} do not match a tree of context "
                f"width {self.context_width}"
            )
        table = self._lookup_table
        if table is None:
            leaves = map_events(self.root, lambda key: pdf_classes if key == PDF_CLASS_KEY else contexts[:, key])
            leaves = leaves.astype(np.int32)
        else:
            columns = [pdf_classes] + [contexts[:, k] for k in range(self.context_width)]
            index = tuple(np.clip(col, -1, size - 2) + 1 for col, size in zip(columns, table.shape))
            leaves = table[index]
        bad = np.flatnonzero(leaves < 0)
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{bad.size} events map to no pdf, e.g. context {contexts[i].tolist()} pdf-class {int(pdf_classes[i])}"
            )
        return leaves

    @cached_property
    def _lookup_table(self) -> np.ndarray | None:
        """The tree's answer for every event, as a dense array over (pdf-class, context phones), or None if
        that is too big (thousands of position-dependent phones).

        Walking the tree costs ~10 ms per call whatever the batch size, which adds up to minutes over the
        per-utterance calls of an alignment; one array index does not. Each axis covers the values -1 (key
        absent) .. one above the largest value the tree mentions; any larger value gets the same answers as
        that one (it is in no question's set and off every table), so queries are clipped onto the axis.
        """
        keys = [PDF_CLASS_KEY, *range(self.context_width)]
        asked = max_value_asked(self.root)
        sizes = [asked.get(k, 0) + 3 for k in keys]
        if math.prod(sizes) > _MAX_LOOKUP_TABLE:
            return None
        grid = np.indices(sizes).reshape(len(keys), -1) - 1
        return map_events(self.root, lambda key: grid[keys.index(key)]).astype(np.int32).reshape(sizes)

    def to_kaldi_binary(self) -> bytes:
        """The exact bytes of a binary Kaldi ``tree`` file (``\\0B`` header + ``ContextDependency::Write``)."""
        return BINARY_HEADER + context_dependency_bytes(self.context_width, self.central_position, self.root, True)

    def to_kaldi_text(self) -> str:
        """Kaldi's text form of the tree (what ``copy-tree --binary=false`` prints)."""
        return context_dependency_bytes(self.context_width, self.central_position, self.root, False).decode()

    def to_context_dependency(self) -> khg.ContextDependency:
        """The bindings' ``ContextDependency`` (it has no constructor; its pickle state is the binary form)."""
        return _context_dependency_from_binary(self.to_kaldi_binary())

    @classmethod
    def from_kaldi(cls, data: bytes) -> Tree:
        """Parse a Kaldi tree file's bytes (binary or text)."""
        width, central, root = parse_context_dependency(data)
        return cls(root, max(leaves_of(root)) + 1, width, central)


def _context_dependency_from_binary(data: bytes) -> khg.ContextDependency:
    body = data.removeprefix(BINARY_HEADER)
    ctx = khg.ContextDependency.__new__(khg.ContextDependency)
    ctx.__setstate__((np.frombuffer(body, dtype=np.int8).tolist(),))
    return ctx


def write_tree(tree: Tree, path: Path) -> None:
    """Write ``tree`` as a binary Kaldi ``tree`` file, atomically."""
    with atomic_write(path, "wb") as f:
        f.write(tree.to_kaldi_binary())


def load_tree(path: Path) -> Tree:
    """Read a Kaldi tree file (binary or text, ours or Kaldi's) as a :class:`Tree`."""
    try:
        return Tree.from_kaldi(Path(path).read_bytes())
    except ValueError as e:
        raise InputError(f"not a Kaldi tree: {e}", path) from e


def read_tree(path: Path) -> khg.ContextDependency:
    """Read a Kaldi tree file (binary or text) as the bindings' ``ContextDependency``."""
    tree = load_tree(path)
    return _context_dependency_from_binary(tree.to_kaldi_binary())


# ------------------------------------------------------------------------------------------ cluster-phones
def _two_means(points: np.ndarray, tries: int, rng: np.random.Generator, var_floor: float) -> np.ndarray:
    """Best of ``tries`` 2-way clusterings of stacked Gaussian stats (Kaldi ``ClusterKMeans``, 2 clusters).

    Each try starts from a random non-trivial assignment and moves, one at a time, the point whose move to
    the other cluster raises the summed objective most, until no move helps (Kaldi ``RefineClusters``).
    Returns a boolean membership of cluster 1.
    """
    n = len(points)
    best, best_objf = None, -np.inf
    for _ in range(tries):
        member = rng.permutation(n) < max(1, n // 2)
        while True:
            sums = np.stack([points[~member].sum(0), points[member].sum(0)])
            base = gauss_objf(sums, var_floor).sum()
            src = member.astype(int)
            sizes = np.array([(~member).sum(), member.sum()])
            moved_src = sums[src] - points
            moved_dst = sums[1 - src] + points
            gain = gauss_objf(moved_src, var_floor) + gauss_objf(moved_dst, var_floor) - base
            gain[sizes[src] <= 1] = -np.inf  # never empty a cluster
            i = int(np.argmax(gain))
            if not gain[i] > 1e-9 * max(1.0, abs(base)):
                break
            member[i] = ~member[i]
        objf = gauss_objf(np.stack([points[~member].sum(0), points[member].sum(0)]), var_floor).sum()
        if objf > best_objf:
            best, best_objf = member.copy(), objf
    return best


def cluster_phones_into_questions(
    stats: TreeStats,
    phones: Sequence[int],
    extra_questions: Sequence[Sequence[int]] = (),
    cfg: TreeConfig | None = None,
) -> list[list[int]]:
    """Questions for tree building (Kaldi ``cluster-phones`` + ``extra_questions.int``).

    The phones' stats for ``cfg.cluster_pdf_classes`` (the middle state) are pooled per central phone and
    clustered top-down by 2-means down to single phones; the phone set of every cluster, coarse to fine
    (breadth first), is a question. ``cfg.num_phone_questions`` keeps only the first ones. The
    ``extra_questions`` (e.g. silence phones vs the rest) are appended. Phones without stats still get
    placed (their stats are zero) so every phone is in some question.
    """
    cfg = cfg or TreeConfig()
    phones = sorted({int(p) for p in phones})
    if not phones or phones[0] <= 0:
        raise ValueError("phones must be a non-empty list of positive phone ids")
    central = stats.contexts[:, cfg.central_position]
    use = np.isin(stats.pdf_classes, np.asarray(cfg.cluster_pdf_classes))
    sel = use & np.isin(central, phones)
    points = segment_sum(np.searchsorted(phones, central[sel]), stats.stacked()[sel], len(phones))
    unused = sorted(set(np.unique(central[use]).tolist()) - set(phones))
    if unused:
        logger.warning("phones %s have stats but are not in the phone list given to cluster-phones", unused)
    rng = np.random.default_rng(cfg.seed)
    questions: list[list[int]] = []
    queue = [np.arange(len(phones))]
    while queue:
        members = queue.pop(0)
        questions.append([phones[i] for i in members])
        if len(members) > 1:
            side = _two_means(points[members], cfg.kmeans_tries, rng, cfg.var_floor)
            queue += [members[~side], members[side]]
    if cfg.num_phone_questions is not None:
        questions = questions[: cfg.num_phone_questions]
    seen = {tuple(q) for q in questions}
    for q in extra_questions:
        q = sorted({int(p) for p in q})
        if q and tuple(q) not in seen:
            questions.append(q)
            seen.add(tuple(q))
    logger.info("cluster-phones: %d questions over %d phones", len(questions), len(phones))
    return questions


# --------------------------------------------------------------------------------------------- build-tree
def _stub_map(
    roots: list[list[int]],
    shared: list[bool],
    num_pdf_classes: Mapping[int, int],
    central: int,
    next_leaf: list[int],
) -> EventMapNode:
    """Kaldi ``GetStubMap``: halve the list of roots on the central phone until one root is left; a shared
    root is one leaf, an unshared one a table of one leaf per pdf-class."""
    if len(roots) == 1:
        if shared[0]:
            next_leaf[0] += 1
            return ConstantNode(next_leaf[0] - 1)
        length = max(num_pdf_classes[p] for p in roots[0])
        table = tuple(ConstantNode(next_leaf[0] + i) for i in range(length))
        next_leaf[0] += length
        return TableNode(PDF_CLASS_KEY, table)
    half = len(roots) // 2
    first = _stub_map(roots[:half], shared[:half], num_pdf_classes, central, next_leaf)
    second = _stub_map(roots[half:], shared[half:], num_pdf_classes, central, next_leaf)
    yes_set = tuple(sorted(p for r in roots[:half] for p in r))
    return SplitNode(central, yes_set, first, second)


@dataclass
class _Leaf:
    """A leaf under construction: its events and its best split (Kaldi ``DecisionTreeSplitter``)."""

    leaf_id: int
    events: np.ndarray
    gain: float = 0.0
    key: int = 0
    yes_set: tuple[int, ...] = ()
    children: tuple[_Leaf, _Leaf] | None = field(default=None, repr=False)

    def to_node(self) -> EventMapNode:
        if self.children is None:
            return ConstantNode(self.leaf_id)
        yes, no = self.children
        return SplitNode(self.key, self.yes_set, yes.to_node(), no.to_node())


class _Splitter:
    """Finds the best question for a set of events: per key, the events' stats are pooled by the key's value,
    and every question's yes/no stats are one matrix product away."""

    def __init__(self, stats: TreeStats, questions: Sequence[Sequence[int]], max_pdf_classes: int, cfg: TreeConfig):
        self.rows = stats.stacked()
        self.cfg = cfg
        # key -> column of values; keys in Kaldi's order (std::map): pdf-class first, then positions 0..N-1.
        self.values = {PDF_CLASS_KEY: stats.pdf_classes.astype(np.int64)}
        for k in range(cfg.context_width):
            self.values[k] = stats.contexts[:, k].astype(np.int64)
        self.questions: dict[int, list[tuple[int, ...]]] = {}
        self.matrices: dict[int, np.ndarray] = {}
        phone_qs = [tuple(sorted({int(p) for p in q})) for q in questions]
        pdf_qs = [tuple(range(i + 1)) for i in range(max_pdf_classes - 1)]  # compile-questions: [0], [0,1], ...
        for key, col in self.values.items():
            qs = pdf_qs if key == PDF_CLASS_KEY else phone_qs
            size = int(max(col.max(initial=0), max((max(q) for q in qs if q), default=0))) + 1
            m = np.zeros((len(qs), size))
            for i, q in enumerate(qs):
                m[i, list(q)] = 1.0
            self.questions[key] = qs
            self.matrices[key] = m

    def best_split(self, leaf: _Leaf) -> None:
        """Set ``leaf``'s best (gain, key, yes-set); gain 0 when nothing is allowed (Kaldi ``FindBestSplit``)."""
        leaf.gain, leaf.key, leaf.yes_set = 0.0, 0, ()
        ev = leaf.events
        if ev.size <= 1:
            return
        rows = self.rows[ev]
        total = rows.sum(0)
        if total[0] < 2 * self.cfg.min_count:
            return
        total_objf = float(gauss_objf(total, self.cfg.var_floor))
        for key, col in self.values.items():
            vals = col[ev]
            if vals.min() < 0 or vals.min() == vals.max():
                continue  # key undefined for some events (CI phones), or nothing to split
            m = self.matrices[key]
            yes = m @ segment_sum(vals, rows, m.shape[1])
            no = total - yes
            gain = gauss_objf(yes, self.cfg.var_floor) + gauss_objf(no, self.cfg.var_floor) - total_objf
            gain[(yes[:, 0] < self.cfg.min_count) | (no[:, 0] < self.cfg.min_count)] = 0.0
            i = int(np.argmax(gain))
            if gain[i] > leaf.gain:
                leaf.gain, leaf.key, leaf.yes_set = float(gain[i]), key, self.questions[key][i]

    def split(self, leaf: _Leaf, new_leaf_id: int) -> tuple[_Leaf, _Leaf]:
        """Kaldi ``DoSplitInternal``: the yes side keeps the leaf id, the no side takes a new one."""
        vals = self.values[leaf.key][leaf.events]
        is_yes = np.isin(vals, np.asarray(leaf.yes_set, dtype=np.int64))
        yes, no = _Leaf(leaf.leaf_id, leaf.events[is_yes]), _Leaf(new_leaf_id, leaf.events[~is_yes])
        leaf.children = (yes, no)
        self.best_split(yes)
        self.best_split(no)
        return yes, no


def _cluster_bottom_up(points: np.ndarray, thresh: float, var_floor: float) -> np.ndarray:
    """Kaldi ``ClusterBottomUp``: merge the closest pair (objective loss of pooling) while the loss is below
    ``thresh``; the survivor of a merge is the lower index. Returns compact cluster ids, numbered in the
    order of the surviving points."""
    n = len(points)
    sums = points.astype(np.float64).copy()
    objf = gauss_objf(sums, var_floor)
    parent = np.arange(n)
    alive = np.ones(n, dtype=bool)
    version = np.zeros(n, dtype=np.int64)
    heap: list[tuple[float, int, int, int, int]] = []

    def push_pairs(i: int, others: np.ndarray) -> None:
        if others.size == 0:
            return
        dist = objf[i] + objf[others] - gauss_objf(sums[i] + sums[others], var_floor)
        for j, d in zip(others[dist < thresh].tolist(), dist[dist < thresh].tolist()):
            a, b = min(i, j), max(i, j)
            heapq.heappush(heap, (d, a, b, int(version[a]), int(version[b])))

    for i in range(n - 1):
        push_pairs(i, np.arange(i + 1, n))
    while heap:
        _, a, b, va, vb = heapq.heappop(heap)
        if not (alive[a] and alive[b]) or version[a] != va or version[b] != vb:
            continue  # stale: one of the pair changed since this distance was computed
        sums[a] += sums[b]
        objf[a] = gauss_objf(sums[a], var_floor)
        alive[b] = False
        parent[b] = a
        version[a] += 1
        push_pairs(a, np.flatnonzero(alive & (np.arange(n) != a)))
    root = parent.copy()
    while not np.array_equal(root, root[root]):
        root = root[root]
    rank = np.cumsum(alive) - 1
    return rank[root]


def build_tree(
    stats: TreeStats,
    roots: Sequence[Sequence[int]],
    phone2num_pdf_classes: Mapping[int, int] | Sequence[int],
    questions: Sequence[Sequence[int]],
    cfg: TreeConfig,
    shared_roots: Sequence[bool] | None = None,
    split_roots: Sequence[bool] | None = None,
) -> Tree:
    """Build a context-dependency tree (Kaldi ``BuildTree``; see the module docstring for the algorithm).

    ``roots`` are Kaldi's ``roots.txt`` phone sets; ``shared_roots[i]`` (default all True, as Kaldi's
    ``prepare_lang.sh`` writes "shared") lets the pdf-classes of root i share one tree, so pdf-class is just
    another question; ``split_roots[i]`` False ("not-split") keeps root i unsplit. Every phone of the
    topology must be in a root: the transition model needs a pdf for every pdf-class of every phone.
    ``phone2num_pdf_classes`` is a mapping or, like ``HmmTopology.get_phone_to_num_pdf_classes()``, a list
    indexed by phone id.
    """
    if not isinstance(phone2num_pdf_classes, Mapping):
        phone2num_pdf_classes = {p: int(n) for p, n in enumerate(phone2num_pdf_classes) if n > 0}
    roots = [sorted({int(p) for p in r}) for r in roots]
    shared = [True] * len(roots) if shared_roots is None else [bool(s) for s in shared_roots]
    do_split = [True] * len(roots) if split_roots is None else [bool(s) for s in split_roots]
    all_phones = [p for r in roots for p in r]
    if not roots or any(not r for r in roots) or len(shared) != len(roots) or len(do_split) != len(roots):
        raise ValueError("roots must be non-empty phone sets, with one shared/split flag each")
    if len(set(all_phones)) != len(all_phones) or min(all_phones) <= 0:
        raise ValueError("a phone appears in two roots, or a phone id is not positive")
    if missing := [p for p in all_phones if p not in phone2num_pdf_classes]:
        raise ValueError(f"phones {missing} have no number of pdf-classes")
    if stats.context_width != cfg.context_width:
        raise ValueError(f"stats have context width {stats.context_width}, config says {cfg.context_width}")
    if cfg.num_leaves <= 0:
        raise ValueError("num_leaves must be positive")

    next_leaf = [0]
    stub = _stub_map(roots, shared, phone2num_pdf_classes, cfg.central_position, next_leaf)
    num_leaves = num_stub_leaves = next_leaf[0]

    def event_values(key: int) -> np.ndarray:
        return stats.pdf_classes if key == PDF_CLASS_KEY else stats.contexts[:, key]

    rootless = np.setdiff1d(stats.contexts[:, cfg.central_position], all_phones)
    if rootless.size:
        raise ValueError(f"phones {rootless.tolist()} have stats but no root: every central phone needs a root")
    stub_of_event = map_events(stub, event_values)
    if (bad := np.flatnonzero(stub_of_event < 0)).size:
        e = int(bad[0])
        raise ValueError(
            f"{bad.size} stats events have no root, e.g. context {stats.contexts[e].tolist()} pdf-class "
            f"{int(stats.pdf_classes[e])}: a pdf-class beyond the phone's number of pdf-classes"
        )
    if unseen := sorted(set(all_phones) - set(np.unique(stats.contexts[:, cfg.central_position]).tolist())):
        logger.warning("build-tree: no stats for phones %s (each keeps one pdf per root)", unseen)
    nonsplit = np.asarray(sorted(p for r, s in zip(roots, do_split) if not s for p in r), dtype=np.int64)
    splittable = ~np.isin(stats.contexts[:, cfg.central_position], nonsplit)

    max_pdf_classes = max(phone2num_pdf_classes[p] for p in all_phones)
    splitter = _Splitter(stats, questions, max_pdf_classes, cfg)
    builders = [_Leaf(i, np.flatnonzero((stub_of_event == i) & splittable)) for i in range(num_leaves)]
    counter = itertools.count()
    heap = []
    for leaf in builders:
        splitter.best_split(leaf)
        heap.append((-leaf.gain, next(counter), leaf))
    heapq.heapify(heap)
    smallest_split, total_gain, num_splits = np.inf, 0.0, 0
    progress = tqdm(total=max(cfg.num_leaves - num_leaves, 0), desc="build-tree", unit="split", disable=None)
    while heap and num_leaves < cfg.num_leaves and -heap[0][0] > cfg.split_thresh:
        neg_gain, _, leaf = heapq.heappop(heap)
        smallest_split = min(smallest_split, -neg_gain)
        total_gain += -neg_gain
        for child in splitter.split(leaf, num_leaves):
            heapq.heappush(heap, (-child.gain, next(counter), child))
        num_leaves += 1
        num_splits += 1
        progress.update()
    progress.close()
    total_frames = float(stats.counts.sum())
    logger.info(
        "build-tree: %d splits, %d leaves, likelihood gain %.4f per frame over %.0f frames",
        num_splits, num_leaves, total_gain / max(total_frames, 1.0), total_frames,
    )
    split_root = map_leaves(stub, lambda i: builders[i].to_node())

    cluster_thresh = cfg.cluster_thresh
    if cluster_thresh < 0:
        cluster_thresh = smallest_split if np.isfinite(smallest_split) else 0.0
    if cluster_thresh > 0:
        split_root = _cluster_leaves(split_root, stub_of_event, stats, cluster_thresh, cfg)
    leaf_ids = sorted(set(leaves_of(split_root)))
    renumber = {old: new for new, old in enumerate(leaf_ids)}
    final = map_leaves(split_root, lambda i: ConstantNode(renumber[i]))
    tree = Tree(final, len(leaf_ids), cfg.context_width, cfg.central_position)
    logger.info("build-tree: %d pdfs after merging (stub had %d leaves)", tree.num_pdfs, num_stub_leaves)
    return tree


def _cluster_leaves(
    root: EventMapNode, stub_of_event: np.ndarray, stats: TreeStats, thresh: float, cfg: TreeConfig
) -> EventMapNode:
    """Kaldi ``ClusterEventMapRestrictedByMap``: bottom-up merging of the leaves under each stub leaf (root),
    each merged group taking the id of one of its members."""
    leaf_of_event = map_events(root, lambda k: stats.pdf_classes if k == PDF_CLASS_KEY else stats.contexts[:, k])
    rows = stats.stacked()
    mapping: dict[int, int] = {}
    for stub_leaf in np.unique(stub_of_event):
        sel = stub_of_event == stub_leaf
        leaves, inverse = np.unique(leaf_of_event[sel], return_inverse=True)
        pooled = segment_sum(inverse.reshape(-1), rows[sel], len(leaves))
        assignment = _cluster_bottom_up(pooled, thresh, cfg.var_floor)
        for leaf, cluster in zip(leaves.tolist(), assignment.tolist()):
            mapping[leaf] = int(leaves[cluster])
    removed = len(mapping) - len(set(mapping.values()))
    logger.info("build-tree: merging (threshold %.1f) removed %d leaves", thresh, removed)
    return map_leaves(root, lambda i: ConstantNode(mapping.get(i, i)))


# ------------------------------------------------------------------------------------------ gmm-init-model
def gaussian_init_from_stats(
    stats: TreeStats, tree: Tree, var_floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pdf ``(count [P], mean [P, D], var [P, D])``: one Gaussian per tied state (Kaldi ``gmm-init-model``).

    ``count`` is the pdf's own frame count. A pdf with no frames (a phone never seen in training) takes its
    mean and variance from the pooled stats of its nearest ancestor in
    the tree that has frames, as Kaldi does, so every pdf gets a usable Gaussian. Variances are floored at
    ``var_floor``.
    """
    pdf = tree.leaf_ids(stats.contexts, stats.pdf_classes)
    per_pdf = segment_sum(pdf, stats.stacked(), tree.num_pdfs)
    counts = per_pdf[:, 0].copy()
    empty = set(np.flatnonzero(per_pdf[:, 0] <= 0).tolist())
    if empty:
        fallback: dict[int, np.ndarray] = {}

        def visit(node: EventMapNode, ancestors: list[frozenset[int]]) -> None:
            if isinstance(node, ConstantNode):
                if node.answer in empty and node.answer not in fallback:
                    for leaves in reversed(ancestors):
                        pooled = per_pdf[sorted(leaves)].sum(0)
                        if pooled[0] > 0:
                            fallback[node.answer] = pooled
                            break
                return
            here = ancestors + [frozenset(leaves_of(node))]
            children = (node.yes, node.no) if isinstance(node, SplitNode) else node.table
            for child in children:
                if child is not None:
                    visit(child, here)

        visit(tree.root, [])
        for p in empty:
            per_pdf[p] = fallback.get(p, per_pdf.sum(0))
        logger.warning("gaussian init: %d pdfs had no frames and were initialised from their ancestors", len(empty))
    dim = stats.dim
    frames = per_pdf[:, :1]
    means = per_pdf[:, 1 : 1 + dim] / frames
    var = np.maximum(per_pdf[:, 1 + dim :] / frames - means**2, var_floor)
    return counts, means, var
