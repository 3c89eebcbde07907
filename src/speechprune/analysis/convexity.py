"""Graph convexity of class regions in a layer's latent space (Tětková et al., Nat. Commun. 16:5419, 2025).

A class region is *graph convex* when the shortest path between two members of the class, taken through a kNN
graph of all points, stays inside the class. The score (in %) is the mean, over sampled same-class pairs, of the
share of interior path vertices that carry the class label; see ``docs/methods.md`` §0 for the exact
definition this module implements.

Protocol (as the reference ``nnconvexity`` 0.1.1):

1. Directed kNN (``n_neighbors``, Euclidean, the point itself and distance-0 duplicates skipped), edge weight =
   distance, made symmetric with ``W = max(W, Wᵀ)`` (the union of kNN edges).
2. Per class c, ``min(|I_c|(|I_c|−1), max_pairs_per_class)`` *ordered* pairs (u, v), u ≠ v, drawn without
   replacement with a seeded :class:`numpy.random.Generator`.
3. Weighted shortest path per pair: no path → 0; a path of ≤ 2 vertices (u, v are neighbours) → 1; otherwise the
   share of interior vertices labelled c.
4. Layer score = mean over all sampled pairs pooled across classes × 100; per-class score = mean of its pairs × 100.

Why it is fast (``docs/methods.md`` §5.3, ``benchmarks/results/analysis_convexity.md``):

* The graph is exact-kNN sparse (never N × N), from :func:`speechprune.analysis.knn.knn`: fp32 GEMM blocks on and
  above the diagonal only (each product serves both blocks' rows), top-k, and a float64 check of the rows whose
  ranking fp32 could get wrong; edge weights are float64 distances. ``device="cuda"`` runs these products there.
* Paths (``paths="compiled"``, the default where numba is installed): one *bidirectional A** search per pair in a
  compiled kernel (:mod:`speechprune.analysis.paths`), on threads sharing one graph (the kernel releases the GIL).
  Bidirectional, it settles two balls of half the path's radius instead of a whole single-source tree (1.5 % of
  the graph per pair at N = 20 000 against 29 % per source for a single-source search that stops once all its
  targets are settled); guided by a lower bound on the remaining distance (the points' distance on their top
  principal axes), the balls shrink to ellipsoids around the straight line (4× fewer vertices at N = 5 000).
  Pairs whose endpoints lie in different connected components are scored 0 without a search, and with
  ``use_symmetry`` the sampled pairs (u, v) and (v, u) share one search (the graph is undirected, so they share
  the path; every pair is searched from its smaller index).
* ``paths="scipy"`` keeps the earlier route, an independent cross-check: pairs grouped by source, scipy's
  ``dijkstra(indices=chunk, return_predecessors=True, limit=…)`` on forked processes, a greedy vertex cover so that
  few trees are needed, and a radius limit calibrated on a pilot of whole trees (``LIMIT_QUANTILE``).

Known differences from the reference (none changes the definition):

* Ties between equal-length shortest paths (exactly equal float64 lengths: measure zero for real-valued features)
  are broken by a documented deterministic rule, not igraph's: the compiled kernel's heaps pop by (distance,
  vertex index), a vertex keeps the first predecessor that reached it with its final distance, and the path of
  (u, v) is searched from min(u, v) with ``use_symmetry`` (so (u, v) and (v, u) score alike) — see
  :mod:`speechprune.analysis.paths`; ``paths="scipy"`` leaves ties to scipy. Scores agree with the reference to
  its rounding on real data (``benchmarks/results/analysis_convexity.md``, ``tests/test_analysis_convexity.py``).
* A point with exact duplicates gets its k nearest *distinct* neighbours; the reference keeps only
  ``k − #duplicates`` of them. Identical only without duplicate feature vectors.
* Labels may be any hashable values (strings, ints); the reference selects class members with ``labels == i``
  where i is a position in ``set(labels)``, which is only right for labels 0..C−1.
* The reference draws pairs with the global, unseeded ``np.random``; here one seeded generator per class
  (``SeedSequence(seed).spawn``), so a result is reproducible and independent of ``processes``.

Why one module of over 400 lines: sampling, the path search dispatch and scoring share one prepared graph and
one set of options per state, and the compiled path kernel already lives apart (:mod:`speechprune.analysis.paths`).
"""

from __future__ import annotations

import heapq
import math
import multiprocessing
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components, dijkstra
from tqdm.auto import tqdm

from speechprune.analysis import paths as _paths
from speechprune.analysis.knn import knn, subset_rows
from speechprune.errors import SpeechpruneError

MIN_CHUNK = 32  # below this many sources per worker, forking costs more than it saves
PATH_METHODS = ("auto", "compiled", "scipy")
# Bounded search: after a pilot, each chunk's Dijkstra stops at q × its sources' largest straight-line distance to
# a target, q = this quantile of (path length / straight line) in the pilot; the rest get whole trees afterwards.
# Measured at N = 20 000 (6-d latent data): 0.5× the search time, 7 % of sources redone. None = whole trees only.
LIMIT_QUANTILE: float | None = 0.9


class ConvexityWarning(UserWarning):
    """A class was left out of the convexity score (e.g. it has a single example, hence no pairs)."""


@dataclass
class ConvexityResult:
    """Graph convexity of one representation.

    Scores are in % (0–100). ``std_error`` follows the reference's error bar, ``std(pair scores) / sqrt(#points)``
    (divided by the number of *points* in the scored classes, not the number of pairs, because pairs share their
    endpoints and are far from independent); ``std`` is the plain standard deviation of the pair scores.
    ``pairs`` (M × 2 row indices, in their sampled orientation) and ``pair_scores`` (M, in [0, 1]) keep the raw
    sample so that any other aggregate can be computed; :meth:`to_dict` leaves them out. ``n_sources`` is the number
    of distinct path sources, ``n_trees`` the shortest-path searches run (compiled: one bidirectional search per
    distinct pair; scipy: more than ``n_sources`` when a bounded search had to be redone), ``mean_path_vertices``
    the mean path size (endpoints included) of reachable pairs, ``seconds`` the graph and path times,
    ``paths_method`` the path route taken and ``n_settled`` the vertices it settled (compiled route only).
    """

    score: float
    std_error: float
    std: float
    per_class: dict[Any, float]
    per_class_std_error: dict[Any, float]
    pair_counts: dict[Any, int]
    class_sizes: dict[Any, int]
    n_pairs: int
    unreachable_fraction: float
    skipped_classes: list[Any]
    n_components: int
    n_sources: int
    n_trees: int
    mean_path_vertices: float
    n_neighbors: int
    max_pairs_per_class: int
    seed: int
    use_symmetry: bool
    seconds: dict[str, float] = field(default_factory=dict)
    paths_method: str = "compiled"
    n_settled: int = 0
    pairs: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64), repr=False)
    pair_scores: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (labels become strings as JSON keys; the raw pair arrays are omitted)."""
        out = asdict(self)
        del out["pairs"], out["pair_scores"]
        for key in ("per_class", "per_class_std_error", "pair_counts", "class_sizes"):
            out[key] = {str(k): v for k, v in out[key].items()}
        out["skipped_classes"] = [str(c) for c in self.skipped_classes]
        return out


@dataclass
class PermutationBaseline:
    """Chance level of graph convexity: the score with labels shuffled (class sizes kept), in %.

    ``std`` is the sample standard deviation over permutations (0 for a single permutation).
    """

    mean: float
    std: float
    scores: list[float]
    n_permutations: int
    seed: int


@dataclass
class _Prepared:
    """Everything that depends on the features but not on the labels' assignment: built once, scored many times."""

    x: np.ndarray
    graph: sparse.csr_matrix
    components: np.ndarray
    n_components: int
    seconds_graph: float
    coords: np.ndarray | None = None  # the A* projection (compiled paths), made on first use

    def guide(self) -> np.ndarray:
        """The rows on their top principal axes (:func:`speechprune.analysis.paths.projection`), computed once."""
        if self.coords is None:
            self.coords = _paths.projection(self.x)
        return self.coords


# ----------------------------------------------------------------------------------------------------- public API


def graph_convexity(
    x: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    n_neighbors: int = 10,
    max_pairs_per_class: int = 5000,
    seed: int = 42,
    processes: int = 2,
    chunk: int = 256,
    use_symmetry: bool = True,
    progress: bool = False,
    paths: str = "auto",
    device: str | None = None,
) -> ConvexityResult:
    """Graph convexity (in %) of the classes given by ``labels`` in the representation ``x`` (N × D).

    ``processes`` workers compute the shortest paths: threads for the compiled kernel, forked processes for
    ``paths="scipy"`` (1 = in this process). ``chunk`` sources share one scipy call (scipy route only; memory ≈
    chunk × N × 12 bytes per worker). ``use_symmetry`` lets the pairs (u, v) and (v, u) share one search; it
    changes only which of several equal-length shortest paths is taken. ``paths``: ``"compiled"`` (numba kernel),
    ``"scipy"``, or ``"auto"`` (compiled where numba is installed). ``device`` runs the kNN graph's products there
    (e.g. ``"cuda"``). Results depend on ``seed`` and nothing else.
    """
    opts = _options(dict(n_neighbors=n_neighbors, max_pairs_per_class=max_pairs_per_class, seed=seed,
                         processes=processes, chunk=chunk, use_symmetry=use_symmetry, progress=progress,
                         paths=paths, device=device))
    data = _check_features(x, n_neighbors)
    classes, codes = _encode_labels(labels, data.shape[0])
    prep = _prepare(data, n_neighbors, opts["device"])
    return _score(prep, codes, classes, **_score_opts(opts))


def permutation_baseline(
    x: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    n_permutations: int = 3,
    seed: int = 42,
    **kw: Any,
) -> PermutationBaseline:
    """Chance-level convexity: :func:`graph_convexity` with the labels randomly permuted ``n_permutations`` times.

    Shuffling keeps the class sizes, so the baseline reflects the graph's geometry and the class proportions — what
    a score must be compared with (a large class is "convex" by chance more often). The kNN graph is built once.
    ``kw`` are :func:`graph_convexity`'s options.
    """
    if n_permutations < 1:
        raise SpeechpruneError(f"n_permutations must be ≥ 1, got {n_permutations}")
    opts = _options(kw)
    data = _check_features(x, opts["n_neighbors"])
    classes, codes = _encode_labels(labels, data.shape[0])
    prep = _prepare(data, opts["n_neighbors"], opts["device"])
    return _baseline_on(prep, codes, classes, n_permutations, seed, _score_opts(opts))


def convexity_by_layer(
    feats: Any,
    label: str,
    layers: Sequence[int] | None = None,
    *,
    n_permutations: int = 0,
    **kw: Any,
) -> list[dict[str, Any]]:
    """One row per state of ``feats`` (:class:`speechprune.features.LayerFeatures`) for the label column ``label``.

    Each row: ``state``, ``score``, ``std_error``, ``per_class``, ``pair_counts``, ``n_pairs``,
    ``unreachable_fraction``, ``skipped_classes``, ``seconds`` and — with ``n_permutations`` > 0 — the chance level
    ``chance`` ± ``chance_std`` from that many label permutations on the same graph. Unknown states raise
    :class:`~speechprune.errors.LayerIndexError`. For several label columns, :func:`convexity_by_labels` builds
    each state's graph once for all of them.
    """
    return convexity_by_labels(feats, [label], layers, n_permutations=n_permutations, **kw)[label]


def convexity_by_labels(
    feats: Any,
    labels: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    n_permutations: int = 0,
    max_rows: int | None = None,
    chance_pairs_per_class: int | None = None,
    **kw: Any,
) -> dict[str, list[dict[str, Any]]]:
    """:func:`convexity_by_layer` for several label columns: ``{label: rows}``, each state's kNN graph built once
    and scored for every label (the graph is the expensive part that does not depend on the labels).

    ``max_rows``: score at most this many rows — a seeded random subset (``seed``), the same rows for every state
    and label — or all rows (``None``). Each row of the result records the rows used in ``rows``. Why a cap: a
    label that a state does not encode, and every permutation baseline, makes the sampled pairs' shortest paths
    cross the whole graph, and each such path costs about √N·k vertex visits, so the exact paths of 5 000 pairs per
    class grow like N^1.5 (measured: 6 s per label set at 10 000 rows, 26 s at 25 000 on 2 cores).

    ``chance_pairs_per_class``: pairs per class of each permutation baseline (at most ``max_pairs_per_class``;
    ``None``: the same). The permutations are 3 of every 4 path sets, and all of them cross the graph; fewer pairs
    leave the chance level's expectation unchanged and add sampling noise that ``chance_std`` (over the
    permutations) reports. Each row records it in ``chance_pairs_per_class``.
    """
    labels = list(labels)
    for label in labels:
        if label not in feats.labels:
            raise SpeechpruneError(
                f"no label column {label!r} in these features; available: {', '.join(feats.labels) or '(none)'}"
            )
    opts = _options(kw)
    if max_rows is not None and max_rows < 2:
        raise SpeechpruneError(f"max_rows must be at least 2 (or None for all rows), got {max_rows}")
    score_opts = _score_opts(opts)
    chance_opts = dict(score_opts)
    if chance_pairs_per_class is not None:
        _check_options(opts["n_neighbors"], chance_pairs_per_class, opts["processes"], opts["chunk"])
        chance_opts["max_pairs_per_class"] = min(int(chance_pairs_per_class), opts["max_pairs_per_class"])
    states = list(feats.layers) if layers is None else list(layers)
    for state in states:  # fail on a bad state index before spending minutes on the good ones
        feats.layer(state)
    n = len(feats.labels[labels[0]]) if labels else 0
    rows_used = subset_rows(n, max_rows, opts["seed"]) if n else None
    out: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for state in states:
        x = feats.layer(state)
        data = _check_features(x if rows_used is None else x[rows_used], opts["n_neighbors"])
        prep = _prepare(data, opts["n_neighbors"], opts["device"])
        for label in labels:
            y = feats.labels[label]
            classes, codes = _encode_labels(y if rows_used is None else [y[i] for i in rows_used], data.shape[0])
            res = _score(prep, codes, classes, **score_opts)
            row = {"state": int(state), **_row(res), "rows": int(data.shape[0])}
            if n_permutations > 0:
                base = _baseline_on(prep, codes, classes, n_permutations, opts["seed"], chance_opts)
                row.update(chance=base.mean, chance_std=base.std,
                           chance_pairs_per_class=chance_opts["max_pairs_per_class"])
            out[label].append(row)
    return out


# ----------------------------------------------------------------------------------------------- input checking


def _options(kw: dict[str, Any]) -> dict[str, Any]:
    """Fill :func:`graph_convexity`'s defaults into ``kw`` and reject unknown names (so typos do not pass silently)."""
    opts = dict(n_neighbors=10, max_pairs_per_class=5000, seed=42, processes=2, chunk=256, use_symmetry=True,
                progress=False, paths="auto", device=None)
    unknown = set(kw) - set(opts)
    if unknown:
        raise TypeError(f"unknown graph_convexity option(s): {', '.join(sorted(unknown))}")
    opts.update(kw)
    _check_options(opts["n_neighbors"], opts["max_pairs_per_class"], opts["processes"], opts["chunk"])
    if opts["paths"] not in PATH_METHODS:
        raise SpeechpruneError(f"paths must be one of {', '.join(PATH_METHODS)}, got {opts['paths']!r}")
    if opts["paths"] == "auto":
        opts["paths"] = "compiled" if _paths.HAVE_NUMBA else "scipy"
    elif opts["paths"] == "compiled" and not _paths.HAVE_NUMBA:
        raise SpeechpruneError("paths='compiled' needs numba (pip install numba); or use paths='scipy'")
    return opts


def _score_opts(opts: dict[str, Any]) -> dict[str, Any]:
    """The options :func:`_score` takes (everything but the graph's device)."""
    return {k: v for k, v in opts.items() if k != "device"}


def _check_options(n_neighbors: int, max_pairs: int, processes: int, chunk: int) -> None:
    for name, value in (("n_neighbors", n_neighbors), ("max_pairs_per_class", max_pairs),
                        ("processes", processes), ("chunk", chunk)):
        if int(value) != value or value < 1:
            raise SpeechpruneError(f"{name} must be a positive integer, got {value!r}")


def _check_features(x: Any, n_neighbors: int) -> np.ndarray:
    data = np.asarray(x)
    if data.ndim != 2:
        raise SpeechpruneError(f"graph convexity needs an N × D feature matrix, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.number):
        raise SpeechpruneError(f"features must be numeric, got dtype {data.dtype}")
    bad = ~np.isfinite(data).all(axis=1)
    if bad.any():
        raise SpeechpruneError(
            f"features contain NaN or inf values in {int(bad.sum())} row(s) (first: row {int(np.argmax(bad))}); "
            "drop or repair them before computing graph convexity"
        )
    if data.shape[0] <= n_neighbors:
        raise SpeechpruneError(
            f"graph convexity with n_neighbors={n_neighbors} needs more than {n_neighbors} points, got N={data.shape[0]}"
        )
    return data


def _encode_labels(labels: Sequence[Any] | np.ndarray, n: int) -> tuple[list[Any], np.ndarray]:
    """Map any label values to codes 0..C−1 (sorted where the values sort), so class selection never depends on
    the values being 0..C−1 (the reference's ``labels == i`` pitfall)."""
    arr = np.asarray(labels, dtype=object if not isinstance(labels, np.ndarray) else None)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise SpeechpruneError(f"labels must be a 1-d sequence with one label per row: got {arr.shape}, N={n}")
    try:
        uniq, codes = np.unique(arr, return_inverse=True)
    except TypeError:  # values of mixed, unorderable types: keep the order of first appearance
        first: dict[Any, int] = {}
        codes = np.array([first.setdefault(v, len(first)) for v in arr.tolist()])
        uniq = np.array(list(first), dtype=object)
    classes = [v.item() if isinstance(v, np.generic) else v for v in uniq.tolist()]
    return classes, codes.astype(np.int64).ravel()


# ------------------------------------------------------------------------------------------------------ the graph


def knn_graph(x: np.ndarray, n_neighbors: int, device: str | None = None) -> sparse.csr_matrix:
    """Symmetric kNN graph as a scipy CSR matrix: edge i–j weighted by the Euclidean distance when j is among i's
    ``n_neighbors`` nearest distinct points or i among j's (``max(W, Wᵀ)``). Memory O(N·k), never N × N."""
    n = x.shape[0]
    nb = knn(x, n_neighbors, metric="euclidean", exclude_self=True, exclude_duplicates=True, device=device)
    # block: knn's own choice by N (knn.block_rows; ≈ 1 024-row blocks up to 8 192 rows, 2 048 above)
    rows = np.repeat(np.arange(n), n_neighbors)
    w = sparse.csr_matrix((nb.distances.ravel(), (rows, nb.indices.ravel())), shape=(n, n))
    graph = w.maximum(w.T).tocsr()
    graph.sort_indices()
    return graph


def _prepare(x: np.ndarray, n_neighbors: int, device: str | None = None) -> _Prepared:
    start = time.perf_counter()
    graph = knn_graph(x, n_neighbors, device)
    n_comp, comp = connected_components(graph, directed=False)
    return _Prepared(x, graph, comp, int(n_comp), time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------- pair sampling


def class_generators(seed: int, n_classes: int) -> list[np.random.Generator]:
    """One independent generator per class code, so the pairs of a class do not depend on the other classes."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n_classes)]


def sample_pair_indices(n: int, max_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Indices into the n(n−1) ordered pairs of a class (``itertools.permutations`` order), ``min(n(n−1),
    max_pairs)`` of them without replacement; all of them, in order and without drawing, when they fit."""
    total = n * (n - 1)
    return np.arange(total) if total <= max_pairs else rng.choice(total, size=max_pairs, replace=False)


def sample_pairs(members: np.ndarray, max_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Ordered pairs of distinct ``members`` (P × 2), drawn by :func:`sample_pair_indices` and decoded
    arithmetically, so a large class never materialises its pair list."""
    n = len(members)
    picks = sample_pair_indices(n, max_pairs, rng)
    first = picks // (n - 1)
    rest = picks % (n - 1)
    second = rest + (rest >= first)
    return np.stack([members[first], members[second]], axis=1)


def _sample_all(codes: np.ndarray, n_classes: int, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of every class with ≥ 2 members (members in row order); returns (pairs, class code per pair)."""
    gens = class_generators(seed, n_classes)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_classes + 1))
    pairs, owner = [], []
    for c in range(n_classes):
        members = order[bounds[c]:bounds[c + 1]]
        if len(members) < 2:
            continue
        p = sample_pairs(members, max_pairs, gens[c])
        pairs.append(p)
        owner.append(np.full(len(p), c, np.int64))
    return np.concatenate(pairs), np.concatenate(owner)


# --------------------------------------------------------------------------------------------- source selection


def greedy_cover(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """A small vertex cover of the pairs (u, v) by greedy max-degree selection (lazy heap): a boolean mask of
    size n. Every pair then has an endpoint whose shortest-path tree contains the pair's path."""
    a, b = np.minimum(u, v), np.maximum(u, v)
    edges = np.unique(a * n + b)
    a, b = edges // n, edges % n
    ends = np.concatenate([a, b])
    other = np.concatenate([b, a])
    eid = np.concatenate([np.arange(len(a))] * 2)
    order = np.argsort(ends, kind="stable")
    ptr = np.searchsorted(ends[order], np.arange(n + 1))
    nbr, nbr_edge = other[order].tolist(), eid[order].tolist()
    deg = np.diff(ptr).tolist()
    ptr = ptr.tolist()
    covered = [False] * len(a)
    chosen = np.zeros(n, bool)
    heap = [(-d, i) for i, d in enumerate(deg) if d > 0]
    heapq.heapify(heap)
    while heap:
        d, i = heapq.heappop(heap)
        if -d != deg[i] or deg[i] == 0:
            continue  # stale entry
        chosen[i] = True
        for k in range(ptr[i], ptr[i + 1]):
            e = nbr_edge[k]
            if not covered[e]:
                covered[e] = True
                j = nbr[k]
                deg[j] -= 1
                if deg[j] > 0:
                    heapq.heappush(heap, (-deg[j], j))
        deg[i] = 0
    return chosen


def _orient(pairs: np.ndarray, n: int, use_symmetry: bool) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) per pair. Without symmetry the source is u, as in the reference. With symmetry, the pair is
    flipped when that lets fewer distinct sources cover all pairs (never more sources than without)."""
    u, v = pairs[:, 0], pairs[:, 1]
    if not use_symmetry or len(u) == 0:
        return u, v
    cover = greedy_cover(u, v, n)
    if cover.sum() >= len(np.unique(u)):
        return u, v
    flip = ~cover[u]
    return np.where(flip, v, u), np.where(flip, u, v)


# -------------------------------------------------------------------------------------------- shortest paths


_WORK: tuple[sparse.csr_matrix, np.ndarray] | None = None  # (graph, codes), inherited by forked workers


@dataclass
class _Task:
    """One scipy call: ``sources`` (unique), and per pair the row of its source, its target and its class code.
    ``limit`` bounds the search radius (inf = the whole tree)."""

    sources: np.ndarray
    row: np.ndarray
    target: np.ndarray
    cls: np.ndarray
    limit: float = np.inf


def _walk_chunk(task: _Task) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trees of one chunk of sources, then every pair's path walked back from its target, vectorised over pairs.

    Returns the pair scores in [0, 1], the number of interior vertices (−1 when the target was not reached) and
    the path length (inf when not reached — beyond ``limit``, or in another component).
    """
    graph, codes = _WORK  # type: ignore[misc]
    n = graph.shape[0]
    dist, pred = dijkstra(graph, directed=True, indices=task.sources, return_predecessors=True, limit=task.limit)
    flat = pred.ravel()
    base = task.row.astype(np.int64) * n
    src = task.sources[task.row]
    prev = flat[base + task.target].astype(np.int64)
    reached = prev >= 0
    interior = np.zeros(len(task.target), np.int64)
    inside = np.zeros(len(task.target), np.int64)
    active = np.flatnonzero(reached & (prev != src))
    cur = prev
    while active.size:
        node = cur[active]
        interior[active] += 1
        inside[active] += codes[node] == task.cls[active]
        nxt = flat[base[active] + node].astype(np.int64)
        cur[active] = nxt
        active = active[nxt != src[active]]
    score = np.where(interior > 0, inside / np.maximum(interior, 1), 1.0)
    score[~reached] = 0.0
    interior[~reached] = -1
    return score, interior, dist.ravel()[base + task.target]


def _tasks(source: np.ndarray, target: np.ndarray, cls: np.ndarray, chunk: int, processes: int,
           reach: np.ndarray | None = None, factor: float = np.inf) -> tuple[np.ndarray, list[_Task]]:
    """Group pairs by source and cut the sources into balanced chunks (≤ ``chunk``, ≥ ``MIN_CHUNK``).

    With ``reach`` (a per-pair radius estimate), sources are ordered by their largest estimate so that a chunk's
    limit, ``factor`` × its largest estimate, suits all its sources. Returns the pair order and the tasks.
    """
    uniq, inv = np.unique(source, return_inverse=True)
    key = np.zeros(len(uniq))
    if reach is not None:
        np.maximum.at(key, inv, reach)
    rank = np.empty(len(uniq), np.int64)
    rank[np.lexsort((uniq, key))] = np.arange(len(uniq))
    order = np.argsort(rank[inv], kind="stable")
    r, t, c = rank[inv][order], target[order], cls[order]
    by_rank = uniq[np.argsort(rank)]
    key_by_rank = np.sort(key)
    start = np.searchsorted(r, np.arange(len(uniq) + 1))
    size = max(1, min(chunk, max(MIN_CHUNK, math.ceil(len(uniq) / processes))))
    tasks = []
    for lo in range(0, len(uniq), size):
        hi = min(lo + size, len(uniq))
        a, b = start[lo], start[hi]
        limit = factor * key_by_rank[hi - 1] if reach is not None else np.inf
        tasks.append(_Task(by_rank[lo:hi], r[a:b] - lo, t[a:b], c[a:b], float(limit)))
    return order, tasks


def _run_tasks(tasks: list[_Task], processes: int, bar: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Run the chunks on ``processes`` forked workers (results in task order), or here when that is not possible."""
    if processes > 1 and len(tasks) > 1 and "fork" in multiprocessing.get_all_start_methods():
        try:
            # workers ignore Ctrl-C: the main process alone receives it, stops the pool and ends the command
            # (a worker killed by KeyboardInterrupt used to lose its task while the run went on)
            pool = multiprocessing.get_context("fork").Pool(min(processes, len(tasks)), initializer=_ignore_sigint)
        except (OSError, ValueError, AssertionError) as err:  # e.g. inside a daemonic worker
            warnings.warn(f"graph convexity runs in one process: cannot fork workers ({err})",
                          ConvexityWarning, stacklevel=4)
        else:
            with pool:
                out = []
                for res in pool.imap(_walk_chunk, tasks):
                    out.append(res)
                    bar.update()
            return out
    out = []
    for task in tasks:
        out.append(_walk_chunk(task))
        bar.update()
    return out


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _euclidean(x: np.ndarray, a: np.ndarray, b: np.ndarray, block: int = 4096) -> np.ndarray:
    """‖x[a] − x[b]‖ per pair, in float64 blocks (a lower bound on the graph distance: a path is never shorter)."""
    out = np.empty(len(a))
    for lo in range(0, len(a), block):
        d = x[a[lo:lo + block]].astype(np.float64) - x[b[lo:lo + block]]
        out[lo:lo + block] = np.sqrt(np.einsum("ij,ij->i", d, d))
    return out


def _pilot(source: np.ndarray, reach: np.ndarray, size: int) -> np.ndarray:
    """A pair mask selecting ``size`` sources spread evenly over the sources sorted by radius estimate."""
    uniq, inv = np.unique(source, return_inverse=True)
    key = np.zeros(len(uniq))
    np.maximum.at(key, inv, reach)
    ranked = np.lexsort((uniq, key))
    chosen = np.zeros(len(uniq), bool)
    chosen[ranked[np.linspace(0, len(uniq) - 1, size).round().astype(int)]] = True
    return chosen[inv]


def _bounded_factor(source: np.ndarray, reach: np.ndarray, dist: np.ndarray) -> float:
    """Limit factor q: the LIMIT_QUANTILE of (graph distance / Euclidean distance) over the pilot's sources, each
    taken at its farthest target — so that about that share of sources finish inside their limit."""
    uniq, inv = np.unique(source, return_inverse=True)
    need = np.zeros(len(uniq))
    est = np.zeros(len(uniq))
    np.maximum.at(need, inv, dist)
    np.maximum.at(est, inv, reach)
    ok = np.isfinite(need) & (est > 0)
    return float(np.quantile(need[ok] / est[ok], LIMIT_QUANTILE)) if ok.any() else np.inf


def _compiled_path_scores(prep: _Prepared, codes: np.ndarray, pairs: np.ndarray, owner: np.ndarray, *,
                          processes: int, use_symmetry: bool,
                          progress: bool) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Score and interior count of every pair by the compiled bidirectional kernel; also the distinct sources,
    the searches run and the vertices settled. Pairs in different components score 0 without a search; with
    ``use_symmetry`` each unordered pair is searched once, from its smaller index."""
    m, n = len(pairs), len(codes)
    scores, interior = np.zeros(m), np.full(m, -1, np.int64)
    comp = prep.components
    linked = np.flatnonzero(comp[pairs[:, 0]] == comp[pairs[:, 1]])
    u, v, cls = pairs[linked, 0], pairs[linked, 1], owner[linked]
    if use_symmetry:
        a, b = np.minimum(u, v), np.maximum(u, v)
        _, first, inverse = np.unique(a * n + b, return_index=True, return_inverse=True)
        su, sv, sc = a[first], b[first], cls[first]
    else:
        order = np.lexsort((v, u))  # by source: neighbouring searches touch nearby memory
        su, sv, sc = u[order], v[order], cls[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
    graph = prep.graph
    threads = max(1, int(processes))
    with tqdm(total=_paths.n_pieces(len(su), threads), desc="convexity paths", unit="piece",
              disable=not progress) as bar:
        sc_, it_, _, settled = _paths.pair_paths(graph.indptr, graph.indices, graph.data, codes, su, sv, sc,
                                                 coords=prep.guide(), threads=threads, on_piece=bar.update)
    scores[linked] = sc_[inverse]
    interior[linked] = it_[inverse]
    return scores, interior, int(len(np.unique(su))), int(len(su)), settled


def _path_scores(prep: _Prepared, codes: np.ndarray, pairs: np.ndarray, owner: np.ndarray, *, processes: int,
                 chunk: int, use_symmetry: bool, progress: bool) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Score of every pair and its number of interior vertices; also the distinct sources and trees computed.

    Pairs in different components score 0 without a search. With many sources the rest go in three rounds: a
    pilot of ``chunk`` sources with whole trees, which calibrates how much longer than the straight line the graph
    paths are; all other sources with a radius limit (scipy stops searching there: about half the cost on
    multi-hop data); and whole trees again for the few pairs whose target lay beyond its limit. Inside the limit
    the search is the same, so the scores are unchanged (up to ties between equal-length paths).
    """
    global _WORK
    m = len(pairs)
    scores, interior, dist = np.zeros(m), np.full(m, -1, np.int64), np.full(m, np.inf)
    comp = prep.components
    linked = np.flatnonzero(comp[pairs[:, 0]] == comp[pairs[:, 1]])
    source, target = _orient(pairs[linked], len(codes), use_symmetry)
    cls = owner[linked]
    n_sources = len(np.unique(source))
    trees = 0
    bar = tqdm(total=0, desc="convexity paths", unit="chunk", disable=not progress)

    def run(sel: np.ndarray, reach: np.ndarray | None = None, factor: float = np.inf) -> None:
        nonlocal trees
        order, tasks = _tasks(source[sel], target[sel], cls[sel], chunk, processes, reach, factor)
        trees += sum(len(t.sources) for t in tasks)
        bar.total += len(tasks)
        bar.refresh()
        res = _run_tasks(tasks, processes, bar)
        if res:
            where = linked[sel[order]]
            scores[where] = np.concatenate([r[0] for r in res])
            interior[where] = np.concatenate([r[1] for r in res])
            dist[where] = np.concatenate([r[2] for r in res])

    _WORK = (prep.graph, codes)
    try:
        if LIMIT_QUANTILE is None or n_sources <= 2 * chunk:
            run(np.arange(len(source)))
        else:
            reach = _euclidean(prep.x, source, target)
            pilot = _pilot(source, reach, chunk)
            run(np.flatnonzero(pilot))
            factor = _bounded_factor(source[pilot], reach[pilot], dist[linked[pilot]])
            rest = np.flatnonzero(~pilot)
            run(rest, reach[rest], factor)
            run(np.flatnonzero(interior[linked] < 0))  # beyond their limit: whole trees
    finally:
        _WORK = None
        bar.close()
    return scores, interior, n_sources, trees


# --------------------------------------------------------------------------------------------------- aggregation


def _score(prep: _Prepared, codes: np.ndarray, classes: list[Any], n_neighbors: int, max_pairs_per_class: int,
           seed: int, processes: int, chunk: int, use_symmetry: bool, progress: bool,
           paths: str = "compiled") -> ConvexityResult:
    sizes = np.bincount(codes, minlength=len(classes))
    skipped = [classes[c] for c in np.flatnonzero(sizes < 2)]
    if len(skipped) == len(classes):
        raise SpeechpruneError(
            f"graph convexity needs at least one class with ≥ 2 examples; all {len(classes)} class(es) have one"
        )
    if skipped:
        warnings.warn(
            f"graph convexity skips {len(skipped)} class(es) with a single example (no pairs): "
            + ", ".join(map(repr, skipped[:10])) + (" ..." if len(skipped) > 10 else ""),
            ConvexityWarning, stacklevel=3,
        )
    start = time.perf_counter()
    pairs, owner = _sample_all(codes, len(classes), max_pairs_per_class, seed)
    settled = 0
    if paths == "compiled":
        scores, interior, n_sources, n_trees, settled = _compiled_path_scores(
            prep, codes, pairs, owner, processes=processes, use_symmetry=use_symmetry, progress=progress)
    else:
        scores, interior, n_sources, n_trees = _path_scores(prep, codes, pairs, owner, processes=processes,
                                                            chunk=chunk, use_symmetry=use_symmetry, progress=progress)
    seconds_paths = time.perf_counter() - start
    scored = np.flatnonzero(sizes >= 2)
    counts = np.bincount(owner, minlength=len(classes))
    sums = np.bincount(owner, weights=scores, minlength=len(classes))
    sq = np.bincount(owner, weights=scores**2, minlength=len(classes))
    mean_c = sums / np.maximum(counts, 1)
    std_c = np.sqrt(np.maximum(sq / np.maximum(counts, 1) - mean_c**2, 0.0))
    reached = interior >= 0
    return ConvexityResult(
        score=float(scores.mean() * 100),
        std_error=float(scores.std() * 100 / math.sqrt(sizes[scored].sum())),
        std=float(scores.std() * 100),
        per_class={classes[c]: float(mean_c[c] * 100) for c in scored},
        per_class_std_error={classes[c]: float(std_c[c] * 100 / math.sqrt(sizes[c])) for c in scored},
        pair_counts={classes[c]: int(counts[c]) for c in scored},
        class_sizes={classes[c]: int(sizes[c]) for c in range(len(classes))},
        n_pairs=int(len(scores)),
        unreachable_fraction=float(1.0 - reached.mean()),
        skipped_classes=skipped,
        n_components=prep.n_components,
        n_sources=int(n_sources),
        n_trees=int(n_trees),
        mean_path_vertices=float(interior[reached].mean() + 2) if reached.any() else float("nan"),
        n_neighbors=int(n_neighbors),
        max_pairs_per_class=int(max_pairs_per_class),
        seed=int(seed),
        use_symmetry=bool(use_symmetry),
        seconds={"graph": prep.seconds_graph, "paths": seconds_paths},
        paths_method=paths,
        n_settled=int(settled),
        pairs=pairs,
        pair_scores=scores,
    )


def _baseline_on(prep: _Prepared, codes: np.ndarray, classes: list[Any], n_permutations: int, seed: int,
                 opts: dict[str, Any]) -> PermutationBaseline:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    scores = []
    for i in range(n_permutations):
        shuffled = rng.permutation(codes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvexityWarning)  # already reported for the real labels
            res = _score(prep, shuffled, classes, **{**opts, "seed": int(seed) + 1 + i})
        scores.append(res.score)
    std = float(np.std(scores, ddof=1)) if n_permutations > 1 else 0.0
    return PermutationBaseline(float(np.mean(scores)), std, scores, n_permutations, int(seed))


def _row(res: ConvexityResult) -> dict[str, Any]:
    d = res.to_dict()
    keep = ("score", "std_error", "per_class", "pair_counts", "n_pairs", "unreachable_fraction", "skipped_classes",
            "mean_path_vertices", "seconds")
    return {k: d[k] for k in keep}
