"""Cut points of an operator DAG and its coarsening into at most K pieces whose quotient is a DAG.

Pure functions: graph in, result out; the graph is never modified.

A cut of a DAG G = (V, E) is a split of V into a prefix P (closed under predecessors) and the
rest; the tensors crossing it are those produced in P and read outside P. Every prefix of a
topological order is such a set, so we enumerate the cuts of one topological order
`o_1 .. o_n` (the model's own node order when it is topological: exporters emit branches
together, so residual blocks, parallel branches and multi-output heads come out contiguous):

    cross(c) = { t : producer(t) at position < c <= last consumer(t) }     c = 1 .. n-1
    bytes(c) = sum of nbytes(t) over cross(c)

A partition into pieces = consecutive runs of the order cut at positions c_1 < ... < c_{k-1};
every edge then goes from a piece to the same or a later one, so the quotient graph is acyclic,
each op lies in exactly one piece and each tensor is produced by exactly one piece.

Coarsening to at most K pieces keeps the cheapest cuts: candidates in increasing bytes(c)
(ties: fewer tensors, then closest to an even split j/K of the weight), accepted greedily while every piece keeps at least
`min_piece_frac` of the total weight (FLOPs by default), so no piece is a sliver of work.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import networkx as nx
import numpy as np

__all__ = ["Cut", "Partition", "topological_order", "find_cuts", "coarsen", "quotient_graph",
           "partition_from_cuts"]

Node = Hashable
# node -> weight (e.g. FLOPs)
Weight = Callable[[Node], float]


@dataclass(frozen=True)
class Cut:
    """A cut before position `position` of the order: `tensors` cross it, `nbytes` in total."""

    position: int
    tensors: tuple[str, ...]
    nbytes: int


@dataclass(frozen=True)
class Partition:
    """Pieces as consecutive runs of `order`; `cuts` are the chosen cuts between them."""

    order: tuple[Node, ...]
    pieces: tuple[tuple[Node, ...], ...]
    cuts: tuple[Cut, ...]

    def piece_of(self) -> dict[Node, int]:
        """Map node -> index of its piece."""
        return {v: i for i, p in enumerate(self.pieces) for v in p}


def topological_order(G: nx.DiGraph) -> list[Node]:
    """The graph's own node order (`index` attribute) when topological, else a deterministic one.

    >>> G = nx.DiGraph([("a", "b"), ("b", "c")])
    >>> topological_order(G)
    ['a', 'b', 'c']
    """
    if G.number_of_nodes() and all("index" in d for _, d in G.nodes(data=True)):
        order = sorted(G.nodes, key=lambda v: G.nodes[v]["index"])
        pos = {v: i for i, v in enumerate(order)}
        if all(pos[u] < pos[v] for u, v in G.edges):
            return order
    return list(nx.lexicographical_topological_sort(G, key=str))


def _edge_tensors(G: nx.DiGraph, u: Node, v: Node) -> list[tuple[str, int]]:
    """(tensor, nbytes) pairs carried by edge u -> v; an edge without names is one tensor `u`."""
    d = G.edges[u, v]
    names = d.get("tensors") or ((d["tensor"],) if "tensor" in d else (f"{u}",))
    if len(names) == 1:
        return [(names[0], int(d.get("nbytes", 0)))]
    tensors = G.graph.get("tensors", {})
    out = []
    for t in names:
        info = tensors.get(t)
        out.append((t, int(info.nbytes) if info is not None else int(d.get("nbytes", 0)) // len(names)))
    return out


def _intervals(G: nx.DiGraph, order: Sequence[Node]) -> dict[str, tuple[int, int, int]]:
    """tensor -> (producer position, last consumer position, nbytes)."""
    pos = {v: i for i, v in enumerate(order)}
    span: dict[str, tuple[int, int, int]] = {}
    for u, v in G.edges:
        pu, pv = pos[u], pos[v]
        for t, nb in _edge_tensors(G, u, v):
            p, q, b = span.get(t, (pu, pv, nb))
            span[t] = (p, max(q, pv), max(b, nb))
    return span


def find_cuts(G: nx.DiGraph, order: Sequence[Node] | None = None, max_tensors: int | None = None) -> list[Cut]:
    """Every cut of `order` (default `topological_order(G)`), cheapest first.

    A cut at position c separates order[:c] from order[c:]. `max_tensors` keeps only cuts
    crossed by at most that many tensors. Ranked by (bytes, tensors crossing, position).

    >>> G = nx.DiGraph()
    >>> G.add_edge("a", "b", tensor="x", nbytes=100); G.add_edge("b", "c", tensor="y", nbytes=10)
    >>> [(c.position, c.tensors, c.nbytes) for c in find_cuts(G)]
    [(2, ('y',), 10), (1, ('x',), 100)]
    """
    order = list(order) if order is not None else topological_order(G)
    n = len(order)
    if n < 2:
        return []
    span = _intervals(G, order)
    nbytes = np.zeros(n + 1, dtype=np.int64)
    count = np.zeros(n + 1, dtype=np.int64)
    for p, q, b in span.values():
        if q > p:   # crosses cuts p+1 .. q
            nbytes[p + 1] += b
            nbytes[q + 1] -= b
            count[p + 1] += 1
            count[q + 1] -= 1
    nbytes = np.cumsum(nbytes)
    count = np.cumsum(count)
    keep = [c for c in range(1, n) if max_tensors is None or count[c] <= max_tensors]
    keep.sort(key=lambda c: (int(nbytes[c]), int(count[c]), c))
    wanted = set(keep)
    members: dict[int, list[str]] = {c: [] for c in keep}
    for t, (p, q, _) in span.items():
        if q > p:
            for c in range(p + 1, q + 1):
                if c in wanted:
                    members[c].append(t)
    return [Cut(c, tuple(sorted(members[c])), int(nbytes[c])) for c in keep]


def _weights(G: nx.DiGraph, order: Sequence[Node], weight: str | Weight | None) -> np.ndarray:
    if callable(weight):
        w = np.array([float(weight(v)) for v in order])
    else:
        attr = weight or "flops"
        w = np.array([float(G.nodes[v].get(attr, 0.0) or 0.0) for v in order])
    if w.sum() <= 0:
        w = np.ones(len(order))
    return w


def partition_from_cuts(order: Sequence[Node], cuts: Sequence[Cut]) -> Partition:
    """The partition of `order` at the given cuts (any order, duplicates ignored)."""
    chosen = sorted({c.position: c for c in cuts}.values(), key=lambda c: c.position)
    bounds = [0] + [c.position for c in chosen] + [len(order)]
    pieces = tuple(tuple(order[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a)
    return Partition(order=tuple(order), pieces=pieces, cuts=tuple(chosen))


def coarsen(G: nx.DiGraph, max_pieces: int, *, weight: str | Weight | None = "flops",
            min_piece_frac: float | None = None, max_tensors: int | None = None,
            order: Sequence[Node] | None = None) -> Partition:
    """At most `max_pieces` pieces cut at the cheapest cuts; quotient graph acyclic by construction.

    `min_piece_frac` (default 1 / (2 * max_pieces)) is the least share of the total weight a
    piece may carry; a candidate cut that would leave a lighter piece is skipped.

    >>> G = nx.path_graph(6, create_using=nx.DiGraph)
    >>> [len(p) for p in coarsen(G, 3).pieces]
    [2, 2, 2]
    """
    if max_pieces < 1:
        raise ValueError("max_pieces must be >= 1")
    order = list(order) if order is not None else topological_order(G)
    if max_pieces == 1 or len(order) < 2:
        return partition_from_cuts(order, [])
    frac = (1.0 / (2 * max_pieces)) if min_piece_frac is None else float(min_piece_frac)
    w = _weights(G, order, weight)
    prefix = np.concatenate([[0.0], np.cumsum(w)])
    least = frac * prefix[-1]
    chosen_pos = [0, len(order)]
    chosen: list[Cut] = []
    total = prefix[-1]
    quantiles = np.arange(1, max_pieces) / max_pieces

    def off_balance(c: Cut) -> float:   # tie-break equal cuts towards even pieces
        return float(np.min(np.abs(prefix[c.position] / total - quantiles)))

    candidates = sorted(find_cuts(G, order, max_tensors), key=lambda c: (c.nbytes, len(c.tensors), off_balance(c)))
    for cut in candidates:
        if len(chosen) >= max_pieces - 1:
            break
        c = cut.position
        i = bisect.bisect_left(chosen_pos, c)
        a, b = chosen_pos[i - 1], chosen_pos[i]
        if prefix[c] - prefix[a] < least or prefix[b] - prefix[c] < least:
            continue
        chosen_pos.insert(i, c)
        chosen.append(cut)
    return partition_from_cuts(order, chosen)


def quotient_graph(G: nx.DiGraph, part: Partition) -> nx.DiGraph:
    """Piece graph: node i = piece i; edge i -> j carries `tensors` and `nbytes` crossing from i to j."""
    where = part.piece_of()
    Q = nx.DiGraph()
    Q.add_nodes_from(range(len(part.pieces)))
    for u, v in G.edges:
        i, j = where[u], where[v]
        if i == j:
            continue
        if not Q.has_edge(i, j):
            Q.add_edge(i, j, tensors=(), nbytes=0)
        e = Q.edges[i, j]
        for t, nb in _edge_tensors(G, u, v):
            if t not in e["tensors"]:
                e["tensors"] = e["tensors"] + (t,)
                e["nbytes"] += nb
    return Q
