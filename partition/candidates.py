"""Candidate cut points of a model: where the planner may cut it, chosen jointly with placement.

The planner no longer receives a model already cut into `max_pieces` pieces. It receives the
model cut at every candidate point (positions of one topological order where at most
`MAX_TENSORS` tensors cross, see partition.cuts.find_cuts), as *segments* carrying the compute
between consecutive candidates; CP-SAT decides which candidates to cut at together with where
each segment runs, and `max_pieces` bounds the pieces after that choice (planner.formulation).
Models with more candidates than `DEFAULT_SEGMENTS - 1` keep the smallest ones, spread so that
no segment is a sliver of the model's compute (partition.cuts.coarsen). The planner then refines
the cuts it chose among every candidate near them (planner.refine): the default candidates only
need to be close to the best cuts.
"""

from __future__ import annotations

from typing import Sequence

import networkx as nx

from tierplan.partition.cuts import Cut, Node, Weight, coarsen, find_cuts

__all__ = ["DEFAULT_SEGMENTS", "PROFILE_SEGMENTS", "EVERY", "MAX_TENSORS", "candidate_cuts", "cuts_at"]

DEFAULT_SEGMENTS = 16   # segments per ONNX model the planner chooses cuts among (benchmarks/planner.py: gap to all)
PROFILE_SEGMENTS = 64   # ... per profile-table model: a chain of up to 64 layers keeps every layer boundary
EVERY = 1_000_000       # `segments=` that keeps every candidate cut (planner.refine's cut space)
MAX_TENSORS = 4         # a candidate cut is crossed by at most this many tensors ("few")


def candidate_cuts(G: nx.DiGraph, segments: int | None = DEFAULT_SEGMENTS, *, max_tensors: int = MAX_TENSORS,
                   weight: str | Weight | None = "flops", order: Sequence[Node] | None = None) -> list[Cut]:
    """The candidate cuts of `G`, by position: every cut crossed by at most `max_tensors` tensors
    when there are fewer than `segments` of them (or `segments` is None: all of them), else the
    `segments - 1` smallest in bytes that leave every segment at least 1/(4 * segments) of the
    compute (partition.cuts.coarsen).

    >>> G = nx.path_graph(5, create_using=nx.DiGraph)
    >>> [c.position for c in candidate_cuts(G)]
    [1, 2, 3, 4]
    """
    every = find_cuts(G, order, max_tensors)
    if segments is None or len(every) <= segments - 1:
        return sorted(every, key=lambda c: c.position)
    part = coarsen(G, segments, weight=weight, min_piece_frac=1.0 / (4 * segments), max_tensors=max_tensors,
                   order=order)
    return sorted(part.cuts, key=lambda c: c.position)


def cuts_at(G: nx.DiGraph, positions: Sequence[int], order: Sequence[Node] | None = None) -> list[Cut]:
    """The cuts of `G` at the given positions of its topological order (the planner's choice)."""
    wanted = set(int(p) for p in positions)
    found = [c for c in find_cuts(G, order) if c.position in wanted]
    if len(found) != len(wanted):
        missing = sorted(wanted - {c.position for c in found})
        raise ValueError(f"no cut at position(s) {missing} of a {G.number_of_nodes()}-op graph")
    return sorted(found, key=lambda c: c.position)
